"""kshapes_jax.interop: the official ACNet ACBlock and Versatile-Filters VConv2d state dicts, loaded
into our layers and written back. The official forwards are written out in NumPy here (NCHW, as the
PyTorch code runs them), so CI checks without torch; where torch is installed, the modules
themselves are built too."""

import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax import interop

EPS = 1e-5


def np_conv(x, w, stride, pad_h, pad_w):
  """PyTorch's F.conv2d (no bias) in NumPy: x (N, C, H, W), w (O, C, kh, kw), symmetric pads."""
  x = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
  _, _, kh, kw = w.shape
  ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for i in range(kh):
    for j in range(kw):
      patch = x[
        :, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
      ]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out


def np_bn(y, sd, name):
  shape = (1, -1, 1, 1)
  return (y - sd[f"{name}.running_mean"].reshape(shape)) / np.sqrt(
    sd[f"{name}.running_var"].reshape(shape) + EPS
  ) * sd[f"{name}.weight"].reshape(shape) + sd[f"{name}.bias"].reshape(shape)


def official_acblock(x, sd, k, stride, padding):
  """acnet/acb.py ACBlock.forward in eval mode, for padding >= k // 2 (no cropping)."""
  square = np_bn(np_conv(x, sd["square_conv.weight"], stride, padding, padding), sd, "square_bn")
  ver = np_bn(np_conv(x, sd["ver_conv.weight"], stride, padding, padding - k // 2), sd, "ver_bn")
  hor = np_bn(np_conv(x, sd["hor_conv.weight"], stride, padding - k // 2, padding), sd, "hor_bn")
  return square + ver + hor


def official_vconv2d(x, sd, k, stride, padding, out_channels):
  """vcnn.py VConv2d.forward: scales s, channel windows start in {0, 1} (c - c^ = 1, g = 1)."""
  w, b = sd["weight"], sd["bias"]
  s_num, ch_len, h = int(np.ceil(k / 2)), x.shape[1] - 1, x.shape[2]
  outs = []
  for s in range(s_num):
    for start in (0, 1):
      w1 = w[:, :ch_len, s : k - s, s : k - s]
      if padding - s < 0:
        x1, p = x[:, start : start + ch_len, s : h - s, s : h - s], 0
      else:
        x1, p = x[:, start : start + ch_len], padding - s
      lo, hi = (int(out_channels * (s * 2 + start + a) / s_num / 2) for a in (0, 1))
      outs.append(np_conv(x1, w1, stride, p, p) + b[lo:hi].reshape(1, -1, 1, 1))
  return np.concatenate(outs, axis=1)


def random_acb_state(rng, i, o, k):
  sd = {}
  for name, shape in (("square", (o, i, k, k)), ("hor", (o, i, 1, k)), ("ver", (o, i, k, 1))):
    sd[f"{name}_conv.weight"] = rng.normal(size=shape).astype(np.float32)
    sd[f"{name}_bn.weight"] = rng.uniform(0.5, 1.5, o).astype(np.float32)
    sd[f"{name}_bn.bias"] = rng.normal(size=o).astype(np.float32)
    sd[f"{name}_bn.running_mean"] = rng.normal(size=o).astype(np.float32)
    sd[f"{name}_bn.running_var"] = rng.uniform(0.5, 2.0, o).astype(np.float32)
    sd[f"{name}_bn.num_batches_tracked"] = np.asarray(1000, np.int64)
  return sd


def _ours(layer, x_nchw):
  y = layer(np.transpose(x_nchw, (0, 2, 3, 1)).astype(np.float32))
  return np.transpose(np.asarray(y), (0, 3, 1, 2))


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (3, 1, 2)])
def test_acblock_loads_the_official_state_and_computes_its_output(k, stride, padding):
  rng = np.random.default_rng(k * 10 + stride + padding)
  i, o = 5, 7
  sd = random_acb_state(rng, i, o, k)
  x = rng.normal(size=(2, i, 11, 11)).astype(np.float32)
  template = K.nn.ACBlock(
    i, o, k, stride=stride, padding=padding, precision="highest", rngs=nnx.Rngs(0)
  )
  before = np.asarray(template.square.get_value()).copy()
  layer = interop.load_acblock(template, sd)
  # the template is unchanged
  np.testing.assert_array_equal(np.asarray(template.square.get_value()), before)
  layer.eval()
  expected = official_acblock(x.astype(np.float64), sd, k, stride, padding)
  np.testing.assert_allclose(_ours(layer, x), expected, rtol=1e-4, atol=1e-4)
  # fused, as deploy ships
  np.testing.assert_allclose(_ours(K.deploy(layer), x), expected, rtol=1e-4, atol=1e-4)
  back = interop.acblock_state_dict(layer)
  assert set(back) == set(sd)
  for key, value in sd.items():
    if not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_acblock_prefix_and_refusals():
  rng = np.random.default_rng(0)
  sd = {f"layer1.0.{key}": v for key, v in random_acb_state(rng, 3, 4, 3).items()}
  layer = K.nn.ACBlock(3, 4, 3, padding=1, rngs=nnx.Rngs(0))
  loaded = interop.load_acblock(layer, sd, prefix="layer1.0.")
  assert set(interop.acblock_state_dict(loaded, prefix="layer1.0.")) == set(sd)
  with pytest.raises(
    ValueError,
    match=r"'layer1.0.square_conv.weight' has shape \(4, 3, 3, 3\), expected \(5, 3, 3, 3\)",
  ):
    interop.load_acblock(K.nn.ACBlock(3, 5, 3, padding=1, rngs=nnx.Rngs(0)), sd, prefix="layer1.0.")
  with pytest.raises(ValueError, match="has no 'square_conv.weight'"):
    interop.load_acblock(layer, sd)
  with pytest.raises(ValueError, match="expected bn='branch', border=False"):
    interop.load_acblock(
      K.nn.ACBlock(3, 4, 3, padding=1, bn="sum", rngs=nnx.Rngs(0)), sd, prefix="layer1.0."
    )
  with pytest.raises(ValueError, match="has a hor branch; the layer has none"):
    interop.load_acblock(
      K.nn.ACBlock(3, 4, 3, padding=1, asymmetric="ver", rngs=nnx.Rngs(0)), sd, prefix="layer1.0."
    )


@pytest.mark.parametrize(
  "k,stride,padding,out", [(3, 1, 1, 12), (3, 2, 1, 8), (5, 1, 2, 18), (5, 1, 0, 12), (7, 1, 0, 8)]
)
def test_vconv2d_loads_the_official_state_and_computes_its_output(k, stride, padding, out):
  rng = np.random.default_rng(k + stride + padding + out)
  c, s_num = 5, (k + 1) // 2
  out = out // (2 * s_num) * 2 * s_num
  sd = {
    "weight": rng.normal(size=(out // (2 * s_num), c, k, k)).astype(np.float32),
    "bias": rng.normal(size=out).astype(np.float32),
  }
  x = rng.normal(size=(2, c, 9, 9)).astype(np.float32)
  # padding 0 (the official fc6, k = 7): the official code crops the input by s for scale s, as a
  # valid conv
  layer = K.nn.VersatileConv(
    c,
    out,
    k,
    stride=stride,
    padding=padding,
    bias="separate",
    channel_delta=1,
    precision="highest",
    rngs=nnx.Rngs(0),
  )
  layer = interop.load_vconv2d(layer, sd)
  expected = official_vconv2d(x.astype(np.float64), sd, k, stride, padding, out)
  np.testing.assert_allclose(_ours(layer, x), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_ours(K.deploy(layer), x), expected, rtol=1e-4, atol=1e-4)
  back = interop.vconv2d_state_dict(layer)
  np.testing.assert_array_equal(back["weight"][:, : c - 1], sd["weight"][:, : c - 1])
  np.testing.assert_array_equal(back["weight"][:, c - 1], 0.0)  # never read by VConv2d
  np.testing.assert_array_equal(back["bias"], sd["bias"])
  np.testing.assert_allclose(
    official_vconv2d(x.astype(np.float64), back, k, stride, padding, out), expected, rtol=1e-10
  )


def test_vconv2d_refuses_a_layer_unlike_it():
  sd = {"weight": np.zeros((2, 5, 3, 3), np.float32), "bias": np.zeros(8, np.float32)}
  with pytest.raises(ValueError, match="expected mode='spatial', bias='separate', channel_delta=1"):
    interop.load_vconv2d(K.nn.VersatileConv(5, 8, 3, padding=1, rngs=nnx.Rngs(0)), sd)
  layer = K.nn.VersatileConv(
    5, 12, 3, padding=1, bias="separate", channel_delta=1, rngs=nnx.Rngs(0)
  )
  with pytest.raises(
    ValueError, match=r"'weight' has shape \(2, 5, 3, 3\), expected \(3, 5, 3, 3\)"
  ):
    interop.load_vconv2d(layer, sd)


def test_the_numpy_forwards_are_the_pytorch_modules():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(3)
  i, o, k, stride, padding = 4, 6, 3, 2, 1
  sd = random_acb_state(rng, i, o, k)
  x = rng.normal(size=(2, i, 10, 10)).astype(np.float32)
  t = {key: torch.from_numpy(np.asarray(v)) for key, v in sd.items()}
  tx = torch.from_numpy(x)

  def bn(y, name):
    return F.batch_norm(
      y,
      t[f"{name}.running_mean"],
      t[f"{name}.running_var"],
      t[f"{name}.weight"],
      t[f"{name}.bias"],
      training=False,
      eps=EPS,
    )

  # acb.ACBlock: three Conv2d + BatchNorm2d branches with the paddings of its __init__
  y = (
    bn(F.conv2d(tx, t["square_conv.weight"], stride=stride, padding=padding), "square_bn")
    + bn(
      F.conv2d(tx, t["ver_conv.weight"], stride=stride, padding=(padding, padding - k // 2)),
      "ver_bn",
    )
    + bn(
      F.conv2d(tx, t["hor_conv.weight"], stride=stride, padding=(padding - k // 2, padding)),
      "hor_bn",
    )
  )
  np.testing.assert_allclose(
    official_acblock(x, sd, k, stride, padding), y.numpy(), rtol=1e-4, atol=1e-4
  )
  # torch tensors too
  layer = interop.load_acblock(
    K.nn.ACBlock(i, o, k, stride=stride, padding=padding, precision="highest", rngs=nnx.Rngs(0)),
    {key: t[key] for key in t},
  )
  layer.eval()
  np.testing.assert_allclose(_ours(layer, x), y.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("damage", ["none", "nan", "inf", "text", "bool"])
def test_every_array_of_an_official_state_dict_is_numbers_and_finite(damage):
  """The one reader of a state dict's arrays (interop._array) refuses what is not finite numbers,
  whichever array holds it: found as a BN scale of Nones that became NaN."""
  rng = np.random.default_rng(1)
  sd = random_acb_state(rng, 3, 4, 3)
  arrays = [k for k in sd if not k.endswith("num_batches_tracked")]
  for key in arrays:
    bad = dict(sd)
    shape = np.shape(sd[key])
    bad[key] = {
      "none": np.full(shape, None),
      "nan": np.where(rng.random(shape) < 0.5, np.nan, sd[key]),
      "inf": np.full(shape, np.inf, np.float32),
      "text": np.full(shape, "1.0"),
      "bool": np.ones(shape, bool),
    }[damage]
    message = "NaN or infinite" if damage in ("nan", "inf") else "expected numbers"
    with pytest.raises(ValueError, match=f"'{key}' holds .*{message}"):
      interop.load_acblock(K.nn.ACBlock(3, 4, 3, padding=1, rngs=nnx.Rngs(0)), bad)
