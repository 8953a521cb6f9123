"""DiverseBranchBlock and RepVGGBlock against their official codes: the official forwards
(DingXiaoH/DiverseBranchBlock diversebranchblock.py, DingXiaoH/RepVGG repvgg.py) written out in
NumPy, NCHW as the PyTorch code runs them, in training mode (batch statistics, running statistics
updated) and eval mode, over weights loaded with `interop.load_dbb` / `load_repvgg`; and, where
torch and a copy of the official repositories are at hand, the official modules themselves."""

import functools
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax import interop, kernels, optim
from kshapes_jax.nn.branches import scaled_sum

EPS = 1e-5
MOMENTUM = 0.1


def np_conv(x, w, stride=1, pad=0, groups=1):
  """F.conv2d in NumPy: x (N, C, H, W), w (O, C / groups, kh, kw), symmetric padding (a negative
  one crops)."""
  x = np.pad(x, ((0, 0), (0, 0), (max(pad, 0), max(pad, 0)), (max(pad, 0), max(pad, 0))))
  if pad < 0:
    x = x[:, :, -pad:pad, -pad:pad]
  out, cin, kh, kw = w.shape
  ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  y = np.zeros((x.shape[0], out, ho, wo))
  og = out // groups
  for g in range(groups):
    xs = x[:, g * cin : (g + 1) * cin]
    for i in range(kh):
      for j in range(kw):
        patch = xs[
          :, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
        ]
        y[:, g * og : (g + 1) * og] += np.einsum(
          "nchw,oc->nohw", patch, w[g * og : (g + 1) * og, :, i, j]
        )
  return y


class NpBN:
  """nn.BatchNorm2d on a state dict's arrays: batch statistics in training (updating the running
  ones, the variance unbiased as PyTorch does or biased as Flax does), running ones in eval."""

  def __init__(self, sd, name, train, unbiased):
    self.sd, self.name, self.train, self.unbiased = sd, name, train, unbiased

  def p(self, key):
    return self.sd[f"{self.name}.{key}"].astype(np.float64)

  def __call__(self, y):
    shape = (1, -1, 1, 1)
    if self.train:
      mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3))
      n = y.size / y.shape[1]
      share = var * (n / (n - 1) if self.unbiased else 1.0)
      self.sd[f"{self.name}.running_mean"] = (1 - MOMENTUM) * self.p(
        "running_mean"
      ) + MOMENTUM * mean
      self.sd[f"{self.name}.running_var"] = (1 - MOMENTUM) * self.p(
        "running_var"
      ) + MOMENTUM * share
    else:
      mean, var = self.p("running_mean"), self.p("running_var")
    return (y - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) * self.p("weight").reshape(
      shape
    ) + self.p("bias").reshape(shape)

  def pad_value(self):
    """BNAndPadLayer's pad: bias - running_mean * weight / sqrt(running_var + eps)."""
    return self.p("bias") - self.p("running_mean") * self.p("weight") / np.sqrt(
      self.p("running_var") + EPS
    )


def bn_and_pad(bn, y, pad):
  """BNAndPadLayer.forward: the BN, then `pad` pixels of its value on zeros (after the update)."""
  y = bn(y)
  v = bn.pad_value().reshape(1, -1, 1, 1)
  return np.pad(y - v, ((0, 0), (0, 0), (pad, pad), (pad, pad))) + v


def avg_pool(x, k, stride, pad):
  """nn.AvgPool2d(k, stride, pad), count_include_pad=True."""
  c = x.shape[1]
  w = np.zeros((c, 1, k, k)) + 1.0 / k**2
  return np_conv(x, w, stride, pad, c)


