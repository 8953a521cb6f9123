"""results/REPRODUCTION.md from the runs of the reproduction suite (see train/reproduce.py).

  python -m train.reproduce --runs runs/repro --report_only

Every number in the report is read from the runs (summary.json) or computed
from their checkpoints by the analyses (train/analyze), or read from their
records in the ledger (train/ledger.py) where the runs are not on this
machine; rows whose runs were lost before the ledger existed add their
printed aggregate (seeds, mean, std) to their accuracy. The papers' numbers
and what each row is compared with are the rows' records
(configs/repro_fmnist.py). Text between the `<!-- notes:start -->` and
`<!-- notes:end -->` markers of an existing report is kept: it is where
people write what the numbers mean.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from configs import repro_fmnist
from train import analyze
from train.analyze.common import markdown_table
from train.reproduce import rows
from train.reproduce.ledger import Sample
from train.reproduce.suite import Suite, lengths_on_disk

NOTES = ("<!-- notes:start -->", "<!-- notes:end -->")


# A paper's difference under this many points is one run each way at ~99%: a tie, and
# a tie holds when ours lies within +-TIE_MARGIN points (its whole 2-se interval).
TIE, TIE_MARGIN = 0.1, 0.25
# (z of a two-sided 5% test + z of 80% power)^2: seeds per row to resolve a difference d
# of per-seed std s in both rows: n = POWER * (s1^2 + s0^2) / d^2
POWER = (1.959964 + 0.841621) ** 2


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Ours (method - baseline, mean over seeds) against a paper's claimed difference.

  Attributes:
    delta: our difference in points.
    two_se: two standard errors of it (resolved when |delta| > two_se).
    seeds: (method's, baseline's) number of seeds.
    paper: the paper's difference, or the direction it claims without a number ("above",
      "not below"); None: the paper claims nothing.
    status: 'confirmed', 'contradicted' or 'not resolved' for a paper's claim; 'resolved'
      or 'not resolved' without one; 'too few seeds' under 2 seeds a row.
    seeds_needed: seeds per row that resolve the paper's difference (a tie or "not below":
      TIE_MARGIN) with 80% power at this length, from the measured per-seed std; None
      without a claim or for "above".
  """

  delta: float
  two_se: float
  seeds: tuple[int, int]
  paper: float | rows.Direction | None
  status: str
  seeds_needed: int | None

  @property
  def resolved(self) -> bool:
    return abs(self.delta) > self.two_se

  @property
  def tie(self) -> bool:
    return isinstance(self.paper, float | int) and abs(self.paper) < TIE


def compare(
  method: Sequence[float] | Sample,
  baseline: Sequence[float] | Sample,
  paper: float | rows.Direction | None,
) -> Comparison:
  """Our difference (method - baseline) over seeds (per-seed values or their statistics), judged
  against the paper's.

  A difference is confirmed when ours is resolved in its direction (a tie, |paper| < TIE: when
  ours +- 2 se lies within +-TIE_MARGIN), contradicted when resolved the other way (a tie:
  entirely outside +-TIE_MARGIN). A direction without a number: "above" as a positive
  difference; "not below" (within noise of the baseline, or above) is confirmed when ours - 2 se
  >= -TIE_MARGIN (at worst a tie) and contradicted when ours is resolved below zero otherwise.
  """
  method, baseline = (v if isinstance(v, Sample) else Sample.of(v) for v in (method, baseline))
  n1, n0 = method.n, baseline.n
  if n1 < 2 or n0 < 2:
    delta = (method.mean - baseline.mean) if n1 and n0 else math.nan
    return Comparison(delta, math.nan, (n1, n0), paper, "too few seeds", None)
  (m1, s1), (m0, s0) = (method.mean, method.std), (baseline.mean, baseline.std)
  delta, two_se = m1 - m0, 2 * math.sqrt(s1**2 / n1 + s0**2 / n0)
  resolved = abs(delta) > two_se
  if paper is None:
    return Comparison(
      delta, two_se, (n1, n0), None, "resolved" if resolved else "not resolved", None
    )
  if paper == "above":
    status = "not resolved" if not resolved else "confirmed" if delta > 0 else "contradicted"
    return Comparison(delta, two_se, (n1, n0), paper, status, None)
  if paper == "not below":
    status = (
      "confirmed"
      if delta - two_se >= -TIE_MARGIN
      else "contradicted"
      if delta + two_se < 0
      else "not resolved"
    )
    needed = max(2, math.ceil(POWER * (s1**2 + s0**2) / TIE_MARGIN**2))
    return Comparison(delta, two_se, (n1, n0), paper, status, needed)
  if isinstance(paper, str):
    raise ValueError(f"a paper's claim is a difference, 'above' or 'not below', got {paper!r}")
  tie = abs(paper) < TIE
  if tie:
    status = (
      "confirmed"
      if abs(delta) + two_se <= TIE_MARGIN
      else "contradicted"
      if abs(delta) - two_se > TIE_MARGIN
      else "not resolved"
    )
  else:
    status = (
      "not resolved"
      if not resolved
      else "confirmed"
      if (delta > 0) == (paper > 0)
      else "contradicted"
    )
  target = TIE_MARGIN if tie else abs(paper)
  needed = max(2, math.ceil(POWER * (s1**2 + s0**2) / target**2))
  return Comparison(delta, two_se, (n1, n0), paper, status, needed)


