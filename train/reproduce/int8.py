"""The INT8 table of the reproduction suite's runs: each finished run exported and quantized
(`train.export --int8`: onnxruntime's static QDQ and Qwix, 512 calibration images, every test
image), then fine-tuned with quantization-aware training (`quantize.qat`, `--qat_epochs`) and
quantized again; its float32 and INT8 top-1 recorded, and each row's mean and spread over its
seeds.

  python -m train.reproduce.int8 --runs runs/repro --epochs 10       # -> results/int8/e10.*

The records (results/int8/eN.json, one per run) are kept like the ledger's: a run measured once
is not measured again, and the table counts the records of runs no longer on this machine.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import app, flags

from train.atomic import write_atomic

RESULTS = Path("results/int8")
COLUMNS = (
  "top1_fp32",
  "top1_int8",
  "top1_jax",
  "agreement",
  "agreement_jax",
  "top1_int8_default",
  "agreement_default",
)
# what `measure_qat` adds to a record
QAT_KEYS = ("top1_qat", "top1_qat_fp32", "qat_lr", "qat_epochs")
# QAT fine-tunes at this share of the run's base learning rate, constant. Measured, one epoch:
# RepVGG seed 1 at 0.01 lost 0.75 points of float32 top-1 and the ACU net seed 0 at 0.01 (the
# rate its staircase ended at) 0.88; at 0.001 they lost 0.02 and 0.08
QAT_LR_SHARE = 0.001
# issue 42's target: post-training INT8 loses at most this many points of top-1 (a row's mean)
TARGET_DROP = 0.5


def record(report: Any) -> dict[str, Any]:
  """A run's numbers from its INT8 report (`kshapes_jax.certificate.Int8Report`), in percent,
  the onnxruntime session config its INT8 numbers were measured under ("session") and how the
  JAX route quantized ("scheme_jax")."""
  numbers: dict[str, Any] = {
    name: None if getattr(report, name) is None else 100 * getattr(report, name) for name in COLUMNS
  }
  return {**numbers, "session": " ".join(report.session_config), "scheme_jax": report.scheme_jax}


def _current_session() -> str:
  from kshapes_jax.int8 import SESSION_ENTRIES

  return " ".join(SESSION_ENTRIES)


def _current_jax_scheme() -> str:
  from kshapes_jax.int8 import JAX_SCHEME

  return JAX_SCHEME


def _other_jax_scheme(old: Mapping[str, Any]) -> bool:
  """The record's JAX-route numbers came from another recipe than the current one (a record
  without `scheme_jax`: Qwix's own activation ranges, each image's absmax averaged)."""
  return old.get("top1_jax") is not None and old.get("scheme_jax", "") != _current_jax_scheme()


def without_other_jax_scheme(old: Mapping[str, Any]) -> dict[str, Any]:
  """A record whose JAX-route numbers came from another recipe and whose run is gone: those
  numbers are dropped, the others kept."""
  return {
    **old,
    "top1_jax": None,
    "agreement_jax": None,
    "scheme_jax": "",
  }


def default_session_only(old: Mapping[str, Any]) -> dict[str, Any]:
  """A record measured before the session config was recorded (in a default onnxruntime
  session) whose run is gone: its onnxruntime numbers are a default session's, so they move to
  those columns, and the configured session's stay unmeasured."""
  return {
    **old,
    "top1_int8_default": old.get("top1_int8"),
    "agreement_default": old.get("agreement"),
    "top1_int8": None,
    "agreement": None,
    "session": "",
  }


def without_old_qat(old: Mapping[str, Any]) -> dict[str, Any]:
  """A record whose QAT numbers came from an older recipe (0.01 of the base rate, no `qat_lr`)
  and whose run is gone: those numbers are dropped, the post-training ones kept."""
  return {k: v for k, v in old.items() if k not in ("top1_qat", "top1_qat_fp32")}


def _qat_recipe(qat: Path) -> tuple[float, float] | None:
  """The (learning rate, epochs) the fine-tuning in QAT was configured with; None where QAT
  holds no config."""
  from train.trainer.rundir import RunDir

  if not (qat / "config.json").exists():
    return None
  config = RunDir(qat).read_config()
  return config["optim"]["learning_rate"], float(config["num_epochs"])


