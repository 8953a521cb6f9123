"""NNX layers: each forward against an independent construction, and deploy."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax import reference
from kshapes_jax.conv import active_conv_gather, conv
from kshapes_jax.nn import (
  ACBlock,
  ActiveConv,
  Angle,
  ConvBN,
  PlainConv,
  Position,
  RotateConv,
  VersatileConv,
  conv_bn,
  make_conv,
)

# Every layer here is compared with an independent float32 construction: both pin HIGHEST,
# or a GPU would compare two TF32 convs (3e-4 to 3e-3 apart).
EXACT = "highest"
exact_conv = functools.partial(conv, precision=EXACT)


def _x(rng, shape=(2, 9, 8, 4)):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


@pytest.mark.parametrize("version", [4, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_rotate_conv_matches_numpy_kernel(version, stride, rng):
  layer = RotateConv(
    4, 6, stride=stride, version=version, use_bias=True, precision=EXACT, rngs=nnx.Rngs(0)
  )
  layer.bias[...] = jnp.arange(6, dtype=jnp.float32)
  x = _x(rng)
  kernel = reference.rotate_kernel(np.asarray(layer.weights[...]), np.asarray(layer.angles[...]))
  expected = (
    exact_conv(x, jnp.asarray(kernel, jnp.float32), stride=stride, padding=1) + layer.bias[...]
  )
  chex.assert_trees_all_close(layer(x), expected, rtol=1e-5, atol=1e-5)
  assert isinstance(layer.angles, Angle)
  assert np.all((layer.angles[...] >= 0) & (layer.angles[...] < 180))


def test_rotate_conv_init_from_line_kernels(rng):
  layer = RotateConv(3, 2, precision=EXACT, rngs=nnx.Rngs(0))
  hor = jnp.asarray(rng.normal(size=(1, 3, 3, 2)), jnp.float32)
  layer.init_from_line_kernel(hor)
  expected = jnp.zeros((3, 3, 3, 2)).at[1].set(hor[0])
  chex.assert_trees_all_close(layer.effective_kernel()[0], expected, atol=1e-6)
  ver = jnp.asarray(rng.normal(size=(3, 1, 3, 2)), jnp.float32)
  layer.init_from_line_kernel(ver)
  chex.assert_trees_all_close(
    layer.effective_kernel()[0], jnp.zeros((3, 3, 3, 2)).at[:, 1].set(ver[:, 0]), atol=1e-6
  )
  with pytest.raises(ValueError, match=r"\(1, 3, 3, 2\) or \(3, 1, 3, 2\)"):
    layer.init_from_line_kernel(jnp.zeros((3, 3, 3, 2)))


def _bn_train(y):
  mean = y.mean(axis=(0, 1, 2))
  var = y.var(axis=(0, 1, 2))
  return (y - mean) / jnp.sqrt(var + 1e-5)


@pytest.mark.parametrize("asymmetric", ["both", "hor", "ver"])
@pytest.mark.parametrize("border", [False, True])
def test_acblock_train_forward_is_three_bn_branches(asymmetric, border, rng):
  block = ACBlock(
    4, 6, stride=2, asymmetric=asymmetric, border=border, precision=EXACT, rngs=nnx.Rngs(1)
  )
  x = _x(rng)
  # independent: each branch as a kxk conv with the small kernel zero-embedded
  k, line = 3, 2 if border else 1
  branches = [block.square[...]]
  if block.hor is not None:
    branches.append(jnp.zeros((k, k, 4, 6)).at[line].set(block.hor[...][0]))
  if block.ver is not None:
    branches.append(jnp.zeros((k, k, 4, 6)).at[:, line].set(block.ver[...][:, 0]))
  expected = sum(_bn_train(exact_conv(x, b, stride=2, padding=1)) for b in branches)
  chex.assert_trees_all_close(block(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("asymmetric", ["both", "ver"])
@pytest.mark.parametrize("border", [False, True])
def test_acblock_eval_is_the_branches_on_running_statistics(asymmetric, border, rng, randomize):
  block = ACBlock(
    4, 6, stride=2, asymmetric=asymmetric, border=border, precision=EXACT, rngs=nnx.Rngs(1)
  )
  randomize(block, rng)
  block.eval()
  x = _x(rng)
  k, line = 3, 2 if border else 1
  branches = [(block.square[...], block.square_bn)]
  if block.hor is not None:
    branches.append((jnp.zeros((k, k, 4, 6)).at[line].set(block.hor[...][0]), block.hor_bn))
  if block.ver is not None:
    branches.append((jnp.zeros((k, k, 4, 6)).at[:, line].set(block.ver[...][:, 0]), block.ver_bn))
  expected = sum(
    (exact_conv(x, b, stride=2, padding=1) - bn.mean[...])
    / jnp.sqrt(bn.var[...] + 1e-5)
    * bn.scale[...]
    + bn.bias[...]
    for b, bn in branches
  )
  chex.assert_trees_all_close(block(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "options",
  [dict(), dict(border=True), dict(bn="sum"), dict(asymmetric="hor"), dict(asym_scale_init=1 / 3)],
)
@pytest.mark.parametrize("k", [3, 5])
def test_acblock_deploy_equals_eval(options, k, rng, randomize):
  block = ACBlock(4, 6, k, stride=2, precision=EXACT, rngs=nnx.Rngs(2), **options)
  randomize(block, rng)
  block.eval()
  x = _x(rng, (2, 10, 9, 4))
  plain = block.deploy()
  assert isinstance(plain, PlainConv) and plain.kernel[...].shape == (k, k, 4, 6)
  chex.assert_trees_all_close(plain(x), block(x), rtol=1e-5, atol=1e-5)


def test_acblock_gamma_init():
  block = ACBlock(2, 3, asym_scale_init=1 / 3, precision=EXACT, rngs=nnx.Rngs(0))
  chex.assert_trees_all_close(block.hor_bn.scale[...], jnp.full(3, 1 / 3))
  chex.assert_trees_all_close(block.square_bn.scale[...], jnp.ones(3))


@pytest.mark.parametrize("impl", ["stacked", "cropped", "auto"])
@pytest.mark.parametrize("bias", ["separate", "shared"])
def test_versatile_spatial_matches_cropped_convs(bias, impl, rng):
  layer = VersatileConv(4, 9, 5, bias=bias, impl=impl, precision=EXACT, rngs=nnx.Rngs(0))
  assert (layer.filters, layer.out_features) == (3, 9)
  b = jnp.asarray(rng.normal(size=layer.bias[...].shape), jnp.float32)
  layer.bias[...] = b
  x = _x(rng)
  f = layer.f[...]
  parts = [exact_conv(x, f[i : 5 - i, i : 5 - i], padding=2 - i) for i in range(3)]
  bias_full = jnp.tile(b, 3) if bias == "shared" else b
  chex.assert_trees_all_close(
    layer(x), jnp.concatenate(parts, -1) + bias_full, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize(
  "kw",
  [
    dict(kernel_size=5),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=4, padding=0),
    dict(kernel_size=5, padding="SAME", stride=2),
    dict(kernel_size=5, channel_delta=2, channel_stride=1, bias="separate"),
  ],
)
def test_versatile_cropped_equals_stacked_value_and_gradient(kw, rng, x64):
  import jax

  stacked = VersatileConv(6, 12, precision=EXACT, rngs=nnx.Rngs(0), **kw)
  cropped = VersatileConv(6, 12, impl="cropped", precision=EXACT, rngs=nnx.Rngs(0), **kw)
  f = jnp.asarray(rng.normal(size=stacked.f[...].shape))
  b = jnp.asarray(rng.normal(size=stacked.bias[...].shape))
  x = jnp.asarray(rng.normal(size=(2, 11, 10, 6)))
  g = jnp.asarray(rng.normal(size=stacked(x.astype(jnp.float32)).shape))

  def loss(layer, f, b, x):
    graphdef, state = nnx.split(layer)
    fresh = nnx.merge(graphdef, jax.tree.map(lambda v: v, state))  # Variables of this trace
    fresh.f.set_value(f)  # float64 parameters
    fresh.bias.set_value(b)
    return jnp.sum(fresh(x) * g)

  # one program each (every gradient at once), not their many float64 ops one by one
  want = jax.jit(jax.grad(lambda *a: loss(stacked, *a), argnums=(0, 1, 2)))(f, b, x)
  got = jax.jit(jax.grad(lambda *a: loss(cropped, *a), argnums=(0, 1, 2)))(f, b, x)
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-10)
  chex.assert_trees_all_close(loss(cropped, f, b, x), loss(stacked, f, b, x), rtol=1e-10)


def test_versatile_impl_is_checked():
  with pytest.raises(ValueError, match="impl must be 'auto', 'stacked' or 'cropped'"):
    VersatileConv(4, 8, 3, impl="fft", rngs=nnx.Rngs(0))


def _convs(layer, x) -> int:
  """The layer's convs: lax convs, and the conv.conv calls that chose their form per platform
  (a `cond` over the platforms: the matmul form on CPU, the conv elsewhere)."""
  return sum(
    e.primitive.name == "conv_general_dilated"
    or (e.primitive.name == "cond" and bool(e.params.get("branches_platforms")))
    for e in jax.make_jaxpr(layer)(x).eqns
  )


def test_versatile_auto_crops_on_cpu_where_the_work_pays(rng):
  from kshapes_jax.nn.versatile import CROPPED_MIN_WORK, resolve_impl

  # the rule: in_features x maps of one scale, on CPU only
  assert resolve_impl("auto", 16, CROPPED_MIN_WORK // 16, "cpu") == "cropped"
  assert resolve_impl("auto", 16, CROPPED_MIN_WORK // 16 - 1, "cpu") == "stacked"
  assert resolve_impl("auto", 256, 128, "gpu") == resolve_impl("auto", 256, 128, "tpu") == "stacked"
  assert resolve_impl("stacked", 256, 128, "cpu") == "stacked"
  assert resolve_impl("cropped", 1, 1, "gpu") == "cropped"
  # and the layer follows it on this backend: s convs when cropped, one when stacked
  big = VersatileConv(32, 32, 3, rngs=nnx.Rngs(0))  # 32 inputs x 16 maps a scale = 512
  small = VersatileConv(1, 21, 5, rngs=nnx.Rngs(0))  # LeNet conv1: 1 x 7
  channel = VersatileConv(
    32, 32, 3, mode="none", channel_delta=16, channel_stride=16, rngs=nnx.Rngs(0)
  )
  on_cpu = jax.default_backend() == "cpu"
  assert _convs(big, jnp.zeros((1, 8, 8, 32))) == (2 if on_cpu else 1)
  assert _convs(small, jnp.zeros((1, 12, 12, 1))) == 1
  assert _convs(channel, jnp.zeros((1, 8, 8, 32))) == 1  # no scales to crop


def test_versatile_sum_and_channel_modes(rng):
  x = _x(rng)
  layer = VersatileConv(4, 6, 3, mode="sum", use_bias=False, precision=EXACT, rngs=nnx.Rngs(0))
  f = layer.f[...]
  chex.assert_trees_all_close(
    layer(x),
    exact_conv(x, f, padding=1) + exact_conv(x, f[1:2, 1:2], padding=0),
    rtol=1e-5,
    atol=1e-5,
  )
  layer = VersatileConv(
    4,
    8,
    3,
    channel_delta=2,
    channel_stride=1,
    mode="none",
    use_bias=False,
    precision=EXACT,
    rngs=nnx.Rngs(0),
  )
  assert (layer.windows, layer.filters, layer.f[...].shape[2]) == (3, 3, 2)
  f = layer.f[...]
  loop = [exact_conv(x[..., i : i + 2], f, padding=1) for i in range(3)]
  chex.assert_trees_all_close(layer(x), jnp.concatenate(loop, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["splat", "gather"])
@pytest.mark.parametrize("groups", [1, 2])
def test_active_conv_matches_reference(impl, groups, rng):
  layer = ActiveConv(
    4, 6, stride=2, impl=impl, position_groups=groups, radius=2, precision=EXACT, rngs=nnx.Rngs(0)
  )
  assert isinstance(layer.positions, Position)
  shape = layer.positions[...].shape
  layer.positions[...] = jnp.asarray(rng.uniform(-1.8, 1.8, shape), jnp.float32)
  x = _x(rng)
  p = np.asarray(layer.all_positions())
  w = np.asarray(layer.weights[...])
  y = layer(x)
  p = p.reshape(groups, 9, 2)
  for g in range(groups):
    cols = slice(g * 6 // groups, (g + 1) * 6 // groups)
    expected = reference.active_conv(
      np.asarray(x), w[..., cols], p[g], stride=2, padding=2, radius=2
    )
    np.testing.assert_allclose(y[..., cols], expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(p[:, 0], 0.0)  # synapse 0 is the fixed origin


def test_active_conv_lattice_init_is_a_3x3_conv_and_deploys_to_one(rng):
  layer = ActiveConv(4, 6, radius=3, precision=EXACT, rngs=nnx.Rngs(0))
  x = _x(rng)
  plain = layer.deploy()
  assert plain.kernel[...].shape == (3, 3, 4, 6)  # the smallest radius that holds the lattice
  chex.assert_trees_all_close(plain(x), layer(x), rtol=1e-5, atol=1e-5)
  circle = ActiveConv(4, 6, init="circle", synapses=7, radius=1, precision=EXACT, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(
    np.linalg.norm(np.asarray(circle.all_positions())[1:], axis=-1), 1.0, rtol=1e-6
  )


def test_active_conv_position_gradient_is_normalized(rng):
  layer = ActiveConv(3, 4, precision=EXACT, rngs=nnx.Rngs(0))
  x = _x(rng, (2, 6, 6, 3))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
  norms = jnp.linalg.norm(grads["positions"][...], axis=-1)
  chex.assert_trees_all_close(norms, jnp.ones(8), rtol=1e-5)


@pytest.mark.parametrize("kind", ["plain", "rotate4", "rotate2", "versatile", "active"])
def test_conv_bn_deploy_folds_the_bn(kind, rng, randomize):
  unit = conv_bn(kind, 4, 6, 3, stride=2, precision=EXACT, rngs=nnx.Rngs(0))
  assert isinstance(unit, ConvBN)
  randomize(unit, rng)
  unit.eval()
  x = _x(rng)
  chex.assert_trees_all_close(unit.deploy()(x), unit(x), rtol=1e-5, atol=1e-5)


def test_make_conv_rejects_unknown_kinds_and_bad_options():
  with pytest.raises(ValueError, match="unknown conv kind 'deform'"):
    make_conv("deform", 2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="3x3"):
    make_conv("rotate4", 2, 2, 5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="odd kernel"):
    make_conv("acb", 2, 2, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="c\\^ < c"):
    make_conv("versatile", 2, 2, 3, channel_delta=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="radius 1 does not hold"):
    make_conv("active", 2, 2, 3, synapses=25, radius=1, rngs=nnx.Rngs(0))


def test_conv_bn_deploy_folds_a_conv_bias_too(rng, randomize):
  conv_layer = make_conv("rotate4", 4, 6, 3, use_bias=True, precision=EXACT, rngs=nnx.Rngs(0))
  conv_layer.bias[...] = jnp.asarray(rng.normal(size=6), jnp.float32)
  unit = ConvBN(conv_layer, nnx.Rngs(1))
  randomize(unit, rng)
  unit.eval()
  x = _x(rng)
  chex.assert_trees_all_close(unit.deploy()(x), unit(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["splat", "gather"])
def test_an_acu_whose_positions_left_its_radius_is_one_network_jitted_or_not(impl):
  """Eager calls raised "radius too small" where the jitted step clipped, so a net trained under
  nnx.jit failed outside it, and its gather path differed from its splat path (issue 39)."""
  layer = ActiveConv(3, 4, 3, radius=1, impl=impl, precision=EXACT, rngs=nnx.Rngs(0))
  moved = np.asarray(layer.positions[...]) * 1.7  # as training moves them: beyond R = 1
  layer.positions[...] = jnp.asarray(moved)
  x = jax.random.normal(jax.random.key(1), (2, 9, 9, 3))
  with jax.default_matmul_precision(EXACT):
    eager = layer(x)
    jitted = nnx.jit(lambda m, x: m(x))(layer, x)
    other_impl = "gather" if impl == "splat" else "splat"
    other = ActiveConv(3, 4, 3, radius=1, impl=other_impl, precision=EXACT, rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(layer))
    deployed = K.deploy(layer)(x)
    clipped = np.clip(np.asarray(layer.all_positions()), -1, 1)
    reference = active_conv_gather(
      x, layer.weights[...], jnp.asarray(clipped), padding=layer.conv_padding, radius=1
    )
  for y in (jitted, other(x), deployed):
    np.testing.assert_allclose(y, eager, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eager, reference, rtol=1e-5, atol=1e-5)
