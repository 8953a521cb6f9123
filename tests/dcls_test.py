"""DCLS: the kernel builder against its closed forms (float64, value and gradient), the layer
against the official Dcls2d's forward written out in NumPy (K-H-Ismail/Dilated-Convolution-
with-Learnable-Spacings-PyTorch, DCLS/construct/modules.py: ConstructKernel2d.forward_v1 /
forward_vgauss, then F.conv2d) and, where torch and a copy of the official code are at hand,
the official module itself; the optimizer rules (5 x, no decay, the clamp after each step)."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reparam_blocks_test import nchw, nhwc, np_conv

import kshapes_jax as K
from kshapes_jax import interop, optim, reference
from kshapes_jax.kernels import dcls_kernel


def official_kernel(weight, P, SIG, dks, version):
  """ConstructKernel2d's forward as the official code computes it: weight (O, I/g, K), P and SIG
  (2, O, I/g, K), dks (d0, d1) -> (O, I/g, d0, d1). IDX[r, c] = (c, r): P[0] is compared with
  the column and P[1] with the row, yet offset (and clamped) by d0 // 2 and d1 // 2."""
  d0, d1 = dks
  cols = np.broadcast_to(np.arange(d1), (d0, d1))
  rows = np.broadcast_to(np.arange(d0)[:, None], (d0, d1))
  idx = np.stack([cols, rows], axis=-1)[:, :, :, None, None, None]  # (d0, d1, 2, 1, 1, 1)
  lim = np.asarray([d0, d1]).reshape(2, 1, 1, 1)
  P = P + lim // 2
  if version == "v1":
    X = np.maximum(0.0, 1 - np.abs(idx - P)).prod(2)
  else:
    sig = np.abs(SIG) + 0.27
    X = np.exp(-0.5 * np.linalg.norm((idx - P) / sig, axis=2) ** 2)
  X = X / (X.sum((0, 1)) + 1e-7)
  return (X * weight).sum(-1).transpose(2, 3, 0, 1)


def official_dcls2d(x, sd, dks, padding, stride, groups, version):
  """Dcls2d.forward (the native conv2d path): x NCHW."""
  kernel = official_kernel(sd["weight"], sd["P"], sd.get("SIG"), dks, version)
  y = np_conv(x, kernel, stride=stride, pad=padding, groups=groups)
  return y + sd["bias"].reshape(1, -1, 1, 1) if "bias" in sd else y


def official_state(rng, o, cin, kc, lim, gauss, bias=True):
  sd = {
    "weight": rng.normal(size=(o, cin, kc)),
    "P": np.clip(rng.normal(0, 1.5, size=(2, o, cin, kc)), -lim, lim),
  }
  if gauss:
    sd["SIG"] = rng.normal(0.23, 0.2, size=(2, o, cin, kc))
  if bias:
    sd["bias"] = rng.normal(size=(o,))
  return sd


def _grads(w, p, extent, g, interpolation, s):
  def f(w, p, s):
    return jnp.sum(dcls_kernel(w, p, extent, interpolation, s) * g)

  if s is None:
    return (*jax.grad(lambda w, p: f(w, p, None), (0, 1))(w, p), None)
  return jax.grad(f, (0, 1, 2))(w, p, s)


@pytest.mark.parametrize("interpolation", ["bilinear", "gauss"])
@pytest.mark.parametrize("extent", [(7, 7), (5, 9), (4, 4)])
@pytest.mark.parametrize("where", ["random", "lattice", "outside"])
def test_the_kernel_is_its_closed_form_value_and_gradient(interpolation, extent, where):
  with jax.enable_x64():
    rng = np.random.default_rng(sum(extent) + len(where))
    kc, i, o = 5, 2, 3
    w = rng.normal(size=(kc, i, o))
    p = rng.uniform(-3, 3, size=(kc, i, o, 2))
    if where == "lattice":  # the tent's kinks: no bilinear position gradient
      p = np.round(p)
    if where == "outside":  # beyond the window: taps lost, as in the official code
      p = p + np.sign(p) * 4
    s = rng.uniform(0.3, 1.5, (kc, i, o, 2)) if interpolation == "gauss" else None
    g = rng.normal(size=(*extent, i, o))
    np.testing.assert_allclose(
      dcls_kernel(w, p, extent, interpolation, s),
      reference.dcls_kernel(w, p, extent, interpolation, s),
      rtol=1e-12,
      atol=1e-12,
    )
    got = _grads(w, p, extent, g, interpolation, s)
    want = reference.dcls_kernel_grads(w, p, extent, g, interpolation, s)
    for a, b in zip(got, want):
      if b is None:
        assert a is None
        continue
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    if where == "lattice" and interpolation == "bilinear":
      assert not np.any(got[1])


