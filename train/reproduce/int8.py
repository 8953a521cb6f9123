"""The INT8 table of the reproduction suite's runs: each finished run exported and quantized
(`train.export --int8`: onnxruntime's static QDQ and Qwix, 512 calibration images, every test
image), its float32 and INT8 top-1 recorded, and each row's mean and spread over its seeds.

  python -m train.reproduce.int8 --runs runs/repro --epochs 10       # -> results/int8/e10.*

The records (results/int8/eN.json, one per run) are kept like the ledger's: a run measured once
is not measured again, and the table counts the records of runs no longer on this machine.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import app, flags

from train.atomic import write_atomic

RESULTS = Path("results/int8")
COLUMNS = ("top1_fp32", "top1_int8", "top1_jax", "agreement", "agreement_jax")


def record(report: Any) -> dict[str, float | None]:
  """A run's numbers from its INT8 report (`kshapes_jax.certificate.Int8Report`), in percent."""
  return {
    name: None if getattr(report, name) is None else 100 * getattr(report, name) for name in COLUMNS
  }


def measure(workdir: Path, calibration: int = 512) -> dict[str, float | None]:
  """The run's record: from the certificate of its INT8 file where `train.export --int8
  --check_images 0` wrote one, else exported so (every test image) first."""
  import kshapes_jax as K
  from train.export import INT8_NAME, export_run

  shipped = workdir / "export" / INT8_NAME
  certificate = K.export.read_certificate(shipped) if shipped.exists() else None
  report = None if certificate is None else certificate.int8
  if report is None or report.calibration != calibration or report.top1_fp32 is None:
    results = export_run(
      workdir, int8=True, check_images=0, calibration=calibration, int8_max_drop=100.0
    )
    report = results["int8"]["certificate"].int8
  return record(report)


def _present(runs: list[Mapping[str, float | None]], name: str) -> list[float]:
  return [r[name] for r in runs if r[name] is not None]  # type: ignore[misc]


def _differences(runs: list[Mapping[str, float | None]], minus: str) -> list[float]:
  """fp32 - `minus` of each run that has both."""
  return [
    r["top1_fp32"] - r[minus]  # type: ignore[operator]
    for r in runs
    if r["top1_fp32"] is not None and r[minus] is not None
  ]


def _number(x: float) -> str:
  text = f"{x:.2f}"
  return "0.00" if text == "-0.00" else text


def _spread(values: list[float]) -> str:
  mean = _number(statistics.fmean(values))
  return mean if len(values) < 2 else f"{mean} +- {_number(statistics.stdev(values))}"


def table(records: Mapping[str, Mapping[str, float | None]], epochs: int) -> str:
  """The markdown table: a line per row (its seeds pooled), the drops as fp32 - INT8."""
  rows: dict[str, list[Mapping[str, float | None]]] = {}
  for key in sorted(records):
    rows.setdefault(key.split("/")[0], []).append(records[key])
  lines = [
    f"# INT8 after training: the reproduction suite's runs ({epochs} epochs)",
    "",
    "Each finished run of `python -m train.reproduce` exported by `python -m train.export "
    "--int8 --check_images 0`: onnxruntime's static QDQ INT8 (S8S8, weights per channel, "
    "MinMax ranges from 512 training images) and the same network quantized by Qwix in JAX, on "
    "all 10,000 test images. Top-1 and agreement in percent, mean +- sample std over the seeds; "
    "a drop is fp32 - INT8 (negative: INT8 scored higher). `python -m train.reproduce.int8` "
    "wrote this.",
    "",
    "| row | seeds | fp32 | INT8 (onnxruntime) | drop | INT8 (Qwix) | drop | agreement "
    "(onnxruntime / Qwix) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for row, runs in rows.items():
    fp32, ort, jax_ = (_present(runs, name) for name in ("top1_fp32", "top1_int8", "top1_jax"))
    drop_ort, drop_jax = _differences(runs, "top1_int8"), _differences(runs, "top1_jax")
    agree, agree_jax = _present(runs, "agreement"), _present(runs, "agreement_jax")
    cells = [_spread(v) if v else "-" for v in (fp32, ort, drop_ort, jax_, drop_jax)]
    agreement = f"{_spread(agree) if agree else '-'} / {_spread(agree_jax) if agree_jax else '-'}"
    lines.append(f"| {row} | {len(runs)} | " + " | ".join(cells) + f" | {agreement} |")
  return "\n".join(lines) + "\n"


def update(runs: Path, epochs: int, out: Path = RESULTS, say=print) -> dict[str, Any]:
  """Measures every finished run of RUNS/eN that has no record yet, then writes the records and
  the table; returns the records."""
  path = out / f"e{epochs}.json"
  records: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
  for summary in sorted((runs / f"e{epochs}").glob("*/seed*/summary.json")):
    workdir = summary.parent
    key = f"{workdir.parent.name}/{workdir.name}"
    if key in records:
      continue
    say(f"measuring {key}")
    records[key] = measure(workdir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(records, indent=1, sort_keys=True) + "\n")  # after each run
  if records:  # the records were written as each run was measured
    write_atomic(out / f"e{epochs}.md", table(records, epochs))
  return records


def main(argv: list[str]) -> None:
  del argv
  records = update(Path(flags.FLAGS.runs), flags.FLAGS.epochs)
  print(f"{len(records)} runs in {RESULTS / f'e{flags.FLAGS.epochs}.md'}", file=sys.stderr)
  if not records:
    sys.exit(f"no finished runs under {flags.FLAGS.runs}/e{flags.FLAGS.epochs}")


if __name__ == "__main__":
  flags.DEFINE_string("runs", "runs/repro", "The suite's folder (RUNS/eN/ROW/seedS).")
  flags.DEFINE_integer("epochs", 10, "The runs' length.")
  app.run(main)
