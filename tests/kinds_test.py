"""A kind is one module: a toy kind registered from this file alone gets make_conv, conv_bn,
convert, deploy (both targets), certify, both exports, the support matrix, the Linen module, the
trainer's option check and the zoo; and the library never branches on a kind's name or type."""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from jax.typing import DTypeLike

import kshapes_jax as K
from kshapes_jax import support
from kshapes_jax.nn.base import ConvLayer, check_layer, set_bias, set_value, symmetric_padding

HIGHEST = jax.lax.Precision.HIGHEST  # float32 convs compared exactly, on every backend
REPO = Path(__file__).resolve().parents[1]
X = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))


class ScaledConv(ConvLayer):
  """The toy kind: a plain conv times a learned gain per output map (its effective kernel)."""

  preserves = "exact"

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding=None,
    use_bias: bool = False,
    gain_init: float = 1.0,
    groups: int = 1,
    dilation: int = 1,
    precision=None,
    dtype=None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer("ScaledConv", in_features, out_features, kernel_size, stride, groups, rngs)
    self.in_features, self.out_features, self.kernel_size = in_features, out_features, kernel_size
    self.stride, self.groups, self.dilation = stride, groups, dilation
    self.padding = symmetric_padding(padding, kernel_size, dilation=dilation)
    self.set_numerics(precision, dtype, param_dtype)
    shape = (kernel_size, kernel_size, in_features // groups, out_features)
    self.kernel = self.init_weight(rngs, shape, kernel_size * kernel_size * in_features // groups)
    self.gain = nnx.Param(jnp.full((out_features,), gain_init, self.param_dtype))
    self.bias = self.init_bias(out_features) if use_bias else None

  def effective_kernel(self):
    return self.kernel[...] * self.gain[...], None if self.bias is None else self.bias[...]

  def init_from_kernel(self, kernel, bias):
    set_value(self.kernel, kernel)
    set_value(self.gain, jnp.ones_like(self.gain[...]))
    set_bias(self, bias)

  def weight_count(self) -> int:
    return int(self.kernel[...].size + self.gain[...].size)


@pytest.fixture
def scaled():
  kind = K.nn.register_kind("scaled", ScaledConv)
  try:
    yield kind
  finally:
    K.nn.unregister_kind("scaled")


class UserNet(nnx.Module):
  """A user's own network, flax.nnx only: a biased 'SAME' conv, a BN, a strided int-padded conv,
  a 1x1 conv that stays."""

  def __init__(self, rngs: nnx.Rngs):
    conv = lambda *a, **k: nnx.Conv(*a, precision=HIGHEST, rngs=rngs, **k)
    self.stem = conv(3, 8, (3, 3), padding="SAME", use_bias=True)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.down = conv(8, 8, (3, 3), strides=2, padding=1)
    self.point = conv(8, 4, (1, 1))
    self.fc = nnx.Linear(4, 10, precision=HIGHEST, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn(self.stem(x)))
    x = jax.nn.relu(self.point(self.down(x)))
    return self.fc(x.mean(axis=(1, 2)))


def _eval(model, x=X):
  view = nnx.clone(model)
  view.eval()
  return view(x)


def test_the_toy_kind_builds_by_name_with_its_options(scaled):
  layer = K.nn.make_conv("scaled", 3, 5, 3, gain_init=2.0, rngs=nnx.Rngs(0))
  assert isinstance(layer, ScaledConv) and np.all(layer.gain[...] == 2.0)
  assert isinstance(K.nn.conv_bn("scaled", 3, 5, 3, rngs=nnx.Rngs(0)), K.nn.ConvBN)
  assert scaled.options() == {"gain_init": float, "param_dtype": str}
  assert "gain_init" in K.nn.conv_options()
  with pytest.raises(ValueError, match="unknown conv kind 'scaledd'"):
    K.nn.make_conv("scaledd", 3, 5, 3, rngs=nnx.Rngs(0))


def test_the_toy_kind_converts_trains_deploys_certifies_and_exports(scaled, tmp_path):
  net = UserNet(nnx.Rngs(0))
  net.train()
  net(X)  # BN statistics away from their start
  done = []
  model = K.convert(net, "scaled", report=done.append)
  assert sorted((r.path, r.kind, r.preserved) for r in done) == [
    ("down", "scaled", True),
    ("stem", "scaled", True),
  ]
  assert isinstance(model.point, nnx.Conv)  # 1x1 stays
  np.testing.assert_allclose(_eval(model), _eval(net), rtol=1e-5, atol=1e-5)

  # a training step moves the gains
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.mean(m(X) ** 2))(model)
  optimizer.update(model, grads)
  assert not np.allclose(model.down.gain[...], 1.0)  # (a BN follows the stem: scale-free)

  model.eval()
  with pytest.raises(ValueError, match="(stem|down) is a ScaledConv: export kshapes_jax.deploy"):
    K.export.check_shippable(model, deployed=True)
  for to, conv_type in (("kshapes", K.nn.PlainConv), ("flax", nnx.Conv)):
    shipped = K.deploy(model, to=to)
    assert type(shipped.stem) is conv_type and type(shipped.down) is conv_type
    np.testing.assert_allclose(shipped(X), model(X), rtol=1e-5, atol=1e-5)
  shipped = K.deploy(model)
  certificate = K.certify(model, shipped, X)
  assert sorted((e.path, e.layer) for e in certificate.layers) == [
    ("down", "ScaledConv"),
    ("stem", "ScaledConv"),
  ]
  certificate.check(1e-5)
  path = K.export.save_jax(
    shipped, (12, 12, 3), tmp_path / "net.jaxexport", certificate=certificate
  )
  np.testing.assert_allclose(K.export.load_jax(path)(X), shipped(X), rtol=1e-5, atol=1e-5)
  assert K.export.read_certificate(path) == certificate
  pytest.importorskip("onnx")
  proto = K.export.to_onnx(shipped, (12, 12, 3), certificate=certificate)
  assert proto.graph.node


def test_the_toy_kind_has_a_zoo_model_and_a_support_row(scaled):
  assert "scaled" in K.models.spec("resnet20").kinds  # a model that takes any kind
  assert "scaled" in K.models.spec("cifar_quick").kinds  # any kind that builds 5x5 layers
  assert "scaled" not in K.models.spec("lenet").kinds  # the versatile paper's, named
  model = K.models.create("resnet20", conv="scaled", precision="highest", rngs=nnx.Rngs(0))
  kinds = {type(m).__name__ for _, m in nnx.iter_modules(model)}
  assert "ScaledConv" in kinds and "ConvBN" in kinds
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  model.eval()
  np.testing.assert_allclose(K.deploy(model)(x), model(x), rtol=1e-4, atol=1e-4)
  # a network without BN gives the toy kind a bias, as a plain conv
  sn = K.models.create("sn", conv="scaled", rngs=nnx.Rngs(0))
  assert all(conv.bias is not None for conv in sn.convs)
  assert support.check("scaled", support.GEOMETRIES[0]) is None
  assert support.check("scaled", support.GEOMETRIES[4]) is None  # stride 2, int padding


def test_the_toy_kind_is_a_linen_module(scaled):
  class Net(linen.Module):
    deployed: bool = False

    @linen.compact
    def __call__(self, x, train: bool):
      conv = K.linen.ShapedConv(4, 3, kind="scaled", precision=HIGHEST, deployed=self.deployed)
      return conv(x, train=train)

  variables = Net().init(jax.random.key(0), X, train=False)
  assert set(variables["params"]["ShapedConv_0"]["layer"]) == {"kernel", "gain"}
  y = Net().apply(variables, X, train=False)
  shipped = K.linen.deploy(Net(), variables, X, train=False)
  deployed = Net(deployed=True).apply(shipped, X, train=False)
  np.testing.assert_allclose(deployed, y, rtol=1e-5, atol=1e-5)


def test_the_trainer_takes_the_toy_kind_and_its_options(scaled):
  from train.trainer import settings

  config = {"model": "resnet20", "conv": "scaled", "conv_options": {"gain_init": 0.5}}
  assert settings.read(config).conv_options == {"gain_init": 0.5}
  with pytest.raises(settings.ConfigError, match="conv_options.radius does not apply to conv"):
    settings.read({"model": "resnet20", "conv": "scaled", "conv_options": {"radius": 2}})


def test_a_kind_is_registered_once_with_a_name_and_options_of_one_type():
  with pytest.raises(ValueError, match="registered already"):
    K.nn.register_kind("acb", ScaledConv)
  with pytest.raises(ValueError, match="lower_snake_case"):
    K.nn.register_kind("Scaled Conv", ScaledConv)
  with pytest.raises(ValueError, match="ConvLayer subclass"):
    K.nn.register_kind("scaled", nnx.Conv)

  class Clashing(ScaledConv):
    def __init__(self, *args, radius: str = "big", **kwargs):  # the ACU's radius is an int
      super().__init__(*args, **kwargs)

  with pytest.raises(ValueError, match="option 'radius' is a str"):
    K.nn.register_kind("clashing", Clashing)
  assert "clashing" not in K.nn.CONV_KINDS
  with pytest.raises(ValueError, match="fixes version=4"):
    K.nn.make_conv("rotate4", 3, 4, 3, version=2, rngs=nnx.Rngs(0))


# The papers' own networks are defined for a kind by their paper: the versatile paper's (its
# LeNet Models 1-3, Versatile-AlexNet, the v1/v2 variants) and ConvNeXt-dcls (its element
# counts and shared position sets); nothing else names a kind.
_PAPER_NETWORKS = {
  "kshapes_jax/models/small.py": ["versatile"],
  "kshapes_jax/models/alexnet.py": ["versatile"],
  "kshapes_jax/models/layers.py": ["versatile"],
  "kshapes_jax/models/convnext.py": ["dcls"],
}
# the kinds' own modules, the papers' analyses of them and the official codes' state dicts
_PER_KIND = ("kshapes_jax/nn/", "kshapes_jax/analysis/", "kshapes_jax/interop.py")


def test_the_library_asks_kinds_through_the_protocol_not_by_name_or_type():
  names = set(K.nn.kind_names())
  layers = {kind.layer.__name__ for kind in K.nn.CONV_KINDS.values()} - {"PlainConv"}
  found = []
  for path in sorted((REPO / "kshapes_jax").rglob("*.py")):
    rel = path.relative_to(REPO).as_posix()
    if rel.startswith(_PER_KIND):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Compare):
        strings = [
          c.value
          for c in ast.walk(node)
          if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in names
        ]
        if strings and strings != _PAPER_NETWORKS.get(rel):
          found.append(f"{rel}:{node.lineno} compares with {strings}")
      if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
        classes = ast.walk(node.args[1])
        named = {getattr(n, "id", getattr(n, "attr", None)) for n in classes} & layers
        if named:
          found.append(f"{rel}:{node.lineno} isinstance of {sorted(named)}")
  assert not found, "\n".join(found)