def test_the_kernel_is_the_official_construction_and_refuses_bad_shapes():
  rng = np.random.default_rng(0)
  for version, dks in [("v1", (7, 7)), ("gauss", (9, 9)), ("v1", (5, 7)), ("gauss", (7, 5))]:
    sd = official_state(rng, 3, 2, 6, min(dks) // 2, version == "gauss", bias=False)
    expected = official_kernel(sd["weight"], sd["P"], sd.get("SIG"), dks, version)
    p = np.transpose(sd["P"], (3, 2, 1, 0)).copy()
    # the official layer offsets P[0] (columns) by d0 // 2 and P[1] (rows) by d1 // 2; ours by
    # the width's and the height's halves
    p[..., 0] += dks[0] // 2 - dks[1] // 2
    p[..., 1] += dks[1] // 2 - dks[0] // 2
    sig = None if "SIG" not in sd else np.abs(np.transpose(sd["SIG"], (3, 2, 1, 0))) + 0.27
    interpolation = "bilinear" if version == "v1" else "gauss"
    with jax.enable_x64():
      ours = dcls_kernel(np.transpose(sd["weight"], (2, 1, 0)), p, dks, interpolation, sig)
    np.testing.assert_allclose(np.transpose(ours, (3, 2, 0, 1)), expected, rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match=r"positions must be \(K, I, O, 2\)"):
    dcls_kernel(np.ones((3, 1, 1)), np.ones((3, 1, 1)), 5)
  with pytest.raises(ValueError, match="takes sigma"):
    dcls_kernel(np.ones((3, 1, 1)), np.ones((3, 1, 1, 2)), 5, "gauss")
  with pytest.raises(ValueError, match="takes no sigma"):
    dcls_kernel(np.ones((3, 1, 1)), np.ones((3, 1, 1, 2)), 5, "bilinear", np.ones((3, 1, 1, 2)))
  with pytest.raises(ValueError, match="extent must be"):
    dcls_kernel(np.ones((3, 1, 1)), np.ones((3, 1, 1, 2)), 0)


CASES = [  # in, out, k, kernel_count, extent, stride, groups, interpolation, bias
  (4, 6, 3, 5, 7, 1, 1, "bilinear", True),
  (6, 6, 7, 12, 11, 1, 6, "bilinear", False),
  (4, 6, 3, 4, 5, 2, 2, "gauss", True),
  (6, 6, 5, 10, 9, 1, 6, "gauss", False),
]


def _case_layer(i, o, k, kc, extent, stride, groups, interpolation, bias, **numerics):
  return K.nn.DclsConv(
    i,
    o,
    k,
    kernel_count=kc,
    extent=extent,
    stride=stride,
    groups=groups,
    interpolation=interpolation,
    use_bias=bias,
    precision="highest",
    rngs=nnx.Rngs(0),
    **numerics,
  )


@pytest.mark.parametrize("i, o, k, kc, extent, stride, groups, interpolation, bias", CASES)
def test_loaded_official_weights_give_the_official_outputs(
  i, o, k, kc, extent, stride, groups, interpolation, bias
):
  rng = np.random.default_rng(kc)
  version = "v1" if interpolation == "bilinear" else "gauss"
  sd = official_state(rng, o, i // groups, kc, extent // 2, version == "gauss", bias)
  layer = interop.load_dcls(
    _case_layer(i, o, k, kc, extent, stride, groups, interpolation, bias), sd
  )
  assert layer.conv_padding == extent // 2  # the official layers' padding
  x = rng.normal(size=(2, i, 12, 12))
  expected = official_dcls2d(x, sd, (extent, extent), extent // 2, stride, groups, version)
  np.testing.assert_allclose(nchw(layer(nhwc(x))), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(nchw(K.deploy(layer)(nhwc(x))), expected, rtol=1e-4, atol=1e-4)
  back = interop.dcls_state_dict(layer)
  assert set(back) == set(sd)
  for key, value in sd.items():
    np.testing.assert_allclose(back[key], value, rtol=1e-6, atol=1e-6)


def test_the_loader_refuses_what_does_not_fit():
  layer = K.nn.DclsConv(4, 6, 3, kernel_count=5, rngs=nnx.Rngs(0))
  sd = official_state(np.random.default_rng(0), 6, 4, 5, 2, gauss=False, bias=False)
  with pytest.raises(ValueError, match="has SIG"):
    interop.load_dcls(layer, {**sd, "SIG": sd["P"]})
  with pytest.raises(ValueError, match="has bias"):
    interop.load_dcls(layer, {**sd, "bias": np.zeros(6)})
  with pytest.raises(ValueError, match="'P' has shape"):
    interop.load_dcls(layer, {**sd, "P": sd["P"][:, :, :, :4]})
  gauss = K.nn.DclsConv(4, 6, 3, kernel_count=5, interpolation="gauss", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="has no SIG"):
    interop.load_dcls(gauss, sd)


def _mirror():
  root = os.environ.get("KSHAPES_OFFICIAL_CODE")
  name = "Dilated-Convolution-with-Learnable-Spacings-PyTorch"
  if root and (pathlib.Path(root) / name).is_dir():
    return pathlib.Path(root) / name
  mirror = pathlib.Path("/work/.mirror") / f"K-H-Ismail+{name}" / "repo"
  return mirror if mirror.is_dir() else None


def test_the_numpy_forward_is_the_official_module(tmp_path):
  torch = pytest.importorskip("torch")
  repo = _mirror()
  if repo is None:
    pytest.skip("no copy of the official DCLS code (set KSHAPES_OFFICIAL_CODE)")
  target = tmp_path / "DCLS" / "construct"
  target.mkdir(parents=True)
  for f in ("DCLS/__init__.py", "DCLS/construct/__init__.py", "DCLS/construct/modules.py"):
    if (repo / f).is_file():
      text = (repo / f).read_bytes()
    else:  # a bare mirror
      text = subprocess.run(
        ["git", "--git-dir", str(repo), "show", f"HEAD:{f}"], capture_output=True, check=True
      ).stdout
    (tmp_path / f).write_bytes(text)
  sys.path.insert(0, str(tmp_path))
  try:
    from DCLS.construct.modules import Dcls2d  # noqa: PLC0415 (the official code, found here)
  finally:
    sys.path.pop(0)
  rng = np.random.default_rng(0)
  for i, o, k, kc, extent, stride, groups, interpolation, bias in CASES:
    version = "v1" if interpolation == "bilinear" else "gauss"
    module = Dcls2d(
      i,
      o,
      kernel_count=kc,
      stride=stride,
      padding=extent // 2,
      dilated_kernel_size=extent,
      groups=groups,
      bias=bias,
      version=version,
      use_implicit_gemm=False,
    ).double()
    sd = official_state(rng, o, i // groups, kc, extent // 2, version == "gauss", bias)
    # float32 values (our positions and sigmas are stored in float32), in a float64 module
    sd = {key: v.astype(np.float32).astype(np.float64) for key, v in sd.items()}
    module.load_state_dict({key: torch.from_numpy(v) for key, v in sd.items()})
    x = rng.normal(size=(2, i, 12, 12))
    got = module(torch.from_numpy(x)).detach().numpy()
    expected = official_dcls2d(x, sd, (extent, extent), extent // 2, stride, groups, version)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    # and the official module's gradients of a loss are ours (float64 weights)
    g = rng.normal(size=got.shape)
    (module(torch.from_numpy(x)) * torch.from_numpy(g)).sum().backward()
    with jax.enable_x64():
      case = (i, o, k, kc, extent, stride, groups, interpolation, bias)
      layer = interop.load_dcls(_case_layer(*case, param_dtype="float64"), sd)
      graph, params = nnx.split(layer, nnx.Param)

      x64 = np.transpose(x, (0, 2, 3, 1))  # NHWC in float64

      def loss(params, graph=graph, x64=x64, g=g):
        return jnp.sum(jnp.transpose(nnx.merge(graph, params)(x64), (0, 3, 1, 2)) * g)

      np.testing.assert_allclose(nchw(layer(x64)), got, rtol=1e-9, atol=1e-9)
      grads = jax.grad(loss)(params)
    back = interop.dcls_state_dict(nnx.merge(graph, grads))
    for key, param in module.named_parameters():
      np.testing.assert_allclose(back[key], param.grad.numpy(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("interpolation", ["bilinear", "gauss"])
def test_the_layer_deploys_exactly_and_certifies(interpolation):
  layer = K.nn.DclsConv(
    6, 6, 5, kernel_count=8, extent=9, groups=3, interpolation=interpolation, rngs=nnx.Rngs(1)
  )
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 6))
  deployed = K.deploy(layer)
  assert isinstance(deployed, K.nn.PlainConv) and deployed.kernel[...].shape == (9, 9, 2, 6)
  # the same kernel and conv (XLA may fuse the kernel's build into the conv: float rounding)
  np.testing.assert_allclose(deployed(x), layer(x), rtol=1e-6, atol=1e-6)
  certificate = K.certify(layer, deployed, x)
  assert certificate.logits_max_abs < 1e-5 and len(certificate.layers) == 1
  certificate.check()


def test_the_official_initialisation_and_the_options_checked():
  layer = K.nn.DclsConv(32, 32, 7, kernel_count=34, extent=17, groups=32, rngs=nnx.Rngs(0))
  p = np.asarray(layer.positions[...])
  assert p.shape == (34, 1, 32, 2) and np.abs(p).max() <= 8
  assert 0.45 < p.std() < 0.55  # N(0, 0.5), the official spread (clamping at 8 changes nothing)
  assert layer.conv_padding == 8 and layer.weight_count() == 34 * 32
  gauss = K.nn.DclsConv(4, 4, 3, interpolation="gauss", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(gauss.acting_sigmas(), 0.5)  # 0.23 + the floor 0.27
  for bad, match in [
    (dict(extent=4), "differ from it by an even number"),
    (dict(extent=1), "extent must be >= kernel_size"),
    (dict(dilation=2), "takes no dilation"),
    (dict(interpolation="cubic"), "interpolation must be"),
    (dict(init="lattice", kernel_count=5), "kernel_count=9"),
    (dict(kernel_count=0), "kernel_count"),
  ]:
    with pytest.raises(ValueError, match=match):
      K.nn.DclsConv(4, 4, 3, rngs=nnx.Rngs(0), **bad)


def test_convert_preserves_a_kernel_on_the_lattice():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(5, 5, 3, 4)).astype(np.float32)
  plain = K.nn.PlainConv(3, 4, 5, kernel=kernel, precision="highest")
  converted = K.convert(plain, "dcls", extent=9, precision="highest")
  assert isinstance(converted, K.nn.DclsConv) and converted.kernel_count == 25
  x = jnp.asarray(rng.normal(size=(2, 11, 11, 3)), jnp.float32)
  np.testing.assert_allclose(converted(x), plain(x), rtol=1e-5, atol=1e-5)  # 9x9 vs 5x5 sums
  built, _ = converted.effective_kernel()
  np.testing.assert_allclose(built[2:7, 2:7], kernel, rtol=2e-7, atol=1e-7)
  assert not np.any(built[:2]) and not np.any(built[:, 7:])
  with pytest.raises(ValueError, match="interpolation='bilinear'"):
    K.convert(plain, "dcls", interpolation="gauss")


def test_shared_positions_are_one_parameter():
  first = K.nn.DclsConv(8, 8, 3, kernel_count=4, extent=7, groups=8, rngs=nnx.Rngs(0))
  second = K.nn.DclsConv(
    8, 8, 3, kernel_count=4, extent=7, groups=8, shared_positions=first.positions, rngs=nnx.Rngs(1)
  )

  class Two(nnx.Module):
    def __init__(self):
      self.a, self.b = first, second

    def __call__(self, x):
      return self.b(self.a(x))

  model = Two()
  labels = jax.tree.leaves(optim.param_labels(model))
  assert labels.count("dcls_positions") == 1 and labels.count("weights") == 2
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 8))
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  assert grads["a"]["positions"][...].shape == (4, 1, 8, 2)
  with pytest.raises(ValueError, match="shared_positions"):
    K.nn.DclsConv(8, 8, 3, kernel_count=5, shared_positions=first.positions, rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match="one extent"):
    K.nn.DclsConv(
      8,
      8,
      3,
      kernel_count=4,
      extent=5,
      groups=8,
      shared_positions=first.positions,
      rngs=nnx.Rngs(1),
    )


@pytest.mark.parametrize("interpolation", ["bilinear", "gauss"])
def test_the_official_rules_5x_no_decay_and_the_clamp_after_each_step(interpolation):
  layer = K.nn.DclsConv(
    4, 4, 3, kernel_count=3, extent=5, groups=4, interpolation=interpolation, rngs=nnx.Rngs(0)
  )
  graph, params = nnx.split(layer, nnx.Param)
  labels = optim.param_labels(layer)
  bounds = optim.param_bounds(layer)
  assert jax.tree.leaves(bounds).count(2.0) == 1  # the positions' half window, 5 // 2
  tx = optim.sgd(labels, 0.1, momentum=0.0, weight_decay=0.5, bounds=bounds)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, state, params)
  stepped = optax.apply_updates(params, updates)
  # 5 x the rate, not decayed: -0.5 per step; weights: -0.1 (1 + 0.5 w)
  np.testing.assert_allclose(
    stepped["positions"][...], params["positions"][...] - 0.5, rtol=1e-6, atol=1e-6
  )
  np.testing.assert_allclose(
    stepped["weights"][...],
    params["weights"][...] - 0.1 * (1 + 0.5 * params["weights"][...]),
    rtol=1e-6,
  )
  if interpolation == "gauss":
    np.testing.assert_allclose(stepped["sigmas"][...], params["sigmas"][...] - 0.5, rtol=1e-6)
  # a step far out of the window lands on its edge, as the official clamp_parameters (to the
  # rounding of p + (edge - p): an ulp)
  far = jax.tree.map(lambda g: g * 100, grads)
  updates, state = tx.update(far, state, stepped)
  clamped = optax.apply_updates(stepped, updates)
  np.testing.assert_allclose(clamped["positions"][...], -2.0, rtol=0, atol=2.5e-7)
  # no bounded parameter: no clamp in the chain (and no state for it)
  plain = K.nn.PlainConv(4, 4, 3, rngs=nnx.Rngs(0))
  plain_params = nnx.state(plain, nnx.Param)
  plain_bounds = optim.param_bounds(plain)
  assert not optim.has_bounds(plain_bounds)
  with_none = optim.sgd(optim.param_labels(plain), 0.1).init(plain_params)
  with_inf = optim.sgd(optim.param_labels(plain), 0.1, bounds=plain_bounds).init(plain_params)
  assert jax.tree.structure(with_none) == jax.tree.structure(with_inf)


def official_repulsion(sets):
  """utils.get_dcls_loss_rep of ConvNeXt-dcls over official P arrays (2, O, I, K), in NumPy."""
  total = 0.0
  for P in sets:
    _, o, i, kc = P.shape
    pairs = P.reshape(2, o * i, kc).transpose(1, 2, 0)  # (O I, K, 2)
    d = np.linalg.norm(pairs[:, :, None] - pairs[:, None, :], axis=-1)
    close = np.triu(1 - d, k=1)
    total += 2 * np.sum(np.maximum(close, 0)) / (kc * (kc - 1) * o * i)
  return total / len(sets)


def test_the_repulsion_is_convnext_dcls_and_the_trainer_adds_its_square():
  from train.trainer.state import TrainState, split_model
  from train.trainer.step import make_train_step

  class Net(nnx.Module):
    def __init__(self):
      rngs = nnx.Rngs(0)
      self.a = K.nn.DclsConv(3, 4, 3, kernel_count=5, rngs=rngs)
      self.b = K.nn.DclsConv(4, 4, 3, kernel_count=5, groups=4, rngs=rngs)
      self.c = K.nn.DclsConv(
        4, 4, 3, kernel_count=5, groups=4, shared_positions=self.b.positions, rngs=rngs
      )
      self.fc = K.nn.Dense(4, 10, rngs=rngs)

    def __call__(self, x):
      return self.fc(self.c(self.b(self.a(x))).mean((1, 2)))

  net = Net()
  sets = K.nn.dcls_position_sets(net)
  assert len(sets) == 2  # b's and c's is one
  official = [interop.dcls_state_dict(layer)["P"] for layer in (net.a, net.b)]
  got = float(K.nn.dcls_repulsion(net))
  np.testing.assert_allclose(got, official_repulsion(official), rtol=1e-5)
  assert got > 0 and float(K.nn.dcls_repulsion(K.nn.PlainConv(3, 4, 3, rngs=nnx.Rngs(0)))) == 0
  # coincident elements: a zero gradient (torch.cdist's), not NaN
  net.b.positions[...] = jnp.zeros_like(net.b.positions[...])
  grads = nnx.grad(K.nn.dcls_repulsion)(net)
  assert np.all(np.isfinite(grads["b"]["positions"][...]))

  net.train()
  labels = optim.param_labels(net)
  tx = optim.sgd(labels, 0.0, momentum=0.0)  # no step: the loss is the point
  graphdef, params, rest = split_model(net)
  batch = {
    "image": jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)), jnp.uint8),
    "label": jnp.arange(4, dtype=jnp.int32),
  }
  stats = dict(mean=(0.5,) * 3, std=(0.25,) * 3, augment="none", seed=0)
  losses = []
  for start in (None, 0):
    step = jax.jit(make_train_step(graphdef, tx, **stats, repulsion_from_step=start))
    _, loss = step(TrainState.create(tx, params, rest), batch)
    losses.append(float(loss))
  rep = float(K.nn.dcls_repulsion(net))
  np.testing.assert_allclose(losses[1] - losses[0], rep**2, rtol=1e-4)


