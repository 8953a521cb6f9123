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

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kshapes_jax import _validation
from kshapes_jax.kernels.reparam import BatchNormParams, add_branches, fuse_bn, pad_kernel

__all__ = ["BatchNormParams", "acb_kernel", "fuse_acb", "fuse_bn"]


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
  square = jnp.asarray(square)
  branches = [square]  # transform VI places each branch, transform II sums them
  if hor is not None:
    m = _asymmetric_length("hor", hor, (1, None, *shape[2:]), k)
    branches.append(pad_kernel(jnp.asarray(hor, square.dtype), k, offset=(hor_row, (k - m) // 2)))
  if ver is not None:
    m = _asymmetric_length("ver", ver, (None, 1, *shape[2:]), k)
    branches.append(pad_kernel(jnp.asarray(ver, square.dtype), k, offset=((k - m) // 2, ver_col)))
  return add_branches(branches)[0]


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
  kernel, bias = fuse_bn(square, *square_bn, eps=eps)  # transform I per branch
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
