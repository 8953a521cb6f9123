"""Prepares an ImageFolder tree of images for training: ArrayRecord shards the trainer streams.

  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar
  python -m train.prepare --src /data/imagenet --out /data/imagenet-ar500 --max_side 500
  python -m train.main --config configs/imagenet.py --workdir runs/r18 \\
      --config.data.data_dir=/data/imagenet-ar

The tree is torchvision's layout: SRC/train/CLASS/*.jpg and SRC/val/CLASS/*.jpg (`val`,
`validation` or `test`), one folder per class; a label is the index of its folder's name in
sorted order, as torchvision's ImageFolder numbers them, and metadata.json lists the names.
RGB JPEGs are stored as they are (their bytes); other images (PNG, grey or CMYK JPEG, ...) are
converted to RGB and stored as JPEGs of --quality, and counted. --max_side N stores images whose
longer side exceeds N resized to N (smaller shards, faster decoding; see docs/guides/data.md).

An image that cannot be read stops the command with its path, unless --skip_bad: such files are
then left out, listed in metadata.json and counted in the last line. A class folder without
images is an error (its class would have no examples). Files that are not images by their
extension (torchvision's list) are ignored and counted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from train import cli, lock, signals

FLAGS = flags.FLAGS

# torchvision's IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_FOLDERS = ("val", "validation", "test")


def define_flags() -> None:
  """Defines the command's flags on absl's FLAGS."""
  cli.define_once(flags.DEFINE_string, "src", None, "ImageFolder tree: SRC/train/CLASS/*, SRC/val.")
  cli.define_once(flags.DEFINE_string, "out", None, "Folder to write (must not hold a dataset).")
  cli.define_once(
    flags.DEFINE_string, "name", "", "The dataset's name (default: SRC's folder name)."
  )
  cli.define_once(
    flags.DEFINE_integer,
    "max_side",
    0,
    "Resize images whose longer side exceeds it (0: keep).",
    lower_bound=0,
  )
  cli.define_once(
    flags.DEFINE_integer,
    "quality",
    95,
    "JPEG quality of re-encoded images.",
    lower_bound=1,
    upper_bound=100,
  )
  cli.define_once(
    flags.DEFINE_integer, "examples_per_shard", 10000, "Images per shard file.", lower_bound=1
  )
  cli.define_once(
    flags.DEFINE_integer,
    "workers",
    os.cpu_count() or 1,
    "Processes that read the images.",
    lower_bound=1,
  )
  cli.define_once(
    flags.DEFINE_bool, "skip_bad", False, "Leave out images that cannot be read (listed, counted)."
  )
  cli.define_debug()


class PrepareError(ValueError):
  """A tree that cannot be prepared; the message names the folder or file."""


@dataclasses.dataclass(frozen=True)
class Image:
  """One image as stored, and what preparing it did."""

  jpeg: bytes
  converted: bool
  resized: bool
  sums: np.ndarray  # per channel: sum of pixels / 255, sum of squares, in float64
  squares: np.ndarray
  pixels: int


def read_image(path: str, max_side: int, quality: int) -> Image:
  """An image file as an RGB JPEG to store (its own bytes where it already is one and fits).

  Raises:
    PrepareError: naming the file, for one that cannot be decoded.
  """
  from PIL import Image as PILImage

  from train.data import images

  data = Path(path).read_bytes()
  try:
    with PILImage.open(io.BytesIO(data)) as im:
      fmt, mode = im.format, im.mode
      too_big = max_side > 0 and max(im.size) > max_side
      keep = fmt == "JPEG" and mode == "RGB" and not too_big
      if keep:
        pixels = images.decode_jpeg(data)  # the trainer's decoder must read what is stored
        jpeg = data
      else:
        rgb = im.convert("RGB")
        if too_big:
          scale = max_side / max(rgb.size)
          size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
          rgb = rgb.resize(size, PILImage.Resampling.BICUBIC, reducing_gap=3.0)
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=quality)
        jpeg = buffer.getvalue()
        pixels = images.decode_jpeg(jpeg)
  except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as e:
    raise PrepareError(f"{path} cannot be read as an image ({type(e).__name__}: {e})") from e
  x = pixels.reshape(-1, 3).astype(np.float64) / 255.0
  return Image(
    jpeg,
    not keep and not (fmt == "JPEG" and mode == "RGB"),
    too_big,
    x.sum(0),
    (x * x).sum(0),
    x.shape[0],
  )


def _read_or_error(args: tuple[str, int, int]) -> Image | str:
  try:
    return read_image(*args)
  except PrepareError as e:
    return str(e)


@dataclasses.dataclass
class Listing:
  """The image files of one split, with their labels; what was not an image."""

  files: list[tuple[str, int]]
  ignored: int


def list_split(folder: Path, classes: list[str] | None) -> tuple[list[str], Listing]:
  """(class names, files) of one split folder; the test split must use the train split's
  classes."""
  names = sorted(p.name for p in folder.iterdir() if p.is_dir())
  if not names:
    raise PrepareError(f"{folder} has no class folders (expected {folder}/CLASS/*.jpg)")
  if classes is not None:
    unknown = sorted(set(names) - set(classes))
    if unknown:
      raise PrepareError(
        f"{folder} has class folder(s) the train split lacks: {unknown[:5]}"
        + (" ..." if len(unknown) > 5 else "")
      )
  index = {name: i for i, name in enumerate(classes if classes is not None else names)}
  files, ignored = [], 0
  for name in names:
    found = sorted(
      str(p) for p in (folder / name).rglob("*") if p.is_file()
    )  # torchvision walks sub-folders too
    images = [f for f in found if f.lower().endswith(IMAGE_EXTENSIONS)]
    ignored += len(found) - len(images)
    if not images:
      raise PrepareError(
        f"class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)}); remove it "
        "or add its images (a class without examples cannot be learned)"
      )
    files += [(f, index[name]) for f in images]
  return names, Listing(files, ignored)


def write_split(
  out: Path,
  split: str,
  listing: Listing,
  *,
  max_side: int,
  quality: int,
  examples_per_shard: int,
  workers: int,
  skip_bad: bool,
  src: Path,
):
  """Writes one split's shards; (SplitInfo, channel sums, squares, pixels)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  from tqdm import tqdm

  from train.data import records

  files = listing.files
  shards = max(1, math.ceil(len(files) / examples_per_shard))
  names = records.shard_names(split, shards)
  sums, squares, pixels = np.zeros(3), np.zeros(3), 0
  skipped, converted, resized, written = [], 0, 0, 0
  pool = None
  try:
    # deferred: a stop raised inside the pool's Thread.start (its first submit starts the manager
    # thread) leaves a thread that shutdown cannot join ("cannot join thread before it is
    # started"); the stop is raised once the pool is whole
    with signals.deferred():
      if workers > 1:  # Ctrl-C and SIGTERM are this process's to handle; the workers die with it
        pool = concurrent.futures.ProcessPoolExecutor(
          workers, initializer=signals.quiet_worker, initargs=(os.getpid(),)
        )
      jobs = [(f, max_side, quality) for f, _ in files]
      results = pool.map(_read_or_error, jobs, chunksize=32) if pool else map(_read_or_error, jobs)
      stop = signals.requested()
    signals.raise_stop(stop)
    bar = tqdm(total=len(files), desc=split, unit="img", disable=not sys.stderr.isatty())
    labelled = zip(files, results)
    for name, start in zip(names, range(0, len(files), examples_per_shard)):
      writer = ArrayRecordWriter(str(out / name), "group_size:1")
      try:
        for _ in range(min(examples_per_shard, len(files) - start)):
          (path, label), image = next(labelled)
          bar.update()
          if isinstance(image, str):
            if not skip_bad:
              raise PrepareError(
                f"{image}; remove it or pass --skip_bad to leave such files out (listed in "
                "metadata.json)"
              )
            skipped.append(os.path.relpath(path, src))
            continue
          writer.write(records.encode(label, image.jpeg))
          written += 1
          converted += image.converted
          resized += image.resized
          sums, squares, pixels = sums + image.sums, squares + image.squares, pixels + image.pixels
      finally:
        writer.close()
    bar.close()
  finally:
    if pool:
      with signals.deferred():  # whole: a second stop is raised by the command's own path
        pool.shutdown(cancel_futures=True)
  info = records.SplitInfo(written, tuple(names), tuple(skipped), converted, resized)
  return info, sums, squares, pixels