def _set_aside_other_qat(workdir: Path, epochs: float) -> None:
  """Renames WORKDIR/qat to qat-lr<its rate>-e<its epochs> where it was fine-tuned with another
  rate than `qat_learning_rate` or for other than EPOCHS epochs (another recipe), so that the
  new fine-tuning does not resume it."""
  recipe = _qat_recipe(workdir / "qat")
  if recipe is None:
    return
  rate, done = recipe
  if _same_rate(rate, qat_learning_rate(workdir)) and done == epochs:
    return
  aside = workdir / f"qat-lr{rate:g}-e{done:g}"
  n = 1
  while aside.exists():
    n += 1
    aside = workdir / f"qat-lr{rate:g}-e{done:g}-{n}"
  (workdir / "qat").rename(aside)


def _same_rate(a: float, b: float) -> bool:
  """Equal rates: a record's `qat_lr` may be a float32 value read back (0.00010000000474974513
  for 1e-4)."""
  return math.isclose(a, b, rel_tol=1e-6)


def measure(workdir: Path, calibration: int = 512) -> dict[str, Any]:
  """The run's record: from the certificate of its INT8 file where `train.export --int8
  --check_images 0` wrote one under the current session config and JAX scheme, else exported so
  (every test image) first."""
  import kshapes_jax as K
  from train.export import INT8_NAME, export_run

  shipped = workdir / "export" / INT8_NAME
  certificate = K.export.read_certificate(shipped) if shipped.exists() else None
  report = None if certificate is None else certificate.int8
  if (
    report is None
    or report.session_config != K.int8.SESSION_ENTRIES
    or report.calibration != calibration
    or report.top1_fp32 is None
    or (report.top1_jax is not None and report.scheme_jax != K.int8.JAX_SCHEME)
  ):
    results = export_run(
      workdir, int8=True, check_images=0, calibration=calibration, int8_max_drop=100.0
    )
    report = results["int8"]["certificate"].int8
  return record(report)


def qat_learning_rate(workdir: Path) -> float:
  """The rate QAT fine-tunes the run at: QAT_LR_SHARE of its base rate. A larger one moves the
  trained network away from its optimum faster than fake INT8 helps it, and the rate a run
  ended at is no rule: a cosine ends near 0, a staircase of two drops at 0.01 of the base."""
  from train.trainer.rundir import RunDir

  return QAT_LR_SHARE * RunDir(workdir).read_config()["optim"]["learning_rate"]


def measure_qat(
  workdir: Path, epochs: float = 1.0, calibration: int = 512
) -> dict[str, float | None]:
  """The run fine-tuned `epochs` with fake INT8 (its own config with `quantize.qat`, at
  `qat_learning_rate`, constant) in WORKDIR/qat, then exported as `measure` does: its INT8
  top-1 in onnxruntime (`top1_qat`), its float32 top-1, weights on the int8 grid
  (`top1_qat_fp32`), and the rate (`qat_lr`). An interrupted fine-tuning resumes; a finished
  one is read back."""
  import ml_collections

  from train import trainer
  from train.trainer.rundir import RunDir

  rate = qat_learning_rate(workdir)
  config = ml_collections.ConfigDict(RunDir(workdir).read_config())
  # the run's real path: a QAT folder made through a link (a folder of some runs) keeps finding
  # its run, and is resumed, when the run is reached by another path
  from_run = str(workdir.resolve())
  config.quantize.update(qat=True, from_run=from_run, calibration=calibration)
  config.update(num_epochs=float(epochs), num_steps=0, progress=False)
  config.optim.update(learning_rate=rate, schedule="constant", warmup_epochs=0.0)
  trainer.train_and_evaluate(config, workdir / "qat")
  quantized = measure(workdir / "qat", calibration)
  return {
    "top1_qat": quantized["top1_int8"],
    "top1_qat_fp32": quantized["top1_fp32"],
    "qat_lr": rate,
    "qat_epochs": float(epochs),
  }