def official_dbb(x, sd, k, stride, groups, out, train, unbiased=True, padding=None):
  """DiverseBranchBlock.forward (dilation 1); updates sd's running statistics in training mode,
  as the module's buffers are. The official block asserts padding = k // 2; another padding p
  is ours: the 1x1 branch at padding p - k // 2, the others as the official code pads."""
  in_ch = x.shape[1]
  p = k // 2 if padding is None else padding

  def bn(name):
    return NpBN(sd, name, train, unbiased)

  w = {key: np.asarray(v, np.float64) for key, v in sd.items()}
  y = bn("dbb_origin.bn")(np_conv(x, w["dbb_origin.conv.weight"], stride, p, groups))
  if groups < out:
    y += bn("dbb_1x1.bn")(np_conv(x, w["dbb_1x1.conv.weight"], stride, p - k // 2, groups))
    z = bn_and_pad(bn("dbb_avg.bn.bn"), np_conv(x, w["dbb_avg.conv.weight"], 1, 0, groups), p)
    y += bn("dbb_avg.avgbn")(avg_pool(z, k, stride, 0))
  else:
    y += bn("dbb_avg.avgbn")(avg_pool(x, k, stride, p))
  if "dbb_1x1_kxk.idconv1.weight" in w:  # IdentityBasedConv1x1: weight + id_tensor
    first = w["dbb_1x1_kxk.idconv1.weight"].copy()
    input_dim = in_ch // groups
    for i in range(in_ch):
      first[i, i % input_dim, 0, 0] += 1
  else:
    first = w["dbb_1x1_kxk.conv1.weight"]
  z = bn_and_pad(bn("dbb_1x1_kxk.bn1.bn"), np_conv(x, first, 1, 0, groups), p)
  y += bn("dbb_1x1_kxk.bn2")(np_conv(z, w["dbb_1x1_kxk.conv2.weight"], stride, 0, groups))
  return y


def official_repvgg(x, sd, stride, groups, train, unbiased=True):
  """RepVGGBlock.forward without its ReLU (kernel 3, padding 1): dense + 1x1 + identity BN."""

  def bn(name):
    return NpBN(sd, name, train, unbiased)

  y = bn("rbr_dense.bn")(
    np_conv(x, sd["rbr_dense.conv.weight"].astype(np.float64), stride, 1, groups)
  )
  y += bn("rbr_1x1.bn")(np_conv(x, sd["rbr_1x1.conv.weight"].astype(np.float64), stride, 0, groups))
  if "rbr_identity.weight" in sd:
    y += bn("rbr_identity")(x)
  return y


def official_qarepvgg(x, sd, stride, groups, train, unbiased=True):
  """QARepVGGBlockV2.forward (cxxgtxy/QARepVGG repvgg.py) without its ReLU (kernel 3, padding
  1, no SE, drop path 0): bn(dense BN'd + a plain 1x1 + the identity)."""

  def bn(name):
    return NpBN(sd, name, train, unbiased)

  y = bn("rbr_dense.bn")(
    np_conv(x, sd["rbr_dense.conv.weight"].astype(np.float64), stride, 1, groups)
  )
  y = y + np_conv(x, sd["rbr_1x1.weight"].astype(np.float64), stride, 0, groups)
  if x.shape[1] == y.shape[1] and stride == 1:  # its nn.Identity
    y = y + x
  return bn("bn")(y)


OFFICIAL_REPVGG = {"branch": official_repvgg, "qa": official_qarepvgg}


def randomized(state, rng):
  """A state dict with every array drawn (BN variances positive), as a trained block's."""
  out = {}
  for key, value in state.items():
    if key.endswith("num_batches_tracked"):
      out[key] = np.asarray(100, np.int64)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
    elif key.endswith(".weight") and value.ndim == 1:
      out[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    else:
      out[key] = (0.5 * rng.normal(size=value.shape)).astype(np.float32)
  return out


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1)).astype(np.float32)


def nchw(y):
  return np.transpose(np.asarray(y), (0, 3, 1, 2))


# (in, out, k, stride, groups, internal): identity-based and conv1 1x1-kxk, grouped, depthwise
DBB_CASES = [
  (4, 6, 3, 1, 1, None),
  (4, 6, 3, 2, 2, None),
  (4, 4, 3, 1, 4, None),
  (4, 4, 5, 2, 4, None),
  (4, 6, 3, 1, 2, 6),
  (3, 5, 1, 1, 1, None),
]
REPVGG_CASES = [(4, 4, 1, 1), (4, 4, 2, 1), (4, 6, 1, 2), (4, 4, 1, 2)]


def _dbb(i, o, k, stride, groups, internal, **options):
  return K.nn.DiverseBranchBlock(
    i,
    o,
    k,
    stride=stride,
    groups=groups,
    internal_channels=internal,
    precision="highest",
    rngs=nnx.Rngs(0),
    **options,
  )


@pytest.mark.parametrize("i,o,k,stride,groups,internal", DBB_CASES)
def test_dbb_equals_the_official_block_trained_and_fused(i, o, k, stride, groups, internal):
  rng = np.random.default_rng(i * 7 + o + k + stride + groups)
  template = _dbb(i, o, k, stride, groups, internal)
  sd = randomized(interop.dbb_state_dict(template), rng)
  layer = interop.load_dbb(template, sd)
  x = rng.normal(size=(3, i, 9, 9))
  # training mode: batch statistics, and the pads read the running ones just updated
  ref_sd = dict(sd)
  expected = official_dbb(x, ref_sd, k, stride, groups, o, train=True, unbiased=False)
  np.testing.assert_allclose(nchw(layer(nhwc(x))), expected, rtol=2e-4, atol=2e-4)
  back = interop.dbb_state_dict(layer)
  for key, value in ref_sd.items():
    if "running" in key:
      np.testing.assert_allclose(back[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  # eval mode: the branches, the fused kernel and the deployed conv
  layer.eval()
  expected = official_dbb(x, dict(back), k, stride, groups, o, train=False)
  for name, y in (
    ("branches", layer.branched(nhwc(x))),
    ("fused", layer(nhwc(x))),
    ("deployed", K.deploy(layer)(nhwc(x))),
  ):
    np.testing.assert_allclose(nchw(y), expected, rtol=2e-4, atol=2e-4, err_msg=name)
  # the state dict goes back unchanged
  again = interop.dbb_state_dict(interop.load_dbb(template, sd))
  assert set(again) == set(sd)
  for key in sd:
    if not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(again[key], sd[key], err_msg=key)


@pytest.mark.parametrize("bn", ["branch", "qa"])
@pytest.mark.parametrize("i,o,stride,groups", REPVGG_CASES)
def test_repvgg_equals_the_official_block_trained_and_fused(i, o, stride, groups, bn):
  """RepVGGBlock (bn="branch") and QARepVGGBlockV2 (bn="qa")."""
  rng = np.random.default_rng(i + o + stride + groups)
  official = OFFICIAL_REPVGG[bn]
  template = K.nn.RepVGGBlock(
    i, o, 3, stride=stride, groups=groups, bn=bn, precision="highest", rngs=nnx.Rngs(0)
  )
  sd = randomized(interop.repvgg_state_dict(template), rng)
  if bn == "branch":
    assert ("rbr_identity.weight" in sd) == (i == o and stride == 1)
  else:
    assert {"rbr_1x1.weight", "bn.running_var"} <= set(sd) and "rbr_1x1.bn.weight" not in sd
  layer = interop.load_repvgg(template, sd)
  x = rng.normal(size=(3, i, 8, 8))
  ref_sd = dict(sd)
  expected = official(x, ref_sd, stride, groups, train=True, unbiased=False)
  np.testing.assert_allclose(nchw(layer(nhwc(x))), expected, rtol=2e-4, atol=2e-4)
  back = interop.repvgg_state_dict(layer)
  for key, value in ref_sd.items():
    if "running" in key:
      np.testing.assert_allclose(back[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  layer.eval()
  expected = official(x, dict(back), stride, groups, train=False)
  for name, y in (
    ("branches", layer.branched(nhwc(x))),
    ("fused", layer(nhwc(x))),
    ("deployed", K.deploy(layer)(nhwc(x))),
  ):
    np.testing.assert_allclose(nchw(y), expected, rtol=2e-4, atol=2e-4, err_msg=name)
  again = interop.repvgg_state_dict(interop.load_repvgg(template, sd))
  assert set(again) == set(sd)


@pytest.mark.parametrize("i,o,groups,padding", [(4, 6, 1, 0), (4, 6, 2, 2), (4, 4, 4, 0)])
def test_dbb_takes_paddings_the_official_block_refuses(i, o, groups, padding):
  """Padding other than k // 2 (the official block asserts it): the 1x1 branch crops or pads to
  the kxk conv's centre tap, the padding BNs pad p; trained and fused."""
  rng = np.random.default_rng(padding + groups)
  template = K.nn.DiverseBranchBlock(
    i, o, 3, padding=padding, groups=groups, precision="highest", rngs=nnx.Rngs(0)
  )
  sd = randomized(interop.dbb_state_dict(template), rng)
  layer = interop.load_dbb(template, sd)
  x = rng.normal(size=(2, i, 8, 8))
  ref_sd = dict(sd)
  expected = official_dbb(x, ref_sd, 3, 1, groups, o, train=True, unbiased=False, padding=padding)
  np.testing.assert_allclose(nchw(layer(nhwc(x))), expected, rtol=2e-4, atol=2e-4)
  layer.eval()
  expected = official_dbb(
    x, interop.dbb_state_dict(layer), 3, 1, groups, o, train=False, padding=padding
  )
  np.testing.assert_allclose(nchw(K.deploy(layer)(nhwc(x))), expected, rtol=2e-4, atol=2e-4)


def test_loaders_refuse_what_does_not_fit():
  template = _dbb(4, 6, 3, 1, 1, None)
  sd = interop.dbb_state_dict(template)
  with pytest.raises(ValueError, match="has no 'dbb_1x1_kxk.conv1.weight'"):
    interop.load_dbb(_dbb(4, 6, 3, 1, 1, 6), sd)
  with pytest.raises(
    ValueError, match=r"'dbb_origin.conv.weight' has shape \(6, 4, 3, 3\), expected \(8, 4, 3, 3\)"
  ):
    interop.load_dbb(_dbb(4, 8, 3, 1, 1, None), sd)
  with pytest.raises(ValueError, match="trains online"):
    interop.load_dbb(_dbb(4, 6, 3, 1, 1, None, online=True), sd)
  with pytest.raises(ValueError, match="trains online"):
    interop.repvgg_state_dict(K.nn.RepVGGBlock(4, 4, online=True, rngs=nnx.Rngs(0)))
  sd = interop.repvgg_state_dict(K.nn.RepVGGBlock(4, 4, rngs=nnx.Rngs(0)), prefix="stage1.0.")
  with pytest.raises(ValueError, match="has an identity branch"):
    interop.load_repvgg(K.nn.RepVGGBlock(4, 4, stride=2, rngs=nnx.Rngs(0)), sd, prefix="stage1.0.")
  loaded = interop.load_repvgg(K.nn.RepVGGBlock(4, 4, rngs=nnx.Rngs(0)), sd, prefix="stage1.0.")
  assert set(interop.repvgg_state_dict(loaded, prefix="stage1.0.")) == set(sd)


@pytest.mark.parametrize("kind", ["acb", "dbb", "repvgg"])
@pytest.mark.parametrize("groups", [1, 2])
def test_online_blocks_train_one_conv_and_deploy_exactly(kind, groups):
  """Online: one conv with the scaled sum of the branch kernels, then one BN: equal to the
  branches computed apart (scaled, summed, the BN), in training and eval mode, value and
  gradient; deploy gives the same eval outputs."""
  rng = np.random.default_rng(groups)
  layer = K.nn.make_conv(
    kind, 4, 4, 3, groups=groups, online=True, precision="highest", rngs=nnx.Rngs(1)
  )
  params = nnx.state(layer, nnx.Param)
  nnx.update(
    layer, jax.tree.map(lambda v: v + 0.3 * rng.normal(size=v.shape).astype(np.float32), params)
  )
  x = rng.normal(size=(2, 7, 7, 4)).astype(np.float32)
  reference = nnx.clone(layer)
  np.testing.assert_allclose(layer(x), reference.branched(x), rtol=1e-4, atol=1e-4)
  for a, b in zip(
    jax.tree.leaves(nnx.state(layer, nnx.BatchStat)),
    jax.tree.leaves(nnx.state(reference, nnx.BatchStat)),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  def loss(m, through):
    return ((m(x) if through == "one" else m.branched(x)) ** 2 * x[..., :1]).sum()

  g1 = nnx.grad(lambda m: loss(m, "one"))(nnx.clone(layer))
  g2 = nnx.grad(lambda m: loss(m, "branches"))(nnx.clone(layer))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  bns = [m for _, m in nnx.iter_modules(layer) if isinstance(m, nnx.BatchNorm)]
  assert len(bns) == 1, "online: one BN"
  assert layer.multiplications((2, 7, 7, 4)) == 7 * 7 * 9 * (4 // groups) * 4  # a plain conv's
  layer.eval()
  np.testing.assert_allclose(layer(x), layer.branched(x), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(K.deploy(layer)(x), layer.branched(x), rtol=1e-4, atol=1e-4)
  labels = jax.tree.leaves(optim.param_labels(layer))
  assert labels.count("scales") == 1 and "bn" in labels


def _official_repository(name, owner="DingXiaoH"):
  """The official code, from KSHAPES_OFFICIAL_CODE/<name> or a fetched mirror, else None."""
  root = os.environ.get("KSHAPES_OFFICIAL_CODE")
  if root and (pathlib.Path(root) / name).is_dir():
    return pathlib.Path(root) / name
  mirror = pathlib.Path("/work/.mirror") / f"{owner}+{name}" / "repo"
  return mirror if mirror.is_dir() else None


def _official_module(tmp_path, name, files, owner="DingXiaoH"):
  repo = _official_repository(name, owner)
  if repo is None:
    pytest.skip(f"no copy of {owner}/{name} (set KSHAPES_OFFICIAL_CODE)")
  target = tmp_path / name
  target.mkdir()
  for f in files:
    if (repo / f).is_file():
      (target / f).write_bytes((repo / f).read_bytes())
    else:  # a bare mirror
      text = subprocess.run(
        ["git", "--git-dir", str(repo), "show", f"HEAD:{f}"], capture_output=True, check=True
      ).stdout
      (target / f).write_bytes(text)
  sys.path.insert(0, str(target))
  return target


def test_the_numpy_forwards_are_the_official_modules(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  _official_module(tmp_path, "DiverseBranchBlock", ["diversebranchblock.py", "dbb_transforms.py"])
  try:
    import diversebranchblock  # noqa: PLC0415 (the official code, found at test time)
  finally:
    sys.path.pop(0)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  for i, o, k, stride, groups, internal in DBB_CASES:
    block = diversebranchblock.DiverseBranchBlock(
      i, o, k, stride=stride, padding=k // 2, groups=groups, internal_channels_1x1_3x3=internal
    )
    sd = randomized({key: v.numpy() for key, v in block.state_dict().items()}, rng)
    block.load_state_dict({key: torch.from_numpy(np.asarray(v)) for key, v in sd.items()})
    x = rng.normal(size=(3, i, 9, 9))
    block.train()
    ref_sd = dict(sd)
    expected = official_dbb(x, ref_sd, k, stride, groups, o, train=True)
    got = block(torch.from_numpy(x).float()).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    block.eval()
    trained = {key: v.numpy() for key, v in block.state_dict().items()}
    expected = official_dbb(x, dict(trained), k, stride, groups, o, train=False)
    np.testing.assert_allclose(
      block(torch.from_numpy(x).float()).detach().numpy(), expected, rtol=1e-4, atol=1e-4
    )
    # ours, loaded from the module's own state dict
    layer = interop.load_dbb(_dbb(i, o, k, stride, groups, internal), trained)
    layer.eval()
    np.testing.assert_allclose(nchw(K.deploy(layer)(nhwc(x))), expected, rtol=1e-4, atol=1e-4)

  _official_module(tmp_path, "RepVGG", ["repvgg.py", "se_block.py"])
  try:
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)  # its blocks print themselves
    import repvgg  # noqa: PLC0415
  finally:
    sys.path.pop(0)
  for i, o, stride, groups in REPVGG_CASES:
    block = repvgg.RepVGGBlock(i, o, 3, stride=stride, padding=1, groups=groups)
    _repvgg_against_the_module(torch, block, "branch", (i, o, stride, groups), rng)


def _repvgg_against_the_module(torch, block, bn, geometry, rng):
  """An official RepVGG-family block with drawn weights, in training and eval mode, against its
  NumPy forward (with its ReLU), then ours (`bn`) loaded from its state dict, deployed, and the
  module's own deploy form."""
  i, o, stride, groups = geometry
  official = OFFICIAL_REPVGG[bn]
  sd = randomized({key: v.numpy() for key, v in block.state_dict().items()}, rng)
  block.load_state_dict({key: torch.from_numpy(np.asarray(v)) for key, v in sd.items()})
  x = rng.normal(size=(3, i, 8, 8))
  block.train()
  expected = np.maximum(official(x, dict(sd), stride, groups, train=True), 0)  # its ReLU
  np.testing.assert_allclose(
    block(torch.from_numpy(x).float()).detach().numpy(), expected, rtol=1e-4, atol=1e-4
  )
  block.eval()
  trained = {key: v.numpy() for key, v in block.state_dict().items()}
  expected = official(x, dict(trained), stride, groups, train=False)
  layer = interop.load_repvgg(
    K.nn.RepVGGBlock(
      i, o, 3, stride=stride, groups=groups, bn=bn, precision="highest", rngs=nnx.Rngs(0)
    ),
    trained,
  )
  layer.eval()
  np.testing.assert_allclose(nchw(K.deploy(layer)(nhwc(x))), expected, rtol=1e-4, atol=1e-4)
  block.switch_to_deploy()
  np.testing.assert_allclose(
    block(torch.from_numpy(x).float()).detach().numpy(),
    np.maximum(expected, 0),
    rtol=1e-4,
    atol=1e-4,
  )


@pytest.mark.parametrize("i,o,stride,groups", REPVGG_CASES)
def test_qarepvgg_preserves_a_converted_conv_and_deploys_to_it(i, o, stride, groups):
  """convert(init="preserve", bn="qa"): both BNs identities, the 1x1 minus the identity where
  the block has one (its identity has no scale to zero): the conv's function in eval mode,
  through the branches and the fused kernel, before and after training steps."""
  rng = np.random.default_rng(o + stride)
  conv = nnx.Conv(
    i,
    o,
    (3, 3),
    strides=stride,
    padding=1,
    feature_group_count=groups,
    precision=jax.lax.Precision.HIGHEST,
    rngs=nnx.Rngs(0),
  )
  net = nnx.Sequential(conv)
  done = []
  model = K.convert(net, "repvgg", bn="qa", precision="highest", report=done.append)
  block = model.layers[0]
  assert block.bn_mode == "qa" and all(r.preserved for r in done)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, i)), jnp.float32)
  model.eval()
  np.testing.assert_allclose(model(x), net(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(block.branched(x), net(x), rtol=1e-5, atol=1e-5)
  model.train()
  for _ in range(2):
    model(x)
  model.eval()
  np.testing.assert_allclose(K.deploy(model)(x), block.branched(x), rtol=1e-5, atol=1e-5)


def test_repvgg_bn_modes_refuse_what_they_cannot_be():
  with pytest.raises(ValueError, match="bn must be 'branch' or 'qa', got 'sum'"):
    K.nn.RepVGGBlock(4, 4, bn="sum", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="leave bn at 'branch'"):
    K.nn.RepVGGBlock(4, 4, bn="qa", online=True, rngs=nnx.Rngs(0))
  bns = [m for _, m in nnx.iter_modules(K.nn.RepVGGBlock(4, 4, bn="qa", rngs=nnx.Rngs(0)))]
  assert sum(isinstance(m, nnx.BatchNorm) for m in bns) == 2  # the kxk's and the sum's


def test_the_qarepvgg_forward_is_the_official_module(tmp_path, monkeypatch):
  """QARepVGGBlockV2 itself (cxxgtxy/QARepVGG), train and eval, against the NumPy forward and
  our bn="qa" block loaded from its state dict. Its module imports timm's DropPath (identity at
  the default drop rate 0) and the training script's utils (for other blocks): stand-ins here."""
  torch = pytest.importorskip("torch")
  monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))
  monkeypatch.setitem(sys.modules, "timm.models", types.ModuleType("timm.models"))
  layers = types.ModuleType("timm.models.layers")
  layers.DropPath = lambda ratio: torch.nn.Identity()  # type: ignore[attr-defined]
  monkeypatch.setitem(sys.modules, "timm.models.layers", layers)
  utils = types.ModuleType("utils")
  utils.my_scaler = None  # type: ignore[attr-defined]
  monkeypatch.setitem(sys.modules, "utils", utils)
  _official_module(tmp_path, "QARepVGG", ["repvgg.py", "se_block.py"], owner="cxxgtxy")
  monkeypatch.delitem(sys.modules, "repvgg", raising=False)  # not the RepVGG of another test
  try:
    import repvgg  # noqa: PLC0415
  finally:
    sys.path.pop(0)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  for i, o, stride, groups in REPVGG_CASES:
    block = repvgg.QARepVGGBlockV2(i, o, 3, stride=stride, padding=1, groups=groups)
    _repvgg_against_the_module(torch, block, "qa", (i, o, stride, groups), rng)


def test_scaled_sum_places_each_scaled_kernel():
  """The online kernel scales each branch, then places it in kxk (a zero padding at an offset,
  the 1x1-avg spread): the kernel the placed-then-scaled branches sum to, and a placement per
  kernel or one clear error."""
  rng = np.random.default_rng(0)
  square, hor, one = (
    rng.normal(size=s).astype(np.float32) for s in ((3, 3, 2, 4), (1, 3, 2, 4), (1, 1, 2, 4))
  )
  scales = rng.normal(size=(3, 4)).astype(np.float32)
  pad_hor = functools.partial(kernels.pad_kernel, size=3, offset=(2, 0))
  spread = functools.partial(kernels.fuse_1x1_avg, kernel_size=3)
  got = scaled_sum([square, hor, one], jnp.asarray(scales), [None, pad_hor, spread])
  expected = (
    square * scales[0]
    + np.asarray(kernels.pad_kernel(hor, 3, offset=(2, 0))) * scales[1]
    + np.broadcast_to(one * scales[2] / 9, (3, 3, 2, 4))
  )
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="2 kernels and 1 placements"):
    scaled_sum([square, hor], jnp.asarray(scales[:2]), [None])
