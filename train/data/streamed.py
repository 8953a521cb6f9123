"""Streamed datasets: read example by example, decoded and cropped on CPU workers through grain.

ImageNet does not fit in memory, so its splits are random-access sources (a folder of ArrayRecord
shards written by `python -m train.prepare`, or a TFDS `data_source` such as imagenet2012) and
every batch is assembled when it is due. The batches follow the in-memory datasets' plan
(`train.data.plan.BatchPlan`): the examples of a step are a function of (seed, step), and an
example's crop and flip are drawn from (seed, step, its row in the global batch). A batch is
therefore the same whatever the number of worker processes or hosts, and a resumed run starts
its pipeline at its checkpoint's step and reads exactly what an uninterrupted run reads: the
step is the iterator's whole position. Memory is bounded by the prefetch buffers, whatever the
dataset's size. Images reach the device as uint8; normalisation runs there.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from configs.datasets import STREAM_IMAGE_SIZE
from configs.schema import DataSettings
from train import signals
from train.data import images, records
from train.data.errors import DataError
from train.data.memory import MemorySplit
from train.data.plan import BatchPlan
from train.data.source import Batch, Dataset

# the training images' statistics of a TFDS dataset come from this many of them (evaluation crop)
TFDS_STATS_EXAMPLES = 1024


class Reader(Protocol):
  """Random access to a split's stored examples: len, and (label, RGB uint8 image) by index."""

  def __len__(self) -> int: ...

  def read(self, index: int) -> tuple[int, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class RecordReader:
  """A prepared folder's ArrayRecord records (`train.data.records`): label, then a JPEG."""

  records: Sequence[bytes]
  classes: int  # metadata.json's: a label must be below it

  def __len__(self) -> int:
    return len(self.records)

  def read(self, index: int) -> tuple[int, np.ndarray]:
    try:
      record = self.records[index]
    except RuntimeError as e:  # array_record's own: "Corrupted Riegeli/records file ..."
      raise records.RecordsError(f"its record cannot be read from the shards ({e})") from e
    label, jpeg = records.decode(record)
    return records.check_label(label, self.classes), images.decode_jpeg(jpeg)


@dataclasses.dataclass(frozen=True)
class TfdsReader:
  """A TFDS `data_source`'s examples ({"image": ..., "label": ...})."""

  examples: Sequence[Any]

  def __len__(self) -> int:
    return len(self.examples)

  def read(self, index: int) -> tuple[int, np.ndarray]:
    example = self.examples[index]
    return int(example["label"]), images.as_rgb(np.asarray(example["image"]))


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """A split read example by example; a `Source`.

  Attributes:
    reader: its stored examples (`RecordReader`, `TfdsReader`).
    image_size: the side of the square images it yields.
    training: the Inception crop and flip (data.augment="inception"); else the evaluation crop.
    workers: grain worker processes (0: threads of this process only).
    threads: reading threads (per worker process).
    where: the split, for messages.
  """

  reader: Reader
  image_size: int
  training: bool
  workers: int
  threads: int
  where: str

  def __len__(self) -> int:
    return len(self.reader)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  def head(self, n: int) -> np.ndarray:
    """n images (uint8 NHWC) spread over the split, with the evaluation crop, as the model is
    evaluated (what train.export checks its files on)."""
    return self.held(n).images

  def held(self, limit: int) -> MemorySplit:
    """An in-memory split of `limit` examples spread evenly over the split (a prepared folder is
    sorted by class), with the evaluation crop: for the analyses that need the images at hand."""
    picks = np.linspace(0, len(self) - 1, min(limit, len(self))).round().astype(int)
    examples = [self.example(int(i), None) for i in picks]
    return MemorySplit(
      np.stack([image for image, _ in examples]), np.asarray([y for _, y in examples], np.int32)
    )

  def example(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    """(uint8 image (size, size, 3), label) of example `index`: cropped as for training when the
    split trains and an rng is given, else with the evaluation crop.

    Raises:
      DataError: naming the split and index, for a record that cannot be decoded.
    """
    try:
      label, image = self.reader.read(index)
    except (images.ImageError, records.RecordsError) as e:
      raise DataError(f"{self.where}: example {index} cannot be read: {e}") from e
    if self.training and rng is not None:
      return images.train_image(image, self.image_size, rng), label
    return images.eval_image(image, self.image_size), label

  def train_example(self, plan: BatchPlan, position: int) -> dict[str, Any]:
    """Example `position` of this process's stream of train examples (step, then row)."""
    step, row = divmod(position, plan.local)
    index = int(plan.rows(step)[row])
    image, label = self.example(index, np.random.default_rng(plan.crop_seed(step, row)))
    return {"image": image, "label": label}

  def batch(self, plan: BatchPlan, step: int) -> Batch:
    """This process's rows of the global batch of `step` (read here, in order)."""
    first = step * plan.local
    return _stack([self.train_example(plan, first + r) for r in range(plan.local)])

  def iterate(self, plan: BatchPlan, start: int, stop: int) -> Iterator[Batch]:
    """Batches of steps start..stop-1, read ahead by the split's threads and workers."""
    import grain  # noqa: PLC0415 (its import is slow: only the loop needs it)

    positions = grain.MapDataset.range(start * plan.local, stop * plan.local)
    yield from _pipeline(self, positions.map(_TrainExample(self, plan)), plan.local)

  def eval_batches(
    self, batch_size: int, *, process_index: int = 0, process_count: int = 1
  ) -> Iterator[Batch]:
    """The whole split in order (evaluation crop), as `Source.eval_batches`."""
    import grain  # noqa: PLC0415

    local = batch_size // process_count
    batches = -(-len(self) // batch_size)
    example = _EvalExample(self, batch_size, local, process_index * local)
    yield from _pipeline(self, grain.MapDataset.range(batches * local).map(example), local)


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """`StreamSplit.train_example` of one plan, as a function grain's workers can take (pickled:
  a method looked up when called, so a test can replace it)."""

  split: StreamSplit
  plan: BatchPlan

  def __call__(self, position: int) -> dict[str, Any]:
    return self.split.train_example(self.plan, position)


def _stack(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {
    "image": np.stack([e["image"] for e in examples]),
    "label": np.asarray([e["label"] for e in examples], np.int32),
    **({"mask": np.asarray([e["mask"] for e in examples])} if "mask" in examples[0] else {}),
  }


def _pipeline(split: StreamSplit, examples: Any, batch: int) -> Iterator[Batch]:
  """A grain pipeline over example positions: read on threads (and worker processes), batched;
  its workers and buffers are released when the caller stops iterating."""
  import grain  # noqa: PLC0415 (its import is slow: only the loop needs it)

  dataset = examples.batch(batch, drop_remainder=True, batch_fn=_stack)
  it = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=split.threads, prefetch_buffer_size=max(2, split.threads))
  )
  if split.workers:
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (a library caller)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=split.workers),
      # a worker left alive by its trainer's kill -9 would hold its memory indefinitely
      worker_init_fn=functools.partial(signals.quiet_worker, os.getpid()),
    )
  iterator = iter(it)
  try:
    yield from iterator
  finally:
    iterator.close()


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Example `position` of the padded evaluation order (rows past the split are masked)."""

  split: StreamSplit
  batch_size: int
  local: int
  first_row: int

  def __call__(self, position: int) -> dict[str, Any]:
    b, row = divmod(position, self.local)
    index = b * self.batch_size + self.first_row + row
    image, label = self.split.example(min(index, len(self.split) - 1), None)
    return {"image": image, "label": label, "mask": index < len(self.split)}


def _arrayrecord_source(paths: list[str], where: str) -> Sequence[bytes]:
  import grain  # noqa: PLC0415

  try:
    return grain.sources.ArrayRecordDataSource(paths)
  except RuntimeError as e:  # array_record's own: a missing, truncated or foreign file
    raise records.RecordsError(f"{where} cannot be opened: {e}") from e


def load(data: DataSettings, seed: int = 0) -> Dataset:
  """The streamed dataset a config's `data` block names.

  Raises:
    DataError: for a folder that is not a prepared dataset (or not of data.name), a missing
      shard, or a TFDS dataset that is not prepared.
  """
  del seed
  size = data.image_size or STREAM_IMAGE_SIZE
  options = dict(image_size=size, workers=data.workers, threads=data.threads)
  if data.source == "arrayrecord":
    if not data.data_dir:
      raise DataError(
        "data.source='arrayrecord' reads a folder written by python -m train.prepare: set "
        "data.data_dir to it"
      )
    meta = records.read_metadata(data.data_dir)
    if data.name != meta.name:
      raise DataError(
        f"{data.data_dir} holds the prepared dataset {meta.name!r} (metadata.json); set "
        f"data.name={meta.name!r}"
      )
    sources = {
      split: _arrayrecord_source(
        list(records.shard_paths(data.data_dir, meta.splits[split])),
        f"{data.data_dir} ({split} split)",
      )
      for split in records.SPLITS
    }
    for split, source in sources.items():
      records.check_counts(data.data_dir, meta, split, len(source))
    splits = {
      split: StreamSplit(
        RecordReader(sources[split], len(meta.classes)),
        training=split == "train" and data.augment == "inception",
        where=f"{data.data_dir} ({split})",
        **options,
      )
      for split in records.SPLITS
    }
    return Dataset(
      meta.name,
      splits["train"],
      splits["test"],
      len(meta.classes),
      meta.mean,
      meta.std,
      _fingerprint(meta),
      (_fingerprint(meta, with_source=True),),
    )
  return _load_tfds(data, options)


def _load_tfds(data: DataSettings, options: dict[str, Any]) -> Dataset:
  import tensorflow_datasets as tfds  # noqa: PLC0415 (only this source needs it)

  data_dir = data.data_dir or None
  try:
    builder = tfds.builder(data.name, data_dir=data_dir)
    names = set(builder.info.splits)
    test = "validation" if "validation" in names else "test"
    sources = {
      split: tfds.data_source(data.name, split=split, data_dir=data_dir, download=False)
      for split in ("train", test)
    }
    classes = builder.info.features["label"].num_classes
  except Exception as e:  # TFDS raises several types for "not prepared"
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    raise DataError(
      f"TFDS dataset {data.name!r} is not prepared in {where}: {e}. ImageNet needs its archives "
      f"downloaded by hand: tfds build {data.name} --manual_dir=DIR --file_format=array_record; "
      "or prepare an ImageFolder tree with python -m train.prepare (data.source='arrayrecord')"
    ) from e
  train = StreamSplit(
    TfdsReader(sources["train"]),
    training=data.augment == "inception",
    where=f"TFDS {data.name} (train)",
    **options,
  )
  evaluation = StreamSplit(
    TfdsReader(sources[test]), training=False, where=f"TFDS {data.name} ({test})", **options
  )
  mean, std = _sample_stats(train)
  version = f"{data.name} {builder.info.version}"
  return Dataset(
    data.name, train, evaluation, classes, mean, std, f"{len(train)}+{len(evaluation)}:{version}"
  )


def _fingerprint(meta: records.Metadata, with_source: bool = False) -> str:
  """A prepared folder's sizes and a SHA-256 of its metadata (its shards, counts, statistics):
  not of the path of the tree it was prepared from, since the same images prepared from a copy
  elsewhere are the same data (`with_source`: the fingerprint before, which hashed it)."""
  described = meta.to_json()
  if not with_source:
    described.pop("source", None)
  digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
  return f"{meta.splits['train'].examples}+{meta.splits['test'].examples}:{digest[:16]}"


def _sample_stats(split: StreamSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std in [0, 1] of an evenly spaced sample of a split (evaluation crop)."""
  n = min(len(split), TFDS_STATS_EXAMPLES)
  picks = np.linspace(0, len(split) - 1, n).round().astype(int)
  x = np.stack([split.example(int(i), None)[0] for i in picks]).reshape(-1, 3) / 255.0
  return tuple(float(m) for m in x.mean(0)), tuple(float(s) for s in x.std(0))