def prepare(
  src: str | Path,
  out: str | Path,
  *,
  name: str = "",
  max_side: int = 0,
  quality: int = 95,
  examples_per_shard: int = 10000,
  workers: int = 1,
  skip_bad: bool = False,
  say=print,
):
  """Writes the prepared dataset of an ImageFolder tree; returns its Metadata.

  Raises:
    PrepareError: for a tree that is not an ImageFolder tree, an unreadable image (unless
      skip_bad), an empty class folder, or an `out` that already holds a dataset.
  """
  from train.data import records

  src, out = Path(src), Path(out)
  if not src.is_dir():
    raise PrepareError(f"--src {src} is not a folder")
  if not (src / "train").is_dir():
    raise PrepareError(f"{src} has no train/ folder (expected {src}/train/CLASS/*.jpg)")
  test_folders = [src / t for t in TEST_FOLDERS if (src / t).is_dir()]
  if not test_folders:
    raise PrepareError(f"{src} has no evaluation folder (one of {', '.join(TEST_FOLDERS)})")
  if max_side < 0 or not 1 <= quality <= 100 or examples_per_shard < 1 or workers < 1:
    raise PrepareError(
      "--max_side must be >= 0, --quality in [1, 100], --examples_per_shard and --workers >= 1"
    )
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PrepareError(f"--out {out} cannot be made: {e.strerror}") from e
  # one prepare per --out: a second one into the same folder would interleave its shards
  with lock.held(
    out / "LOCK", PrepareError, "wait for that prepare to end or use another --out", say
  ):
    if (out / "metadata.json").exists():
      raise PrepareError(
        f"{out} already holds a prepared dataset; remove it or choose another --out"
      )
    classes, train = list_split(src / "train", None)
    _, test = list_split(test_folders[0], classes)
    splits, ignored = {}, train.ignored + test.ignored
    t0 = time.perf_counter()
    options: dict[str, Any] = dict(
      max_side=max_side,
      quality=quality,
      examples_per_shard=examples_per_shard,
      workers=workers,
      skip_bad=skip_bad,
      src=src,
    )
    info, sums, squares, pixels = write_split(out, "train", train, **options)
    if info.examples == 0:
      raise PrepareError(f"no image of {src / 'train'} could be read")
    splits["train"] = info
    splits["test"], *_ = write_split(out, "test", test, **options)
    if splits["test"].examples == 0:
      raise PrepareError(f"no image of {test_folders[0]} could be read: a run needs test images")
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 1e-12))
    metadata = records.Metadata(
      name=name or src.resolve().name,
      classes=tuple(classes),
      splits=splits,
      mean=tuple(float(m) for m in mean),
      std=tuple(float(s) for s in std),
      max_side=max_side or None,
      quality=quality,
      source=str(src.resolve()),
    )
    records.write_metadata(out, metadata)
    size = sum(f.stat().st_size for f in out.glob("*.array_record"))
    skipped = sum(len(s.skipped) for s in splits.values())
    say(
      f"{metadata.name}: {len(classes)} classes, {splits['train'].examples} train and "
      f"{splits['test'].examples} test images ({test_folders[0].name}/) in {size / 2**20:.1f} MiB, "
      f"{time.perf_counter() - t0:.0f} s; {sum(s.converted for s in splits.values())} converted to "
      f"RGB JPEG, {sum(s.resized for s in splits.values())} resized, {skipped} skipped"
      + (" (listed in metadata.json)" if skipped else "")
      + f", {ignored} non-image files ignored; written to {out}"
    )
    return metadata


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(flags.Error(f"unexpected argument(s) {argv[1:]}; the options are flags"), 2)
  try:
    prepare(
      FLAGS.src,
      FLAGS.out,
      name=FLAGS.name,
      max_side=FLAGS.max_side,
      quality=FLAGS.quality,
      examples_per_shard=FLAGS.examples_per_shard,
      workers=FLAGS.workers,
      skip_bad=FLAGS.skip_bad,
    )
  except KeyboardInterrupt as e:
    cli.stopped(e, f"{e}; {FLAGS.out} holds no prepared dataset: the same command prepares it")
  except Exception as e:
    if FLAGS.debug:
      raise
    cli.fail(e, 2 if isinstance(e, PrepareError) else None)


def run() -> None:
  cli.run(main, define_flags, required=("src", "out"))


if __name__ == "__main__":
  run()
