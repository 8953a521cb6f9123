"""convert(): a user's own NNX model, written with flax.nnx only, gets each kind in one call,
trains, and deploys back to flax.nnx layers whose state loads without kshapes_jax."""

import functools  # noqa: F401  (USER_NET uses it)
import json
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import runs
from flax import nnx

import kshapes_jax as K
from kshapes_jax.kernels import rotate_kernel

HIGHEST = jax.lax.Precision.HIGHEST  # float32 convs compared exactly, on every backend

# The user's network, as they would write it: nested containers, a depthwise conv, 'SAME', pairs,
# biases and a 1x1 conv that must stay. (The subprocess test writes it again without us.)
USER_NET = """
class UserNet(nnx.Module):
  def __init__(self, rngs, deployed=False):
    conv = functools.partial(nnx.Conv, precision=jax.lax.Precision.HIGHEST, rngs=rngs)
    biased = deployed  # a deployed conv carries its folded bias
    self.stem = nnx.Sequential(
      conv(3, 8, (3, 3), padding="SAME", use_bias=True), nnx.BatchNorm(8, rngs=rngs)
    )
    self.blocks = nnx.List(
      [
        conv(8, 8, (3, 3), padding=1, feature_group_count=8, use_bias=biased),
        conv(8, 16, (1, 1)),
      ]
    )
    self.heads = nnx.Dict({"down": conv(16, 16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))})
    self.fc = nnx.Linear(16, 10, precision=jax.lax.Precision.HIGHEST, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.stem(x))
    for layer in self.blocks:
      x = jax.nn.relu(layer(x))
    return self.fc(self.heads["down"](x).mean(axis=(1, 2)))
"""
exec(USER_NET)  # defines UserNet here

SHAPED = ("stem/layers/0", "blocks/0", "heads/down")  # the kxk convs; blocks/1 is 1x1
X = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))


def _user_net():
  net = UserNet(nnx.Rngs(0))  # noqa: F821  (exec above)
  net.train()
  for _ in range(2):  # BN statistics away from their start
    net(X)
  return net


def _eval(model, x=X):
  view = nnx.clone(model)
  view.eval()
  return view(x)


@pytest.mark.parametrize("kind", ["plain", "acb", "active"])
def test_preserve_computes_the_users_function_and_leaves_1x1_and_the_rest(kind):
  net = _user_net()
  done = []
  converted = K.convert(net, kind, report=done.append)
  assert sorted(r.path for r in done) == sorted(SHAPED)
  assert all(r.preserved and r.kernel_error < 1e-6 for r in done), done
  assert isinstance(converted.blocks[1], nnx.Conv) and isinstance(converted.fc, nnx.Linear)
  assert isinstance(converted.stem.layers[1], nnx.BatchNorm)
  assert not isinstance(converted.heads["down"], nnx.Conv)
  np.testing.assert_allclose(_eval(converted), _eval(net), rtol=1e-5, atol=1e-5)
  assert isinstance(net.blocks[0], nnx.Conv)  # the user's model is unchanged


def _options(kind):
  if kind == "versatile":  # its 8 depthwise maps would round up to 16: the user leaves it out
    return dict(init="fresh", where=lambda path, layer: path != "blocks/0")
  return {}


@pytest.mark.parametrize("kind", runs.kinds())
def test_a_converted_model_trains_and_deploys_to_flax_layers_with_its_certificate(kind):
  net = _user_net()
  model = K.convert(net, kind, **_options(kind))
  labels = jnp.arange(len(X)) % 10
  optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(X), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(4)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  deployed = K.deploy(model, to="flax")
  classes = {type(m) for _, m in nnx.iter_modules(deployed)}
  flax_only = {nnx.Conv, nnx.BatchNorm, nnx.Linear, nnx.Sequential, nnx.List, nnx.Dict}
  assert classes <= flax_only | {UserNet}  # noqa: F821
  assert classes >= {nnx.Conv}
  want = _eval(model)
  np.testing.assert_allclose(deployed(X), want, rtol=1e-5, atol=1e-5 * float(jnp.max(abs(want))))
  certificate = K.certify(model, deployed, X)
  fused = {"plain": 0, "versatile": 2}.get(kind, 3)  # plain convs are not fused
  assert len(certificate.layers) == fused and certificate.agreement == 1.0
  assert certificate.worst is None or certificate.worst.relative < 1e-5, certificate.worst
  certificate.check(1e-5)


