"""What a split of a dataset is to the trainer: the `Source` protocol, and the `Dataset` of two.

A source is read by example index on the batch plan (`train.data.plan`):

- in memory (`train.data.memory.MemorySplit`): the small datasets (TFDS, IDX, NPZ, synthetic),
  a step's batch gathered whole from uint8 arrays;
- streamed (`train.data.streamed.StreamSplit`): a prepared ArrayRecord folder or a large TFDS
  dataset (imagenet2012), each example read, decoded and cropped on the CPU (threads, grain
  worker processes).

The trainer, the evaluator, the analyses and the exports ask a source only through this
protocol; none of them asks which kind it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from train.data.plan import BatchPlan

# "image": uint8 NHWC, "label": int32 (N,), and in evaluation "mask": bool (N,), the real rows
Batch = dict[str, np.ndarray]


class Source(Protocol):
  """One split of a dataset, read by example index."""

  def __len__(self) -> int: ...

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the images it yields."""
    ...

  def head(self, n: int) -> np.ndarray:
    """n images (uint8 NHWC) as the model is evaluated on them (what exports are checked on)."""
    ...

  def held(self, limit: int) -> Held:
    """The split held in memory (for the analyses that need the images at hand): itself if it
    is; else `limit` examples spread evenly over it, with the evaluation crop."""
    ...

  def batch(self, plan: BatchPlan, step: int) -> Batch:
    """This process's rows of the global batch of `step`, read here."""
    ...

  def iterate(self, plan: BatchPlan, start: int, stop: int) -> Iterator[Batch]:
    """The batches of steps start..stop-1, read ahead."""
    ...

  def eval_batches(
    self, batch_size: int, *, process_index: int = 0, process_count: int = 1
  ) -> Iterator[Batch]:
    """The whole split in order, this process's rows of each global batch; the last batch
    padded, `mask` marking the real rows (every example counted once on any number of
    processes)."""
    ...


class Held(Source, Protocol):
  """A source held in memory: its uint8 images (N, H, W, C) and int32 labels (N,) at hand."""

  @property
  def images(self) -> np.ndarray: ...

  @property
  def labels(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's two splits and what its images are normalised with.

  Attributes:
    name: the dataset's (data.name).
    train, test: the sources.
    num_classes: the labels' range.
    mean, std: per channel, of the train images in [0, 1].
    fingerprint: what the data is: a resume refuses other data under the same config.
    earlier_fingerprints: what earlier versions of this code called the same data (their
      checkpoints resume).
  """

  name: str
  train: Source
  test: Source
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  fingerprint: str = ""
  earlier_fingerprints: tuple[str, ...] = ()

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.train.image_shape


def spread(source: Source, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of n examples spread evenly over the split (all of it when it has fewer),
  held in memory: what calibrates an INT8 network and what checks an export."""
  held = source.held(n)
  idx = np.unique(np.linspace(0, len(held) - 1, min(n, len(held))).astype(int))
  return held.images[idx], held.labels[idx]
