"""The in-memory source: a split held whole as uint8 NumPy arrays, and its loaders (TFDS
data_source, a local IDX / NPZ directory, synthetic).

The small datasets of the papers (MNIST, Fashion-MNIST, CIFAR-10/100, SVHN)
fit in memory as uint8, so a split is loaded once into NumPy and a step's
batch is gathered whole from it (`MemorySplit.batch`, on the plan of
`train.data.plan`), read ahead on a thread by grain. Augmentation and
normalisation run on the device inside the jitted step
(`train.data.preprocess`), keyed by the step too. The large datasets
(ImageNet, any prepared ImageFolder tree) stream: `train.data.streamed`.

No TensorFlow at run time: TFDS is used only through `tfds.data_source`
(array_record files).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from configs.datasets import DATASETS, DEBIAN_FASHION_MNIST
from configs.schema import DataSettings
from train.data.errors import DataError
from train.data.plan import BatchPlan
from train.data.source import Batch, Dataset

# where an in-memory split is read from (arrayrecord streams: train.data.streamed)
SOURCES = ("tfds", "idx", "npz", "synthetic")


@dataclasses.dataclass(frozen=True)
class MemorySplit:
  """One split in memory: uint8 images (N, H, W, C) and int32 labels (N,); a `Source`."""

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise DataError(
        f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
      )
    if self.labels.shape != (self.images.shape[0],):
      raise DataError(f"labels must be ({self.images.shape[0]},), got {self.labels.shape}")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    h, w, c = self.images.shape[1:]
    return int(h), int(w), int(c)

  def head(self, n: int) -> np.ndarray:
    """The first n images (uint8 NHWC), as the model is evaluated on them."""
    return self.images[:n]

  def held(self, limit: int) -> MemorySplit:
    """The split itself: held in memory already, whatever `limit` allows."""
    del limit
    return self

  def batch(self, plan: BatchPlan, step: int) -> Batch:
    """This process's rows of the global batch of `step`, gathered whole."""
    idx = plan.indices(step)
    return {"image": self.images[idx], "label": self.labels[idx]}

  def iterate(self, plan: BatchPlan, start: int, stop: int, prefetch: int = 2) -> Iterator[Batch]:
    """Batches of steps start..stop-1, prepared `prefetch` ahead on a thread."""
    import grain  # noqa: PLC0415 (its import is slow: only the loop needs it)

    steps = grain.MapDataset.range(start, stop).map(lambda step: self.batch(plan, step))
    yield from steps.to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    )

  def eval_batches(
    self, batch_size: int, *, process_index: int = 0, process_count: int = 1
  ) -> Iterator[Batch]:
    """The whole split in order, this process's rows of each global batch; the last batch is
    padded and `mask` marks real rows (every example is counted once, on any number of
    processes)."""
    local = batch_size // process_count
    for start in range(0, len(self), batch_size):
      idx = np.arange(start, start + batch_size)
      mask = idx < len(self)
      idx = np.minimum(idx, len(self) - 1)[process_index * local : (process_index + 1) * local]
      mask = mask[process_index * local : (process_index + 1) * local]
      yield {"image": self.images[idx], "label": self.labels[idx], "mask": mask}


def fingerprint(*splits: MemorySplit) -> str:
  """The splits' sizes and a SHA-256 of their images and labels: '60000+10000:3f2a...'."""
  digest = hashlib.sha256()
  for split in splits:
    digest.update(np.ascontiguousarray(split.images).data)
    digest.update(np.ascontiguousarray(split.labels).data)
  return "+".join(str(len(s)) for s in splits) + ":" + digest.hexdigest()[:16]


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of uint8 images scaled to [0, 1], in float64."""
  x = images.reshape(-1, images.shape[-1])
  mean = np.zeros(x.shape[1])
  sq = np.zeros(x.shape[1])
  for start in range(0, x.shape[0], 1 << 22):  # chunks: no float64 copy of the whole set
    chunk = x[start : start + (1 << 22)].astype(np.float64) / 255.0
    mean += chunk.sum(0)
    sq += np.square(chunk).sum(0)
  mean /= x.shape[0]
  std = np.sqrt(np.maximum(sq / x.shape[0] - np.square(mean), 1e-12))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _open(path: Path) -> bytes:
  try:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOFError: truncated
    raise DataError(
      f"{path} cannot be read ({type(e).__name__}: {e}); the file is damaged or not what its "
      "name says: fetch it again"
    ) from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (the MNIST format), gzipped or not, as a NumPy array.

  Raises:
    DataError: naming the file, when it cannot be read or is not a whole IDX file.
  """
  data = _open(Path(path))
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise DataError(f"{path} is not an IDX file (bad magic number)")
  dtypes: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
  }
  if data[2] not in dtypes:
    raise DataError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  itemsize = np.dtype(dtypes[data[2]]).itemsize
  body = len(data) - 4 - 4 * ndim
  if body != int(np.prod(shape)) * itemsize:
    raise DataError(
      f"{path}: header says {shape} but the file holds {body // itemsize} values (truncated?)"
    )
  array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise DataError(f"{path}: header says {shape} but holds {array.size} values")
  return array.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
  for name in (
    stem,
    stem + ".gz",
    stem.replace("-idx", ".idx"),
    stem.replace("-idx", ".idx") + ".gz",
  ):
    if (directory / name).exists():
      return directory / name
  raise DataError(f"{directory} has no {stem}[.gz]")


