"""Normalized position gradient (ACU eq. 15-16) and normalized angle gradient (RotateConv)."""

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kshapes_jax.conv import conv
from kshapes_jax.gradients import normalize_angle_grad, normalize_position_grad
from kshapes_jax.kernels import active_kernel, rotate_kernel


def _pullback(positions, cotangent):
  _, vjp = jax.vjp(normalize_position_grad, positions)
  return vjp(cotangent)[0]


# XLA flushes subnormals to zero, so those count as a zero gradient: leave them out.
@hypothesis.given(
  hnp.arrays(np.float64, (5, 2), elements=st.floats(-1e3, 1e3, allow_subnormal=False))
)
@hypothesis.settings(max_examples=100, deadline=None)
def test_each_synapse_gradient_becomes_unit_or_stays_zero(cotangent):
  with jax.enable_x64(True):
    out = np.asarray(_pullback(jnp.zeros((5, 2)), jnp.asarray(cotangent)))
  norms = np.hypot(cotangent[:, 0], cotangent[:, 1])  # no underflow in squares
  for k in range(5):
    if norms[k] == 0:
      np.testing.assert_array_equal(out[k], 0.0)
    else:
      np.testing.assert_allclose(out[k], cotangent[k] / norms[k], rtol=1e-12, atol=1e-300)


def test_identity_forward_and_no_nan_for_zero(rng):
  p = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)
  chex.assert_trees_all_equal(normalize_position_grad(p), p)
  g = _pullback(p, jnp.zeros_like(p))
  chex.assert_trees_all_equal(g, jnp.zeros_like(p))
  # a tiny gradient still becomes a unit vector
  g = _pullback(p[0], jnp.full((4, 2), 1e-30))
  chex.assert_trees_all_close(jnp.linalg.norm(g, axis=-1), jnp.ones(4), rtol=1e-5)


def test_inside_a_layer_only_the_positions_are_normalized(rng):
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 3, 2)), jnp.float32)
  p = jnp.asarray(rng.uniform(-0.9, 0.9, size=(4, 2)), jnp.float32)
  loss = lambda w, p, norm: jnp.sum(
    conv(x, active_kernel(w, normalize_position_grad(p) if norm else p, 1)) ** 2
  )
  dw_n, dp_n = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(w, p, True)
  dw, dp = jax.grad(loss, argnums=(0, 1))(w, p, False)
  chex.assert_trees_all_close(dw_n, dw, rtol=1e-6)
  chex.assert_trees_all_close(dp_n, dp / jnp.linalg.norm(dp, axis=-1, keepdims=True), rtol=1e-5)
  # second-order use (e.g. a Hessian-vector product) stays finite
  hvp = jax.jvp(jax.grad(lambda p: loss(w, p, True)), (p,), (jnp.ones_like(p),))[1]
  chex.assert_tree_all_finite(hvp)


def test_rejects_a_last_axis_other_than_two():
  with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
    normalize_position_grad(np.zeros((4, 3)))


@hypothesis.given(
  hnp.arrays(np.float64, (3, 4), elements=st.floats(-1e3, 1e3, allow_subnormal=False))
)
@hypothesis.settings(max_examples=100, deadline=None)
def test_a_layers_angle_gradient_becomes_unit_rms_or_stays_zero(cotangent):
  with jax.enable_x64(True):
    _, vjp = jax.vjp(normalize_angle_grad, jnp.zeros((3, 4)))
    out = np.asarray(vjp(jnp.asarray(cotangent))[0])
  scale = np.max(np.abs(cotangent))
  if scale == 0:
    np.testing.assert_array_equal(out, 0.0)
  else:  # independent reference: the RMS of the gradient divided by its largest entry
    rms = scale * np.sqrt(np.mean(np.square(cotangent / scale)))
    np.testing.assert_allclose(out, cotangent / rms, rtol=1e-12, atol=1e-300)


def test_angle_gradient_identity_forward_tiny_and_zero(rng):
  a = jnp.asarray(rng.uniform(0, 180, size=(3, 4)), jnp.float32)
  chex.assert_trees_all_equal(normalize_angle_grad(a), a)
  _, vjp = jax.vjp(normalize_angle_grad, a)
  chex.assert_trees_all_equal(vjp(jnp.zeros_like(a))[0], jnp.zeros_like(a))
  tiny = vjp(jnp.full((3, 4), 1e-30))[0]  # still unit RMS: a flat loss does not stop the angles
  chex.assert_trees_all_close(jnp.sqrt(jnp.mean(tiny**2)), 1.0, rtol=1e-5)


def test_inside_rotate_conv_only_the_angles_are_normalized(rng):
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4)), jnp.float32)
  a = jnp.asarray(
    rng.uniform(1, 44, size=(3, 4)) + 45 * rng.integers(0, 4, size=(3, 4)), jnp.float32
  )
  loss = lambda w, a, norm: jnp.sum(
    conv(
      x, rotate_kernel(w, normalize_angle_grad(a) if norm else a), padding=1, precision="highest"
    )
    ** 2
  )
  dw_n, da_n = jax.grad(loss, argnums=(0, 1))(w, a, True)
  dw, da = jax.grad(loss, argnums=(0, 1))(w, a, False)
  chex.assert_trees_all_close(dw_n, dw, rtol=1e-6)
  chex.assert_trees_all_close(da_n, da / jnp.sqrt(jnp.mean(da**2)), rtol=1e-5)
