"""Small functional pieces the model files share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding


def layer_options(
  conv_options: dict | None, precision: lax.PrecisionLike, dtype: DTypeLike | None
) -> tuple[dict, dict]:
  """(options of the shaped convs, numerics of every other layer) of a model.

  The shaped convs get the user's `conv_options` and the numerics; plain
  stems, shortcuts, 1x1 convs and classifiers get `precision` and `dtype`
  only; BNs take `numerics["dtype"]`.
  """
  numerics = {"precision": precision, "dtype": dtype}
  return {**(conv_options or {}), **numerics}, numerics


def max_pool(
  x: jax.Array, window: int, stride: int, padding: Padding | None = ((0, 0), (0, 0))
) -> jax.Array:
  return nnx.max_pool(x, (window, window), (stride, stride), padding)


def avg_pool(
  x: jax.Array, window: int, stride: int, padding: Padding | None = ((0, 0), (0, 0))
) -> jax.Array:
  # count_include_pad as in Caffe and PyTorch's defaults
  return nnx.avg_pool(x, (window, window), (stride, stride), padding, count_include_pad=True)


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))
