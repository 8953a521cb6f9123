"""RotateConv: a 3-tap line-segment kernel with a learnable angle.

The line holds w0 at the centre, w1 at direction theta and w2 at theta + 180.
Angular inverse interpolation (eq. 3 and 8 of Ma et al.) splits w1 and w2
between the two neighbouring directions that are multiples of 45 degrees,
which turns every (input, output) pair into an ordinary 3x3 kernel.

References:
  Ma, Guo, Wang and Wang, "RotateConv: Making Asymmetric Convolutional
  Kernels Rotatable", ICPR 2018.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kshapes_jax import _validation

# Direction phi = 45 * d is the neighbour (row, col) = centre + (-round(sin phi),
# round(cos phi)): 0 = right, 45 = up-right, 90 = up, 135 = up-left, ...
_DIRECTION_OFFSETS = tuple(
  (-int(round(np.sin(np.deg2rad(45 * d)))), int(round(np.cos(np.deg2rad(45 * d)))))
  for d in range(8)
)


def _cell_directions() -> tuple[int, ...]:
  """Which of the 9 values (8 directions, then the centre) fills each 3x3 cell, row-major."""
  cells = [8] * 9
  for d, (dr, dc) in enumerate(_DIRECTION_OFFSETS):
    cells[3 * (1 + dr) + 1 + dc] = d
  return tuple(cells)


_CELL_DIRECTIONS = _cell_directions()


def wrap_angles(angles: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
  """Angles in degrees modulo 180, in [0, 180): a line's angle (eq. 3 reads theta mod 180).

  In [0, 180) even where mod rounds a tiny negative up to 180. Operators
  only, so a NumPy array stays NumPy (float64 for the analyses) and a jax
  array stays jax (differentiable, gradient 1).

  Args:
    angles: any shape, degrees.

  Returns:
    The same shape and array type.
  """
  theta = angles % 180.0
  return theta - 180.0 * (theta >= 180.0)


def rotate_kernel(weights: ArrayLike, angles: ArrayLike) -> jax.Array:
  """Builds the 3x3 kernel of a RotateConv layer by inverse interpolation.

  With theta = angles mod 180, f = (theta mod 45) / 45 and sector
  q = floor(theta / 45), w1 goes to direction 45q with weight (1 - f) and to
  direction 45(q + 1) with weight f; w2 likewise at 45q + 180 and 45q + 225
  (eq. 3 for v4, eq. 8 for v2 where w0 = w1 = w2 = w). The kernel is
  continuous in theta on [0, 180); at multiples of 45 degrees its derivative
  is the one-sided one of the paper's f (all weight on the small side,
  f' = 1/45). For v4 the wrap at 180 is a jump: the line at 180 degrees is the
  line at 0 with w1 and w2 on swapped sides, as in the paper's theta mod 180.

  Args:
    weights: (3, I, O) for v4 (w0 centre, w1 at theta, w2 at theta + 180), or
      (I, O) for v2 (one weight shared by the three taps).
    angles: (I, O) angles in degrees; any real value, taken modulo 180.

  Returns:
    The effective kernel, (3, 3, I, O) in HWIO layout, dtype of the weights.

  Raises:
    ValueError: if the shapes do not match (3, I, O) / (I, O) and (I, O).
  """
  w_shape = _validation.require_rank("weights", weights, (2, 3), "(3, I, O) [v4] or (I, O) [v2]")
  if len(w_shape) == 3 and w_shape[0] != 3:
    raise ValueError(f"v4 weights must be (3, I, O), got shape {w_shape}")
  io = w_shape[-2:]
  _validation.require_shape("angles", angles, io, "(I, O) matching the weights")
  weights = jnp.asarray(weights)
  if len(w_shape) == 2:
    w0 = w1 = w2 = weights
  else:
    w0, w1, w2 = weights[0], weights[1], weights[2]
  theta = wrap_angles(jnp.asarray(angles, dtype=weights.dtype))
  sector = jax.lax.stop_gradient(jnp.floor(theta / 45.0))
  f = theta / 45.0 - sector  # == (theta mod 45) / 45, derivative 1/45
  sector = sector.astype(jnp.int32)
  directions = jnp.arange(8)
  d = directions[:, None, None]
  # Weight of every direction, (8, I, O): the "small" and "big" sides of w1 and w2.
  spread = w1 * ((1 - f) * (d == sector) + f * (d == sector + 1)) + w2 * (
    (1 - f) * (d == sector + 4) + f * (d == (sector + 5) % 8)
  )
  # Every cell holds exactly one direction (or the centre), so the kernel is a
  # static rearrangement: no contraction, hence exact in its dtype on every backend (a
  # one-hot einsum would run at TF32 on a GPU).
  values = [spread[d] for d in range(8)] + [
    jnp.broadcast_to(w0, spread.shape[1:]).astype(spread.dtype)
  ]
  return jnp.stack([values[d] for d in _CELL_DIRECTIONS]).reshape(3, 3, *spread.shape[1:])


def project_angles(updated: ArrayLike, previous: ArrayLike, eps: float) -> jax.Array:
  """Projects updated angles into the previous 45-degree sector +- eps (eq. 6).

  Eq. 6 of Ma et al.: theta_update = (theta_last + delta) mod 180 subject to
  theta_small - eps < theta_update < theta_big + eps, where theta_small and
  theta_big bound the sector [45q, 45(q + 1)] that holds theta_last. The
  angle is clipped to that band before wrapping modulo 180.

  Args:
    updated: the unprojected new angles, theta_last + delta, in degrees.
    previous: the angles before the update, same shape; taken modulo 180.
    eps: how far, in degrees, the angle may leave the previous sector (>= 0).

  Returns:
    The projected angles in [0, 180), same shape and dtype as `updated`.

  Raises:
    ValueError: if the shapes differ or eps is negative.
  """
  u_shape = _validation.shape_of("updated", updated)
  _validation.require_shape("previous", previous, u_shape, "the shape of `updated`")
  if not eps >= 0:
    raise ValueError(f"eps must be >= 0 degrees, got {eps!r}")
  updated = jnp.asarray(updated)
  previous = jnp.asarray(previous, dtype=updated.dtype)
  # Work in the frame where the previous angle lies in [0, 180).
  shift = previous - jnp.mod(previous, 180.0)
  prev = previous - shift
  new = updated - shift
  low = prev - jnp.mod(prev, 45.0)
  new = jnp.clip(new, low - eps, low + 45.0 + eps)
  return jnp.asarray(wrap_angles(new))
