"""Data benchmark: images/s per CPU core for decode + augment at 224 px, ours against torchvision.

  python -m bench.data                     # writes results/bench-data.json and .md
  python -m bench.data --quick             # a smoke run: fewer images and rounds

The images are ImageNet-like: JPEGs of 500x375 (or 375x500), quality 90, cut from
scikit-image's sample photos (random crops, rescaled), in an ImageFolder tree of 10 classes that
train.prepare then writes as ArrayRecord shards. In one process, cases interleaved in a shuffled
order each round, medians over the rounds:

- decoders: JPEG decoding alone, one core: PIL, PIL with draft mode (DCT scaling to >= 224),
  OpenCV's imdecode and simplejpeg (the pipeline's decoder);
- ours: the trainer's path (train.data.Batches on the prepared folder: record read,
  decode, Inception crop, resize, flip, batch of 32), on one core with one reading thread, on
  every core with one reading thread each, and on one core from a folder prepared with
  --max_side 320 (smaller JPEGs: what that flag buys);
- torchvision: ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + PILToTensor through
  DataLoader (batch 32), on one core (num_workers=0: the main process decodes) and with one
  worker process per core.

Normalisation is left out of both: ours runs it on the device. torchvision comes from the
`bench` extra (pip install -e ".[train,bench]"); without it only ours is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = 224
BATCH = 32
MAX_SIDE = 320  # the --max_side case: the longer side cut from 500 to 320
TARGET_PER_CORE_RATIO = 1.5  # ours / torchvision, one core each
H100_RESNET50_IMAGES_PER_S = 3000  # what 16 cores must feed


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
  """`count` ImageNet-like JPEGs (500x375 or 375x500, quality 90) in folder/train/cNN/ and a
  val/ of the first class folders."""
  from PIL import Image
  from skimage import data as samples

  photos = [
    getattr(samples, name)()
    for name in (
      "astronaut",
      "coffee",
      "chelsea",
      "rocket",
      "hubble_deep_field",
      "immunohistochemistry",
    )
  ]
  photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in photos]
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    photo = photos[i % len(photos)][..., :3]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    image = Image.fromarray(np.ascontiguousarray(photo[top : top + ch, left : left + cw]))
    image = image.resize(size, Image.Resampling.BICUBIC)
    for split in ("train",) + (("val",) if i < 20 else ()):
      path = folder / split / f"c{i % 10:02d}" / f"{i:06d}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      image.save(path, quality=90)
      if split == "train":
        paths.append(path)
  return paths


def decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
  import io

  import cv2
  import simplejpeg
  from PIL import Image

  def pil(data):
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"))

  def pil_draft(data):
    with Image.open(io.BytesIO(data)) as im:
      im.draft("RGB", (SIZE, SIZE))  # the smallest DCT scale that keeps both sides >= 224
      return np.asarray(im.convert("RGB"))

  def opencv(data):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), 4)

  return {
    "PIL": pil,
    "PIL draft": pil_draft,
    "OpenCV imdecode": opencv,
    "simplejpeg": lambda data: simplejpeg.decode_jpeg(data, colorspace="RGB"),
  }


def _one_core() -> None:
  """Pins this thread (and the threads it starts) to one core."""
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _all_cores(cores: set[int]) -> None:
  os.sched_setaffinity(0, cores)


def ours(prepared: Path, threads: int, images: int) -> Callable[[], float]:
  from configs import imagenet
  from train import data
  from train.trainer import settings

  config = imagenet.get_config()
  config.data.update(data_dir=str(prepared), name="bench", threads=threads)
  dataset = data.load(settings.read(config).data)
  steps = images // BATCH

  def run() -> float:
    batches = data.Batches(dataset.train, BATCH, seed=random.randrange(1 << 30))
    t0 = time.perf_counter()
    for batch in batches.iterate(0, steps):
      assert batch["image"].shape == (BATCH, SIZE, SIZE, 3)
    return steps * BATCH / (time.perf_counter() - t0)

  return run


def torchvision_loader(tree: Path, workers: int, images: int) -> Callable[[], float] | None:
  try:
    import torch
    from torchvision import datasets, transforms
  except ImportError:
    return None
  torch.set_num_threads(1)
  transform = transforms.Compose(
    [
      transforms.RandomResizedCrop(SIZE),
      transforms.RandomHorizontalFlip(),
      transforms.PILToTensor(),
    ]
  )
  folder = datasets.ImageFolder(str(tree / "train"), transform=transform)
  steps = images // BATCH

  def run() -> float:
    loader = torch.utils.data.DataLoader(
      folder,
      batch_size=BATCH,
      shuffle=True,
      num_workers=workers,
      persistent_workers=False,
      prefetch_factor=4 if workers else None,
    )
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
      n += x.shape[0]
      if n >= steps * BATCH:
        break
    return n / (time.perf_counter() - t0)

  return run


def measure(quick: bool) -> dict:
  cores = os.sched_getaffinity(0)
  count = 320 if quick else 1280
  rounds = 2 if quick else 5
  work = Path(tempfile.mkdtemp(prefix="bench-data-"))
  try:
    tree = work / "tree"
    paths = make_images(tree, count)
    from train import prepare

    prepare.prepare(tree, work / "prepared", name="bench", workers=len(cores), say=lambda m: 0)
    prepare.prepare(
      tree, work / "small", name="bench", max_side=MAX_SIDE, workers=len(cores), say=lambda m: 0
    )
    sizes = {
      name: sum(f.stat().st_size for f in (work / name).glob("train-*.array_record"))
      for name in ("prepared", "small")
    }
    jpegs = [p.read_bytes() for p in paths[:200]]
    cases: dict[str, tuple[Callable[[], float], bool]] = {}
    for name, decode in decoders().items():

      def decode_all(decode=decode) -> float:
        t0 = time.perf_counter()
        for data in jpegs:
          decode(data)
        return len(jpegs) / (time.perf_counter() - t0)

      cases[f"decode: {name}"] = (decode_all, True)
    cases["ours, 1 core"] = (ours(work / "prepared", 1, count), True)
    cases[f"ours, {len(cores)} cores"] = (ours(work / "prepared", len(cores), count), False)
    cases[f"ours, 1 core, --max_side {MAX_SIDE}"] = (ours(work / "small", 1, count), True)
    for workers, one in ((0, True), (len(cores), False)):
      run = torchvision_loader(tree, workers, count)
      if run is not None:
        label = "1 core" if one else f"{len(cores)} cores"
        cases[f"torchvision, {label}"] = (run, one)
    for run, one in cases.values():  # warm-up: imports, first reads from disk
      if one:
        _one_core()
      run()
      _all_cores(cores)
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
      order = list(cases)
      random.shuffle(order)
      for name in order:
        run, one = cases[name]
        if one:
          _one_core()
        results[name].append(run())
        _all_cores(cores)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  medians = {name: statistics.median(v) for name, v in results.items()}
  return {
    "date": datetime.date.today().isoformat(),
    "machine": f"{platform.processor() or platform.machine()}, {len(cores)} cores",
    "images": count,
    "rounds": rounds,
    "train_shard_bytes": sizes,
    "images_per_s": medians,
    "runs": results,
  }


def markdown(result: dict) -> str:
  m = result["images_per_s"]
  cores = int(result["machine"].rsplit(", ", 1)[1].split()[0])
  lines = [
    f"# Data benchmark ({result['date']}, {result['machine']})",
    "",
    f"Decode + Inception crop + flip to {SIZE} px of {result['images']} JPEGs of 500x375, quality "
    f"90 (batch {BATCH}); medians of {result['rounds']} rounds, cases interleaved. "
    "`python -m bench.data` wrote this.",
    "",
    "| case | images/s | per core |",
    "|---|---:|---:|",
  ]
  for name, rate in m.items():
    n = 1 if name.startswith("decode") or "1 core" in name else cores
    lines.append(f"| {name} | {rate:,.0f} | {rate / n:,.0f} |")
  sizes = result["train_shard_bytes"]
  lines += [
    "",
    f"Training shards: {sizes['prepared'] / 2**20:.1f} MiB as the JPEGs came, "
    f"{sizes['small'] / 2**20:.1f} MiB with --max_side {MAX_SIDE}.",
  ]
  ours_1 = m.get("ours, 1 core")
  tv_1 = m.get("torchvision, 1 core")
  lines.append("")
  if ours_1 and tv_1:
    ratio = ours_1 / tv_1
    verdict = "meets" if ratio >= TARGET_PER_CORE_RATIO else "misses"
    lines.append(
      f"Ours / torchvision on one core: **{ratio:.2f}x** ({verdict} the {TARGET_PER_CORE_RATIO}x "
      "target)."
    )
  if ours_1:
    feed = 16 * ours_1
    verdict = "enough" if feed >= H100_RESNET50_IMAGES_PER_S else "not enough"
    lines.append(
      f"16 such cores would read {feed:,.0f} images/s: {verdict} for a ResNet-50 training on one "
      f"H100 (about {H100_RESNET50_IMAGES_PER_S:,} images/s)."
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
  parser.add_argument("--out", default="results", help="folder of bench-data.json and .md")
  args = parser.parse_args(argv)
  result = measure(args.quick)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "bench-data.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / "bench-data.md").write_text(markdown(result))
  print(markdown(result))


if __name__ == "__main__":
  main()
