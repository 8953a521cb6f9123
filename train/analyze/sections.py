"""The analyses by name: one module of train/analyze per method."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from train.analyze import acb, active, dcls, rotate, versatile

if TYPE_CHECKING:
  from train.trainer.trained_run import TrainedRun

ANALYSES: dict[str, ModuleType] = {m.NAME: m for m in (rotate, active, acb, versatile, dcls)}


def get(name: str) -> ModuleType:
  """The analysis of that name. Raises ValueError for an unknown one."""
  if name not in ANALYSES:
    raise ValueError(f"unknown analysis {name!r}; expected one of {list(ANALYSES)}")
  return ANALYSES[name]


def names_for(run: TrainedRun) -> list[str]:
  """The analyses a run's layers call for, in ANALYSES order."""
  return [name for name, module in ANALYSES.items() if module.applies(run)]
