"""The reproduction suite's ledger: what the report reads of each run, kept in the repository.

A run's folder (RUNS/eN/ROW/seedS: checkpoints, metrics) stays on the machine
that trained it, and machines are not kept. So after each run the suite
driver writes its record, LEDGER/eN/ROW/seedS.json: the run's summary and the
results of the analyses the report reads of it (or why it failed). Records
are small and committed; the report reads a run from its folder where that
is on disk and from its record elsewhere, so a report can be remade and
extended on any machine, and a recorded run is never trained again.

A row whose runs were lost before records existed keeps only what the report
had printed of it: LEDGER/eN/ROW/aggregate.json (`Aggregate`), the number of
seeds, the mean and sample std of the accuracy and the row's other columns.
Its seeds are not trained again either; new seeds of that row are pooled
with it (`Sample.pool`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train import json_files
from train.analyze.common import mean_std
from train.reproduce import layout
from train.trainer.summary import Summary

LEDGER = Path("results/runs")


def write(
  path: Path, summary: Summary | None, results: dict[str, Any] | None, failed: str | None = None
) -> None:
  """Writes one run's record (a finished run's summary and analyses, or a failed run's reason)."""
  if (summary is None) == (failed is None):
    raise ValueError("a record holds either a finished run's summary or a failed run's reason")
  record = (
    {"summary": summary.to_json(), "results": results}
    if summary is not None
    else {"failed": failed}
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  tmp.replace(path)  # a reader never sees half a record


def seeds(ledger: str | Path, row: str, epochs: float) -> dict[str, dict[str, Any]]:
  """{'seed0': record, ...}: the row's recorded runs at that length."""
  return {
    p.stem: json_files.read(p)
    for p in sorted(layout.row_dir(ledger, row, epochs).glob("seed*.json"))
  }


@dataclasses.dataclass(frozen=True)
class Sample:
  """A row's accuracies as count, mean and sample std (what pooling and the t-free tests need).

  Attributes:
    n: the number of seeds.
    mean: their mean (NaN for none).
    std: their sample std (ddof 1; 0 for one).
  """

  n: int
  mean: float
  std: float

  @classmethod
  def of(cls, values: Sequence[float]) -> Sample:
    if not len(values):
      return cls(0, math.nan, 0.0)
    return cls(len(values), *mean_std(values))

  def pool(self, other: Sample) -> Sample:
    """The statistics of both sets of seeds together (exact, from the two sums of squares)."""
    if not other.n:
      return self
    if not self.n:
      return other
    n = self.n + other.n
    mean = (self.n * self.mean + other.n * other.mean) / n
    m2 = (
      (self.n - 1) * self.std**2
      + (other.n - 1) * other.std**2
      + self.n * other.n / n * (self.mean - other.mean) ** 2
    )
    return Sample(n, mean, math.sqrt(m2 / (n - 1)))


@dataclasses.dataclass(frozen=True)
class Aggregate:
  """What is left of a row whose runs were lost before records existed: the report's printed
  columns.

  Attributes:
    seeds: the run folders it summarises ('seed0', ...); not trained again.
    accuracy: deployed test accuracy (%) over those seeds, as printed (2 decimals).
    parameters: trained parameters.
    deployed_parameters: parameters once deployed.
    agreement: the lowest share (%) of test predictions the deployed net shared with the trained
    one. epochs: the runs' length. hardware: what they trained on, as printed. minutes_per_run: mean
    wall minutes of one run. source: where the numbers were read (a file at a commit) and why the
    runs are gone.
  """

  seeds: tuple[str, ...]
  accuracy: Sample
  parameters: int
  deployed_parameters: int
  agreement: float
  epochs: float
  hardware: str
  minutes_per_run: float
  source: str

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["seeds"] = list(self.seeds)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> Aggregate:
    d = dict(d)
    sample = d.pop("accuracy")
    if len(d["seeds"]) != sample["n"]:
      raise ValueError(f"aggregate of {len(d['seeds'])} seeds {d['seeds']} holds n={sample['n']}")
    return cls(accuracy=Sample(**sample), **{**d, "seeds": tuple(d["seeds"])})


def read_aggregate(ledger: str | Path, row: str, epochs: float) -> Aggregate | None:
  path = layout.aggregate_path(ledger, row, epochs)
  if not path.exists():
    return None
  return json_files.parse(path, json_files.read(path), Aggregate.from_json)


def write_aggregate(ledger: str | Path, row: str, length: float, aggregate: Aggregate) -> Path:
  """Keeps a row's aggregate in the suite's folder of that length (LEDGER/eN/ROW/aggregate.json)."""
  path = layout.aggregate_path(ledger, row, length)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(aggregate.to_json(), indent=1) + "\n")
  return path


_ROW_HEADER = ("row", "params", "deployed params", "test acc. (%)", "seeds")


def aggregates_from_report(markdown: str, source: str) -> dict[str, Aggregate]:
  """The rows of a report written by train.reproduce.report, read back from its row tables as
  Aggregates.

  For runs that were lost: what the report printed of each row (its first `seeds` seeds, 'seed0'
  up, as the suite driver trains them). Rows with a diverged seed are refused, since the report
  does not say which seed diverged.

  Args:
    markdown: the report's text.
    source: where it was read and why its runs are gone (kept in each Aggregate).

  Raises:
    ValueError: where the text has no row tables, or a row it cannot read.
  """
  out, header = {}, None
  for line in markdown.splitlines():
    cells = (
      [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
    )
    if cells is None:
      header = None
    elif tuple(cells[:5]) == _ROW_HEADER:
      header = cells
    elif header is not None and not set(line) <= set("|-"):
      r = dict(zip(header, cells))
      name = r["row"].strip("`")
      if not r["seeds"].isdigit():
        raise ValueError(
          f"row {name}: seeds {r['seeds']!r} is not a plain count (a diverged seed?)"
        )
      n = int(r["seeds"])
      mean, std = (float(v) for v in r["test acc. (%)"].split("+-"))
      out[name] = Aggregate(
        seeds=tuple(f"seed{i}" for i in range(n)),
        accuracy=Sample(n, mean, std if n > 1 else 0.0),
        parameters=int(r["params"].replace(",", "")),
        deployed_parameters=int(r["deployed params"].replace(",", "")),
        agreement=float(r["deployed = trained (%)"]),
        epochs=float(r["epochs"]),
        hardware=r["hardware"],
        minutes_per_run=float(r["min / run"]),
        source=source,
      )
  if not out:
    raise ValueError(
      "no row tables (a header starting with " + " | ".join(_ROW_HEADER) + ") in the text"
    )
  return out
