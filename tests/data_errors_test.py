"""Damaged and foreign data files: each one named, with what is wrong (IDX, NPZ)."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from train import data as pipeline
from train.data import memory


def _write_npz(directory: Path, images, labels) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  for name in ("train", "test"):
    np.savez(directory / f"{name}.npz", image=images, label=labels)


def test_npz_float_images_in_0_1_are_scaled_not_zeroed(tmp_path, rng):
  pixels = rng.integers(0, 256, size=(8, 28, 28, 1))
  _write_npz(tmp_path, (pixels / 255.0).astype(np.float32), np.arange(8) % 10)
  train_split, _ = memory.load_npz_dir(tmp_path)
  np.testing.assert_array_equal(train_split.images, pixels.astype(np.uint8))


@pytest.mark.parametrize(
  "images, message",
  [
    (
      np.full((4, 28, 28), 300, np.int32),
      r"int32 images span \[300, 300\]; integers must lie in \[0, 255\]",
    ),
    (
      np.full((4, 28, 28), -1.0, np.float32),
      r"float32 images span \[-1.0, -1.0\]; floats must lie in \[0, 1\]",
    ),
    (np.full((4, 28, 28), np.nan, np.float32), r"images hold NaN or inf"),
    (
      np.zeros((4, 28, 28), bool),
      r"images must be uint8, integers in \[0, 255\] or floats in \[0, 1\], got bool",
    ),
  ],
)
def test_npz_images_that_a_cast_would_corrupt_are_refused_naming_the_file(
  tmp_path, images, message
):
  _write_npz(tmp_path, images, np.zeros(4, np.int64))
  with pytest.raises(pipeline.DataError, match=str(tmp_path / "train.npz") + ".*" + message):
    memory.load_npz_dir(tmp_path)


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
    int(n).to_bytes(4, "big") for n in array.shape
  )
  return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
  "damage, message",
  [
    ("truncated_gzip", r"cannot be read \(EOFError"),
    ("crc", r"cannot be read \(BadGzipFile: CRC check failed"),
    ("not_gzip", r"cannot be read \(BadGzipFile: Not a gzipped file"),
    ("truncated_body", r"header says \(5, 28, 28\) but the file holds 3000 values"),
    ("truncated_header", r"truncated IDX header"),
  ],
)
def test_damaged_idx_files_name_the_file(tmp_path, damage, message):
  data = gzip.compress(_idx_bytes(np.zeros((5, 28, 28))))
  raw = _idx_bytes(np.zeros((5, 28, 28)))
  path = tmp_path / "train-images-idx3-ubyte.gz"
  if damage == "truncated_gzip":
    path.write_bytes(data[: len(data) // 2])
  elif damage == "crc":
    path.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])
  elif damage == "not_gzip":
    path.write_bytes(raw)
  elif damage == "truncated_body":
    path.write_bytes(gzip.compress(raw[: 16 + 3000]))
  else:
    path.write_bytes(gzip.compress(raw[:9]))
  with pytest.raises(pipeline.DataError, match=str(path) + r".*" + message):
    memory.read_idx(path)
