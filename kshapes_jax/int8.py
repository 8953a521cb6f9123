"""INT8 of a shipped network: onnxruntime's static post-training quantization of our ONNX file,
and what it costs (accuracy, prediction agreement, each layer's error) as a certificate records it.

  K.export.save_onnx(shipped, (28, 28, 1), "sn.onnx", normalize=(mean, std))
  K.int8.quantize_onnx("sn.onnx", "sn.int8.onnx", calibration_images)   # uint8 NHWC, e.g. 512
  report = K.int8.measure("sn.onnx", "sn.int8.onnx", test_images, test_labels, model=shipped)
  report.check(max_drop=1.0)   # ValueError above 1 point of top-1 lost

The quantization is onnxruntime's (`onnxruntime.quantization.quantize_static`), in its QDQ
format: weights int8 symmetric per output channel, activations int8 with static ranges (the
min and max over the calibration images), every Conv and Gemm quantized (S8S8). Before it the
file is pre-processed as onnxruntime asks (its graph optimizations: the NHWC transposes around
each conv and the bias additions fold into the Convs).

Run an INT8 file with `session(path)`, or pass `SESSION_CONFIG` to your own
`onnxruntime.SessionOptions`: on x86 CPUs without VNNI (AVX2, and AVX-512 before VNNI)
onnxruntime computes int8 convolutions as u8 x s8 products summed in pairs into int16
(VPMADDUBSW), which saturate where both weights of a pair are large; its
`session.x64quantprecision` entry makes it use u8 x u8 for those layers instead. In a default
session a file can lose a point of top-1 there that the same file does not lose on other CPUs
(measured on a trained Cifar-quick: 91.27 against 92.32, float32 92.31). `measure` reports both.

The other route, `quantize_jax`, quantizes the same network in JAX with Qwix, for comparison
(`train.export --int8` measures both), with the same ranges' rule: each layer's input range is
its largest magnitude over the calibration images (`JAX_SCHEME`). Both need the `int8` extra
(`pip install "kshapes-jax[int8]"`: onnx, onnxruntime and qwix).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from kshapes_jax._modules import map_modules, path_str
from kshapes_jax.certificate import Int8Report, LayerError
from kshapes_jax.nn.base import ConvLayer

__all__ = [
  "JAX_SCHEME",
  "Int8Report",
  "SCHEME",
  "SESSION_CONFIG",
  "check_images",
  "layer_paths",
  "measure",
  "quantize_jax",
  "quantize_onnx",
  "session",
  "write_certificate",
]

SCHEME = (
  "onnxruntime static QDQ: int8 weights symmetric per output channel, int8 activations "
  "(min-max over the calibration images)"
)
JAX_SCHEME = (
  "Qwix static PTQ: int8 weights symmetric per output channel, int8 activations symmetric "
  "(absmax over the calibration images)"
)
# onnxruntime's x86 int8 kernels without VNNI saturate u8 x s8 pair sums (the module's docstring);
# this entry makes them compute those layers exactly (no effect on other CPUs)
SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}
# the same as an Int8Report records it ("key=value" each)
SESSION_ENTRIES: tuple[str, ...] = tuple(f"{k}={v}" for k, v in SESSION_CONFIG.items())
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # the layers whose outputs the report measures
_LAYERS = (ConvLayer, nnx.Conv, nnx.Linear)  # what those ops are in a deployed network


def _input_of(path: str | Path) -> tuple[np.dtype, tuple[int | None, ...]]:
  """The ONNX file's input: its dtype and shape (None for a symbolic dimension)."""
  import onnx
  from onnx import helper

  graph = onnx.load(str(path), load_external_data=False).graph
  t = graph.input[0].type.tensor_type
  dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
  return np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims


