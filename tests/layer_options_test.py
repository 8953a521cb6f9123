"""groups, dilation and param_dtype on the shaped layers, against a NumPy conv written out here
(float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import runs
from flax import nnx

import kshapes_jax as K
from kshapes_jax import nn as knn


def np_conv(x, kernel, pads, *, stride=1, groups=1, dilation=1):
  """NHWC x HWIO convolution in NumPy: feature groups, taps `dilation` apart, ((t, b), (l, r)) pads
  (< 0 crops)."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  (top, bottom), (left, right) = pads
  x = np.pad(x, ((0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)))
  x = x[:, -min(top, 0) : x.shape[1] + min(bottom, 0), -min(left, 0) : x.shape[2] + min(right, 0)]
  kh, kw, cin, o = kernel.shape
  span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
  ho, wo = (x.shape[1] - span_h) // stride + 1, (x.shape[2] - span_w) // stride + 1
  og = o // groups
  out = np.zeros((x.shape[0], ho, wo, o))
  for g in range(groups):
    xg = x[..., g * cin : (g + 1) * cin]
    for i in range(kh):
      for j in range(kw):
        patch = xg[
          :,
          i * dilation : i * dilation + stride * (ho - 1) + 1 : stride,
          j * dilation : j * dilation + stride * (wo - 1) + 1 : stride,
        ]
        out[..., g * og : (g + 1) * og] += patch @ kernel[i, j, :, g * og : (g + 1) * og]
  return out


def np_bn_train(z, bn):
  mean, var = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
  scale, bias = (np.asarray(v.get_value(), np.float64) for v in (bn.scale, bn.bias))
  return (z - mean) / np.sqrt(var + bn.epsilon) * scale + bias


