"""A run's train batches: a source read on its batch plan, step by step or ahead."""

from __future__ import annotations

from collections.abc import Generator

from train.data.plan import BatchPlan
from train.data.source import Batch, Source


class Batches:
  """The train batches of a source: this process's share of each step's global batch, a pure
  function of (seed, step) (`BatchPlan`).

  Args:
    source: the split (in memory or streamed); the others are its `BatchPlan`'s.
  """

  def __init__(
    self,
    source: Source,
    batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
  ):
    self.source = source
    self.plan = BatchPlan(
      len(source), batch_size, seed, process_index=process_index, process_count=process_count
    )

  @property
  def steps_per_epoch(self) -> int:
    return self.plan.steps_per_epoch

  def batch(self, step: int) -> Batch:
    """The batch of `step`, read here."""
    return self.source.batch(self.plan, step)

  def iterate(self, start: int, stop: int) -> Generator[Batch, None, None]:
    """The batches of steps start..stop-1, read ahead by the source's threads and workers."""
    yield from self.source.iterate(self.plan, start, stop)