def load_idx_dir(directory: str | os.PathLike) -> tuple[MemorySplit, MemorySplit]:
  """train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte (optionally .gz) from one directory."""
  d = Path(directory)
  splits = []
  for prefix in ("train", "t10k"):
    image_path, label_path = (
      _find(d, f"{prefix}-images-idx3-ubyte"),
      _find(d, f"{prefix}-labels-idx1-ubyte"),
    )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim == 3:
      images = images[..., None]
    splits.append(_split(images, labels, f"{image_path} and {label_path}"))
  return splits[0], splits[1]


def as_uint8_images(images: np.ndarray, where: str) -> np.ndarray:
  """Images as uint8: integers in [0, 255] as they are, floats in [0, 1] scaled by 255 (rounded).

  Raises:
    DataError: for values that fit neither (a cast would wrap or zero them).
  """
  if images.dtype == np.uint8:
    return images
  if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number) or images.size == 0:
    raise DataError(
      f"{where}: images must be uint8, integers in [0, 255] or floats in [0, 1], "
      f"got {images.dtype} {images.shape}"
    )
  if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
    raise DataError(f"{where}: images hold NaN or inf")
  lo, hi = images.min(), images.max()
  if np.issubdtype(images.dtype, np.floating) and 0 <= lo and hi <= 1:
    return np.rint(images * 255.0).astype(np.uint8)
  if np.issubdtype(images.dtype, np.integer) and 0 <= lo and hi <= 255:
    return images.astype(np.uint8)
  kind = (
    "floats must lie in [0, 1]"
    if np.issubdtype(images.dtype, np.floating)
    else "integers must lie in [0, 255]"
  )
  raise DataError(
    f"{where}: {images.dtype} images span [{lo}, {hi}]; {kind} (uint8 pixels, or floats in "
    "[0, 1] which are scaled by 255)"
  )