def check_images(images: Any, path: str | Path, what: str = "calibration") -> np.ndarray:
  """The images as the ONNX file at `path` takes them, or one ValueError saying what is wrong.

  A set of images is refused when it is not an array of the file's image shape (N, H, W, C),
  is empty, holds a NaN or an infinity, or does not fit the file's input dtype (a uint8 input:
  whole numbers in 0..255).
  """
  dtype, dims = _input_of(path)
  image = ", ".join(str(d) for d in dims[1:])  # H, W, C
  want = f"(N, {image})"
  try:
    x = np.asarray(images)
  except Exception as e:
    raise ValueError(f"the {what} images must be an array {want}: {e}") from e
  if x.dtype == object or x.ndim != len(dims) or tuple(x.shape[1:]) != tuple(dims[1:]):
    raise ValueError(f"the {what} images must be an array {want}, got shape {x.shape}")
  if len(x) == 0:
    raise ValueError(f"the {what} set is empty: it needs at least one image ({image})")
  if not np.issubdtype(x.dtype, np.number):
    raise ValueError(f"the {what} images must be numbers, got {x.dtype}")
  if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
    raise ValueError(f"{bad} of the {len(x)} {what} images hold a NaN or an infinity")
  if np.issubdtype(dtype, np.integer) and x.dtype != dtype:
    info = np.iinfo(dtype)
    if np.any(x != np.round(x)) or x.min() < info.min or x.max() > info.max:
      raise ValueError(
        f"the file takes {dtype.name} images ({info.min}..{info.max}, as stored), but the "
        f"{what} images hold values from {x.min()} to {x.max()} that are not"
      )
  return x.astype(dtype)


def _batches(x: np.ndarray, batch: int):
  for i in range(0, len(x), batch):
    yield x[i : i + batch]


def quantize_onnx(
  fp32_path: str | Path,
  int8_path: str | Path,
  calibration: Any,
  *,
  batch: int = 64,
) -> Path:
  """Writes the INT8 (QDQ) model of the float32 ONNX file `fp32_path` to `int8_path`.

  Args:
    fp32_path: a file of `kshapes_jax.export.save_onnx` (or any one-input ONNX image model).
    int8_path: where the INT8 file goes (replaced if there).
    calibration: images as the file takes them (uint8 NHWC for a file with `normalize`); the
      activations' ranges are their min and max.
    batch: images per calibration run.

  Returns:
    int8_path. The file keeps the float32 file's metadata (its fusion certificate).

  Raises:
    ValueError: a calibration set that is empty, of another shape, or not finite
      (`check_images`).
  """
  import onnx
  from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
  )
  from onnxruntime.quantization.shape_inference import quant_pre_process

  images = check_images(calibration, fp32_path)
  name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

  class _Reader(CalibrationDataReader):
    def __init__(self):
      self._feeds = iter([{name: x} for x in _batches(images, batch)])

    def get_next(self):
      return next(self._feeds, None)

  int8_path = Path(int8_path)
  with tempfile.TemporaryDirectory() as tmp:
    pre = Path(tmp) / "pre.onnx"
    # symbolic shape inference needs sympy, which onnxruntime does not install: ONNX's suffices
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    _flatten_gemm_biases(pre)
    quantize_static(
      str(pre),
      str(int8_path),
      _Reader(),
      quant_format=QuantFormat.QDQ,
      op_types_to_quantize=list(QUANTIZED_OPS) + ["MaxPool", "AveragePool", "Relu"],
      per_channel=True,
      activation_type=QuantType.QInt8,
      weight_type=QuantType.QInt8,
      calibrate_method=CalibrationMethod.MinMax,
      calibration_providers=["CPUExecutionProvider"],
      # its int32-bias rescaling of the weight scales fails on a per-channel Gemm (onnxruntime
      # 1.32: "truth value of an array ... is ambiguous"); the biases stay int32 without it
      extra_options={"QDQDisableWeightAdjustForInt32Bias": True},
    )
  source = onnx.load(str(fp32_path), load_external_data=False)
  model = onnx.load(str(int8_path))
  for prop in source.metadata_props:
    model.metadata_props.add(key=prop.key, value=prop.value)
  onnx.save(model, str(int8_path))
  return int8_path


