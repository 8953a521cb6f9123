"""Small helpers the analyses share: markdown tables, mean +- std, copying a run's figure into the report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof 1; 0 for one value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values: Sequence[float]) -> str:
  """'mean +- std' to 2 decimals, '-' for none."""
  if not values:
    return "-"
  m, s = mean_std(values)
  return f"{m:.2f} +- {s:.2f}"


def copy(src: Path, dst: Path) -> str:
  """Copies a figure; returns its file name."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, dst)
  return dst.name


def first_seed_figures(suite, row: str, figures: Path, caption: str, names: Sequence[tuple[str, str]]) -> list[str]:
  """Markdown that shows a row's figures of its first finished seed, copied into the report's folder.

  Args:
    suite: the runs.
    row: the row's name.
    figures: the report's figure folder.
    caption: the line above them; `{seed}` becomes the seed's folder name ('seed0'), `{number}` its number.
    names: (file in the run's analysis/, file in `figures`) per figure.
  """
  seeds = suite.seeds(row)
  if not seeds:
    return []
  src = suite.analysis_dir(row, seeds[0])
  return [caption.format(seed=seeds[0], number=seeds[0].removeprefix("seed")), "", *(f"![](repro/{copy(src / a, figures / b)})" for a, b in names), ""]
