"""The runs of the reproduction suite on disk (RUNS/eN/ROW/seedS), read through the rows' records.

A suite's runs at one length are under RUNS/eN (N epochs, `repro_fmnist.length_dir`);
a `Suite` reads each method's rows at the length it is given.

The suite driver (`train.reproduce`) and the report (`train.report`) both
read the runs through `Suite`; each analysis module's `summarise` gets one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configs import repro_fmnist
from train import analyze
from train.rundir import RunDir
from train.trained_run import TrainedRun, load_run


def lengths_on_disk(runs: str | Path) -> list[float]:
  """The lengths (epochs) that have a folder under RUNS, shortest first."""
  found = (repro_fmnist.dir_length(p.name) for p in Path(runs).glob("e*") if p.is_dir())
  return sorted(e for e in found if e is not None)


class Suite:
  """The suite's runs under `runs`, each method's at its length.

  Args:
    runs: the suite's folder (RUNS).
    rows: the rows' records (default: configs/repro_fmnist.py's).
    epochs: the length of each method's runs (default: repro_fmnist.EPOCHS); a method's
      rows are read from RUNS/eN with N its length.
  """

  def __init__(self, runs: str | Path, rows: dict[str, repro_fmnist.Row] | None = None,
               epochs: dict[str, float] | None = None):
    self.runs = Path(runs)
    self.records = repro_fmnist.ROWS if rows is None else rows
    self.epochs = {**repro_fmnist.EPOCHS, **(epochs or {})}
    self._loaded: dict[tuple[str, str], TrainedRun] = {}

  def length(self, row: str) -> float:
    """The epochs of a row's runs in this suite."""
    return self.epochs[self.records[row].method]

  def row_dir(self, row: str) -> Path:
    """RUNS/eN/ROW: the row's seeds at its length."""
    return self.runs / repro_fmnist.length_dir(self.length(row)) / row

  def rows(self, method: str) -> list[repro_fmnist.Row]:
    """The rows of a method, in suite order."""
    return [r for r in self.records.values() if r.method == method]

  def analysed_rows(self, analysis: str) -> list[repro_fmnist.Row]:
    """The rows the report reads that analysis of."""
    return [r for r in self.records.values() if analysis in r.analyses]

  def figure_rows(self, analysis: str) -> list[repro_fmnist.Row]:
    """The rows whose figures of that analysis the report shows (analysed rows with a label;
    for an analysis no row asks for, the method's rows with a label)."""
    rows = self.analysed_rows(analysis) or self.rows(analysis)
    return [r for r in rows if r.figure is not None]

  def workdir(self, row: str, seed: str) -> Path:
    return self.row_dir(row) / seed

  def analysis_dir(self, row: str, seed: str) -> Path:
    return RunDir(self.workdir(row, seed)).analysis_dir

  def seeds(self, row: str) -> list[str]:
    """The finished seeds of a row ('seed0', ...), sorted."""
    return sorted(p.name for p in self.row_dir(row).glob("seed*") if RunDir(p).summary_path.exists())

  def summaries(self, row: str) -> list[dict[str, Any]]:
    return [RunDir(self.workdir(row, s)).read_summary() for s in self.seeds(row)]

  def failed(self, row: str) -> list[str]:
    return sorted(p.name for p in self.row_dir(row).glob("seed*") if RunDir(p).failed_path.exists()
                  and not RunDir(p).summary_path.exists())

  def load(self, row: str, seed: str) -> TrainedRun:
    """The run rebuilt from its latest checkpoint (kept for the report's next question)."""
    key = (row, seed)
    if key not in self._loaded:
      self._loaded[key] = load_run(self.workdir(row, seed))
    return self._loaded[key]

  def results(self, row: str, seed: str) -> dict[str, Any] | None:
    """The analyses the row's record asks for, of one run: computed once and cached in its analysis/."""
    record = self.records[row]
    if not record.analyses:
      return None
    options = {k: v for o in record.analyses.values() for k, v in o.items()}
    cached = self.analysis_dir(row, seed) / "results.json"
    if cached.exists():
      results = json.loads(cached.read_text())
      # computed for these analyses with these options (older caches did not record them)
      if set(record.analyses) <= set(results.get("sections", [])) and results.get("options") == options:
        return results
    return analyze.analyze(self.workdir(row, seed), sections=list(record.analyses), **options)