def verdict(
  method: Sequence[float] | Sample,
  baseline: Sequence[float] | Sample,
  paper: float | rows.Direction | None,
) -> str:
  """One sentence comparing our difference (method - baseline, mean over seeds) with the paper's
  (its difference or its direction)."""
  c = compare(method, baseline, paper)
  if c.status == "too few seeds":
    return "too few seeds to compare"
  ours = f"ours {c.delta:+.2f} (2 se = {c.two_se:.2f})"
  if paper is None:
    return f"{ours}: " + ("resolved" if c.resolved else "not resolved at this n")
  if isinstance(paper, str):
    claim = f"the paper's '{paper}'" + (
      f" (at worst -{TIE_MARGIN})" if paper == "not below" else ""
    )
    if c.status == "not resolved":
      seeds = "" if c.seeds_needed is None else f"; ~{c.seeds_needed} seeds a row would resolve it"
      return f"{ours} vs {claim}: not resolved{seeds}"
    return f"{ours} vs {claim}: " + (
      "CONFIRMED" if c.status == "confirmed" else "CONTRADICTED, ours resolved below"
    )
  claim = f"paper {paper:+.2f}" + (f" (a tie: within +-{TIE_MARGIN})" if c.tie else "")
  if c.status == "not resolved":
    return f"{ours} vs {claim}: not resolved; ~{c.seeds_needed} seeds a row would resolve it"
  if c.tie:
    return f"{ours} vs {claim}: " + (
      "CONFIRMED, a tie"
      if c.status == "confirmed"
      else f"CONTRADICTED, ours {'better' if c.delta > 0 else 'worse'}"
    )
  size = (
    "size agrees"
    if abs(c.delta - paper) <= c.two_se
    else "ours larger"
    if abs(c.delta) > abs(paper)
    else "ours smaller"
  )
  return f"{ours} vs {claim}: " + (
    f"CONFIRMED, same direction ({size})"
    if c.status == "confirmed"
    else "CONTRADICTED, the opposite direction"
  )


def _fmt(sample: Sample) -> str:
  """'mean +- std' to 2 decimals, '-' for no seeds."""
  return "-" if not sample.n else f"{sample.mean:.2f} +- {sample.std:.2f}"


def length_spec(lengths: dict[str, float]) -> str:
  """The --epochs value that gives these lengths ('' for the defaults)."""
  changed = {m: e for m, e in lengths.items() if e != repro_fmnist.EPOCHS.get(m)}
  if not changed:
    return ""
  if len(set(lengths.values())) == 1:
    return f"{next(iter(lengths.values())):g}"
  return ",".join(f"{m}={e:g}" for m, e in changed.items())