def _flatten_gemm_biases(path: Path) -> None:
  """Makes each Gemm's bias 1-D, in place. The graph optimizer fuses MatMul + Add into a Gemm
  whose bias keeps the Add's (1, N) shape; quantized per channel, its DequantizeLinear then
  fails (a (1, N) tensor on axis 0 with N scales) wherever the runtime does not fuse it away."""
  import onnx
  from onnx import numpy_helper

  model = onnx.load(str(path))
  inits = {t.name: t for t in model.graph.initializer}
  for node in model.graph.node:
    if node.op_type == "Gemm" and len(node.input) == 3 and node.input[2] in inits:
      bias = numpy_helper.to_array(inits[node.input[2]])
      if bias.ndim == 2 and bias.shape[0] == 1:
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(bias[0], node.input[2]))
  onnx.save(model, str(path))


def session(model: str | Path | bytes, config: dict[str, str] | None = None) -> Any:
  """An onnxruntime CPU session of an ONNX file (its path or bytes), with the session config
  entries `config` (default `SESSION_CONFIG`, which INT8 files need on x86 CPUs without VNNI;
  `{}` for a default session)."""
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.log_severity_level = 3  # no warnings about initializers the optimizer drops
  for key, value in (SESSION_CONFIG if config is None else config).items():
    options.add_session_config_entry(key, value)
  source = model if isinstance(model, bytes) else str(model)
  return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _layer_outputs(path: str | Path, pre_processed: bool) -> tuple[bytes, list[tuple[str, str]]]:
  """The model (bytes) with each quantized op's float output added as a graph output, and those
  (op type, output name) in graph order. The float file is pre-processed first, as it was for
  quantization, so that its ops and their output names are the INT8 file's."""
  import onnx
  from onnxruntime.quantization.shape_inference import quant_pre_process

  if pre_processed:
    model = onnx.load(str(path))
  else:
    with tempfile.TemporaryDirectory() as tmp:
      pre = Path(tmp) / "pre.onnx"
      quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
      model = onnx.load(str(pre))
  ops = [(n.op_type, n.output[0]) for n in model.graph.node if n.op_type in QUANTIZED_OPS]
  have = {o.name for o in model.graph.output}
  for _, out in ops:
    if out not in have:
      model.graph.output.append(onnx.ValueInfoProto(name=out))
  return model.SerializeToString(), ops


def _weight_shapes(path: str | Path) -> list[tuple[int, ...]]:
  """Each quantized op's weight shape in graph order, read through its DequantizeLinear."""
  import onnx
  from onnx import numpy_helper

  graph = onnx.load(str(path)).graph
  inits = {t.name: tuple(numpy_helper.to_array(t).shape) for t in graph.initializer}
  dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
  shapes = []
  for n in graph.node:
    if n.op_type in QUANTIZED_OPS:
      w = n.input[1]
      shapes.append(inits.get(dequantized.get(w, w), ()))
  return shapes


class _Recorder(nnx.Module):
  """A layer that calls `note(path, layer, x)` with its input, then computes as it does."""

  def __init__(self, layer: Any, path: tuple, note: Callable[[str, Any, Any], object]):
    self.layer, self.path, self.note = layer, path, note

  def __call__(self, x):
    self.note(path_str(self.path), self.layer, x)
    return self.layer(x)


def _probe(model: nnx.Module, x: Any, note: Callable[[str, Any, Any], object]) -> None:
  """Runs a clone of the model (eval mode) on X with `note` called at each conv and dense
  layer, in the order the model calls them."""
  import jax.numpy as jnp

  probe = map_modules(
    nnx.clone(model),
    lambda path, m: _Recorder(m, path, note) if isinstance(m, _LAYERS) else None,
  )
  probe.eval()
  probe(jnp.asarray(x))


def layer_paths(model: nnx.Module, input_shape: Sequence[int]) -> list[tuple[str, tuple]]:
  """The model's convolutions and dense layers (path, kernel shape) in the order it calls them on
  one (H, W, C) image: the order of an ONNX file's ops written from it."""
  sink: list[tuple[str, tuple]] = []
  _probe(
    model,
    np.zeros((1, *input_shape), np.float32),
    lambda path, layer, x: sink.append((path, tuple(np.shape(layer.kernel[...])))),
  )
  return sink