def test_deployed_flax_state_loads_into_the_users_flax_model_without_kshapes_jax(tmp_path):
  model = K.convert(_user_net(), "acb")
  model.train()
  model(X)
  deployed = K.deploy(model, to="flax")
  flat = {
    "/".join(map(str, path)): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(deployed)))[0]
    for path in [[getattr(k, "key", getattr(k, "idx", k)) for k in path]]
  }
  np.savez(tmp_path / "state.npz", **flat)
  np.save(tmp_path / "x.npy", np.asarray(X))
  np.save(tmp_path / "logits.npy", np.asarray(deployed(X)))
  script = f"""
import functools, sys
sys.modules["kshapes_jax"] = None  # importing it fails: the shipped model needs flax alone
import jax, numpy as np
from flax import nnx
{USER_NET}
model = UserNet(nnx.Rngs(0), deployed=True)
saved = np.load({str(tmp_path / "state.npz")!r})
state = nnx.state(model)
pure = nnx.to_pure_dict(state)
def put(tree, keys, value):
  for k in keys[:-1]:
    tree = tree[int(k) if k.isdigit() else k]
  last = keys[-1]
  tree[int(last) if last.isdigit() else last] = value
for key in saved.files:
  put(pure, key.split("/"), saved[key])
nnx.replace_by_pure_dict(state, pure)
nnx.update(model, state)
model.eval()
got = model(np.load({str(tmp_path / "x.npy")!r}))
want = np.load({str(tmp_path / "logits.npy")!r})
print(float(np.max(np.abs(np.asarray(got) - want))))
"""
  out = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


def test_the_kinds_refuse_what_they_cannot_hold_naming_the_layer():
  rngs = nnx.Rngs(0)
  net = nnx.Sequential(nnx.Conv(3, 4, (1, 3), rngs=rngs), nnx.Conv(4, 4, (3, 3), rngs=rngs))
  with pytest.raises(ValueError, match=r"layers/0: kernel_size \(1, 3\) is not square"):
    K.convert(net, "acb")
  skipped = K.convert(net, "acb", where=lambda path, layer: layer.kernel_size[0] > 1)
  assert isinstance(skipped.layers[0], nnx.Conv) and isinstance(skipped.layers[1], K.nn.ACBlock)
  strided = nnx.Sequential(nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=rngs))
  with pytest.raises(
    ValueError, match=r"layers/0: cannot become 'acb': kind 'acb' takes one int padding per side"
  ):
    K.convert(strided, "acb")
  # 'SAME' at stride 2 stays 'SAME' (TF's padding) where the kind takes it
  for kind in ("plain", "rotate4"):
    same = K.convert(strided, kind)
    assert same.layers[0].padding == "SAME"
  np.testing.assert_allclose(
    _eval(K.convert(strided, "plain")), _eval(strided), rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match=r"layers/0: 'versatile' cannot hold the layer's kernel"):
    K.convert(nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=rngs)), "versatile")
  with pytest.raises(ValueError, match=r"layers/0: cannot become 'rotate4': RotateConv is a 3x3"):
    K.convert(nnx.Sequential(nnx.Conv(3, 4, (5, 5), rngs=rngs)), "rotate4")
  dilated = nnx.Sequential(nnx.Conv(3, 4, (3, 3), kernel_dilation=2, padding=2, rngs=rngs))
  with pytest.raises(ValueError, match=r"layers/0: cannot become 'active': .* takes no dilation"):
    K.convert(dilated, "active")
  transposed = nnx.Sequential(nnx.Conv(3, 4, (3, 3), input_dilation=2, rngs=rngs))
  with pytest.raises(ValueError, match=r"layers/0: input_dilation"):
    K.convert(transposed, "plain")
  with pytest.raises(ValueError, match="unknown conv kind 'acnet'"):
    K.convert(net, "acnet")
  with pytest.raises(TypeError, match="convert takes a flax nnx.Module"):
    K.convert(lambda x: x, "acb")


