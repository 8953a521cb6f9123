"""Where the suite's runs and records are: ROOT/eN/ROW/seedS, the one spelling of that layout.

  RUNS/eN/ROW/seedS/          a run's workdir (train.main's), N its length in epochs
  LEDGER/eN/ROW/seedS.json    its record in the ledger (ledger.py)
  LEDGER/eN/ROW/aggregate.json  what is left of a row's runs lost before records existed

Runs of different lengths never mix: each length has its own eN folder.
"""

from __future__ import annotations

import math
from pathlib import Path

AGGREGATE = "aggregate.json"


def length_dir(epochs: float) -> str:
  """The folder of a suite's runs at that length: 'e10', 'e2.5'."""
  return f"e{epochs:g}"


def dir_length(name: str) -> float | None:
  """The length of a folder that length_dir names ('e10' -> 10.0), None for any other name."""
  try:
    epochs = float(name[1:]) if name.startswith("e") else None
  except ValueError:
    return None
  return epochs if epochs is not None and 0 < epochs < math.inf else None


def seed_name(seed: int | str) -> str:
  """A run's folder name: 'seed0' for 0, '0' or 'seed0'."""
  text = str(seed)
  return text if text.startswith("seed") else f"seed{text}"


def row_dir(root: str | Path, row: str, epochs: float) -> Path:
  """ROOT/eN/ROW: a row's runs (under RUNS) or records (under LEDGER) at that length."""
  return Path(root) / length_dir(epochs) / row


def run_dir(runs: str | Path, row: str, seed: int | str, epochs: float) -> Path:
  """RUNS/eN/ROW/seedS: one run's workdir."""
  return row_dir(runs, row, epochs) / seed_name(seed)


def record_path(ledger: str | Path, row: str, seed: int | str, epochs: float) -> Path:
  """LEDGER/eN/ROW/seedS.json: one run's record."""
  return row_dir(ledger, row, epochs) / f"{seed_name(seed)}.json"


def aggregate_path(ledger: str | Path, row: str, epochs: float) -> Path:
  """LEDGER/eN/ROW/aggregate.json."""
  return row_dir(ledger, row, epochs) / AGGREGATE


def lengths(root: str | Path) -> list[float]:
  """The lengths (epochs) that have a folder under ROOT, shortest first."""
  found = (dir_length(p.name) for p in Path(root).glob("e*") if p.is_dir())
  return sorted({e for e in found if e is not None})
