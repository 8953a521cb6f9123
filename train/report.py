"""results/REPRODUCTION.md from the runs of the reproduction suite (see train/reproduce.py).

  python -m train.reproduce --runs runs/repro --report_only

Every number in the report is read from the runs (summary.json) or computed
from their checkpoints by the analyses (train/analyses); the papers' numbers
and what each row is compared with are the rows' records
(configs/repro_fmnist.py). Text between the `<!-- notes:start -->` and
`<!-- notes:end -->` markers of an existing report is kept: it is where
people write what the numbers mean.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from configs import repro_fmnist
from train import analyses
from train.analyses.common import fmt, markdown_table, mean_std
from train.suite import Suite

NOTES = ("<!-- notes:start -->", "<!-- notes:end -->")


def verdict(method: Sequence[float], baseline: Sequence[float], paper: float | None) -> str:
  """One sentence comparing our difference (method - baseline, mean over seeds) with the paper's."""
  if len(method) < 2 or len(baseline) < 2:
    return "too few seeds to compare"
  m1, s1 = mean_std(method)
  m0, s0 = mean_std(baseline)
  delta = m1 - m0
  se = math.sqrt(s1 ** 2 / len(method) + s0 ** 2 / len(baseline))
  resolved = abs(delta) > 2 * se
  ours = f"ours {delta:+.2f} (2 se = {2 * se:.2f})"
  if paper is None:
    return f"{ours}: " + ("resolved" if resolved else "not resolved at this n")
  if not resolved:
    return f"{ours} vs paper {paper:+.2f}: difference not resolved at this n"
  direction = "better" if delta > 0 else "worse"
  if abs(paper) < 0.1:  # one run each in the paper: a tie
    return f"{ours} vs paper {paper:+.2f} (a tie): ours resolved, {direction}"
  return f"{ours} vs paper {paper:+.2f}: " + ("same direction" if (delta > 0) == (paper > 0) else "OPPOSITE direction")


def _accuracies(suite: Suite, row: str) -> list[float]:
  """Test accuracy (%) of the deployed network, per finished seed."""
  return [100 * s["deployed_test_accuracy"] for s in suite.summaries(row)]


def _header(suite: Suite, notes: str, methods: Sequence[str]) -> list[str]:
  seconds = sum(s.get("seconds_total", 0) for row in suite.records for s in suite.summaries(row))
  only = "" if set(methods) == set(repro_fmnist.METHODS) else f" --methods {','.join(methods)}"
  return [
      "# Reproduction report", "",
      f"Made by `python -m train.reproduce --runs runs/repro{only}` (every run, then this file) on "
      f"{time.strftime('%Y-%m-%d')}; the runs took {seconds / 60:.0f} min of training in total "
      f"({sys.platform}, CPU). One row, one seed: "
      "`python -m train.main --config configs/repro_fmnist.py:row=ROW,seed=S --workdir runs/repro/ROW/seedS`; "
      "one run's figures: `python -m train.analyze --workdir runs/repro/ROW/seedS`.", "",
      "Data: Fashion-MNIST (Debian's dataset-fashion-mnist: 60k train, 10k test, 28x28 grey), the only real "
      "dataset these machines have offline. The papers use MNIST, CIFAR and ImageNet with schedules 10-100x longer, "
      "so the absolute accuracies are NOT comparable to the papers'; what is compared is each method against "
      "its baseline under the same short recipe (configs/repro_fmnist.py), over seeds. "
      "Accuracy is that of the DEPLOYED network (every shaped conv made plain; the trained one agreed on every "
      "prediction unless a row says otherwise). Mean +- sample std over seeds; a difference counts as resolved "
      "when it exceeds two standard errors.", "",
      NOTES[0] + notes + NOTES[1], "",
  ]


def _rows_table(suite: Suite, method: str) -> list[str]:
  """One line per row: parameters, accuracy over seeds, the paper's number, agreement, time."""
  table = []
  for row in suite.rows(method):
    sums, failed = suite.summaries(row.name), suite.failed(row.name)
    agree = min((s["deployed_prediction_agreement"] or 0.0 for s in sums), default=float("nan"))
    table.append((f"`{row.name}`", f"{sums[0]['parameters']:,}" if sums else "-",
                  f"{sums[0]['deployed_parameters']:,}" if sums else "-", fmt(_accuracies(suite, row.name)),
                  f"{len(sums)}" + (f" ({len(failed)} diverged)" if failed else ""),
                  "-" if row.paper is None else f"{row.paper:.2f}", row.setting,
                  f"{100 * agree:.2f}" if sums else "-",
                  f"{np.mean([s['seconds_total'] for s in sums]) / 60:.1f}" if sums else "-"))
  return markdown_table(("row", "params", "deployed params", "test acc. (%)", "seeds", "paper (%)",
                         "paper's setting", "deployed = trained (%)", "min / run"), table) + [""]


def _comparisons(suite: Suite, method: str) -> list[str]:
  """Each row against its baseline, next to the paper's difference."""
  return markdown_table(("method vs baseline", "difference (points)", "paper's setting"),
                        [(f"`{row.name}` - `{row.baseline}`",
                          verdict(_accuracies(suite, row.name), _accuracies(suite, row.baseline),
                                  row.paper_difference), row.comparison)
                         for row in suite.rows(method) if row.baseline is not None]) + [""]


def write_report(runs: str | Path, path: str | Path, methods: Sequence[str] = repro_fmnist.METHODS) -> str:
  """Writes the reproduction report to `path` and its figures next to it (folder `repro/`).

  Args:
    runs: the suite's runs (RUNS/ROW/seedS).
    path: the markdown file.
    methods: the sections to write (default: all), e.g. ("rotate",) for a report of one family.
  """
  unknown = sorted(set(methods) - set(repro_fmnist.METHODS))
  if unknown:
    raise ValueError(f"unknown methods {unknown}; expected some of {list(repro_fmnist.METHODS)}")
  suite, path = Suite(runs), Path(path)
  figures = path.parent / "repro"
  figures.mkdir(parents=True, exist_ok=True)
  notes = ""
  if path.exists():
    old = path.read_text()
    if NOTES[0] in old and NOTES[1] in old:
      notes = old[old.index(NOTES[0]) + len(NOTES[0]):old.index(NOTES[1])]
  lines = _header(suite, notes, methods)
  for method in (m for m in repro_fmnist.METHODS if m in methods):
    lines += [f"## {repro_fmnist.TITLES[method]}", "", *_rows_table(suite, method), *_comparisons(suite, method)]
    lines += analyses.get(method).summarise(suite, figures)
  text = "\n".join(lines) + "\n"
  path.write_text(text)
  return text