@pytest.mark.parametrize("kind", ["plain", "acb"])
def test_dilation_groups_bias_and_dtypes_carry_over(kind):
  rngs = nnx.Rngs(0)
  conv = nnx.Conv(
    4,
    6,
    (3, 3),
    kernel_dilation=2,
    padding=2,
    feature_group_count=2,
    param_dtype=jnp.float32,
    precision=HIGHEST,
    rngs=rngs,
  )
  conv.bias.set_value(jnp.linspace(-1, 1, 6))
  net = nnx.Sequential(conv)
  converted = K.convert(net, kind)
  layer = converted.layers[0]
  assert (layer.dilation, layer.groups, layer.stride) == (2, 2, 1)
  x = jax.random.normal(jax.random.key(2), (2, 9, 9, 4))
  np.testing.assert_allclose(_eval(converted, x), _eval(net, x), rtol=1e-5, atol=1e-5)


def test_convert_takes_our_plain_convs_and_a_zoo_model():
  zoo = K.models.create("resnet20", precision="highest")
  converted = K.convert(zoo, "acb", where=lambda path, layer: path.startswith("blocks/0/"))
  assert isinstance(converted.blocks[0].conv1.conv, K.nn.ACBlock)
  assert isinstance(converted.blocks[1].conv1.conv, K.nn.PlainConv)
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  np.testing.assert_allclose(_eval(converted, x), _eval(zoo, x), rtol=1e-4, atol=1e-4)


def _fit(kernel, version):
  done = []
  net = nnx.Sequential(nnx.Conv(1, 1, (3, 3), use_bias=False, rngs=nnx.Rngs(0)))
  net.layers[0].kernel.set_value(jnp.asarray(kernel, jnp.float32).reshape(3, 3, 1, 1))
  converted = K.convert(net, f"rotate{version}", report=done.append)
  return converted.layers[0], done[0]


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  angle=st.integers(0, 179),
  weights=st.lists(st.floats(-2, 2, allow_nan=False, width=32), min_size=3, max_size=3),
)
def test_rotateconv_fits_every_line_kernel_it_can_make_on_its_grid(angle, weights):
  """A kernel RotateConv makes at a whole-degree angle is fitted back exactly (version 4)."""
  w = np.asarray(weights, np.float32).reshape(3, 1, 1)
  kernel = np.asarray(rotate_kernel(w, np.full((1, 1), float(angle), np.float32)))
  hypothesis.assume(np.linalg.norm(kernel) > 1e-3)
  layer, record = _fit(kernel, 4)
  assert not record.preserved and record.kernel_error < 1e-4, record
  np.testing.assert_allclose(
    layer.effective_kernel()[0][..., 0, 0], kernel[..., 0, 0], rtol=1e-4, atol=1e-4
  )


def test_rotateconv_fit_reports_its_error_on_a_kernel_it_cannot_make():
  kernel = np.random.default_rng(0).normal(size=(3, 3))
  for version in (4, 2):
    layer, record = _fit(kernel, version)
    fitted = np.asarray(layer.effective_kernel()[0])[..., 0, 0]
    error = np.linalg.norm(fitted - kernel) / np.linalg.norm(kernel)
    assert 0.1 < record.kernel_error < 1 and record.kernel_error == pytest.approx(error, rel=1e-5)
  # version 2's one shared weight fits a constant line exactly
  line = np.zeros((3, 3))
  line[1] = 0.7
  assert _fit(line, 2)[1].kernel_error < 1e-6


