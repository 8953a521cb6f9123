"""The model zoo: the papers' parameter counts, costs, and exact deploy for every model x kind."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import kshapes_jax as K
from kshapes_jax.models import count_params, create, list_models, model_cost, spec
from kshapes_jax.models.densenet import DENSENET40_ROTATECONV, DenseNet, DenseNetBC
from kshapes_jax.models.imagenet import ImageNetResNet


def _count(name, **kwargs):
  """Parameters of a model built abstractly (shapes only: fast, no compute)."""
  return count_params(nnx.eval_shape(lambda: create(name, **kwargs)))


def _close(got, paper, tol=0.03):
  assert abs(got - paper) <= tol * paper, (
    f"{got} vs the paper's {paper} ({(got - paper) / paper:+.1%})"
  )


@pytest.mark.parametrize(
  "name, counts, kwargs",
  [
    ("sn", (55e3, 25e3, 13e3), {}),
    ("resnet20", (271e3, 122e3, 63e3), {}),
    ("resnet44", (657e3, 294e3, 148e3), {}),
    ("densenet40", (1.9e6, 0.86e6, 0.43e6), DENSENET40_ROTATECONV),
  ],
)
def test_rotateconv_table1_parameter_counts(name, counts, kwargs):
  for kind, paper in zip(("plain", "rotate4", "rotate2"), counts):
    _close(_count(name, conv=kind, **kwargs), paper)


def test_densenet40_of_huang_et_al_is_not_table1s():
  # The standard DenseNet-40 (growth 12) has ~1.0M parameters; Table I's 1.9M
  # needs growth 17 without transition convs (see DenseNet's docstring).
  assert 1.0e6 < _count("densenet40") < 1.05e6


@pytest.mark.parametrize(
  "variant, weights, memory_kb, flops",
  [
    ("baseline", 4.3e5, 1681.6, 22.93e5),
    ("model1", 4.3e5, 1681.6, 22.93e5),
    ("model2", 2.2e5, 852.0, 12.00e5),
    ("model3", 2.2e5, 852.0, 12.00e5),
    ("v2_model1", 1.18e5, 460.5, 12.17e5),
    ("v2_model3", 0.79e5, 309.1, 12.12e5),
  ],
)
def test_versatile_lenet_tables_2_and_3(variant, weights, memory_kb, flops):
  model = (
    create("lenet") if variant == "baseline" else create("lenet", conv="versatile", variant=variant)
  )
  cost = model_cost(model, (28, 28, 1))
  _close(cost.weights, weights)
  _close(cost.memory_bytes / 1024, memory_kb)
  if variant.startswith("v2"):
    # the paper stores c (not c^) channels per filter and rounds FLOPs its own way
    _close(cost.multiplications, flops, tol=0.035)
  else:
    # Proposition 1 reproduces Table 2 to the paper's last digit (0.01e5)
    assert abs(cost.multiplications - flops) < 0.01e5
    assert abs(cost.memory_bytes / 1024 - memory_kb) < 0.05


def test_versatile_lenet_layer_shapes_follow_the_paper():
  m3 = create("lenet", conv="versatile", variant="model3")
  assert [c.filters for c in m3.convs] == [7, 17, 250]  # 5x5x1x7, 5x5x21x17, 4x4x51x250
  assert [c.out_features for c in m3.convs] == [21, 51, 500]
  v2 = create("lenet", conv="versatile", variant="v2_model1")
  assert [c.filters for c in v2.convs] == [7, 9, 125]  # "5x5x21x9" for layer 2
  with pytest.raises(ValueError, match="variant"):
    create("lenet", conv="versatile", variant="v2_model2")


def test_acu_plain_network_adds_exactly_96_parameters():
  assert _count("acu_plain", conv="active") - _count("acu_plain") == 96


@pytest.mark.parametrize(
  "name, weights, flops", [("alexnet", 6.1e7, 0.7e9), ("resnet50", 2.6e7, 4.1e9)]
)
def test_imagenet_accounting_matches_versatile_table1(name, weights, flops):
  cost = model_cost(create(name), spec(name).input_shape)
  _close(cost.weights, weights)
  _close(cost.multiplications, flops, tol=0.04)


def test_standard_counts_of_the_other_networks():
  _close(_count("resnet56"), 0.85e6)
  _close(_count("resnet110"), 1.7e6)
  _close(_count("wrn16_8"), 11.0e6)
  _close(_count("resnet50"), 25.56e6)


def test_imagenet_counts_are_torchvisions_to_the_parameter():
  # torchvision's resnet18, resnext50_32x4d and densenet121 (weights and BN scales and shifts)
  assert _count("resnet18") == 11_689_512
  assert _count("resnext50_32x4d") == 25_028_904
  assert _count("densenet121") == 7_978_856


# DenseNet-40 compiles a new conv for each of its 36 widths; a 3-layer-per-block
# DenseNet runs the same code. The ImageNet ResNets end in global pooling, so
# 64x64 inputs exercise every layer.
# DenseNet-121 and ResNeXt-50 run the same code with one layer per block.
_BUILD = {
  "densenet40": lambda kind: DenseNet(13, 12, kind, 10, rngs=nnx.Rngs(0), precision="highest"),
  "densenet121": lambda kind: DenseNetBC(
    (1, 1, 1, 1), 32, kind, 10, rngs=nnx.Rngs(0), precision="highest"
  ),
  "resnext50_32x4d": lambda kind: ImageNetResNet(
    (1, 1, 1, 1), 4, kind, 10, rngs=nnx.Rngs(0), groups=32, base_width=4, precision="highest"
  ),
}
_INPUT = {name: (64, 64, 3) for name in ("resnet18", "resnet50", "densenet121", "resnext50_32x4d")}
CASES = [(name, kind) for name in list_models() for kind in spec(name).kinds]


def _only_plain_convs(model):
  shaped = (K.nn.RotateConv, K.nn.ACBlock, K.nn.VersatileConv, K.nn.ActiveConv, K.nn.ConvBN)
  return not any(isinstance(m, shaped) for _, m in nnx.iter_modules(model))


@pytest.mark.parametrize("name, kind", CASES)
def test_deploy_is_exact_for_every_model_and_kind(name, kind, randomize):
  rng = np.random.default_rng(0)
  # float32 exactness: at the backend's default a GPU would compare two TF32 convs
  model = _BUILD[name](kind) if name in _BUILD else create(name, conv=kind, precision="highest")
  randomize(model, rng)
  model.eval()
  deployed = K.deploy(model)
  assert _only_plain_convs(deployed)
  x = jnp.asarray(rng.normal(size=(2, *_INPUT.get(name, spec(name).input_shape))), jnp.float32)
  want, got = model(x), deployed(x)
  rel = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  assert rel < 1e-5, rel
  # the model itself is untouched and still trains
  assert not _only_plain_convs(model) or kind == "plain"


def test_create_errors():
  with pytest.raises(ValueError, match="unknown model 'resnet21'"):
    create("resnet21")
  with pytest.raises(ValueError, match="does not apply to lenet"):
    create("lenet", conv="rotate4")
  assert create("resnet18").fc.out_features == 1000


def test_small_nets_adapt_to_grey_28x28_images():
  quick = K.models.create("cifar_quick", conv="acb", in_channels=1, image_size=28)
  assert quick.fc1.in_features == 64 * 3 * 3  # 28 -> 14 -> 7 -> 3, Caffe's rounded-up pools
  assert quick(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
  assert K.models.create("cifar_quick").fc1.in_features == 64 * 4 * 4
  narrow = K.models.create("acu_plain", conv="active", in_channels=1, width=0.25)
  assert [layer.out_features for layer in narrow.convs] == [12, 12, 24, 24, 48, 48]
  assert narrow.fc1.out_features == 250 and narrow(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
  with pytest.raises(ValueError, match="width must be positive"):
    K.models.create("acu_plain", width=0)
  with pytest.raises(ValueError, match="at least 3x3"):
    K.models.create("cifar_quick", image_size=1)
