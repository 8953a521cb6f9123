"""Small helpers the analyses share: markdown tables, mean +- std, copying a run's figure into the
report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  return [
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
    *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
  ]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof 1; 0 for one value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values: Sequence[float]) -> str:
  """'mean +- std' to 2 decimals, 'value (1 seed)' for one (no spread to show), '-' for none."""
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.2f} (1 seed)"
  m, s = mean_std(values)
  return f"{m:.2f} +- {s:.2f}"


def per_layer_table(suite, analysis: str, key: str) -> list[str]:
  """One row per analysed row of the suite, one column per layer: `results[analysis][key]`
  (a number per layer) as mean +- std over the row's seeds; [] when no row has results."""
  table, header = [], None
  for row in suite.analysed_rows(analysis):
    per_seed = [suite.results(row.name, s)[analysis][key] for s in suite.seeds(row.name)]
    if not per_seed:
      continue
    header = list(per_seed[0])
    table.append((f"`{row.name}`", *(fmt([p[name] for p in per_seed]) for name in header)))
  return markdown_table(("row", *header), table) + [""] if header else []


def copy(src: Path, dst: Path) -> str:
  """Copies a figure; returns its file name."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(src, dst)
  return dst.name


KEPT = "(figures kept from an earlier report: that run's folder is not on this machine)"


def first_seed_figures(
  suite, row: str, figures: Path, caption: str, names: Sequence[tuple[str, str]]
) -> list[str]:
  """Markdown that shows a row's figures of its first finished seed, copied into the report's
  folder.

  Where no run of the row is on this machine (read from the ledger), the figures already in the
  report's folder are shown as they are, and said to be kept.

  Args:
    suite: the runs.
    row: the row's name.
    figures: the report's figure folder.
    caption: the line above them; `{seed}` becomes the seed's folder name ('seed0'), `{number}`
      its number.
    names: (file in the run's analysis/, file in `figures`) per figure; the name in `figures`
      holds the row's name, since every row's figures share that folder.
  """
  here = suite.on_disk(row)
  if here:
    src = suite.analysis_dir(row, here[0])
    shown, seed, note = [copy(src / a, figures / b) for a, b in names], here[0], []
  else:
    aggregate = suite.aggregate(row)
    seeds = sorted(suite.seeds(row) + (list(aggregate.seeds) if aggregate else []))
    shown = [b for _, b in names if (figures / b).exists()]
    if not seeds or not shown:
      return []
    seed, note = seeds[0], [KEPT, ""]
  return [
    caption.format(seed=seed, number=seed.removeprefix("seed")),
    "",
    *note,
    *(f"![](repro/{name})" for name in shown),
    "",
  ]
