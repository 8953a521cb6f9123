"""On the device, inside the jitted step: uint8 images normalised, and the CIFAR augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# the augmentations the jitted step applies; the others (inception) run on the CPU workers
DEVICE_AUGMENTS = ("none", "cifar")


def preprocess(
  images: jax.Array, key: jax.Array | None, *, mean, std, augment: str = "none"
) -> jax.Array:
  """uint8 NHWC -> normalised float32, with optional CIFAR augmentation, on the device.

  augment="cifar": zero-pad 4 pixels on each side (32 -> 40), take a random
  crop of the original size and flip left-right with probability 1/2, per
  example (He et al. 2016; ACNet section 4.1; ACU section 3.1).
  """
  x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
    std, jnp.float32
  )
  if augment == "none":
    return x
  if augment != "cifar":
    raise ValueError(f"augment must be 'none' or 'cifar', got {augment!r}")
  if key is None:
    raise ValueError("augment='cifar' draws its crops and flips from a key: pass one")
  n, h, w, _ = x.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (n, 2), 0, 9)
  flips = jax.random.bernoulli(k_flip, 0.5, (n,))
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))  # zeros after normalisation: the mean image

  def one(img, off, flip):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)