def made_with(text: str) -> str | None:
  """The --epochs value of the command a report's header names ('' for the default lengths), or
  None for a text that is not a report of this module."""
  m = re.search(r"Made by `python -m train\.reproduce --runs \S+?(?: --epochs ([^ `]+))?[ `]", text)
  return None if m is None else (m[1] or "")


def _header(suite: Suite, notes: str, methods: Sequence[str]) -> list[str]:
  names = [row for row in suite.records if suite.records[row].method in methods]
  summaries = [s for row in names for s in suite.summaries(row)]
  lost = [a for a in map(suite.aggregate, names) if a is not None]
  seconds = sum(s.seconds_total for s in summaries) + sum(
    60 * a.minutes_per_run * a.accuracy.n for a in lost
  )
  machines = sorted(
    {s.hardware for s in summaries} | {h for a in lost for h in a.hardware.split(" / ")}
  ) or ["-"]
  only = "" if set(methods) == set(rows.METHODS) else f" --methods {','.join(methods)}"
  spec = length_spec(suite.epochs)
  epochs, e = (f" --epochs {spec}" if spec else ""), "{N}"
  lengths = ", ".join(f"{m} {suite.epochs[m]:g}" for m in rows.METHODS if m in methods)
  return [
    "# Reproduction report",
    "",
    f"Made by `python -m train.reproduce --runs runs/repro{epochs}{only}` (every run, then this "
    f"file; `--parallel K` trains K at once) on {time.strftime('%Y-%m-%d')}; the runs took "
    f"{seconds / 60:.0f} min of training in total on {'; '.join(machines)}. Epochs per method: "
    f"{lengths}. One row, one seed: `python -m train.main --config "
    f"configs/repro_fmnist.py:row=ROW,seed=S,epochs=N --workdir runs/repro/e{e}/ROW/seedS`; one "
    f"run's figures: `python -m train.analyze --workdir runs/repro/e{e}/ROW/seedS`.",
    "",
    "Data: Fashion-MNIST (Debian's dataset-fashion-mnist: 60k train, 10k test, 28x28 grey), the "
    "only real dataset these machines have offline. The papers use MNIST, CIFAR and ImageNet "
    "with longer schedules, so the absolute accuracies are NOT comparable to the papers'; what "
    "is compared is each method against its baseline under the same recipe "
    "(configs/repro_fmnist.py), over seeds. Accuracy is that of the DEPLOYED network (every "
    "shaped conv made plain; the trained one agreed on every prediction unless a row says "
    "otherwise). Mean +- sample std over seeds; a difference is resolved when it exceeds two "
    "standard errors. A paper's claim is CONFIRMED when ours is resolved in its direction (for a "
    f"tie, |paper| < {TIE}: when ours +- 2 se lies within +-{TIE_MARGIN} points), CONTRADICTED "
    f"when ours is resolved the other way (for a tie: entirely outside +-{TIE_MARGIN}); otherwise "
    "the seeds a row that would resolve it (80% power, two-sided 5%, from the measured per-seed "
    "spread at this length) are given. A claim without a number is a direction: 'above' is "
    "judged as a positive difference; 'not below' (within noise of the baseline, or above) is "
    f"CONFIRMED when ours - 2 se >= -{TIE_MARGIN} (at worst a tie) and CONTRADICTED when ours is "
    "resolved below zero otherwise.",
    "",
    NOTES[0] + notes + NOTES[1],
    "",
  ]


