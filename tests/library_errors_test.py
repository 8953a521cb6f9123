"""The library's answers to what it cannot mean: each bad input and the one message a user sees
(conv, kernels, layers, models, the exports), from the hostile-input reviews."""

import jax.numpy as jnp
import numpy as np
import pytest
import runs
from flax import nnx

import kshapes_jax as K
from kshapes_jax import conv as conv_lib
from kshapes_jax import kernels
from kshapes_jax import nn as knn

X = jnp.ones((1, 6, 6, 2))
RNGS = nnx.Rngs(0)
BN = kernels.BatchNormParams(jnp.ones(2), jnp.zeros(2), jnp.zeros(2), jnp.ones(2))

LIBRARY_ERRORS = [
  (
    "conv(stride=1.5)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), stride=1.5),
    r"stride must be a positive int or a pair of them, got 1.5",
  ),
  (
    "conv(padding=-1)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), padding=-1),
    r"padding must be .* an int >= 0 .* got -1",
  ),
  (
    "conv(padding=((0, -1), (0, 0)))",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), padding=((0, -1), (0, 0))),
    r"padding must be .* got \(\(0, -1\), \(0, 0\)\)",
  ),
  (
    "conv(padding=True)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), padding=True),
    r"padding must be .* got True",
  ),
  (
    "conv(groups=True)",
    lambda: conv_lib.conv(X, jnp.ones((3, 3, 2, 2)), groups=True),
    r"groups = True",
  ),
  (
    "PlainConv(k=-3)",
    lambda: knn.PlainConv(2, 2, -3, rngs=RNGS),
    r"PlainConv kernel_size must be an int >= 1",
  ),
  (
    "PlainConv(out=-8)",
    lambda: knn.PlainConv(2, -8, rngs=RNGS),
    r"PlainConv out_features must be an int >= 1",
  ),
  (
    "PlainConv(in=4.5)",
    lambda: knn.PlainConv(4.5, 2, rngs=RNGS),
    r"PlainConv in_features must be an int >= 1",
  ),
  ("PlainConv(no rngs)", lambda: knn.PlainConv(2, 2), r"PlainConv needs rngs=nnx.Rngs\(seed\)"),
  (
    "PlainConv(padding=-1)",
    lambda: knn.PlainConv(2, 2, padding=-1, rngs=RNGS),
    r"padding must be .* got -1",
  ),
  (
    "PlainConv(stride=0)",
    lambda: knn.PlainConv(2, 2, stride=0, rngs=RNGS),
    r"PlainConv stride must be",
  ),
  (
    "ACBlock(padding=True)",
    lambda: knn.ACBlock(2, 2, padding=True, rngs=RNGS),
    r"ACBlock padding must be an int",
  ),
  (
    "RotateConv(out=0)",
    lambda: knn.RotateConv(2, 0, rngs=RNGS),
    r"RotateConv out_features must be an int >= 1",
  ),
  (
    "VersatileConv(no rngs)",
    lambda: knn.VersatileConv(2, 4, rngs=None),
    r"VersatileConv needs rngs",
  ),
  (
    "ActiveConv(synapses=0)",
    lambda: knn.ActiveConv(2, 2, synapses=0, rngs=RNGS),
    r"ActiveConv synapses must be an int >= 2, got 0",
  ),
  (
    "ActiveConv(synapses=-1)",
    lambda: knn.ActiveConv(2, 2, synapses=-1, rngs=RNGS),
    r"synapses must be an int >= 2",
  ),
  (
    "ActiveConv(position_groups=0)",
    lambda: knn.ActiveConv(2, 2, position_groups=0, rngs=RNGS),
    r"ActiveConv position_groups must be an int >= 1, got 0",
  ),
  (
    "ActiveConv(radius=True)",
    lambda: knn.ActiveConv(2, 2, radius=True, rngs=RNGS),
    r"radius must be an int >= 1",
  ),
  (
    "ActiveConv(radius=100000)",
    lambda: knn.ActiveConv(2, 2, radius=100000, rngs=RNGS),
    r"radius 100000 gives a \(200001\)\^2 x 4 kernel",
  ),
  (
    "create(num_classes=-5)",
    lambda: K.models.create("sn", num_classes=-5),
    r"num_classes must be an int >= 1",
  ),
  (
    "create(num_classes=0)",
    lambda: K.models.create("sn", num_classes=0),
    r"num_classes must be an int >= 1, got 0",
  ),
  ("create(rngs=0)", lambda: K.models.create("sn", rngs=0), r"sn needs rngs=nnx.Rngs"),
  (
    "active_kernel(radius=100000)",
    lambda: kernels.active_kernel(jnp.ones((9, 2, 3)), jnp.zeros((9, 2)), 100000),
    r"radius 100000 gives .* more than the 2\^31 - 1 elements",
  ),
  (
    "active_kernel(radius=True)",
    lambda: kernels.active_kernel(jnp.ones((9, 2, 3)), jnp.zeros((9, 2)), True),
    r"radius must be an int >= 1, got True",
  ),
  (
    "active_conv_gather(radius=False)",
    lambda: conv_lib.active_conv_gather(X, jnp.ones((9, 2, 2)), jnp.zeros((9, 2)), radius=False),
    r"radius must be an int >= 1, got False",
  ),
  (
    "fuse_bn(var=-1)",
    lambda: kernels.fuse_bn(jnp.ones((3, 3, 1, 2)), *BN._replace(var=-jnp.ones(2))),
    r"var must be > -eps .* got min -1.0",
  ),
  (
    "fuse_acb(eps=-1)",
    lambda: kernels.fuse_acb(jnp.ones((3, 3, 1, 2)), BN, eps=-1.0),
    r"eps must be a finite float >= 0, got -1.0",
  ),
  (
    "fuse_bn(eps=nan)",
    lambda: kernels.fuse_bn(jnp.ones((3, 3, 1, 2)), *BN, eps=float("nan")),
    r"eps must be",
  ),
]