def _split(images: np.ndarray, labels: np.ndarray, where: str) -> MemorySplit:
  """A Split from loaded arrays; what is wrong is reported with the file(s) it came from."""
  if images.shape[:1] == (0,):
    raise DataError(f"{where} holds no examples (an empty split)")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise DataError(f"{where}: {images.shape[0]} images but labels of shape {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    if not (np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0)):
      raise DataError(f"{where}: labels must be whole numbers, got {labels.dtype}")
  if images.ndim != 4:
    raise DataError(f"{where}: images must be (N, H, W[, C]), got shape {images.shape}")
  return MemorySplit(np.ascontiguousarray(as_uint8_images(images, where)), labels.astype(np.int32))


def load_npz_dir(directory: str | os.PathLike) -> tuple[MemorySplit, MemorySplit]:
  """train.npz and test.npz, each with `image` (N, H, W[, C]) and `label` (N,).

  Images are uint8, integers in [0, 255], or floats in [0, 1] (scaled by 255
  and rounded: every split is held as uint8); anything else is a DataError.
  """
  d = Path(directory)
  splits = []
  for name in ("train", "test"):
    path = d / f"{name}.npz"
    if not path.exists():
      raise DataError(f"{d} has no {name}.npz (expected arrays 'image' (N, H, W[, C]) and 'label')")
    try:
      with np.load(path) as f:
        if "image" not in f or "label" not in f:
          raise DataError(f"{path} must hold arrays 'image' and 'label', has {sorted(f.files)}")
        images, labels = f["image"], f["label"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(f"{path} cannot be read as an .npz file ({type(e).__name__}: {e})") from e
    if images.ndim == 3:
      images = images[..., None]
    splits.append(_split(images, labels, str(path)))
  return splits[0], splits[1]


def _tfds_split(name: str, split: str, data_dir: str | None) -> MemorySplit:
  import tensorflow_datasets as tfds  # imported here: only this source needs it

  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared"
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    raise DataError(
      f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}: {e}\n"
      f"Prepare it on a machine with internet and copy the folder over:\n"
      f"  pip install tensorflow-datasets tensorflow && "
      f"tfds build {name} --file_format=array_record --data_dir=DIR\n"
      f"then pass --config.data.data_dir=DIR (or set TFDS_DATA_DIR). Offline, use "
      f"--config.data.source=idx or npz with a local directory."
    ) from e
  n = len(source)
  if n == 0:
    raise DataError(f"TFDS dataset {name!r} split {split!r} is empty")
  first = source[0]
  images = np.empty((n, *np.shape(first["image"])), np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    example = first if i == 0 else source[i]
    images[i] = example["image"]
    labels[i] = example["label"]
  if images.ndim == 3:
    images = images[..., None]
  return MemorySplit(images, labels)


def synthetic_splits(
  shape: tuple[int, int, int], num_classes: int, train_size: int, test_size: int, seed: int = 0
) -> tuple[MemorySplit, MemorySplit]:
  """Learnable random data: a fixed random template per class plus pixel noise, as uint8.

  A template is random on a grid of 4x4-pixel cells (a convolutional net can see it through its
  pooling; a per-pixel template would be a pattern it averages away).
  """
  rng = np.random.default_rng(seed)
  h, w, c = shape
  coarse = rng.uniform(0, 255, size=(num_classes, -(-h // 4), -(-w // 4), c))
  templates = coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w]

  def make(n):
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    images = 0.6 * templates[labels] + 0.4 * rng.uniform(0, 255, size=(n, *shape))
    return MemorySplit(np.clip(images, 0, 255).astype(np.uint8), labels)

  return make(train_size), make(test_size)


def load(data: DataSettings, seed: int = 0) -> Dataset:
  """Loads the in-memory dataset a config's `data` block names; fails with a how-to message.

  Args:
    data: `name` (see DATASETS), `source` (tfds, idx, npz, synthetic), `data_dir` (for tfds:
      its data_dir; for idx/npz: the directory holding the files), and for synthetic data
      `train_size`, `test_size`.
    seed: synthetic data is drawn from it.
  """
  name, source = data.name, data.source
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
  if source not in SOURCES:
    raise DataError(f"unknown data source {source!r}; expected one of {list(SOURCES)}")
  h, w, c, classes = DATASETS[name]
  data_dir = data.data_dir or None
  if source == "synthetic":
    train, test = synthetic_splits((h, w, c), classes, data.train_size, data.test_size, seed)
  elif source in ("idx", "npz"):
    if data_dir is None and name == "fashion_mnist" and source == "idx":
      data_dir = DEBIAN_FASHION_MNIST
    if data_dir is None or not Path(data_dir).is_dir():
      hint = (
        "On Debian/Ubuntu: apt-get install -y dataset-fashion-mnist (files in "
        f"{DEBIAN_FASHION_MNIST})."
        if name == "fashion_mnist"
        else "Put the dataset's files there, or use --config.data.source=tfds."
      )
      raise DataError(f"data directory {data_dir!r} for {name} ({source}) does not exist. {hint}")
    train, test = (load_idx_dir if source == "idx" else load_npz_dir)(data_dir)
  else:
    train = _tfds_split(name, "train", data_dir)
    test = _tfds_split(name, "test", data_dir)
  for split in (train, test):
    if split.images.shape[1:] != (h, w, c):
      raise DataError(
        f"{name} images should be {(h, w, c)}, the {source} data gives {split.images.shape[1:]}"
      )
    if split.labels.min() < 0 or split.labels.max() >= classes:
      raise DataError(
        f"{name} labels must lie in [0, {classes}), got [{split.labels.min()}, "
        f"{split.labels.max()}]"
      )
  mean, std = channel_stats(train.images)
  return Dataset(name, train, test, classes, mean, std, fingerprint(train, test))
