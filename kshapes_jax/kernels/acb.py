"""Asymmetric Convolution Block (ACB): BN fusion and branch fusion.

An ACB sums three branches, a kxk, a 1xk and a kx1 convolution, each followed
by its own batch normalisation. After training every branch's BN is folded
into its kernel and a bias (eq. 6-7 of Ding et al.), and the asymmetric
kernels are added onto the skeleton of the square one, so the block becomes
one kxk convolution with a bias.

References:
  Ding, Guo, Ding and Han, "ACNet: Strengthening the Kernel Skeletons for
  Powerful CNN via Asymmetric Convolution Blocks", ICCV 2019.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kshapes_jax import _validation


class BatchNormParams(NamedTuple):
  """The four per-channel arrays of a batch normalisation in eval mode."""

  scale: ArrayLike  # gamma, (O,)
  bias: ArrayLike  # beta, (O,)
  mean: ArrayLike  # running mean, (O,)
  var: ArrayLike  # running variance, (O,)


def fuse_bn(
  kernel: ArrayLike,
  scale: ArrayLike,
  bias: ArrayLike,
  mean: ArrayLike,
  var: ArrayLike,
  eps: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
  """Folds an eval-mode batch normalisation into the conv kernel before it.

  BN(conv(x, K)) = conv(x, K * gamma / sigma) + (beta - mu * gamma / sigma)
  with sigma = sqrt(var + eps): the per-branch terms of eq. 6 and eq. 7.

  Args:
    kernel: (H, W, I, O) kernel of a bias-free convolution.
    scale: (O,) BN gamma.
    bias: (O,) BN beta.
    mean: (O,) BN running mean.
    var: (O,) BN running variance.
    eps: the BN epsilon.

  Returns:
    (kernel, bias): the fused (H, W, I, O) kernel and its (O,) bias.

  Raises:
    ValueError: if the kernel is not rank 4 or a BN array is not (O,), eps
      is negative, or a concrete variance is negative (NaN kernel).
  """
  shape = _validation.require_rank("kernel", kernel, 4, "(H, W, I, O)")
  out = shape[-1]
  for name, value in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
    _validation.require_shape(name, value, (out,), "(O,) with O the kernel's output channels")
  if (
    not isinstance(eps, (int, float, np.floating))
    or isinstance(eps, bool)
    or not 0 <= eps < math.inf
  ):
    raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
  concrete_var = _validation.concrete_or_none(var)
  if concrete_var is not None and not np.all(concrete_var + eps > 0):  # also NaN
    raise ValueError(
      f"var must be > -eps (a variance, >= 0), got min {float(np.min(concrete_var))} with "
      f"eps={eps}: its 1/sqrt(var + eps) would be NaN or inf"
    )
  kernel = jnp.asarray(kernel)
  factor = jnp.asarray(scale) * jax.lax.rsqrt(jnp.asarray(var) + eps)
  return kernel * factor, jnp.asarray(bias) - jnp.asarray(mean) * factor


def acb_kernel(
  square: ArrayLike,
  hor: ArrayLike | None = None,
  ver: ArrayLike | None = None,
  *,
  hor_row: int | None = None,
  ver_col: int | None = None,
) -> jax.Array:
  """Adds the asymmetric kernels onto the skeleton of the square one (eq. 6).

  Args:
    square: (k, k, I, O) kernel, k odd.
    hor: (1, m, I, O) horizontal kernel, m odd <= k (m = k in the paper's
      blocks; 1x3 in the kxk first layers of its AlexNet), added into row
      `hor_row`, centred on it; None for the "vertical only" ablation.
    ver: (m, 1, I, O) vertical kernel, added into column `ver_col`, centred;
      None for the "horizontal only" ablation.
    hor_row: the row that receives `hor`; the centre (k - 1) / 2 by default,
      k - 1 for the paper's "border" variant (section 4.4).
    ver_col: the column that receives `ver`; the centre by default.

  Returns:
    The (k, k, I, O) kernel of the block, one conv with no extra cost.

  Raises:
    ValueError: on an even k, shapes that do not match, or a row/column
      outside the kernel.
  """
  shape = _validation.require_rank("square", square, 4, "(k, k, I, O)")
  k = shape[0]
  if shape[1] != k:
    raise ValueError(f"square must be (k, k, I, O), got shape {shape}")
  if k % 2 == 0:
    raise ValueError(f"ACB needs an odd kernel size k, got k = {k}")
  centre = (k - 1) // 2
  hor_row = centre if hor_row is None else hor_row
  ver_col = centre if ver_col is None else ver_col
  for name, idx in (("hor_row", hor_row), ("ver_col", ver_col)):
    if not 0 <= idx < k:
      raise ValueError(f"{name} must be in [0, {k}), got {idx}")
  out = jnp.asarray(square)
  if hor is not None:
    m = _asymmetric_length("hor", hor, (1, None, *shape[2:]), k)
    start = (k - m) // 2
    out = out.at[hor_row, start : start + m].add(jnp.asarray(hor, out.dtype)[0])
  if ver is not None:
    m = _asymmetric_length("ver", ver, (None, 1, *shape[2:]), k)
    start = (k - m) // 2
    out = out.at[start : start + m, ver_col].add(jnp.asarray(ver, out.dtype)[:, 0])
  return out


def _asymmetric_length(name: str, kernel: ArrayLike, like: tuple, k: int) -> int:
  """The length m of an asymmetric (1, m) or (m, 1) kernel, checked against the square one."""
  shape = _validation.require_rank(name, kernel, 4, "(1, m, I, O) or (m, 1, I, O)")
  m = shape[1] if like[0] == 1 else shape[0]
  expected = tuple(m if d is None else d for d in like)
  if shape != expected or m % 2 == 0 or m > k:
    want = "(1, m, I, O)" if like[0] == 1 else "(m, 1, I, O)"
    raise ValueError(
      f"{name} must be {want} with m odd <= k = {k} and I, O matching the square kernel "
      f"{(k, k, *like[2:])}, got shape {shape}"
    )
  return m


def fuse_acb(
  square: ArrayLike,
  square_bn: BatchNormParams,
  hor: ArrayLike | None = None,
  hor_bn: BatchNormParams | None = None,
  ver: ArrayLike | None = None,
  ver_bn: BatchNormParams | None = None,
  *,
  eps: float = 1e-5,
  hor_row: int | None = None,
  ver_col: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Fuses a whole ACB, BN per branch, into one kxk kernel and bias (eq. 6-7).

  Args:
    square: (k, k, I, O) square kernel; I is the input channels per group.
    square_bn: BN of the square branch.
    hor: (1, m, I, O) horizontal kernel (m odd <= k), or None.
    hor_bn: BN of the horizontal branch (required with `hor`).
    ver: (m, 1, I, O) vertical kernel, or None.
    ver_bn: BN of the vertical branch (required with `ver`).
    eps: the BN epsilon, shared by the three branches.
    hor_row: row receiving the horizontal kernel (see `acb_kernel`).
    ver_col: column receiving the vertical kernel (see `acb_kernel`).

  Returns:
    (kernel, bias): (k, k, I, O) and (O,); conv(x, kernel) + bias equals the
    sum of the three BN'd branches in eval mode.

  Raises:
    ValueError: on bad shapes, an even k, or a branch given without its BN.
  """
  kernel, bias = fuse_bn(square, *square_bn, eps=eps)
  fused: dict[str, jax.Array | None] = {}
  for name, k_, bn in (("hor", hor, hor_bn), ("ver", ver, ver_bn)):
    if k_ is None:
      fused[name] = None
      continue
    if bn is None:
      raise ValueError(f"{name} was given without {name}_bn: every ACB branch has its own BN")
    fused[name], b = fuse_bn(k_, *bn, eps=eps)
    bias = bias + b
  kernel = acb_kernel(kernel, fused["hor"], fused["ver"], hor_row=hor_row, ver_col=ver_col)
  return kernel, bias
