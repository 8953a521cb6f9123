"""Ships a trained run: its deployed network as a jax.export artifact and/or an ONNX file.

  python -m train.export --workdir runs/quickstart       # -> runs/quickstart/export/model.onnx
  python -m train.export --workdir runs/quickstart --format jax   # -> .../model.jaxexport
  python -m train.export --workdir DIR --format both --step 2000 --out /tmp/ship

The files take a batch of any size of the images as the dataset stores
them (uint8, NHWC, 0-255) and return logits: the normalization is inside.
Each file is then checked on the run's test images against the deployed
model in JAX (onnxruntime runs the ONNX file, where it is installed); the
export fails (status 1), and leaves no file, if they disagree on more than
0.1% of predictions. A bfloat16 run's ONNX file computes in float32 (ONNX
runtimes have no bf16 convolutions on the CPU), checked against the float32
copy.

Before any file is written, the deployed network is certified against the
trained one on up to 256 test images (`kshapes_jax.certify`: each fused
layer's error as it trained, the logits' error, the agreement); the export
refuses (status 2, the worst layer named) a certificate above the tolerance
of the run's compute dtype, and otherwise writes it into the ONNX file's
metadata and next to a jax.export file (PATH.certificate.json).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags on absl's FLAGS (those another command defined already are
  shared)."""
  cli.define_once(flags.DEFINE_string, "workdir", None, "Workdir of a run of python -m train.main.")
  cli.define_once(flags.DEFINE_enum, "format", "onnx", ["onnx", "jax", "both"], "What to write.")
  cli.define_once(flags.DEFINE_string, "out", "", "Output folder (default WORKDIR/export).")
  cli.define_once(
    flags.DEFINE_integer,
    "step",
    None,
    "Checkpoint step to export (default: the latest).",
    lower_bound=0,
  )
  cli.define_once(
    flags.DEFINE_integer,
    "check_images",
    2000,
    "Test images the written files are checked on (0: all).",
    lower_bound=0,
  )
  cli.define_once(
    flags.DEFINE_bool,
    "int8",
    False,
    "Also write the INT8 ONNX file (onnxruntime static quantization), measured on the test "
    "images against the float32 one.",
  )
  cli.define_once(
    flags.DEFINE_integer,
    "calibration",
    512,
    "Training images that calibrate the INT8 activations' ranges.",
    lower_bound=1,
  )
  cli.define_once(
    flags.DEFINE_float,
    "int8_max_drop",
    INT8_MAX_DROP,
    "Top-1 points the INT8 file may lose against the float32 one; above it, it is not written.",
    lower_bound=0.0,
  )
  cli.define_debug()


SUFFIX = {"jax": ".jaxexport", "onnx": ".onnx"}
MIN_AGREEMENT = 0.999  # a file that agrees on fewer test predictions is not written
CERTIFY_IMAGES = 256  # the test images the fusion certificate is measured on
# top-1 points an INT8 file may lose by default: twice the INT8 table's target (0.5), so that the
# noise of a few thousand test images does not refuse what the table would accept
INT8_MAX_DROP = 1.0
INT8_NAME = "model.int8.onnx"