def test_the_imagenet_recipe_is_convnext_dcls():
  from configs import dcls_imagenet
  from train.trainer import settings

  s = settings.read(dcls_imagenet.get_config("model=convnext_t,conv=dcls"))
  assert (s.model, s.conv, s.model_kwargs["drop_path_rate"]) == ("convnext_t", "dcls", 0.1)
  assert (s.optim.name, s.optim.learning_rate, s.optim.weight_decay) == ("adamw", 4e-3, 0.05)
  assert s.optim.lr_multipliers["dcls_positions"] == s.optim.lr_multipliers["dcls_sigmas"] == 5.0
  assert s.dcls_repulsion_from_step(100) == 2100  # from epoch 21: the official `epoch > 20`
  gauss = settings.read(dcls_imagenet.get_config("model=convnext_b,conv=dcls_gauss"))
  assert gauss.conv_options["interpolation"] == "gauss"
  plain = settings.read(dcls_imagenet.get_config("model=convnext_s,conv=plain"))
  assert plain.conv == "plain" and plain.model_kwargs["drop_path_rate"] == 0.4
  assert (
    settings.read(plain.to_dict() | {"dcls_repulsion_from_epoch": -1.0}).dcls_repulsion_from_step(
      100
    )
    is None
  )


def test_the_trainers_optimizer_clamps_the_positions():
  from configs import schema
  from train.trainer import experiment

  layer = K.nn.DclsConv(2, 2, 3, kernel_count=2, extent=5, rngs=nnx.Rngs(0))
  params = nnx.state(layer, nnx.Param)
  tx, _ = experiment.make_optimizer(
    schema.OptimSettings(), optim.param_labels(layer), 10, 100, optim.param_bounds(layer)
  )
  huge = jax.tree.map(lambda p: jnp.full_like(p, -1e6), params)
  updates, _ = tx.update(huge, tx.init(params), params)
  stepped = optax.apply_updates(params, updates)
  np.testing.assert_allclose(stepped["positions"][...], 2.0, rtol=0, atol=2.5e-7)
