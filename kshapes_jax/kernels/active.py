"""Active Convolution Unit (ACU) as a dense kernel: the bilinear splat.

The ACU samples its input at K learnable positions p_k = (alpha_k, beta_k)
around every output pixel with bilinear interpolation (eq. 5-9 of Jeon and
Kim). The positions are shared by every output pixel, so sampling then
summing is exactly a convolution whose kernel entry at lattice offset
(i, j) is sum_k w_k * t(alpha_k - j) * t(beta_k - i), t the bilinear tent:
each synapse weight is splatted onto its 4 lattice neighbours. This module
builds that (2R + 1) x (2R + 1) kernel; the literal gather lives in
`kshapes_jax.conv.active_conv_gather` and both must agree in value and
gradient.

Lattice convention: the interpolation cell of a coordinate v is [l, l + 1]
with l = floor(v) for v <= 0 and l = ceil(v) - 1 for v > 0, so at an
integer v the position derivative is the one-sided difference toward the
centre (the paper's eq. 7-8 use floor everywhere and differ only at positive
integers). Then every tap a value or a gradient needs lies within
R = max(1, ceil(max |p|)), and the 3x3 lattice is an exact 3x3 conv.

References:
  Jeon and Kim, "Active Convolution: Learning the Shape of Convolution for
  Image Classification", CVPR 2017.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from kshapes_jax import _validation


def bilinear_cell(v: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Splits coordinates into the cell's lower lattice point and the fraction.

  Args:
    v: coordinates in pixels, any shape.

  Returns:
    (low, frac): low is int32, l = floor(v) for v <= 0 and ceil(v) - 1 for
    v > 0; frac = v - l in [0, 1] carries the derivative d frac / d v = 1.
  """
  v = jnp.asarray(v)
  low = jax.lax.stop_gradient(jnp.where(v > 0, jnp.ceil(v) - 1, jnp.floor(v)))
  return low.astype(jnp.int32), v - low


def lattice_offsets(size: int = 3) -> np.ndarray:
  """The size x size lattice as (dx, dy) offsets in NumPy, origin first, then row-major.

  Host constants, so layers can use them also while built under jit or eval_shape.

  Raises:
    ValueError: if size is not a positive odd int.
  """
  if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
    raise ValueError(f"size must be a positive odd int, got {size!r}")
  r = (size - 1) // 2
  ring = [(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dx, dy) != (0, 0)]
  return np.asarray([(0, 0), *ring], np.float32)


def lattice_positions(
  size: int = 3, dilation: float = 1.0, dtype: DTypeLike | None = jnp.float32
) -> jax.Array:
  """Positions (K, 2) = (dx, dy) of a size x size lattice, centre first.

  Synapse 0 is the origin, as the ACU paper fixes it; the others follow in
  row-major order. Scaled by `dilation`, they describe a dilated conv.

  Args:
    size: odd lattice size (3 gives the 9 positions of a 3x3 conv).
    dilation: spacing between synapses, in pixels.
    dtype: dtype of the positions.

  Returns:
    (size * size, 2) positions in pixels from the kernel centre.

  Raises:
    ValueError: if size is not a positive odd int.
  """
  return jnp.asarray(lattice_offsets(size) * dilation, dtype=dtype)