def _names(
  ops: list[tuple[str, str]],
  weights: list[tuple[int, ...]],
  model: nnx.Module | None,
  input_shape: Sequence[int],
) -> list[str]:
  """The report's name of each op: the model's layer there when the layers and the ops pair up
  one to one, in order, with weights of the same size and shape up to the axes' order (a
  network whose call order is not its attributes' order is named by op and index instead)."""
  fallback = [f"{op} #{i}" for i, (op, _) in enumerate(ops)]
  if model is None:
    return fallback
  layers = layer_paths(model, input_shape)
  if len(layers) != len(ops):
    return fallback
  for (_, shape), w in zip(layers, weights):
    if sorted(shape) != sorted(w):
      return fallback
  return [p for p, _ in layers]


def _run(session, x: np.ndarray, batch: int, outputs: list[str] | None = None) -> list[np.ndarray]:
  """The session's outputs (default: its first, the logits) over x, run `batch` images at once."""
  name = session.get_inputs()[0].name
  outputs = outputs or [session.get_outputs()[0].name]
  runs = [session.run(outputs, {name: chunk}) for chunk in _batches(x, batch)]
  return [np.concatenate([r[i] for r in runs]) for i in range(len(outputs))]


def _errors(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
  """max |got - want| and that over max |want|; NaN where either is not finite."""
  if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
    return math.nan, math.nan
  diff = float(np.max(np.abs(got.astype(np.float64) - want)))
  return diff, diff / max(float(np.max(np.abs(want))), 1e-30)


def _top1(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
  return None if labels is None else float(np.mean(logits.argmax(-1) == labels))


def measure(
  fp32_path: str | Path,
  int8_path: str | Path,
  images: Any,
  labels: Sequence[int] | np.ndarray | None = None,
  *,
  calibration: int = 0,
  model: nnx.Module | None = None,
  batch: int = 256,
) -> Int8Report:
  """Runs both files on `images` with onnxruntime and reports what the INT8 one loses.

  Args:
    fp32_path, int8_path: the float32 file and its `quantize_onnx`.
    images: test images as the files take them.
    labels: their labels (None: no top-1, only the agreement).
    calibration: how many images calibrated the INT8 file (recorded).
    model: the deployed network the files were written from, to name each layer by its path.
    batch: images per run.

  Returns:
    the `Int8Report`: top-1 of each file, their prediction agreement, the logits' relative
    error and each quantized layer's (max |int8 - fp32| / max |fp32| of its output on the
    images, the float file's activations feeding the float layer and the INT8 file's the INT8
    one: the error as it accumulates up to that layer). The INT8 file runs in a `session()`
    (`SESSION_CONFIG`); its top-1 and agreement in a default session are reported beside them.
  """
  x = check_images(images, fp32_path, "test")
  y = None if labels is None else np.asarray(labels)
  if y is not None and y.shape != (len(x),):
    raise ValueError(f"labels must be ({len(x)},), one per image, got {y.shape}")
  # the files as shipped for the logits (the runtime fuses each INT8 op with its quantize and
  # dequantize nodes); copies that also output each layer (which keeps them apart) for the layers
  la = _run(session(fp32_path), x, batch)[0]
  lb = _run(session(int8_path), x, batch)[0]
  lb_default = _run(session(int8_path, {}), x, batch)[0]
  fp32_model, ops = _layer_outputs(fp32_path, pre_processed=False)
  int8_model, int8_ops = _layer_outputs(int8_path, pre_processed=True)
  # the graph optimizer names what it makes by a counter of its process: the ops pair by order
  if [op for op, _ in ops] != [op for op, _ in int8_ops]:
    raise ValueError(f"{int8_path} is not the INT8 file of {fp32_path}: their layers differ")
  names = _names(ops, _weight_shapes(int8_path), model, x.shape[1:])
  sa, sb = session(fp32_model), session(int8_model)
  a_outs, b_outs = [out for _, out in ops], [out for _, out in int8_ops]
  diff, scale = np.zeros(len(ops)), np.zeros(len(ops))
  for chunk in _batches(x, batch):  # reduced batch by batch: the activations are not kept
    feed = {sa.get_inputs()[0].name: chunk}
    for i, (u, v) in enumerate(zip(sa.run(a_outs, feed), sb.run(b_outs, feed))):
      d, _ = _errors(v, u)
      diff[i], scale[i] = max(diff[i], d), max(scale[i], float(np.max(np.abs(u))))
  layers = tuple(
    LayerError(name, op, float(d), float(d) / max(float(m), 1e-30) if math.isfinite(d) else d)
    for (op, _), name, d, m in zip(ops, names, diff, scale)
  )
  finite = bool(np.all(np.isfinite(la)) and np.all(np.isfinite(lb)))
  finite_default = finite and bool(np.all(np.isfinite(lb_default)))
  logits_max_abs, logits_relative = _errors(lb, la)
  agreement_default = float(np.mean(la.argmax(-1) == lb_default.argmax(-1)))
  return Int8Report(
    layers=layers,
    logits_max_abs=logits_max_abs,
    logits_relative=logits_relative,
    agreement=float(np.mean(la.argmax(-1) == lb.argmax(-1))) if finite else math.nan,
    top1_fp32=_top1(la, y),
    top1_int8=_top1(lb, y) if finite else math.nan,
    images=len(x),
    calibration=calibration,
    scheme=SCHEME,
    session_config=SESSION_ENTRIES,
    top1_int8_default=_top1(lb_default, y) if finite_default else math.nan,
    agreement_default=agreement_default if finite_default else math.nan,
  )


def _input_ranges(model: nnx.Module, x: np.ndarray) -> dict[str, float]:
  """Each layer's input's largest magnitude over the batch X (at its first call), in a float
  forward."""
  sink: dict[str, float] = {}
  _probe(model, x, lambda path, layer, x: sink.setdefault(path, float(np.max(np.abs(x)))))
  return sink


def quantize_jax(model: nnx.Module, calibration: Any) -> nnx.Module:
  """The network quantized in JAX by Qwix (post-training, static ranges), the other route.

  The model is deployed to flax layers (`kshapes_jax.deploy(model, to="flax")`: `nnx.Conv` and
  `nnx.Linear`, which Qwix intercepts), then `qwix.quantize_model` with a rule for each layer:
  int8 weights symmetric per output channel, int8 activations symmetric whose static range is
  fixed to the layer input's largest magnitude over the whole calibration batch in the float
  network (`JAX_SCHEME`), as onnxruntime's min-max calibration takes it. Qwix's own static
  range, the mean over the batch of each image's largest magnitude, clips every image above
  that mean. A layer whose input is 0 on every calibration image keeps Qwix's range. The result
  is an NNX module of the deployed network's call signature.

  Args:
    model: a trained or deployed network (not changed).
    calibration: a batch of model inputs, normalized as the model takes them.

  Raises:
    ValueError: an empty calibration batch or one that is not finite.
  """
  import re

  import jax.numpy as jnp
  import qwix

  from kshapes_jax.deploy import deploy

  x = np.asarray(calibration)
  if x.ndim < 2 or len(x) == 0:
    raise ValueError(f"the calibration batch must hold at least one input, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("the calibration batch holds a NaN or an infinity")
  flax_model = deploy(model, to="flax")
  quantized = dict(weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True)
  rules = [
    qwix.QuantizationRule(
      module_path=re.escape(path),
      act_calibration_method=f"fixed,{-largest!r},{largest!r}",
      **quantized,
    )
    for path, largest in _input_ranges(flax_model, x).items()
    if largest > 0
  ]
  rules.append(qwix.QuantizationRule(module_path=".*", **quantized))
  return qwix.quantize_model(flax_model, qwix.PtqProvider(rules), jnp.asarray(x))


def write_certificate(path: str | Path, certificate: Any) -> Path:
  """Sets the ONNX file's fusion certificate (`kshapes_jax.export.read_certificate` reads it),
  replacing the one it had: an INT8 file's carries its `Int8Report`."""
  import onnx

  from kshapes_jax.export import CERTIFICATE_KEY

  model = onnx.load(str(path))
  kept = [p for p in model.metadata_props if p.key != CERTIFICATE_KEY]
  del model.metadata_props[:]
  model.metadata_props.extend(kept)
  model.metadata_props.add(key=CERTIFICATE_KEY, value=certificate.to_json())
  onnx.save(model, str(path))
  return Path(path)
