"""Custom gradients: the ACU's normalized position gradient (eq. 15-16).

References:
  Jeon and Kim, "Active Convolution: Learning the Shape of Convolution for
  Image Classification", CVPR 2017, section 2.5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kshapes_jax import _validation


@jax.custom_vjp
def _normalize(positions: jax.Array) -> jax.Array:
  return positions


def _normalize_fwd(positions: jax.Array):
  return positions, None


def _unit(cotangent: jax.Array, axis: int | None, mean: bool) -> jax.Array:
  """cotangent / its L2 norm (mean=False) or RMS (mean=True) over `axis`; zero stays zero."""
  # Scale by the largest entry first, so squaring neither underflows (a tiny
  # gradient must still become unit) nor overflows.
  scale = jnp.max(jnp.abs(cotangent), axis=axis, keepdims=True)
  nonzero = scale > 0
  # The double where keeps both the value and its derivative finite at zero.
  scaled = cotangent / jnp.where(nonzero, scale, 1)
  norm = jnp.sqrt((jnp.mean if mean else jnp.sum)(jnp.square(scaled), axis=axis, keepdims=True))
  return jnp.where(nonzero, scaled / jnp.where(nonzero, norm, 1), 0)


def _normalize_bwd(_, cotangent: jax.Array):
  return (_unit(cotangent, axis=-1, mean=False),)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def normalize_position_grad(positions: ArrayLike) -> jax.Array:
  """Identity forward; backward, each synapse's gradient becomes a unit vector.

  Eq. 15-16: dL/d alpha_k and dL/d beta_k are divided by
  Z = sqrt((dL/d alpha_k)^2 + (dL/d beta_k)^2), so a synapse moves by the
  learning rate in the direction of steepest descent whatever the scale of
  the loss. A zero gradient stays zero (no NaN).

  Use it where the positions enter the computation:
  `active_kernel(w, normalize_position_grad(p), R)`.

  Args:
    positions: (..., 2) positions (dx, dy); every leading index is one
      synapse, normalised on its own.

  Returns:
    The positions, unchanged.

  Raises:
    ValueError: if the last axis is not 2.
  """
  shape = _validation.shape_of("positions", positions)
  if len(shape) < 1 or shape[-1] != 2:
    raise ValueError(f"positions must be (..., 2) as (dx, dy), got shape {shape}")
  return _normalize(jnp.asarray(positions))


@jax.custom_vjp
def _unit_rms(angles: jax.Array) -> jax.Array:
  return angles


def _unit_rms_bwd(_, cotangent: jax.Array):
  return (_unit(cotangent, axis=None, mean=True),)


_unit_rms.defvjp(_normalize_fwd, _unit_rms_bwd)


def normalize_angle_grad(angles: ArrayLike) -> jax.Array:
  """Identity forward; backward, a layer's angle gradient is scaled to unit RMS.

  The angles' counterpart of eq. 15-16. An angle in degrees moves the
  kernel by w / 45 per degree (eq. 3), so its raw gradient is some 1e-3 of a
  weight's and SGD at the weights' learning rate leaves it where it started.
  Scaled to unit root-mean-square over the layer, the gradient keeps each
  angle's sign and its size relative to the layer's other angles, and SGD
  moves the layer's angles by about the learning rate in degrees per step
  (x 1 / (1 - momentum) at steady state) whatever the scale of the loss and
  of the weights. A zero gradient stays zero (no NaN).

  Use it where the angles enter the kernel:
  `rotate_kernel(w, normalize_angle_grad(theta))`.

  Args:
    angles: one layer's angles, any shape (degrees).

  Returns:
    The angles, unchanged.
  """
  return _unit_rms(jnp.asarray(angles))