def test_the_certificate_names_the_worst_layer_and_export_refuses_it(tmp_path):
  model = K.convert(_user_net(), "acb")
  deployed = K.deploy(model)
  # a deployed conv that drifted: the certificate finds it at its path
  layer = deployed.heads["down"]
  layer.kernel.set_value(layer.kernel.get_value() * 1.01)
  certificate = K.certify(model, deployed, X)
  assert certificate.worst.path == "heads/down" and certificate.worst.layer == "ACBlock"
  assert 1e-3 < certificate.worst.relative < 0.05
  with pytest.raises(ValueError, match=r"at heads/down \(ACBlock\), above the tolerance 0.001"):
    certificate.check(1e-3)
  with pytest.raises(ValueError, match=r"at heads/down \(ACBlock\)"):
    K.export.save_jax(
      deployed, (12, 12, 3), tmp_path / "m.jaxexport", certificate=certificate, tolerance=1e-3
    )
  assert not (tmp_path / "m.jaxexport").exists()
  good = K.deploy(model)
  cert = K.certify(model, good, input_shape=(12, 12, 3), batch=4)
  assert cert.probe == "random normal, 4 examples"
  path = K.export.save_jax(good, (12, 12, 3), tmp_path / "m.jaxexport", certificate=cert)
  assert K.export.read_certificate(path) == cert
  assert json.loads(cert.to_json())["agreement"] == 1.0
  with pytest.raises(ValueError, match="needs a probe batch or the input_shape"):
    K.certify(model, good)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_certificate_never_passes_a_non_finite_output_at_any_layer(tmp_path, value):
  """One NaN or inf weight in any fused layer of the deployed network, or of the trained one,
  fails the certificate at any tolerance and the export refuses it (it had recorded max_abs 0.0,
  agreement 1.0 and passed)."""
  model = K.convert(_user_net(), "acb")
  paths = [p for p, m in nnx.iter_modules(K.deploy(model)) if hasattr(m, "kernel") and p]
  assert len(paths) >= 2
  for damaged, where in (("deployed", paths), ("trained", paths[:1])):
    for path in where:
      trained, deployed = nnx.clone(model), K.deploy(model)
      target = deployed if damaged == "deployed" else trained
      layer = target
      for key in path:
        layer = layer[key] if isinstance(key, int) else getattr(layer, key, None) or layer[key]
      weights = (
        layer.kernel
        if damaged == "deployed"
        else next(v for _, v in nnx.iter_graph(layer) if isinstance(v, nnx.Param))
      )
      array = np.array(weights.get_value())
      array.reshape(-1)[0] = value
      weights.set_value(jnp.asarray(array))
      certificate = K.certify(trained, deployed, X)
      with pytest.raises(ValueError, match="not finite"):
        certificate.check(1e9)
  with pytest.raises(ValueError, match="not finite"):
    K.export.save_jax(deployed, (12, 12, 3), tmp_path / "m.jaxexport", certificate=certificate)
  assert not (tmp_path / "m.jaxexport").exists()


@pytest.mark.parametrize("kind", ["acb", "active", "rotate4"])
def test_a_conv_shared_by_two_attributes_stays_one_layer_through_convert_and_deploy(kind):
  """`self.b = self.a` is one conv applied twice: convert and deploy keep it one (convert had
  made two ACBs, 163 -> 543 parameters, that diverged after a step)."""

  class Tied(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Conv(4, 4, (3, 3), padding=1, use_bias=False, rngs=rngs)
      self.b = self.a
      self.fc = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.fc(self.b(jax.nn.relu(self.a(x))).mean(axis=(1, 2)))

  net = Tied(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (2, 6, 6, 4))
  converted = K.convert(net, kind, init="fresh")
  assert converted.a is converted.b
  single = K.convert(
    nnx.Conv(4, 4, (3, 3), padding=1, use_bias=False, rngs=nnx.Rngs(0)), kind, init="fresh"
  )
  fc = 4 * 2 + 2
  assert K.models.count_params(converted) == K.models.count_params(single) + fc
  converted.eval()
  deployed = K.deploy(converted)
  assert deployed.a is deployed.b
  np.testing.assert_allclose(deployed(x), converted(x), rtol=1e-4, atol=1e-4)
