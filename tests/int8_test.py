"""kshapes_jax.int8: a briefly trained net of every kind, deployed, written as ONNX, quantized to
INT8 by onnxruntime and measured against its float32 file on real Fashion-MNIST test images; the
calibration set's refusals; the report's judgement."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import runs
from flax import nnx

import kshapes_jax as K
from kshapes_jax.certificate import Int8Report, LayerError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

_DATA = np.load(runs.REPO / "tests" / "data" / "fashion_mnist_test96.npz")
IMAGES, LABELS = _DATA["images"], _DATA["labels"].astype(np.int32)
NORMALIZE = ((0.286,), (0.353,))
# an INT8 file of a briefly trained SN agrees with its float32 file on at least this share of the
# 96 images (measured: 0.98-1.0 for every kind); fewer would be a broken quantization
MIN_AGREEMENT = 0.9


def _trained(conv: str) -> nnx.Module:
  """SN of kind `conv` after 40 Adam steps on the 96 images (train mode, batch 32)."""
  model = K.models.create("sn", conv=conv, rngs=nnx.Rngs(0))
  model.train()
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  x = jnp.asarray((IMAGES.astype(np.float32) / 255 - 0.286) / 0.353)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    def loss(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

    optimizer.update(model, nnx.grad(loss)(model))

  for i in range(40):
    j = (i % 3) * 32
    step(model, optimizer, x[j : j + 32], jnp.asarray(LABELS[j : j + 32]))
  model.eval()
  return model


# by default the kinds whose fused kernels differ most from a plain conv's (ACB's and RepVGG's
# branches summed into one kernel, DCLS's interpolated wide kernels); every kind with -m slow
_DEFAULT_KINDS = ("acb", "repvgg", "dcls")


@pytest.mark.parametrize(
  "conv", runs.kinds(slow=tuple(k for k in K.nn.kind_names() if k not in _DEFAULT_KINDS))
)
def test_every_kind_quantizes_runs_in_onnxruntime_and_agrees_with_its_float_file(tmp_path, conv):
  trained = _trained(conv)
  shipped = K.deploy(trained)
  fp32 = K.export.save_onnx(shipped, (28, 28, 1), tmp_path / "sn.onnx", normalize=NORMALIZE)
  int8 = K.int8.quantize_onnx(fp32, tmp_path / "sn.int8.onnx", IMAGES[:64])
  assert int8.stat().st_size < 0.6 * fp32.stat().st_size  # int8 weights: a quarter, plus scales
  report = K.int8.measure(fp32, int8, IMAGES, LABELS, calibration=64, model=shipped)
  assert report.images == 96 and report.calibration == 64
  assert report.agreement >= MIN_AGREEMENT, report
  assert report.drop is not None and report.drop <= 100 * (1 - MIN_AGREEMENT)
  # the float32 file's top-1 is the deployed network's
  with jax.default_matmul_precision("highest"):
    logits = K.export.forward(shipped, NORMALIZE)(IMAGES)
  assert report.top1_fp32 == pytest.approx(float(np.mean(np.argmax(logits, -1) == LABELS)))
  # each conv and the classifier, named by its path in the deployed network, in call order
  assert [e.path for e in report.layers] == ["convs/0", "convs/1", "convs/2", "convs/3", "fc"]
  assert [e.layer for e in report.layers] == ["Conv"] * 4 + ["Gemm"]
  assert all(0 < e.relative < 0.2 for e in report.layers), report.layers
  # the JAX route: the same network quantized by Qwix, calibrated on the same 64 images
  x = (IMAGES.astype(np.float32) / 255 - 0.286) / 0.353
  quantized = K.int8.quantize_jax(trained, x[:64])
  jax_logits = nnx.jit(lambda q, x: q(x))(quantized, jnp.asarray(x))
  assert float(np.mean(np.argmax(jax_logits, -1) == np.argmax(logits, -1))) >= MIN_AGREEMENT


_BAD = {
  "empty": (np.zeros((0, 28, 28, 1), np.uint8), "empty"),
  "a list of nothing": ([], "array"),
  "one image without its batch axis": (IMAGES[0], "array (N, 28, 28, 1)"),
  "another size": (np.zeros((4, 32, 32, 1), np.uint8), "array (N, 28, 28, 1)"),
  "RGB": (np.zeros((4, 28, 28, 3), np.uint8), "array (N, 28, 28, 1)"),
  "a NaN": (np.where(np.arange(28)[:, None] == 3, np.nan, IMAGES[:4] / 1.0), "NaN"),
  "an infinity": (np.full((2, 28, 28, 1), np.inf), "NaN or an infinity"),
  "normalized floats": (IMAGES[:4] / 255.0, "uint8"),
  "values above 255": (IMAGES[:4].astype(np.int32) + 255, "uint8"),
  "strings": (np.full((2, 28, 28, 1), "a"), "numbers"),
}


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
  model = K.models.create("sn", conv="plain", rngs=nnx.Rngs(0))
  model.eval()
  path = tmp_path_factory.mktemp("fp32") / "sn.onnx"
  return K.export.save_onnx(K.deploy(model), (28, 28, 1), path, normalize=NORMALIZE)


@pytest.mark.parametrize("case", sorted(_BAD))
def test_a_bad_calibration_set_is_one_clear_error_and_writes_nothing(float_file, tmp_path, case):
  images, says = _BAD[case]
  out = tmp_path / "sn.int8.onnx"
  with pytest.raises(ValueError, match="calibration") as e:
    K.int8.quantize_onnx(float_file, out, images)
  assert says in str(e.value)
  assert not out.exists()


def test_the_jax_route_refuses_an_empty_or_non_finite_calibration_batch():
  model = K.models.create("sn", conv="plain", rngs=nnx.Rngs(0))
  model.eval()
  with pytest.raises(ValueError, match="at least one input"):
    K.int8.quantize_jax(model, np.zeros((0, 28, 28, 1), np.float32))
  with pytest.raises(ValueError, match="NaN or an infinity"):
    K.int8.quantize_jax(model, np.full((2, 28, 28, 1), np.nan, np.float32))


def _input_scales(quantized) -> dict[str, float]:
  """Each quantized layer's static input scale (Qwix's `..._lhs_scale` parameter), by path."""
  return {
    "/".join(map(str, path[:-2])): float(np.max(v.get_value()))
    for path, v in nnx.to_flat_state(nnx.state(quantized))
    if str(path[-2]).endswith("_lhs_scale")
  }


def test_the_jax_routes_activation_range_is_the_largest_over_the_calibration_images():
  """Each layer's static input range is its largest magnitude over the whole batch in the float
  network (the one image that reaches it sets it), as onnxruntime's min-max takes it, not
  Qwix's mean over the images of each one's largest, which clips the images above that mean."""
  model = K.models.create("sn", conv="plain", rngs=nnx.Rngs(0))
  model.eval()
  x = np.random.default_rng(0).normal(size=(6, 28, 28, 1)).astype(np.float32)
  x *= np.array([1, 1, 4, 1, 0.5, 2], np.float32)[:, None, None, None]  # images far apart
  batch = _input_scales(K.int8.quantize_jax(model, x))
  each = [_input_scales(K.int8.quantize_jax(model, x[i : i + 1])) for i in range(len(x))]
  assert list(batch) == ["convs/0", "convs/1", "convs/2", "convs/3", "fc"]
  for path, scale in batch.items():
    assert scale == pytest.approx(max(e[path] for e in each), rel=1e-6), path
    assert scale > 1.2 * np.mean([e[path] for e in each]), path  # the mean would clip


def test_whole_number_floats_in_range_are_taken_as_the_pixels_they_are(float_file):
  x = K.int8.check_images(IMAGES[:3].astype(np.float64), float_file)
  assert x.dtype == np.uint8
  np.testing.assert_array_equal(x, IMAGES[:3])


def _report(**changes) -> Int8Report:
  base = dict(
    layers=(LayerError("convs/0", "Conv", 0.1, 0.01), LayerError("fc", "Gemm", 0.5, 0.05)),
    logits_max_abs=0.5,
    logits_relative=0.05,
    agreement=0.99,
    top1_fp32=0.90,
    top1_int8=0.885,
    images=1000,
    calibration=512,
    scheme=K.int8.SCHEME,
  )
  return Int8Report(**{**base, **changes})


def test_the_report_refuses_a_drop_above_its_tolerance_naming_the_worst_layer():
  _report().check(max_drop=1.6)
  with pytest.raises(ValueError, match=r"1\.50 points of top-1 lost.*fc \(0\.05 relative\)"):
    _report().check(max_drop=1.0)
  # without labels the agreement is judged
  _report(top1_fp32=None, top1_int8=None, agreement=0.995).check(max_drop=1.0)
  with pytest.raises(ValueError, match="3.00 of its predictions differ"):
    _report(top1_fp32=None, top1_int8=None, agreement=0.97).check(max_drop=1.0)
  for bad in (dict(logits_relative=math.nan), dict(agreement=math.nan)):
    with pytest.raises(ValueError, match="not finite"):
      _report(**bad).check(max_drop=100.0)
  assert _report().drop == pytest.approx(1.5)


def test_an_int8_file_in_its_session_computes_its_qdq_arithmetic_where_u8s8_pairs_saturate(
  tmp_path,
):
  """Every weight of the first conv positive and of one size, so that each pair of them is near
  127 in int8: on x86 without VNNI onnxruntime's u8 x s8 pair sums saturate on bright pixels in a
  default session (measured here: 0.30 of the logits' scale off, 92% of predictions kept).
  `K.int8.session` must compute what the file's QuantizeLinear / DequantizeLinear say, i.e. what
  the file computes with onnxruntime's graph optimizations off (no fused int8 kernels)."""
  import onnxruntime as ort

  model = K.models.create("sn", conv="plain", rngs=nnx.Rngs(0))
  model.eval()
  shipped = K.deploy(model)
  shipped.convs[0].kernel[...] = jnp.abs(shipped.convs[0].kernel[...]) + 0.5
  fp32 = K.export.save_onnx(shipped, (28, 28, 1), tmp_path / "sn.onnx", normalize=NORMALIZE)
  int8 = K.int8.quantize_onnx(fp32, tmp_path / "sn.int8.onnx", IMAGES[:64])
  literal = ort.SessionOptions()
  literal.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
  want = ort.InferenceSession(str(int8), literal, providers=["CPUExecutionProvider"]).run(
    None, {"images": IMAGES}
  )[0]
  got = K.int8.session(int8).run(None, {"images": IMAGES})[0]
  # the fused kernels round each requantization once where the literal graph rounds in float:
  # measured 0.018 of the logits' scale apart
  assert np.max(np.abs(got - want)) <= 0.04 * np.max(np.abs(want))
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  # the report says how it ran the file and measures a default session beside it
  report = K.int8.measure(fp32, int8, IMAGES, LABELS)
  assert report.session_config == ("session.x64quantprecision=1",)
  assert report.top1_int8 == pytest.approx(float(np.mean(got.argmax(-1) == LABELS)))
  assert report.top1_int8_default is not None and report.agreement_default is not None
  # its new fields survive the certificate's JSON (a tuple comes back from a list)
  assert Int8Report.from_dict(json.loads(json.dumps(dataclasses.asdict(report)))) == report