def _sn(conv="plain", train=False):
  model = K.models.create("sn", conv=conv, rngs=nnx.Rngs(0))
  model.train() if train else model.eval()
  return model


SHIPPING_ERRORS = [
  (
    "save_onnx(not deployed)",
    lambda tmp: K.export.save_onnx(_sn("rotate4"), (28, 28, 1), tmp / "m.onnx"),
    ValueError,
    r"ONNX export takes the deployed network, and .* is a RotateConv: export "
    r"kshapes_jax.deploy\(model\)",
  ),
  (
    "save_onnx(train mode)",
    lambda tmp: K.export.save_onnx(
      K.models.create("resnet20", rngs=nnx.Rngs(0)), (32, 32, 3), tmp / "m.onnx"
    ),
    ValueError,
    r"the model is in train mode \(.*BatchNorm on batch statistics\)",
  ),
  (
    "save_jax(normalize of 3 channels, 1-channel images)",
    lambda tmp: K.export.save_jax(
      K.deploy(_sn()), (28, 28, 1), tmp / "m.jax", normalize=((0.5,) * 3, (0.2,) * 3)
    ),
    ValueError,
    r"normalize's mean has 3 values; the images have 1 channels",
  ),
  (
    "a model fed another image size",
    lambda tmp: _sn()(jnp.zeros((2, 32, 32, 1))),
    ValueError,
    r"Dense\(\d+ -> \d+\) expects inputs of \d+ features .* of another size than it was built",
  ),
  ("deploy(not a module)", lambda tmp: K.deploy({"kernel": 1}), TypeError, "deploy takes a flax"),
  (
    "save_onnx(bf16)",
    lambda tmp: K.export.save_onnx(
      K.deploy(K.models.create("sn", dtype="bfloat16", rngs=nnx.Rngs(0))), (28, 28, 1), tmp / "m"
    ),
    ValueError,
    r"computes in bfloat16, .* export kshapes_jax.export.in_float32\(model\)",
  ),
]