def _x(shape=(2, 11, 11, 4), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


def _same(pad):
  return ((pad, pad), (pad, pad))


# every kind with the options its math allows (the others are refused: test_refusals)
_OPTIONS = [
  (kind, g, d, s)
  for kind in ("plain", "rotate4", "rotate2", "active", "versatile")
  for g, d, s in ((2, 1, 1), (1, 2, 1), (2, 2, 2), (4, 1, 2))
  if not (kind == "active" and d > 1)
]


@pytest.mark.parametrize("kind,groups,dilation,stride", _OPTIONS)
def test_grouped_and_dilated_layers_are_their_kernel_convolved(x64, kind, groups, dilation, stride):
  x = _x()
  layer = knn.make_conv(
    kind,
    4,
    8,
    3,
    stride=stride,
    groups=groups,
    dilation=dilation,
    use_bias=True,
    precision="highest",
    param_dtype="float64",
    rngs=nnx.Rngs(1),
  )
  if getattr(layer, "bias", None) is not None:
    layer.bias.set_value(jnp.arange(layer.bias.get_value().size, dtype=jnp.float64) / 10)
  kernel, bias = layer.effective_kernel()
  pad = layer.conv_padding
  expected = np_conv(x, kernel, _same(pad), stride=stride, groups=groups, dilation=dilation)
  expected = expected + (0 if bias is None else np.asarray(bias))
  np.testing.assert_allclose(layer(x), expected, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(K.deploy(layer)(x), expected, rtol=1e-10, atol=1e-10)
  if kind == "active":  # the literal gather, group by group
    gather = knn.ActiveConv(
      4,
      8,
      3,
      stride=stride,
      groups=groups,
      use_bias=True,
      impl="gather",
      precision="highest",
      param_dtype="float64",
      rngs=nnx.Rngs(1),
    )
    gather.bias.set_value(layer.bias.get_value())
    np.testing.assert_allclose(gather(x), expected, rtol=1e-10, atol=1e-10)
  # the s cropped convs, their paddings shrunk by `dilation` per scale
  if kind == "versatile" and groups == 1:
    cropped = knn.VersatileConv(
      4,
      8,
      3,
      stride=stride,
      dilation=dilation,
      impl="cropped",
      precision="highest",
      param_dtype="float64",
      rngs=nnx.Rngs(1),
    )
    cropped.bias.set_value(layer.bias.get_value())
    np.testing.assert_allclose(cropped(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
  "kernel_size,groups,channel_delta,mode,bias",
  [
    (3, 2, 0, "spatial", "shared"),
    (5, 2, 1, "spatial", "shared"),
    (3, 3, 1, "spatial", "separate"),
    (1, 2, 1, "spatial", "shared"),  # versatile v2's 1x1 layers: channel windows only
    (3, 2, 2, "none", "shared"),
    (5, 3, 0, "sum", "shared"),
  ],
)
def test_grouped_versatile_is_its_groups_as_ungrouped_layers_side_by_side(
  x64, kernel_size, groups, channel_delta, mode, bias
):
  cin, requested = 12, 12
  options = dict(mode=mode, bias=bias, channel_delta=channel_delta, stride=2)
  options.update(precision="highest", param_dtype="float64")
  layer = knn.VersatileConv(cin, requested, kernel_size, groups=groups, rngs=nnx.Rngs(3), **options)
  layer.bias.set_value(jnp.linspace(-1, 1, layer.bias.get_value().size))
  x = _x((2, 9, 9, cin), seed=groups)
  parts = []
  for g in range(groups):
    part = knn.VersatileConv(
      cin // groups, requested // groups, kernel_size, rngs=nnx.Rngs(0), impl="stacked", **options
    )
    assert part.filters * groups == layer.filters
    part.f.set_value(np.split(np.asarray(layer.f.get_value()), groups, axis=-1)[g])
    part.bias.set_value(np.split(np.asarray(layer.bias.get_value()), groups)[g])
    parts.append(part)
  side_by_side = lambda x: side_by_side_of(parts, x)
  np.testing.assert_allclose(layer(x), side_by_side(x), rtol=1e-10, atol=1e-10)
  assert layer.out_features == sum(p.out_features for p in parts)
  # the gradient of the primary filters, group by group
  loss = lambda y: jnp.sum(jnp.sin(y))
  # jitted: one program each, not their float64 ops one by one
  grad = nnx.jit(nnx.grad(lambda m: loss(m(x))))(layer).f.get_value()
  grads = nnx.jit(nnx.grad(lambda ps: loss(side_by_side_of(ps, x))))(nnx.List(parts))
  np.testing.assert_allclose(
    grad,
    np.concatenate([grads[g]["f"].get_value() for g in range(groups)], axis=-1),
    rtol=1e-10,
    atol=1e-10,
  )
  layer.eval()
  np.testing.assert_allclose(K.deploy(layer)(x), side_by_side(x), rtol=1e-10, atol=1e-10)
  # Proposition 1 per group: the layer's multiplications are its groups'
  out_shape = layer(x).shape
  assert layer.multiplications(out_shape) == sum(p.multiplications(out_shape) for p in parts)
  assert layer.weight_count() == sum(p.weight_count() for p in parts)


def side_by_side_of(parts, x):
  groups = len(parts)
  return jnp.concatenate([p(xg) for p, xg in zip(parts, jnp.split(x, groups, axis=-1))], axis=-1)


@pytest.mark.parametrize(
  "groups,dilation,stride", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 2), (4, 3, 1)]
)
@pytest.mark.parametrize("impl", ["branches", "stacked"])
def test_acb_with_groups_and_dilation_trains_and_fuses_as_its_branches(
  x64, groups, dilation, stride, impl
):
  x = _x((3, 12, 12, 4), seed=groups + dilation)
  layer = knn.ACBlock(
    4,
    8,
    3,
    stride=stride,
    groups=groups,
    dilation=dilation,
    impl=impl,
    precision="highest",
    param_dtype="float64",
    rngs=nnx.Rngs(2),
  )
  for i, bn in enumerate((layer.square_bn, layer.hor_bn, layer.ver_bn)):
    bn.scale.set_value(jnp.linspace(0.5, 1.5, 8) + i)
    bn.bias.set_value(jnp.linspace(-1, 1, 8) * (i + 1))
  # each branch as its kernel zero-embedded in the 3x3 one: the dilated lattice lines them up
  zero = np.zeros((3, 3, 4 // groups, 8))
  hor, ver = zero.copy(), zero.copy()
  hor[1:2] = np.asarray(layer.hor.get_value())
  ver[:, 1:2] = np.asarray(layer.ver.get_value())
  pad = _same(dilation)
  branches = [
    np_conv(x, k, pad, stride=stride, groups=groups, dilation=dilation)
    for k in (layer.square.get_value(), hor, ver)
  ]
  expected = sum(
    np_bn_train(z, bn) for z, bn in zip(branches, (layer.square_bn, layer.hor_bn, layer.ver_bn))
  )
  np.testing.assert_allclose(layer(x), expected, rtol=1e-9, atol=1e-9)
  for z, bn in zip(branches, (layer.square_bn, layer.hor_bn, layer.ver_bn)):  # running statistics
    # float32 statistics
    np.testing.assert_allclose(bn.mean.get_value(), 0.1 * z.mean(axis=(0, 1, 2)), rtol=1e-6)
  layer.eval()
  kernel, bias = layer.effective_kernel()
  fused = np_conv(x, kernel, pad, stride=stride, groups=groups, dilation=dilation) + np.asarray(
    bias
  )
  np.testing.assert_allclose(layer(x), fused, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(K.deploy(layer)(x), fused, rtol=1e-9, atol=1e-9)
  f64 = lambda v: np.asarray(v.get_value(), np.float64)
  eval_branches = sum(
    (z - f64(bn.mean)) / np.sqrt(f64(bn.var) + bn.epsilon) * f64(bn.scale) + f64(bn.bias)
    for z, bn in zip(branches, (layer.square_bn, layer.hor_bn, layer.ver_bn))
  )
  # the fusion reads float32 statistics
  np.testing.assert_allclose(fused, eval_branches, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", runs.kinds())
def test_param_dtype_stores_the_weights_and_bn_in_it(kind):
  layer = knn.conv_bn(kind, 4, 6, 3, param_dtype="bfloat16", dtype="bfloat16", rngs=nnx.Rngs(0))
  params = nnx.state(layer, nnx.Param)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    geometry = "angles" in name or "positions" in name
    assert leaf.dtype == (jnp.float32 if geometry else jnp.bfloat16), (name, leaf.dtype)
  x = jnp.ones((2, 8, 8, 4), jnp.bfloat16)
  assert layer(x).dtype == jnp.bfloat16

  def loss(model):
    return jnp.mean(model(x).astype(jnp.float32) ** 2)

  grads = nnx.jit(nnx.grad(loss))(layer)
  assert all(jnp.all(jnp.isfinite(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))
  layer.eval()
  assert K.deploy(layer)(x).dtype == jnp.bfloat16
  # the float32 default keeps the same initial values: param_dtype only rounds them
  ref = knn.conv_bn(kind, 4, 6, 3, rngs=nnx.Rngs(0))
  for a, b in zip(
    jax.tree.leaves(nnx.state(layer, nnx.Param)), jax.tree.leaves(nnx.state(ref, nnx.Param))
  ):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=1e-2, atol=1e-2)


def test_refusals():
  with pytest.raises(ValueError, match="impl='cropped' takes groups=1 only"):
    knn.VersatileConv(4, 8, 3, groups=2, impl="cropped", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"must be in \[0, 2\) \(c = 4 / 2 groups\)"):
    knn.VersatileConv(4, 8, 3, groups=2, channel_delta=2, rngs=nnx.Rngs(0))
  with pytest.raises(
    ValueError, match="ActiveConv learns where its synapses are, so it takes no dilation"
  ):
    knn.ActiveConv(4, 8, 3, dilation=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="groups=3 must divide in_features=4"):
    knn.ACBlock(4, 6, 3, groups=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="RotateConv dilation"):
    knn.RotateConv(4, 6, 3, dilation=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="param_dtype must be a floating dtype"):
    knn.PlainConv(4, 6, 3, param_dtype="int8", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="position_groups=2 must be a multiple of groups=4"):
    knn.ActiveConv(4, 8, 3, groups=4, position_groups=2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("impl", ["branches", "stacked"])
@pytest.mark.parametrize(
  "kernel_size,asym_size,border",
  # AlexNet's 11x11 (15-20 s, its float64 ops compiled one by one) is the 5x5 case's geometry
  [(5, 3, False), pytest.param(11, 3, False, marks=pytest.mark.slow), (5, 1, True)],
)
def test_acb_with_short_asymmetric_kernels_is_them_centred_on_the_skeleton(
  x64, impl, kernel_size, asym_size, border
):
  """ACNet's AlexNet: 1x3 and 3x1 branches in its 11x11 and 5x5 layers (section 4.2)."""
  k, m = kernel_size, asym_size
  x = _x((2, 13, 13, 4), seed=k)
  layer = knn.ACBlock(
    4,
    6,
    k,
    stride=2,
    asym_size=m,
    border=border,
    impl=impl,
    precision="highest",
    param_dtype="float64",
    rngs=nnx.Rngs(4),
  )
  assert layer.hor.get_value().shape == (1, m, 4, 6) and layer.ver.get_value().shape == (m, 1, 4, 6)
  line, start = (k - 1 if border else k // 2), (k - m) // 2
  hor, ver = np.zeros((k, k, 4, 6)), np.zeros((k, k, 4, 6))
  hor[line, start : start + m] = np.asarray(layer.hor.get_value())[0]
  ver[start : start + m, line] = np.asarray(layer.ver.get_value())[:, 0]
  pad = _same(k // 2)
  branches = [np_conv(x, kk, pad, stride=2) for kk in (layer.square.get_value(), hor, ver)]
  bns = (layer.square_bn, layer.hor_bn, layer.ver_bn)
  np.testing.assert_allclose(
    layer(x), sum(np_bn_train(z, bn) for z, bn in zip(branches, bns)), rtol=1e-9, atol=1e-9
  )
  layer.eval()
  kernel, bias = layer.effective_kernel()
  fused = np_conv(x, kernel, pad, stride=2) + np.asarray(bias)
  np.testing.assert_allclose(K.deploy(layer)(x), fused, rtol=1e-9, atol=1e-9)
  f64 = lambda v: np.asarray(v.get_value(), np.float64)
  eval_branches = sum(
    (z - f64(bn.mean)) / np.sqrt(f64(bn.var) + bn.epsilon) * f64(bn.scale) + f64(bn.bias)
    for z, bn in zip(branches, bns)
  )
  np.testing.assert_allclose(fused, eval_branches, rtol=1e-6, atol=1e-6)
  out = layer(x).shape
  assert layer.multiplications(out) == out[1] * out[2] * (k * k + 2 * m) * 4 * 6


def test_acb_asym_size_must_fit_the_kernel():
  for bad in (2, 7, 0):
    with pytest.raises(ValueError, match=r"asym_size must be an odd int in \[1, 5\]"):
      knn.ACBlock(4, 6, 5, asym_size=bad, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"hor must be \(1, m, I, O\) with m odd <= k = 3"):
    K.kernels.acb_kernel(np.zeros((3, 3, 2, 2)), np.zeros((1, 5, 2, 2)))