def _qat_numbers(old: Mapping[str, Any]) -> dict[str, Any]:
  """What a record measured again after training keeps: its QAT numbers where they were
  measured in the current onnxruntime session (a new JAX-route recipe does not touch them)."""
  if old.get("session") != _current_session():
    return {}
  return {k: old[k] for k in QAT_KEYS if k in old}


def _present(runs: list[Mapping[str, float | None]], name: str) -> list[float]:
  return [r[name] for r in runs if r.get(name) is not None]  # type: ignore[misc]


def _differences(runs: list[Mapping[str, float | None]], minus: str) -> list[float]:
  """fp32 - `minus` of each run that has both."""
  return [
    r["top1_fp32"] - r[minus]  # type: ignore[operator]
    for r in runs
    if r.get("top1_fp32") is not None and r.get(minus) is not None
  ]


def _number(x: float) -> str:
  text = f"{x:.2f}"
  return "0.00" if text == "-0.00" else text


def _spread(values: list[float]) -> str:
  mean = _number(statistics.fmean(values))
  return mean if len(values) < 2 else f"{mean} +- {_number(statistics.stdev(values))}"


def _cell(values: list[float], seeds: int) -> str:
  """The spread, with its count where fewer runs than the row's have it; '-' for none."""
  if not values:
    return "-"
  return _spread(values) + ("" if len(values) == seeds else f" ({len(values)})")


def _qat_epochs_cell(runs: list[Mapping[str, Any]]) -> str:
  """The epochs of the row's QAT records ('?' for a record that did not say); '-' for none."""
  done = [r.get("qat_epochs") for r in runs if r.get("top1_qat") is not None]
  if not done:
    return "-"
  return ", ".join(sorted({"?" if e is None else f"{e:g}" for e in done}))


def _met(drops: list[float]) -> str:
  if not drops:
    return "-"
  return "yes" if statistics.fmean(drops) <= TARGET_DROP else "**no**"