@pytest.mark.parametrize(
  "case, call, error, message", SHIPPING_ERRORS, ids=[c[0] for c in SHIPPING_ERRORS]
)
def test_shipping_a_model_it_cannot_says_what_to_do(tmp_path, case, call, error, message):
  pytest.importorskip("onnx")
  with pytest.raises(error, match=message):
    call(tmp_path)
  assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_bfloat16_run_exports_to_onnx_in_float32(tmp_path):
  pytest.importorskip("onnxruntime")
  from train import export

  runs.train(tmp_path, dtype="bfloat16", num_steps=2)
  results = export.export_run(tmp_path, ("onnx", "jax"), check_images=0)
  assert results["onnx"]["dtype"] == "float32" and results["onnx"]["agreement"] == 1.0
  assert results["jax"]["dtype"] == "bfloat16" and results["jax"]["agreement"] == 1.0
  assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
    "model.jaxexport",
    "model.jaxexport.certificate.json",
    "model.onnx",
  ]
  # the deployed bf16 network against the trained one, in the ONNX file and next to the artifact
  import kshapes_jax as K

  for name in ("model.onnx", "model.jaxexport"):
    certificate = K.export.read_certificate(tmp_path / "export" / name)
    assert certificate == results["onnx"]["certificate"] and certificate.agreement == 1.0
    assert certificate.logits_relative < K.certificate.TOLERANCE["bfloat16"]


LIBRARY_ERRORS += [
  (
    "conv(NCHW input)",
    lambda: conv_lib.conv(jnp.zeros((2, 3, 8, 8)), jnp.zeros((3, 3, 3, 4))),
    r"x \(2, 3, 8, 8\) looks NCHW \(PyTorch's layout\): pass NHWC, x.transpose\(0, 2, 3, 1\)",
  ),
  (
    "conv(OIHW kernel)",
    lambda: conv_lib.conv(jnp.zeros((2, 8, 8, 3)), jnp.zeros((4, 3, 5, 5))),
    r"the kernel \(4, 3, 5, 5\) looks OIHW .* kernel.transpose\(2, 3, 1, 0\)",
  ),
]


def test_a_wrong_channel_count_with_an_hwio_kernel_gives_no_layout_hint():
  # a 3x3 kernel's width equals the 3 input channels: it looked like OIHW to the hint
  with pytest.raises(ValueError) as info:
    K.models.create("sn", rngs=nnx.Rngs(0))(jnp.zeros((2, 28, 28, 3)))
  assert "x has C = 3 channels" in str(info.value)
  assert "OIHW" not in str(info.value) and "NCHW" not in str(info.value)


@pytest.mark.parametrize("case, call, message", LIBRARY_ERRORS, ids=[c[0] for c in LIBRARY_ERRORS])
def test_library_rejects_what_it_cannot_mean_with_a_message_naming_the_argument(
  case, call, message
):
  with pytest.raises(ValueError, match=message):
    call()


def test_layers_crop_internally_where_their_own_padding_asks_for_it(rng):
  # padding 0 gives the ACB's 1x3 branch a row pad of -1 and a deployed small-radius ACU too;
  # the layers may crop, a user's padding may not
  x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
  acb = knn.ACBlock(3, 4, padding=0, rngs=nnx.Rngs(1))
  assert acb(x).shape == (2, 5, 5, 4)
  acu = knn.ActiveConv(3, 4, kernel_size=5, padding=0, synapses=9, radius=1, rngs=nnx.Rngs(1))
  deployed = acu.deploy()
  assert deployed.padding == -1
  np.testing.assert_allclose(deployed(x), acu(x), atol=1e-5)


def test_integer_inputs_to_the_acu_give_float_bilinear_weights():
  # integers used to make the bilinear weights integers: every synapse landed on its cell corner
  pos = np.array([[0.0, 0.0], [1.5, 0.5], [-0.5, 1.0]], np.float32)
  w_int, w_float = np.ones((3, 1, 1), np.int32), np.ones((3, 1, 1), np.float32)
  k_int, k_float = kernels.active_kernel(w_int, pos, 2), kernels.active_kernel(w_float, pos, 2)
  assert jnp.issubdtype(k_int.dtype, jnp.floating)
  np.testing.assert_array_equal(k_int, k_float)
  assert float(k_int[2, 3, 0, 0]) == 0.25  # (1.5, 0.5): a quarter on each of four taps
  x_int = np.arange(49, dtype=np.int32).reshape(1, 7, 7, 1)
  y_int = conv_lib.active_conv_gather(x_int, w_int, pos, radius=2)
  y_float = conv_lib.active_conv_gather(x_int.astype(np.float32), w_float, pos, radius=2)
  assert jnp.issubdtype(y_int.dtype, jnp.floating)
  np.testing.assert_allclose(y_int, y_float)
  assert float(y_int[0, 3, 3, 0]) == 24 + (24 + 1.5 + 7 * 0.5) + (24 - 0.5 + 7)