def export_run(
  workdir: str | Path,
  formats: tuple[str, ...] = ("onnx",),
  out: str | Path | None = None,
  step: int | None = None,
  check_images: int = 2000,
  int8: bool = False,
  calibration: int = 512,
  int8_max_drop: float = INT8_MAX_DROP,
) -> dict[str, dict]:
  """Writes the run's deployed model in each format and checks each file against it.

  With `int8`, the ONNX file is then quantized to INT8 (`kshapes_jax.int8`) with `calibration`
  training images and measured on the test images against it: top-1 of both, their agreement,
  each layer's error (its `Int8Report`, in the INT8 file's certificate).

  Returns:
    format -> {"path", "bytes", "agreement" (share of equal test predictions, None when not
    checked), "max_abs_diff" (of the logits), "dtype", "certificate" (the deployed network's
    `kshapes_jax.FusionCertificate`)}; with `int8`, also "int8" -> those of the INT8 file, its
    certificate's `int8` report included.

  Raises:
    ValueError: if the certificate is above the tolerance of the run's compute dtype (nothing
      is written), or the INT8 file loses more than `int8_max_drop` points of top-1 (the float
      files are written, the INT8 one is not).
  """
  import kshapes_jax as K
  from train.trainer.trained_run import load_run

  if int8 and "onnx" not in formats:
    raise ValueError("--int8 quantizes the ONNX file: export with --format onnx or both")
  if "onnx" in formats:
    _require_onnx(int8)
  run = load_run(workdir, step)
  shipped = K.deploy(run.model)
  normalize = (run.dataset.mean, run.dataset.std)
  shape = run.dataset.image_shape
  images = run.dataset.test.head(check_images or len(run.dataset.test))
  probe = K.export.normalized(images[:CERTIFY_IMAGES], normalize)
  certificate = K.certify(run.model, shipped, probe)
  certificate.check()  # before anything is written: its own tolerance, the run's compute dtype
  out = Path(out) if out else Path(workdir) / "export"
  out.mkdir(parents=True, exist_ok=True)
  results: dict[str, dict[str, Any]] = {}
  partials: dict[str, Path] = {}
  try:  # every format to a partial file first: a failure in one leaves none of them behind
    for fmt in formats:
      # ONNX runtimes have no bf16 convolutions on the CPU: a bf16 run ships in float32
      model = K.export.in_float32(shipped) if fmt == "onnx" else shipped
      reference = _batched(K.export.forward(model, normalize), images)
      path = out / f"model{SUFFIX[fmt]}"
      partials[fmt] = partial = path.with_name(f".{path.name}.partial")
      if fmt == "jax":
        K.export.save_jax(model, shape, partial, normalize=normalize)
        predict: Callable | None = K.export.load_jax(partial)
      else:
        K.export.save_onnx(model, shape, partial, normalize=normalize, certificate=certificate)
        predict = _onnxruntime(partial)
      logits = _batched(predict, images) if predict is not None else None
      agreement = (
        None if logits is None else float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
      )
      results[fmt] = {
        "path": str(path),
        "agreement": agreement,
        "max_abs_diff": None if logits is None else float(np.max(np.abs(logits - reference))),
        "dtype": "float32" if fmt == "onnx" else "/".join(sorted(K.export.compute_dtypes(model))),
        "certificate": certificate,
      }
  except BaseException:
    for partial in partials.values():
      partial.unlink(missing_ok=True)
    raise
  for fmt, r in results.items():  # renamed once it loads and agrees
    path = Path(r["path"])
    if r["agreement"] is not None and r["agreement"] < MIN_AGREEMENT:
      partials[fmt].unlink()
    else:
      partials[fmt].replace(path)
      if fmt == "jax":  # a jax.export artifact has no metadata: the certificate goes next to it
        K.export.write_certificate(path, certificate)
    r["bytes"] = path.stat().st_size if path.exists() else 0
  if int8 and Path(results["onnx"]["path"]).exists():  # not written: it disagreed (status 1)
    results["int8"] = _int8(
      run,
      shipped,
      Path(results["onnx"]["path"]),
      certificate,
      check_images,
      calibration,
      int8_max_drop,
    )
  return results


def _jax_route(
  run: Any,
  shipped: Any,
  report: Any,
  calibration: np.ndarray,
  images: np.ndarray,
  labels: np.ndarray,
) -> Any:
  """The report with the JAX route's top-1 and agreement (Qwix, `kshapes_jax.int8.quantize_jax`)
  added; as it was, with a line saying why, where that route cannot run."""
  import dataclasses

  from flax import nnx

  import kshapes_jax as K

  normalize = (run.dataset.mean, run.dataset.std)
  try:
    quantized = K.int8.quantize_jax(run.model, K.export.normalized(calibration, normalize))
  except ModuleNotFoundError:
    print('the JAX route (Qwix) is not measured: pip install -e ".[int8]"', file=sys.stderr)
    return report
  except Exception as e:  # Qwix cannot take every network: the ONNX route stands alone then
    print(f"the JAX route (Qwix) is not measured: {type(e).__name__}: {e}", file=sys.stderr)
    return report
  run_quantized = nnx.jit(lambda q, x: q(x))
  logits = _batched(lambda x: run_quantized(quantized, K.export.normalized(x, normalize)), images)
  reference = _batched(K.export.forward(shipped, normalize), images)
  return dataclasses.replace(
    report,
    top1_jax=float(np.mean(logits.argmax(-1) == labels)),
    agreement_jax=float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
    scheme_jax=K.int8.JAX_SCHEME,
  )


