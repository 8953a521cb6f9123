"""DeformableActiveConv and the modulated per-pixel gather, against kshapes_jax.reference (NumPy,
float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax import conv as conv_lib
from kshapes_jax import nn as knn
from kshapes_jax import reference


def _x(shape=(2, 9, 9, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


@pytest.mark.parametrize("stride", [1, 2])
def test_at_initialisation_it_is_its_acu(x64, stride):
  x = _x()
  layer = knn.DeformableActiveConv(
    3,
    5,
    3,
    stride=stride,
    modulation=True,
    param_dtype="float64",
    precision="highest",
    rngs=nnx.Rngs(0),
  )
  acu = layer.acu
  expected = reference.active_conv(
    x,
    acu.weights.get_value(),
    acu.all_positions(),
    stride=stride,
    padding=acu.conv_padding,
    radius=acu.radius,
  )
  np.testing.assert_allclose(layer(x), expected, rtol=1e-10, atol=1e-10)
  offsets, modulation = layer.offsets_and_modulation(x)
  assert float(jnp.max(jnp.abs(offsets))) == 0.0 and float(jnp.max(jnp.abs(modulation - 1))) == 0.0


@pytest.mark.parametrize("modulation,stride", [(False, 1), (True, 1), (True, 2)])
def test_moved_synapses_sample_where_the_reference_does(x64, modulation, stride):
  x = _x(seed=1)
  layer = knn.DeformableActiveConv(
    3,
    4,
    3,
    stride=stride,
    modulation=modulation,
    use_bias=True,
    param_dtype="float64",
    precision="highest",
    rngs=nnx.Rngs(1),
  )
  rng = np.random.default_rng(2)
  layer.offsets.kernel.set_value(
    jnp.asarray(rng.normal(size=layer.offsets.kernel.get_value().shape)) * 0.3
  )
  layer.acu.bias.set_value(jnp.arange(4.0) / 4)
  offsets, factors = layer.offsets_and_modulation(x)
  assert float(jnp.max(jnp.abs(offsets))) > 1.0  # synapses moved by more than a pixel somewhere
  acu = layer.acu
  positions = np.asarray(acu.all_positions())[None, None, None] + np.asarray(offsets, np.float64)
  expected = reference.deformable_conv(
    x,
    acu.weights.get_value(),
    positions,
    None if factors is None else np.asarray(factors, np.float64),
    stride=stride,
    padding=acu.conv_padding,
    radius=acu.radius,
  )
  np.testing.assert_allclose(layer(x), expected + np.arange(4.0) / 4, rtol=1e-6, atol=1e-6)


def test_gradients_of_the_modulated_gather_match_finite_differences(x64):
  rng = np.random.default_rng(3)
  x = _x((1, 6, 6, 2), seed=4)
  k, out = 4, 3
  weights = jnp.asarray(rng.normal(size=(k, 2, out)))
  # fractions inside (0.1, 0.9): away from the cell boundaries, where the bilinear sample has no
  # kink
  positions = jnp.asarray(
    rng.integers(-2, 2, (1, 6, 6, k, 2)) + rng.uniform(0.1, 0.9, (1, 6, 6, k, 2))
  )
  modulation = jnp.asarray(rng.uniform(0.2, 1.8, (1, 6, 6, k)))
  cot = jnp.asarray(rng.normal(size=(1, 6, 6, out)))

  def loss(p, m, w):
    y = conv_lib.active_conv_gather(x, w, p, padding=1, radius=1, modulation=m, precision="highest")
    return jnp.sum(y * cot)

  def ref_loss(p, m, w):
    return float(
      np.sum(reference.deformable_conv(x, w, p, m, padding=1, radius=1) * np.asarray(cot))
    )

  grads = jax.grad(loss, argnums=(0, 1, 2))(positions, modulation, weights)
  args = [np.asarray(a) for a in (positions, modulation, weights)]
  eps = 1e-6
  for which, grad in enumerate(grads):
    flat = np.asarray(grad).reshape(-1)
    for index in rng.choice(flat.size, 12, replace=False):
      plus, minus = [a.copy() for a in args], [a.copy() for a in args]
      plus[which].reshape(-1)[index] += eps
      minus[which].reshape(-1)[index] -= eps
      numeric = (ref_loss(*plus) - ref_loss(*minus)) / (2 * eps)
      np.testing.assert_allclose(
        flat[index], numeric, rtol=1e-5, atol=1e-7, err_msg=f"arg {which} #{index}"
      )


def test_it_learns_offsets_and_deploy_keeps_it():
  x = _x((4, 8, 8, 3), seed=5).astype(jnp.float32)
  target = jnp.asarray(np.random.default_rng(6).normal(size=(4, 8, 8, 4)), jnp.float32)
  layer = knn.DeformableActiveConv(3, 4, 3, modulation=True, rngs=nnx.Rngs(2))

  def loss(model):
    return jnp.mean((model(x) - target) ** 2)

  grads = nnx.grad(loss)(layer)
  # zero offsets still get a gradient
  assert float(jnp.max(jnp.abs(grads.offsets.kernel.get_value()))) > 0
  assert float(jnp.max(jnp.abs(grads.acu.positions.get_value()))) > 0
  before = float(loss(layer))
  optimizer = nnx.Optimizer(layer, __import__("optax").sgd(0.05), wrt=nnx.Param)
  for _ in range(5):
    optimizer.update(layer, nnx.grad(loss)(layer))
  assert float(loss(layer)) < before
  assert float(jnp.max(jnp.abs(layer.offsets_and_modulation(x)[0]))) > 0
  deployed = K.deploy(layer)
  np.testing.assert_allclose(deployed(x), layer(x), rtol=1e-6)


def test_refusals():
  x = jnp.zeros((1, 5, 5, 2))
  with pytest.raises(ValueError, match=r"modulation must be \(N, H', W', K\) = \(1, 5, 5, 9\)"):
    conv_lib.active_conv_gather(
      x,
      jnp.zeros((9, 2, 3)),
      jnp.zeros((9, 2)),
      padding=1,
      radius=1,
      modulation=jnp.ones((1, 5, 5, 4)),
    )
  offsets = jnp.zeros((1, 5, 5, 9, 2))
  # per-pixel offsets would index the wrong axis
  for kw in (
    dict(groups=2),
    dict(position_groups=2),
  ):
    acu = K.nn.ActiveConv(2, 4, 3, impl="gather", rngs=nnx.Rngs(0), **kw)
    with pytest.raises(ValueError, match="per-pixel offsets need one position set and groups=1"):
      acu.gather(x, offsets)
