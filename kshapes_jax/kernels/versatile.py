"""Versatile filters: secondary filters derived from one primary filter.

Spatial: s = ceil(d / 2) nested masks (eq. 2) crop a dxd primary filter to
d, d - 2, ..., and the s responses are stacked on the output axis (eq. 3).
Channel: a filter with c^ < c input channels slides over the c input
channels with stride g, giving n = (c - c^) / g + 1 responses (eq. 8).
Both are expressed here as ONE stacked kernel, so a versatile layer is a
single ordinary convolution.

References:
  Wang, Xu, Xu, Xu and Tao, "Learning Versatile Filters for Efficient
  Convolutional Neural Networks", NeurIPS 2018.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from kshapes_jax import _validation


def versatile_masks(d: int, dtype: DTypeLike | None = jnp.float32) -> jax.Array:
  """The nested masks M_1..M_s of eq. 2, shape (s, d, d) with s = ceil(d / 2).

  M_i (1-indexed) keeps the entries with i <= p, q <= d + 1 - i: M_1 is the
  whole filter, each next mask drops one more outer ring, and M_s is the
  centre (1x1 for odd d, 2x2 for even d). M_i has (d - 2i + 2)^2 ones.

  Args:
    d: the filter size, >= 1.
    dtype: dtype of the masks.

  Returns:
    (s, d, d) array of zeros and ones.

  Raises:
    ValueError: if d is not a positive int.
  """
  if not isinstance(d, (int, np.integer)) or d < 1:
    raise ValueError(f"d must be a positive int filter size, got {d!r}")
  s = (d + 1) // 2
  idx = np.arange(1, d + 1)
  inside = [(idx >= i) & (idx <= d + 1 - i) for i in range(1, s + 1)]
  masks = np.stack([np.outer(m, m) for m in inside])
  return jnp.asarray(masks, dtype=dtype)


def _square_filter(f: ArrayLike) -> jax.Array:
  """f as an array, checked to be (d, d, I, O)."""
  shape = _validation.require_rank("f", f, 4, "(d, d, I, O)")
  if shape[0] != shape[1]:
    raise ValueError(f"f must be square (d, d, I, O), got shape {shape}")
  return jnp.asarray(f)


def spatial_versatile_kernel(f: ArrayLike) -> jax.Array:
  """Stacks the s masked secondary filters of a primary filter (eq. 3).

  Output channel i * O + o holds M_(i+1) o f[..., o]: secondary filter major,
  as in the official PyTorch code, so the conv's output is
  [(M_1 o f) * x, ..., (M_s o f) * x] concatenated on channels.

  Args:
    f: (d, d, I, O) primary filters.

  Returns:
    (d, d, I, s * O) stacked kernel, s = ceil(d / 2).

  Raises:
    ValueError: if f is not (d, d, I, O).
  """
  f = _square_filter(f)
  shape = f.shape
  masks = versatile_masks(shape[0], f.dtype)
  stacked = masks[:, :, :, None, None] * f[None]  # (s, d, d, I, O)
  return jnp.moveaxis(stacked, 0, 3).reshape(*shape[:3], -1)


def channel_windows(in_channels: int, window: int, stride: int) -> int:
  """The number n = (c - c^) / g + 1 of channel windows of eq. 8.

  Args:
    in_channels: c, the input channels of the layer.
    window: c^, the input channels of the primary filter.
    stride: g, the channel stride.

  Returns:
    n, the number of secondary filters per primary filter.

  Raises:
    ValueError: unless 1 <= c^ < c, g >= 1 and g divides c - c^.
  """
  for name, v in (("in_channels", in_channels), ("window", window), ("stride", stride)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}")
  if window >= in_channels:
    raise ValueError(
      f"channel versatile filters need c^ < c: the filter has c^ = {window} input "
      f"channels but the layer has c = {in_channels}"
    )
  if (in_channels - window) % stride:
    raise ValueError(
      f"channel stride g = {stride} does not tile the channels: c - c^ = "
      f"{in_channels} - {window} = {in_channels - window} is not a multiple of g"
    )
  return (in_channels - window) // stride + 1


def channel_versatile_kernel(f: ArrayLike, in_channels: int, stride: int) -> jax.Array:
  """Stacks the n channel windows of a primary filter (eq. 8).

  Window i reads input channels [i * g, i * g + c^) and is zero elsewhere;
  output channel i * O + o is window i of filter o.

  Args:
    f: (d, d, c^, O) primary filters.
    in_channels: c, the input channels of the layer (c > c^).
    stride: g, the channel stride; it must divide c - c^.

  Returns:
    (d, d, c, n * O) stacked kernel with n = (c - c^) / g + 1.

  Raises:
    ValueError: if f is not rank 4, c^ >= c, or g does not tile c - c^.
  """
  shape = _validation.require_rank("f", f, 4, "(d, d, c^, O)")
  window = shape[2]
  n = channel_windows(in_channels, window, stride)
  f = jnp.asarray(f)
  pads = [
    ((0, 0), (0, 0), (i * stride, in_channels - window - i * stride), (0, 0)) for i in range(n)
  ]
  return jnp.concatenate([jnp.pad(f, p) for p in pads], axis=-1)


def spatial_channel_versatile_kernel(f: ArrayLike, in_channels: int, stride: int) -> jax.Array:
  """Both versatile kinds at once ("versatile v2"): s * n secondary filters.

  Output channel (i * n + j) * O + o is scale i (mask M_(i+1)) of channel
  window j of filter o: scale, then window, then filter, the order of the
  official PyTorch code.

  Args:
    f: (d, d, c^, O) primary filters.
    in_channels: c, the input channels of the layer (c > c^).
    stride: g, the channel stride; it must divide c - c^.

  Returns:
    (d, d, c, s * n * O) stacked kernel.

  Raises:
    ValueError: as `channel_versatile_kernel` and `spatial_versatile_kernel`.
  """
  return spatial_versatile_kernel(channel_versatile_kernel(f, in_channels, stride))


def summed_versatile_kernel(f: ArrayLike) -> jax.Array:
  """The naive aggregate of eq. 4, as the single masked kernel of eq. 5.

  sum_i (M_i o f) * x = ((sum_i M_i) o f) * x: a fixed weighting of rings,
  the paper's "Model 1" baseline.

  Args:
    f: (d, d, I, O) primary filters.

  Returns:
    (d, d, I, O) kernel.

  Raises:
    ValueError: if f is not (d, d, I, O).
  """
  f = _square_filter(f)
  shape = f.shape
  weight = versatile_masks(shape[0], f.dtype).sum(0)
  return weight[:, :, None, None] * f