def table(records: Mapping[str, Mapping[str, Any]], epochs: int) -> str:
  """The markdown table: a line per row (its seeds pooled), the drops as fp32 - INT8."""
  rows: dict[str, list[Mapping[str, Any]]] = {}
  for key in sorted(records):
    rows.setdefault(key.split("/")[0], []).append(records[key])
  lines = [
    f"# INT8 after training: the reproduction suite's runs ({epochs} epochs)",
    "",
    "Each finished run of `python -m train.reproduce` exported by `python -m train.export "
    "--int8 --check_images 0`: onnxruntime's static QDQ INT8 (S8S8, weights per channel, "
    "MinMax ranges from 512 training images) and the same network quantized by Qwix in JAX "
    "(weights per channel, each layer's activation range its absmax over the same images), on "
    "all 10,000 test images. onnxruntime runs the INT8 file with the session config "
    f"{_current_session()} (`kshapes_jax.int8.SESSION_CONFIG`); the drop in a default session "
    "is the same file without it, on this CPU (x86 without VNNI, where its u8 x s8 products "
    "saturate); records measured before the config was recorded have only that drop. "
    "After QAT: the run fine-tuned with fake INT8 weights and inputs (`quantize.qat`, "
    "for the epochs in the column QAT epochs (`--qat_epochs`), at "
    f"{QAT_LR_SHARE:g} of its base learning rate, constant), then "
    "quantized the same way by onnxruntime. Top-1 and agreement in percent, mean +- sample std "
    "over the seeds (with their count where fewer runs have it); a drop is the run's fp32 - "
    "INT8 (negative: INT8 scored higher). `python -m train.reproduce.int8` wrote this.",
    "",
    "| row | seeds | fp32 | INT8 (onnxruntime) | drop | drop in a default session | INT8 (Qwix) "
    "| drop | QAT epochs | INT8 after QAT (onnxruntime) | drop | agreement (onnxruntime / Qwix) "
    f"| mean PTQ drop <= {TARGET_DROP:g} (onnxruntime / Qwix) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row, runs in rows.items():
    fp32, ort, jax_, qat = (
      _present(runs, name) for name in ("top1_fp32", "top1_int8", "top1_jax", "top1_qat")
    )
    drops = [
      _differences(runs, name)
      for name in ("top1_int8", "top1_int8_default", "top1_jax", "top1_qat")
    ]
    agree, agree_jax = _present(runs, "agreement"), _present(runs, "agreement_jax")
    cells = [_cell(v, len(runs)) for v in (fp32, ort, drops[0], drops[1], jax_, drops[2])]
    cells += [_qat_epochs_cell(runs), _cell(qat, len(runs)), _cell(drops[3], len(runs))]
    agreement = f"{_cell(agree, len(runs))} / {_cell(agree_jax, len(runs))}"
    met = " / ".join(_met(drops[i]) for i in (0, 2))
    lines.append(f"| {row} | {len(runs)} | " + " | ".join(cells) + f" | {agreement} | {met} |")
  return "\n".join(lines) + "\n"


def update(
  runs: Path, epochs: int, out: Path = RESULTS, say=print, qat_epochs: float = 1.0
) -> dict[str, Any]:
  """Measures every finished run of RUNS/eN that has no record yet (and, with `qat_epochs`, its
  QAT fine-tuning where its record has none), then writes the records and the table; returns
  the records."""
  path = out / f"e{epochs}.json"
  records: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
  on_hand = {
    f"{s.parent.parent.name}/{s.parent.name}": s.parent
    for s in sorted((runs / f"e{epochs}").glob("*/seed*/summary.json"))
  }
  for key in [k for k in records if "session" not in records[k] and k not in on_hand]:
    records[key] = default_session_only(records[key])
  for key in [k for k in records if "qat_lr" not in records[k] and k not in on_hand]:
    records[key] = without_old_qat(records[key])
  for key in [k for k in records if _other_jax_scheme(records[k]) and k not in on_hand]:
    records[key] = without_other_jax_scheme(records[key])
  for key, workdir in on_hand.items():
    # a record measured under another session config (or a default session), or whose JAX route
    # was another recipe, is measured again
    changed = (
      key not in records
      or records[key].get("session") != _current_session()
      or _other_jax_scheme(records[key])
    )
    if changed:
      say(f"measuring {key}")
      records[key] = {**_qat_numbers(records.get(key, {})), **measure(workdir)}
    rate = records[key].get("qat_lr")
    if rate is not None and "qat_epochs" not in records[key]:  # recorded before they were
      recipe = _qat_recipe(workdir / "qat")
      records[key] = {**records[key], "qat_epochs": None if recipe is None else recipe[1]}
      changed = True
    if qat_epochs and (
      rate is None
      or not _same_rate(rate, qat_learning_rate(workdir))
      or records[key]["qat_epochs"] != qat_epochs
    ):
      say(f"fine-tuning {key} with QAT ({qat_epochs:g} epochs)")
      _set_aside_other_qat(workdir, float(qat_epochs))
      records[key] = {**records[key], **measure_qat(workdir, qat_epochs)}
      changed = True
    if changed:
      out.mkdir(parents=True, exist_ok=True)
      write_atomic(path, json.dumps(records, indent=1, sort_keys=True) + "\n")  # after each run
  if records:  # the records were written as each run was measured
    write_atomic(out / f"e{epochs}.md", table(records, epochs))
  return records


def main(argv: list[str]) -> None:
  del argv
  records = update(Path(flags.FLAGS.runs), flags.FLAGS.epochs, qat_epochs=flags.FLAGS.qat_epochs)
  print(f"{len(records)} runs in {RESULTS / f'e{flags.FLAGS.epochs}.md'}", file=sys.stderr)
  if not records:
    sys.exit(f"no finished runs under {flags.FLAGS.runs}/e{flags.FLAGS.epochs}")


if __name__ == "__main__":
  flags.DEFINE_string("runs", "runs/repro", "The suite's folder (RUNS/eN/ROW/seedS).")
  flags.DEFINE_integer("epochs", 10, "The runs' length.")
  flags.DEFINE_float("qat_epochs", 1.0, "Epochs of QAT fine-tuning per run (0: none).")
  app.run(main)
