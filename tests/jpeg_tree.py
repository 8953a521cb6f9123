"""A small ImageFolder tree of real JPEGs, made at test time from Fashion-MNIST."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data import memory

CLASSES = ["bag", "boot", "coat"]  # three Fashion-MNIST classes, as folder names
FM_LABELS = {"bag": 8, "boot": 9, "coat": 4}
needs_fashion_mnist = pytest.mark.skipif(
  not os.path.isdir(memory.DEBIAN_FASHION_MNIST),
  reason="the JPEG tree is made from Fashion-MNIST: apt-get install -y dataset-fashion-mnist",
)


def make_tree(root: Path, train_per_class: int = 24, test_per_class: int = 6) -> Path:
  """An ImageFolder tree of real images: Fashion-MNIST upscaled to 40x30 RGB JPEGs (quality 90),
  plus a PNG, a grey JPEG, a CMYK JPEG and a text file in the train split."""
  train, test = memory.load_idx_dir(memory.DEBIAN_FASHION_MNIST)
  for split, data, n in (("train", train, train_per_class), ("val", test, test_per_class)):
    for name in CLASSES:
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in np.flatnonzero(data.labels == FM_LABELS[name])[:n]:
        grey = Image.fromarray(data.images[i, :, :, 0]).resize((40, 30), Image.BILINEAR)
        rgb = Image.merge("RGB", (grey, grey.point(lambda v: v // 2), grey))
        rgb.save(folder / f"{i}.jpg", quality=90)
  extra = root / "train" / "coat"
  Image.new("RGB", (33, 27), (200, 10, 10)).save(extra / "red.png")
  Image.new("L", (31, 29), 90).save(extra / "grey.jpg", quality=90)
  Image.new("CMYK", (35, 25), (0, 255, 255, 0)).save(extra / "cmyk.jpg", quality=90)
  (extra / "notes.txt").write_text("not an image")
  return root