def with_origin(positions: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
  """The learned (..., K - 1, 2) positions with synapse 0 at the origin put first: (..., K, 2).

  The ACU fixes synapse 0 at (0, 0) (section 2.2); a layer learns the
  others. A NumPy array stays NumPy (its dtype kept), a jax array stays jax.

  Raises:
    ValueError: when the last axis is not (alpha, beta).
  """
  if positions.ndim < 2 or positions.shape[-1] != 2:
    raise ValueError(
      f"positions must be (..., K - 1, 2) as (alpha, beta), got shape {positions.shape}"
    )
  xp = np if isinstance(positions, np.ndarray) else jnp
  origin = xp.zeros((*positions.shape[:-2], 1, 2), positions.dtype)
  return xp.concatenate([origin, positions], axis=-2)


def radius_for_positions(positions: ArrayLike) -> int:
  """The smallest kernel radius R whose (2R + 1)^2 kernel holds the positions.

  R = max(1, ceil(max |p|)): the interpolation cells of the lattice
  convention, and so the one-sided gradients at integer positions, all lie
  within it. Runs on the host.

  Args:
    positions: (..., 2) positions in pixels, concrete (not traced).

  Returns:
    The radius, an int >= 1.

  Raises:
    ValueError: if the positions are traced, or not (..., 2), or not finite.
  """
  _validation.require_rank("positions", positions, range(1, 7), "(..., 2)")
  if np.shape(positions)[-1] != 2:
    raise ValueError(f"positions must be (..., 2) as (dx, dy), got shape {np.shape(positions)}")
  value = _validation.concrete_or_none(positions)
  if value is None:
    raise ValueError(
      "radius_for_positions needs concrete positions; inside jit pass a static radius"
    )
  if not np.all(np.isfinite(value)):
    raise ValueError("positions must be finite")
  if value.size == 0:
    return 1
  return max(1, math.ceil(float(np.max(np.abs(value)))))


# XLA indexes an array with int32: a larger kernel aborts the process instead of raising.
MAX_KERNEL_ELEMENTS = 2**31 - 1


def check_radius(radius: int, channels: int = 1) -> int:
  """`radius` as an int >= 1 whose (2R + 1)^2 x `channels` kernel XLA can index; ValueError if not.

  Args:
    radius: the kernel radius R.
    channels: I * O of the kernel (1 for a lattice of offsets only).
  """
  radius = _validation.positive_int("radius", radius)
  if (2 * radius + 1) ** 2 * max(channels, 1) > MAX_KERNEL_ELEMENTS:
    raise ValueError(
      f"radius {radius} gives a ({2 * radius + 1})^2 x {channels} kernel, more than the "
      f"2^31 - 1 elements XLA can index; positions within R need only radius R"
    )
  return radius


def check_positions_within(positions: ArrayLike, radius: int) -> None:
  """Raises ValueError if concrete positions do not fit `radius`; no-op when traced."""
  check_radius(radius)
  if _validation.concrete_or_none(positions) is None:
    return
  needed = radius_for_positions(positions)
  if needed > radius:
    raise ValueError(
      f"radius {radius} is too small for these positions: max |p| = "
      f"{float(np.max(np.abs(np.asarray(positions)))):.4g} needs radius >= {needed}"
    )


def clip_positions(positions: ArrayLike, radius: int) -> jax.Array:
  """Clips positions into [-R, R] with a gradient of exactly 1 inside and on the edge."""
  p = jnp.asarray(positions)
  # jnp.clip would halve the gradient at |p| == R (max/min ties), which the
  # 3x3 lattice hits at R = 1.
  return jnp.where(p > radius, radius, jnp.where(p < -radius, -radius, p)).astype(p.dtype)


def _tents(coord: jax.Array, radius: int) -> jax.Array:
  """Bilinear weights of each coordinate on the 2R + 1 lattice offsets, (..., 2R + 1)."""
  low, frac = bilinear_cell(coord)
  offsets = jnp.arange(-radius, radius + 1)
  low, frac = low[..., None], frac[..., None]
  return (1 - frac) * (offsets == low) + frac * (offsets == low + 1)


def active_kernel(weights: ArrayLike, positions: ArrayLike, radius: int) -> jax.Array:
  """Splats the synapse weights onto a dense (2R + 1)^2 kernel.

  kernel[R + i, R + j, c, o] = sum_k w[k, c, o] t(dx_k - j) t(dy_k - i), the
  convolution equivalent of eq. 5-9 with shared positions. All K positions
  are taken as given (the layer keeps synapse 0 at the origin).

  Args:
    weights: (K, I, O) synapse weights.
    positions: (K, 2) positions (dx, dy) in pixels, dx along columns and dy
      along rows; or (G, K, 2), one set per group of O / G output channels
      (group g owns output channels [g * O / G, (g + 1) * O / G)).
    radius: static kernel radius R >= 1. Concrete positions that do not fit
      raise ValueError; traced ones (inside jit or grad) are clipped into
      [-R, R], which stops their gradient outward at the edge.

  Returns:
    (2R + 1, 2R + 1, I, O) kernel in HWIO layout, dtype of the weights
    (integer weights are promoted to float).

  Raises:
    ValueError: on shapes that do not match or a radius too small for
      concrete positions.
  """
  w_shape = _validation.require_rank("weights", weights, 3, "(K, I, O)")
  k, cin, cout = w_shape
  p_shape = _validation.require_rank("positions", positions, (2, 3), "(K, 2) or (G, K, 2)")
  if p_shape[-2:] != (k, 2):
    raise ValueError(
      f"positions must be (K, 2) or (G, K, 2) with K = {k} synapses, got shape {p_shape}"
    )
  groups = p_shape[0] if len(p_shape) == 3 else 1
  if cout % groups:
    raise ValueError(f"{groups} position groups do not divide the {cout} output channels")
  check_radius(radius, cin * cout)
  check_positions_within(positions, radius)
  weights = jnp.asarray(weights)
  weights = weights.astype(_validation.floating(weights.dtype))
  p = clip_positions(jnp.asarray(positions, weights.dtype), radius).reshape(groups, k, 2)
  tx = _tents(p[..., 0], radius).astype(weights.dtype)  # (G, K, 2R+1) columns
  ty = _tents(p[..., 1], radius).astype(weights.dtype)  # (G, K, 2R+1) rows
  w = weights.reshape(k, cin, groups, cout // groups)
  # HIGHEST: the builder must be exact in its dtype on every backend, value and
  # gradient (DEFAULT is TF32 on a GPU, bf16 passes on a TPU); it is O(params).
  kernel = jnp.einsum("gkr,gkc,kigo->rcigo", ty, tx, w, precision=jax.lax.Precision.HIGHEST)
  return kernel.reshape(2 * radius + 1, 2 * radius + 1, cin, cout)
