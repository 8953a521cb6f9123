"""The papers' analyses of trained runs, one module per method, picked by name.

Each module has the same small interface:

  NAME                                  the method's name (the conv kind's)
  applies(run) -> bool                  whether a run's layers call for it
  compute(run, **options) -> dict       its numbers (JSON), from a TrainedRun
  render(run, results, out, title)      its figures (PNG, into out) and markdown lines
  summarise(suite, figures)             the reproduction report's section over the rows

`train.analyze` runs them on one run; `train.report` asks each for its
section of the reproduction report.
"""

from __future__ import annotations

from types import ModuleType

from train.analyses import acb, active, rotate, versatile

ANALYSES: dict[str, ModuleType] = {m.NAME: m for m in (rotate, active, acb, versatile)}
# the names the sections had before they took their method's name
ALIASES = {"acu": "active", "acnet": "acb"}


def get(name: str) -> ModuleType:
  """The analysis of that name (or former name). Raises ValueError for an unknown one."""
  name = ALIASES.get(name, name)
  if name not in ANALYSES:
    raise ValueError(f"unknown analysis {name!r}; expected one of {list(ANALYSES)}")
  return ANALYSES[name]


def names_for(run) -> list[str]:
  """The analyses a run's layers call for, in ANALYSES order."""
  return [name for name, module in ANALYSES.items() if module.applies(run)]