def _int8(
  run: Any,
  shipped: Any,
  fp32: Path,
  certificate: Any,
  check_images: int,
  calibration: int,
  max_drop: float,
) -> dict[str, Any]:
  """Quantizes the written ONNX file, measures it, and writes it when it loses at most
  `max_drop` points (ValueError otherwise)."""
  import dataclasses

  from kshapes_jax import int8
  from train import data

  calibration_images, _ = data.spread(run.dataset.train, calibration)
  images, labels = data.spread(run.dataset.test, check_images or len(run.dataset.test))
  path = fp32.with_name(INT8_NAME)
  partial = path.with_name(f".{path.name}.partial")
  try:
    int8.quantize_onnx(fp32, partial, calibration_images)
    report = int8.measure(
      fp32, partial, images, labels, calibration=len(calibration_images), model=shipped
    )
    report = _jax_route(run, shipped, report, calibration_images, images, labels)
    report.check(max_drop)
    with_int8 = dataclasses.replace(certificate, int8=report)
    int8.write_certificate(partial, with_int8)
    partial.replace(path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  return {
    "path": str(path),
    "bytes": path.stat().st_size,
    "agreement": report.agreement,
    "max_abs_diff": report.logits_max_abs,
    "dtype": "int8",
    "certificate": with_int8,
  }


def _require_onnx(int8: bool = False) -> None:
  """Fails before any work when the ONNX writer's package (and for INT8 its runtime, which
  quantizes) is missing, saying which extra has it."""
  try:
    import onnx  # noqa: F401
  except ModuleNotFoundError as e:
    raise ValueError(
      '--format onnx needs the onnx package, missing here: pip install -e ".[onnx]" '
      "(or export with --format jax)"
    ) from e
  try:
    if int8:
      import onnxruntime.quantization  # noqa: F401
  except ModuleNotFoundError as e:
    raise ValueError('--int8 needs onnxruntime, missing here: pip install -e ".[onnx]"') from e


def _batched(fn: Callable, images: np.ndarray, batch: int = 500) -> np.ndarray:
  return np.concatenate(
    [np.asarray(fn(images[i : i + batch])) for i in range(0, len(images), batch)]
  )


def _onnxruntime(path: Path) -> Callable | None:
  """A function that runs the ONNX file with onnxruntime, None when it is not installed."""
  try:
    import onnxruntime as ort
  except ImportError:
    return None
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return lambda x: session.run(None, {"images": np.asarray(x)})[0]


def _points(drop: float) -> str:
  return f"{drop:.2f} points lost" if drop >= 0 else f"{-drop:.2f} points gained"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(flags.Error(f"unexpected arguments: {argv[1:]}"), 2)
  formats = ("jax", "onnx") if FLAGS.format == "both" else (FLAGS.format,)
  try:
    results = export_run(
      FLAGS.workdir,
      formats,
      FLAGS.out or None,
      FLAGS.step,
      FLAGS.check_images,
      int8=FLAGS.int8,
      calibration=FLAGS.calibration,
      int8_max_drop=FLAGS.int8_max_drop,
    )
  except Exception as e:  # a workdir that is not a run's, a missing step, a model ONNX cannot hold
    if FLAGS.debug:
      raise
    cli.fail(e, 2 if isinstance(e, (FileNotFoundError, ValueError)) else None)
  failed = False
  for fmt, r in results.items():
    if fmt == "int8":
      report = r["certificate"].int8
      print(
        f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB): top-1 {100 * report.top1_int8:.2f}% "
        f"against the float32 file's {100 * report.top1_fp32:.2f}% ({_points(report.drop)}), "
        f"predictions agree on {100 * report.agreement:.2f}% of {report.images} test "
        f"images; calibrated on {report.calibration} training images"
      )
      config = " ".join(report.session_config)
      print(f"  run it in onnxruntime with the session config {config} (kshapes_jax.int8.session)")
      if report.top1_int8_default is not None and report.top1_int8_default != report.top1_int8:
        print(
          f"  in a default onnxruntime session on this CPU: top-1 "
          f"{100 * report.top1_int8_default:.2f}%, predictions agree on "
          f"{100 * report.agreement_default:.2f}% (its int8 kernels saturate without {config})"
        )
      if report.top1_jax is not None:
        print(
          f"  in JAX (Qwix, the same calibration): top-1 {100 * report.top1_jax:.2f}%, "
          f"predictions agree with the float32 network on {100 * report.agreement_jax:.2f}%"
        )
      continue
    if r["agreement"] is None:
      check = "not checked (pip install onnxruntime to check it)"
    else:
      check = (
        f"predictions agree with the deployed model on {100 * r['agreement']:.2f}% of the test "
        f"images, logits within {r['max_abs_diff']:.2e}"
      )
      failed |= r["agreement"] < MIN_AGREEMENT
    if r["agreement"] is not None and r["agreement"] < MIN_AGREEMENT:
      print(f"not written: {r['path']}: {check}", file=sys.stderr)
    else:
      print(f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB): {check}")
  certificate = next(iter(results.values()))["certificate"]
  worst = certificate.worst
  print(
    "fusion certificate: "
    + (f"worst layer {worst.path} ({worst.layer}) {worst.relative:.2e} relative, " if worst else "")
    + f"logits {certificate.logits_relative:.2e}, agreement {100 * certificate.agreement:.2f}% "
    f"({certificate.probe})"
  )
  if failed:
    raise SystemExit(1)


def run() -> None:
  """Entry point of python -m train.export."""
  cli.run(main, define_flags, required=["workdir"])


if __name__ == "__main__":
  run()
