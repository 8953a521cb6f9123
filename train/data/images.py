"""Images on the CPU: JPEG decoding and the ImageNet crops, uint8 in and out.

Training takes the Inception crop (Szegedy et al. 2015; torchvision's RandomResizedCrop): a box
of 8-100% of the image's area with an aspect ratio in [3/4, 4/3], drawn log-uniformly, resized
to the training size, flipped left-right with probability 1/2. Evaluation resizes the shorter
side to size / 0.875 (256 for 224) and takes the centre square of the size. Both are functions
of the image and a NumPy Generator, so an example's pixels depend only on the seed it is given.
The decoder is simplejpeg (libjpeg-turbo); `python -m bench.data` measures it against the others.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import simplejpeg

# torchvision's RandomResizedCrop defaults, the papers' ImageNet recipe (ResNet, ACNet, versatile)
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
EVAL_CROP_FRACTION = 0.875  # 224 of 256


class ImageError(ValueError):
  """An image that cannot be decoded (not a JPEG, truncated, damaged)."""


def decode_jpeg(data: bytes) -> np.ndarray:
  """A JPEG file's bytes as RGB uint8 (H, W, 3); grey and CMYK JPEGs are converted to RGB.

  Raises:
    ImageError: for bytes that are not a whole JPEG.
  """
  try:
    return simplejpeg.decode_jpeg(data, colorspace="RGB")
  except (ValueError, RuntimeError) as e:
    raise ImageError(f"not a decodable JPEG ({len(data)} bytes): {e}") from e


def as_rgb(image: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 as (H, W, 3): grey repeated, alpha dropped."""
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
    raise ImageError(
      f"expected a uint8 image (H, W[, 1|3|4]), got {image.dtype} {tuple(image.shape)}"
    )
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of uint8 (H, W, C); area averaging where a side shrinks by 2x or more.

  Below 2x, bilinear sampling still reads every source pixel (mild aliasing at most), and area
  averaging costs about 4x more (0.8 vs 0.2 ms for a 224 px crop of a 500x375 image here).
  """
  if image.shape[:2] == (height, width):
    return image
  far = image.shape[0] >= 2 * height or image.shape[1] >= 2 * width
  out = cv2.resize(
    image, (width, height), interpolation=cv2.INTER_AREA if far else cv2.INTER_LINEAR
  )
  return out.reshape(height, width, image.shape[-1])


def inception_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  area: tuple[float, float] = CROP_AREA,
  ratio: tuple[float, float] = CROP_RATIO,
  attempts: int = 10,
) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random box of the image: `attempts` draws of area share and
  log-uniform aspect ratio, the first that fits; else the whole image cut to the ratio range."""
  total = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target = total * rng.uniform(*area)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif aspect > ratio[1]:
    h, w = height, round(height * ratio[1])
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def train_image(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """The Inception crop of an RGB uint8 image, resized to (size, size), flipped with p = 1/2."""
  top, left, h, w = inception_box(image.shape[0], image.shape[1], rng)
  out = resize(image[top : top + h, left : left + w], size, size)
  return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def eval_image(image: np.ndarray, size: int) -> np.ndarray:
  """The shorter side resized to round(size / 0.875), then the centre (size, size) square."""
  height, width = image.shape[:2]
  short = round(size / EVAL_CROP_FRACTION)
  scale = short / min(height, width)
  h, w = max(size, round(height * scale)), max(size, round(width * scale))
  out = resize(image, h, w)
  top, left = (h - size) // 2, (w - size) // 2
  return out[top : top + size, left : left + size]