def _rows_table(suite: Suite, method: str) -> list[str]:
  """One line per row: parameters, accuracy over seeds, the paper's number, agreement, length,
  hardware, time."""
  table, missing, lost, sources = [], [], [], []
  for row in suite.rows(method):
    sums, failed, agg = suite.summaries(row.name), suite.failed(row.name), suite.aggregate(row.name)
    if not sums and not failed and agg is None:
      missing.append(f"`{row.name}`")
      continue
    if agg is not None:
      lost.append(f"`{row.name}` {', '.join(agg.seeds)}")
      sources += [] if agg.source in sources else [agg.source]
    some = sums[0] if sums else None
    params = some.parameters if some else agg.parameters if agg else None
    deployed = some.deployed_parameters if some else agg.deployed_parameters if agg else None
    agree = [100 * s.deployed_prediction_agreement for s in sums] + ([agg.agreement] if agg else [])
    minutes = [s.seconds_total / 60 for s in sums] + (
      [agg.minutes_per_run] * agg.accuracy.n if agg else []
    )
    table.append(
      (
        f"`{row.name}`",
        "-" if params is None else f"{params:,}",
        "-" if deployed is None else f"{deployed:,}",
        _fmt(suite.accuracy(row.name)),
        f"{suite.accuracy(row.name).n}" + (f" ({len(failed)} diverged)" if failed else ""),
        "-" if row.paper is None else f"{row.paper:.2f}",
        row.setting,
        f"{min(agree):.2f}" if agree else "-",
        " / ".join(
          sorted({f"{s.epochs:g}" for s in sums} | ({f"{agg.epochs:g}"} if agg else set()))
        )
        or f"({suite.length(row.name):g})",
        " / ".join(
          sorted({s.hardware for s in sums} | (set(agg.hardware.split(" / ")) if agg else set()))
        )
        or "-",
        f"{np.mean(minutes):.1f}" if minutes else "-",
      )
    )
  lines = markdown_table(
    (
      "row",
      "params",
      "deployed params",
      "test acc. (%)",
      "seeds",
      "paper (%)",
      "paper's setting",
      "deployed = trained (%)",
      "epochs",
      "hardware",
      "min / run",
    ),
    table,
  ) + [""]
  if missing:
    # the report's own lengths for every method: `--epochs acb=10` alone would make a report at
    # other lengths for the rest (their defaults) and replace this one
    spec = length_spec(suite.epochs)
    lines += [
      f"Not run at {suite.epochs[method]:g} epochs: {', '.join(missing)} "
      f"(`{f'--epochs {spec} ' if spec else ''}--rows ...`).",
      "",
    ]
  if lost:
    lines += [
      "Runs lost before the ledger existed, counted from their printed mean and std (no per-seed "
      "values; "
      f"their analyses are not in the tables below): {'; '.join(lost)}. From {'; '.join(sources)}.",
      "",
    ]
  return lines


def _comparisons(suite: Suite, method: str) -> list[str]:
  """Each row against its baseline, next to the paper's difference."""
  return markdown_table(
    ("method vs baseline", "difference (points)", "paper's setting"),
    [
      (
        f"`{row.name}` - `{row.baseline}`",
        verdict(suite.accuracy(row.name), suite.accuracy(row.baseline), row.claim),
        row.comparison,
      )
      for row in suite.rows(method)
      if row.baseline is not None and suite.accuracy(row.name).n and suite.accuracy(row.baseline).n
    ],
  ) + [""]


def _ours(c: Comparison) -> str:
  """'+0.20 +- 0.38' (no 2 se under 2 seeds a row), '-' without runs."""
  if math.isnan(c.delta):
    return "-"
  return f"{c.delta:+.2f}" + ("" if math.isnan(c.two_se) else f" +- {c.two_se:.2f}")


def _claim_text(claim: float | rows.Direction) -> str:
  """A paper's claim in a table cell: its difference ('+1.11') or its direction ('above')."""
  return claim if isinstance(claim, str) else f"{claim:+.2f}"


