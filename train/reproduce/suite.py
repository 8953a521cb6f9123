"""The runs of the reproduction suite (RUNS/eN/ROW/seedS on disk, or their records), read through
the rows.

A suite's runs at one length are under RUNS/eN (N epochs, train/reproduce/layout.py);
a `Suite` reads each method's rows at the length it is given. A run whose folder is
not on this machine is read from its record in the ledger (train/ledger.py); a row
whose runs were lost before records existed adds its aggregate to its accuracy.

The suite driver (`train.reproduce`) and the report (`train.reproduce.report`) both
read the runs through `Suite`; each analysis module's `summarise` gets one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configs import repro_fmnist
from train import analyze
from train.reproduce import layout, ledger
from train.reproduce.rows import ROWS, Row
from train.trainer.rundir import RunDir
from train.trainer.summary import Summary
from train.trainer.trained_run import TrainedRun, load_run


def lengths_on_disk(runs: str | Path, ledger_dir: str | Path | None = None) -> list[float]:
  """The lengths (epochs) that have a folder under RUNS (or records in the ledger), shortest
  first."""
  recorded = layout.lengths(ledger_dir) if ledger_dir is not None else []
  return sorted(set(layout.lengths(runs)) | set(recorded))


class Suite:
  """The suite's runs under `runs`, each method's at its length.

  Args:
    runs: the suite's folder (RUNS).
    rows: the rows' records (default: rows.ROWS).
    epochs: the length of each method's runs (default: repro_fmnist.EPOCHS); a method's
      rows are read from RUNS/eN with N its length.
    ledger: the suite's ledger, RUNS' records (None: only the runs on disk are read).
  """

  def __init__(
    self,
    runs: str | Path,
    rows: dict[str, Row] | None = None,
    epochs: dict[str, float] | None = None,
    ledger: str | Path | None = None,
  ):
    self.runs = Path(runs)
    self.ledger_dir = None if ledger is None else Path(ledger)
    self.records = ROWS if rows is None else rows
    self.epochs = {**repro_fmnist.EPOCHS, **(epochs or {})}
    self._loaded: dict[tuple[str, str], TrainedRun] = {}

  def length(self, row: str) -> float:
    """The epochs of a row's runs in this suite."""
    return self.epochs[self.records[row].method]

  def row_dir(self, row: str) -> Path:
    """RUNS/eN/ROW: the row's seeds at its length."""
    return layout.row_dir(self.runs, row, self.length(row))

  def rows(self, method: str) -> list[Row]:
    """The rows of a method, in suite order."""
    return [r for r in self.records.values() if r.method == method]

  def analysed_rows(self, analysis: str) -> list[Row]:
    """The rows the report reads that analysis of."""
    return [r for r in self.records.values() if analysis in r.analyses]

  def figure_rows(self, analysis: str) -> list[Row]:
    """The rows whose figures of that analysis the report shows (analysed rows with a label;
    for an analysis no row asks for, the method's rows with a label)."""
    rows = self.analysed_rows(analysis) or self.rows(analysis)
    return [r for r in rows if r.figure is not None]

  def workdir(self, row: str, seed: str) -> Path:
    """RUNS/eN/ROW/seedS."""
    return layout.run_dir(self.runs, row, seed, self.length(row))

  def analysis_dir(self, row: str, seed: str) -> Path:
    return RunDir(self.workdir(row, seed)).analysis_dir

  def on_disk(self, row: str) -> list[str]:
    """The row's finished seeds whose folders are on this machine ('seed0', ...), sorted."""
    return sorted(
      p.name for p in self.row_dir(row).glob("seed*") if RunDir(p).summary_path.exists()
    )

  def recorded(self, row: str) -> dict[str, dict[str, Any]]:
    """The row's records at its length ({} without a ledger)."""
    if self.ledger_dir is None:
      return {}
    return ledger.seeds(self.ledger_dir, row, self.length(row))

  def aggregate(self, row: str) -> ledger.Aggregate | None:
    """What is left of the row's lost runs at its length, if any."""
    return (
      None
      if self.ledger_dir is None
      else ledger.read_aggregate(self.ledger_dir, row, self.length(row))
    )

  def seeds(self, row: str) -> list[str]:
    """The finished seeds of a row with a summary ('seed0', ...: on disk or recorded), sorted; an
    aggregate's seeds are not among them."""
    lost = set(a.seeds) if (a := self.aggregate(row)) else set()
    found = set(self.on_disk(row)) | {s for s, r in self.recorded(row).items() if r.get("summary")}
    return sorted(found - lost)

  def summary(self, row: str, seed: str) -> Summary:
    """A finished run's summary, from its folder where that is here, else from its record."""
    return RunDir(self.workdir(row, seed)).read_summary() or Summary.from_json(
      self.recorded(row)[seed]["summary"]
    )

  def summaries(self, row: str) -> list[Summary]:
    return [self.summary(row, s) for s in self.seeds(row)]

  def accuracy(self, row: str) -> ledger.Sample:
    """Deployed test accuracy (%) over the row's seeds, pooled with its aggregate."""
    ours = ledger.Sample.of([100 * s.deployed_test_accuracy for s in self.summaries(row)])
    return ours.pool(a.accuracy) if (a := self.aggregate(row)) else ours

  def failed(self, row: str) -> list[str]:
    """The seeds that failed (diverged), on disk or recorded, and have no summary."""
    here = {p.name for p in self.row_dir(row).glob("seed*") if RunDir(p).failed_path.exists()}
    there = {s for s, r in self.recorded(row).items() if r.get("failed")}
    return sorted((here | there) - set(self.seeds(row)))

  def load(self, row: str, seed: str) -> TrainedRun:
    """The run rebuilt from its latest checkpoint (kept for the report's next question)."""
    key = (row, seed)
    if key not in self._loaded:
      self._loaded[key] = load_run(self.workdir(row, seed))
    return self._loaded[key]

  def results(self, row: str, seed: str) -> dict[str, Any] | None:
    """The analyses the row's record asks for, of one run: computed once and cached in its analysis/
    (read from its record where the run is not on this machine)."""
    record = self.records[row]
    if not record.analyses:
      return None
    options = {k: v for o in record.analyses.values() for k, v in o.items()}

    def current(results: dict[str, Any] | None) -> bool:
      # computed for these analyses with these options
      return (
        results is not None
        and set(record.analyses) <= set(results.get("sections", []))
        and results.get("options") == options
      )

    cached = self.analysis_dir(row, seed) / "results.json"
    if cached.exists() and current(results := json.loads(cached.read_text())):
      return results
    if not RunDir(self.workdir(row, seed)).summary_path.exists():
      kept = self.recorded(row).get(seed, {}).get("results")
      if current(kept):
        return kept
      raise FileNotFoundError(
        f"{row} {seed}: its run is not on this machine and its record "
        f"holds no current {sorted(record.analyses)} results"
      )
    return analyze.analyze(self.workdir(row, seed), sections=list(record.analyses), **options)

  def record(self, row: str, seed: str) -> Path | None:
    """Writes the record of a run on this machine (finished: its summary and analyses; failed: why);
    returns its path, None without a ledger or a settled run here."""
    if self.ledger_dir is None:
      return None
    rundir = RunDir(self.workdir(row, seed))
    path = layout.record_path(self.ledger_dir, row, seed, self.length(row))
    if rundir.summary_path.exists():
      ledger.write(path, rundir.read_summary(), self.results(row, seed))
    elif rundir.failed_path.exists():
      ledger.write(path, None, None, failed=rundir.failed_path.read_text().strip())
    else:
      return None
    return path
