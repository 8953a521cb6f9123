"""Which examples each step's global batch holds: a pure function of (seed, step).

A resumed run reads exactly the batches an uninterrupted one would, on any number of reading
threads, worker processes and hosts, because nothing about a batch depends on anything but the
seed and the step: epoch e = step // steps_per_epoch reads the permutation drawn from
(seed, e), and an example's random crop (where a source crops on the host) is drawn from
(seed, step, its row in the global batch).

The permutation is NumPy's (`default_rng([seed, epoch]).permutation`), not grain's
`MapDataset.shuffle`: the two orders differ, and a run's batches (and so its metrics) must stay
what they were for every config trained so far. grain reads the plan ahead (threads, worker
processes, batching): see the sources.
"""

from __future__ import annotations

import numpy as np

from train.data.errors import DataError


class BatchPlan:
  """The examples of each step's global batch, and this process's share of it.

  The incomplete last batch of an epoch is dropped. Each process takes its contiguous share of
  every global batch, so the processes' shares are disjoint and their union is the batch.

  Args:
    examples: the split's size.
    batch_size: the global batch.
    seed: the run's seed.
    process_index, process_count: this process among the run's.

  Raises:
    DataError: for a batch larger than the split, or one the processes cannot share equally.
  """

  def __init__(
    self,
    examples: int,
    batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if batch_size > examples:
      raise DataError(f"batch size {batch_size} is larger than the {examples} training examples")
    if batch_size % process_count:
      raise DataError(f"batch size {batch_size} must divide among {process_count} processes")
    self.examples, self.batch_size, self.seed = examples, batch_size, seed
    self.steps_per_epoch = examples // batch_size
    self.local = batch_size // process_count
    self.first_row = process_index * self.local
    self._rows = slice(self.first_row, self.first_row + self.local)
    self._cached: tuple[int, np.ndarray] = (-1, np.arange(examples))

  def permutation(self, epoch: int) -> np.ndarray:
    # one attribute holds the epoch with its permutation: reading threads that straddle an epoch
    # boundary may draw one twice, never read one epoch's order for another
    cached_epoch, perm = self._cached
    if cached_epoch != epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.examples)
      self._cached = (epoch, perm)
    return perm

  def rows(self, step: int) -> np.ndarray:
    """This process's example indices of the global batch of `step`, in the batch's order."""
    epoch, i = divmod(step, self.steps_per_epoch)
    return self.permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size][self._rows]

  def indices(self, step: int) -> np.ndarray:
    """`rows(step)` sorted: contiguous reads from memory (the order inside a batch does not
    matter to the step)."""
    return np.sort(self.rows(step))

  def crop_seed(self, step: int, row: int) -> list[int]:
    """The seed of the random crop of this process's `row` of step's batch: (seed, step, its row
    in the global batch), the same on any number of processes."""
    return [self.seed, step, self.first_row + row]