def _claims(suite: Suite, methods: Sequence[str]) -> list[str]:
  """Every paper's claimed difference in one table: ours, its status and the seeds that would settle
  it."""
  table = []
  for row in suite.records.values():
    claim = row.claim
    if row.method not in methods or claim is None or row.baseline is None:
      continue
    c = compare(suite.accuracy(row.name), suite.accuracy(row.baseline), claim)
    status = (
      "not run"
      if 0 in c.seeds
      else c.status.upper()
      if c.status in ("confirmed", "contradicted")
      else c.status
    )
    table.append(
      (
        f"`{row.name}` - `{row.baseline}`",
        row.comparison,
        _claim_text(claim),
        f"{suite.length(row.name):g}",
        _ours(c),
        f"{c.seeds[0]} / {c.seeds[1]}",
        status,
        "-" if c.seeds_needed is None else str(c.seeds_needed),
      )
    )
  return [
    "## The papers' claims at a glance",
    "",
    *markdown_table(
      (
        "claim",
        "paper's setting",
        "paper (points)",
        "epochs",
        "ours +- 2 se",
        "seeds",
        "status",
        "seeds a row to resolve",
      ),
      table,
    ),
    "",
  ]


def _by_length(runs: Path, methods: Sequence[str], ledger: Path | None) -> list[str]:
  """Each comparison at every length that has runs under RUNS or in the ledger (the trend with
  length)."""
  lengths = lengths_on_disk(runs, ledger)
  if not lengths:
    return []
  suites = [Suite(runs, epochs=dict.fromkeys(rows.METHODS, e), ledger=ledger) for e in lengths]
  table = []
  for row in rows.ROWS.values():
    if row.method not in methods or row.baseline is None:
      continue
    cells = []
    for suite in suites:
      c = compare(suite.accuracy(row.name), suite.accuracy(row.baseline), row.claim)
      cells.append(_ours(c) + ("" if math.isnan(c.delta) else f" ({min(c.seeds)})"))
    if any(cell != "-" for cell in cells):
      paper = "-" if row.claim is None else _claim_text(row.claim)
      table.append((f"`{row.name}` - `{row.baseline}`", paper, *cells))
  return [
    "## Each difference at every length run",
    "",
    "Ours +- 2 se (fewest seeds of the two rows), in points, at every length run (RUNS/eN or the "
    "ledger):",
    "",
    *markdown_table(("method vs baseline", "paper", *(f"{e:g} epochs" for e in lengths)), table),
    "",
  ]


def write_report(
  runs: str | Path,
  path: str | Path,
  methods: Sequence[str] = rows.METHODS,
  epochs: dict[str, float] | None = None,
  ledger: str | Path | None = None,
) -> str:
  """Writes the reproduction report to `path` and its figures next to it (folder `repro/`).

  Args:
    runs: the suite's runs (RUNS/eN/ROW/seedS).
    path: the markdown file.
    methods: the sections to write (default: all), e.g. ("rotate",) for a report of one family.
    epochs: the length of each method's runs the report's tables read (default:
      repro_fmnist.EPOCHS); a table of every difference at every length under RUNS follows them.
    ledger: the suite's ledger (train/reproduce/ledger.py): runs not under RUNS are read from it
      (None: only RUNS).
  """
  unknown = sorted(set(methods) - set(rows.METHODS))
  if unknown:
    raise ValueError(f"unknown methods {unknown}; expected some of {list(rows.METHODS)}")
  suite, path = Suite(runs, epochs=epochs, ledger=ledger), Path(path)
  figures = path.parent / "repro"
  figures.mkdir(parents=True, exist_ok=True)
  notes = ""
  if path.exists():
    old = path.read_text()
    if NOTES[0] in old and NOTES[1] in old:
      notes = old[old.index(NOTES[0]) + len(NOTES[0]) : old.index(NOTES[1])]
  lines = _header(suite, notes, methods) + _claims(suite, methods)
  for method in (m for m in rows.METHODS if m in methods):
    lines += [
      f"## {rows.TITLES[method]}",
      "",
      *_rows_table(suite, method),
      *_comparisons(suite, method),
    ]
    lines += analyze.get(method).summarise(suite, figures)
    # an analysis that is no method's (DCLS's) reports in the section of the rows that read it
    for name in analyze.ANALYSES:
      if name not in rows.METHODS and any(r.method == method for r in suite.analysed_rows(name)):
        lines += analyze.get(name).summarise(suite, figures)
  lines += _by_length(suite.runs, methods, suite.ledger_dir)
  text = "\n".join(lines) + "\n"
  path.write_text(text)
  return text
