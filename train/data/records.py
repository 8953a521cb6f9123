"""The prepared image dataset on disk: ArrayRecord shards of JPEGs and their metadata.json.

`python -m train.prepare` writes it from an ImageFolder tree; the trainer reads it with
`data.source = "arrayrecord"` and `data.data_dir` = its folder. Layout:

  DIR/metadata.json                    FORMAT, name, classes, splits, mean and std, how it was made
  DIR/train-00000-of-00016.array_record ...   one record per image
  DIR/test-00000-of-00001.array_record ...

A record is the class index as 4 little-endian bytes, then the image's JPEG file (RGB).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train import json_files
from train.atomic import write_atomic
from train.data.errors import DataError

FORMAT = "kshapes-imagefolder/1"
SPLITS = ("train", "test")
_LABEL = struct.Struct("<I")


class RecordsError(DataError):
  """A prepared dataset that is missing, incomplete or not of this format."""


def encode(label: int, jpeg: bytes) -> bytes:
  """One record: the label, then the JPEG bytes."""
  return _LABEL.pack(label) + jpeg


def decode(record: bytes) -> tuple[int, bytes]:
  """(label, JPEG bytes) of a record."""
  if len(record) <= _LABEL.size:
    raise RecordsError(f"a record of {len(record)} bytes holds no image")
  return _LABEL.unpack_from(record)[0], record[_LABEL.size :]


def shard_names(split: str, shards: int) -> list[str]:
  return [f"{split}-{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  """One split: its example count, shard files (in order), and what preparing it left out."""

  examples: int
  shards: tuple[str, ...]
  skipped: tuple[str, ...] = ()  # files that could not be read (prepare --skip_bad), relative
  converted: int = 0  # PNG, grey, CMYK, ... images stored re-encoded as RGB JPEG
  resized: int = 0  # images whose longer side was cut to max_side


@dataclasses.dataclass(frozen=True)
class Metadata:
  """metadata.json of a prepared dataset.

  Attributes:
    name: the dataset's name (data.name must say it).
    classes: the class folder names; a label is an index into it (sorted, as torchvision's
      ImageFolder numbers them).
    splits: "train" and "test".
    mean, std: per channel, of the stored training images' pixels in [0, 1].
    max_side: the longer side images were cut to (None: stored as they came).
    quality: the JPEG quality of re-encoded images.
    source: the folder it was prepared from.
  """

  name: str
  classes: tuple[str, ...]
  splits: dict[str, SplitInfo]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  max_side: int | None
  quality: int
  source: str
  format: str = FORMAT

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> Metadata:
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in d.items() if k in fields}
    values["classes"] = tuple(values["classes"])
    values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
    values["splits"] = {
      name: SplitInfo(
        **{**info, "shards": tuple(info["shards"]), "skipped": tuple(info.get("skipped", ()))}
      )
      for name, info in values["splits"].items()
    }
    return cls(**values)


def write_metadata(directory: Path, metadata: Metadata) -> None:
  # written last and atomically: a folder with it is complete
  write_atomic(directory / "metadata.json", json.dumps(metadata.to_json(), indent=1) + "\n")


def read_metadata(directory: str | Path) -> Metadata:
  """The metadata of a prepared dataset; RecordsError for a folder that is not one, or whose
  shards are missing."""
  d = Path(directory)
  path = d / "metadata.json"
  if not path.is_file():
    raise RecordsError(
      f"{d} holds no prepared dataset (no metadata.json); make one from an ImageFolder tree with "
      f"python -m train.prepare --src TREE --out {d}"
    )
  try:
    metadata = json_files.parse(path, json_files.read(path), Metadata.from_json)
  except json_files.JsonFileError as e:
    raise RecordsError(str(e)) from e
  if metadata.format != FORMAT:
    raise RecordsError(f"{path} is format {metadata.format!r}; this trainer reads {FORMAT!r}")
  _check_values(path, metadata)
  for split in SPLITS:
    if split not in metadata.splits:
      raise RecordsError(f"{path} has no {split!r} split (it has {sorted(metadata.splits)})")
    if metadata.splits[split].examples < 1:
      raise RecordsError(
        f"{path}: the {split} split has no images (prepare left out "
        f"{len(metadata.splits[split].skipped)} it could not read); a run needs some in both "
        "splits"
      )
    missing = [s for s in metadata.splits[split].shards if not (d / s).is_file()]
    if missing:
      raise RecordsError(
        f"{d} lacks {len(missing)} of the {split} split's shards ({missing[0]} first); copy the "
        "whole folder again"
      )
  return metadata


def _check_values(path: Path, metadata: Metadata) -> None:
  """What the trainer takes from metadata.json on trust: classes, and the normalisation."""
  if not metadata.classes or len(set(metadata.classes)) != len(metadata.classes):
    raise RecordsError(f"{path}: classes must be distinct names, got {list(metadata.classes)}")
  stats = (*metadata.mean, *metadata.std)
  if (
    len(metadata.mean) != 3
    or len(metadata.std) != 3
    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats)
    or min(metadata.std) <= 0
  ):
    raise RecordsError(
      f"{path}: mean and std must be 3 finite numbers each, std above 0, got mean "
      f"{list(metadata.mean)} and std {list(metadata.std)}"
    )
  for split, info in metadata.splits.items():
    if not isinstance(info.examples, int) or info.examples < 0:
      raise RecordsError(
        f"{path}: the {split} split's examples must be a count, got {info.examples!r}"
      )


def check_counts(path: str | Path, metadata: Metadata, split: str, stored: int) -> None:
  """Refuses shards that hold another number of records than metadata.json counts."""
  if stored != metadata.splits[split].examples:
    raise RecordsError(
      f"{Path(path) / 'metadata.json'} counts {metadata.splits[split].examples} {split} images "
      f"but the {split} shards hold {stored} records: the folder was changed after it was "
      "prepared; prepare it again"
    )


def check_label(label: int, classes: int) -> int:
  """A record's label, refused when metadata.json has no such class."""
  if label >= classes:
    raise RecordsError(f"a record has label {label}; metadata.json lists {classes} classes")
  return label


def shard_paths(directory: str | Path, info: SplitInfo) -> Sequence[str]:
  return [str(Path(directory) / s) for s in info.shards]
