"""Dilated Convolution with Learnable Spacings (DCLS) as a dense kernel.

DCLS (Khalfaoui-Hassani, Pellegrini and Masquelier, ICLR 2023) gives every kernel element of
every (input, output) pair its own learnable position inside a dense `extent` x `extent` window
and places its weight there by interpolation, so a layer is "parameters -> dense kernel -> one
conv", as the ACU (one position set per layer) is. Element k of pair (i, o), at (dx, dy) pixels
from the window's centre (ew // 2, eh // 2), adds to cell (r, c)

  w[k, i, o] * t_y(r - eh // 2 - dy) * t_x(c - ew // 2 - dx) / (S_y * S_x + 1e-7),

with S the sum of t over the window (the official code divides the 2-D interpolation weights by
their sum plus 1e-7; the weights factor, so the sum is S_y * S_x) and t:

- "bilinear" (the official `version="v1"`): the tent max(0, 1 - |u|); its derivative is that
  of the official autodiff, 0 at u = 0 and at |u| = 1 (the tent's kinks), so a position exactly
  on the lattice gets no position gradient;
- "gauss" (the official `version="gauss"`, the 2023 paper): exp(-u^2 / (2 sigma^2)) with a
  standard deviation per element and axis.

Positions are taken as given: one beyond the window loses the taps that fall outside it (the
official layer clamps its positions after each optimizer step instead; `kshapes_jax.optim`
does that with `clamp_to_bounds`).

References:
  Khalfaoui-Hassani, Pellegrini, Masquelier, "Dilated convolution with learnable spacings",
  ICLR 2023; "Dilated convolution with learnable spacings: beyond bilinear interpolation",
  ICML 2023 workshop. Official code: K-H-Ismail/Dilated-Convolution-with-Learnable-Spacings-
  PyTorch, DCLS/construct/modules.py (ConstructKernel2d.forward_v1 / forward_vgauss).
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kshapes_jax import _validation

Interpolation = Literal["bilinear", "gauss"]
# the official normalization's epsilon: weights / (sum + 1e-7)
NORM_EPS = 1e-7
# the official Gaussian's floor: the standard deviation is |SIG| + 0.27
SIGMA_FLOOR = 0.27


def dcls_extent(extent: int | tuple[int, int]) -> tuple[int, int]:
  """(eh, ew) of an int or (height, width) extent, each a positive int.

  Raises:
    ValueError: for anything else.
  """
  if _validation.is_int(extent):
    extent = (int(extent), int(extent))  # type: ignore[arg-type]
  if (
    not isinstance(extent, (tuple, list))
    or len(extent) != 2
    or not all(_validation.is_int(e) and e >= 1 for e in extent)
  ):
    raise ValueError(f"extent must be a positive int or (height, width) of them, got {extent!r}")
  return int(extent[0]), int(extent[1])


def dcls_tents(
  offsets: jax.Array, size: int, interpolation: Interpolation, sigma: jax.Array | None = None
) -> jax.Array:
  """Interpolation weights of coordinates on the cells of one axis, before normalization.

  Args:
    offsets: (...) coordinates in pixels from the axis' centre cell size // 2.
    size: the axis' number of cells.
    interpolation: "bilinear" or "gauss".
    sigma: (...) standard deviations, for "gauss".

  Returns:
    (size, ...) weights: t(cell - size // 2 - offset).
  """
  cells = jnp.arange(size, dtype=offsets.dtype) - size // 2
  u = cells.reshape((size,) + (1,) * offsets.ndim) - offsets
  if interpolation == "bilinear":
    # derivative 0 at both kinks, as torch's relu and abs (the official autodiff); jnp.abs's is
    # 1 at 0, sign(u) * u's is sign(0) = 0
    return jax.nn.relu(1 - jnp.sign(u) * u)
  assert sigma is not None
  return jnp.exp(-0.5 * jnp.square(u / sigma))


def dcls_kernel(
  weights: ArrayLike,
  positions: ArrayLike,
  extent: int | tuple[int, int],
  interpolation: Interpolation = "bilinear",
  sigma: ArrayLike | None = None,
) -> jax.Array:
  """Places every element's weight at its position in a dense kernel (module docstring).

  Args:
    weights: (K, I, O) element weights, I the input channels per group (1: depthwise).
    positions: (K, I, O, 2) positions (dx, dy) in pixels from the window's centre, dx along
      columns, dy along rows.
    extent: the dense window, an int or (height, width).
    interpolation: "bilinear" (tent) or "gauss".
    sigma: (K, I, O, 2) standard deviations (sx, sy) > 0 for "gauss" (a layer's are
      |SIG| + SIGMA_FLOOR, as the official code's); none for "bilinear".

  Returns:
    (eh, ew, I, O) kernel in HWIO layout, in the weights' (floating) dtype.

  Raises:
    ValueError: for shapes that do not match, an unknown interpolation, or a sigma given to
      "bilinear" / missing for "gauss".
  """
  if interpolation not in get_args(Interpolation):
    raise ValueError(f"interpolation must be 'bilinear' or 'gauss', got {interpolation!r}")
  eh, ew = dcls_extent(extent)
  k, cin, cout = _validation.require_rank("weights", weights, 3, "(K, I, O)")
  _validation.require_shape("positions", positions, (k, cin, cout, 2), "(K, I, O, 2)")
  if (sigma is None) != (interpolation == "bilinear"):
    raise ValueError(
      f"interpolation={interpolation!r} takes "
      + ("no sigma" if interpolation == "bilinear" else "sigma (K, I, O, 2)")
    )
  w = jnp.asarray(weights)
  w = w.astype(_validation.floating(w.dtype))
  p = jnp.asarray(positions, w.dtype)
  s: list[jax.Array | None] = [None, None]
  if sigma is not None:
    _validation.require_shape("sigma", sigma, (k, cin, cout, 2), "(K, I, O, 2)")
    sig = jnp.asarray(sigma, w.dtype)
    s = [sig[..., 0], sig[..., 1]]
  tx = dcls_tents(p[..., 0], ew, interpolation, s[0])  # (ew, K, I, O) columns
  ty = dcls_tents(p[..., 1], eh, interpolation, s[1])  # (eh, K, I, O) rows
  norm = ty.sum(0) * tx.sum(0) + np.asarray(NORM_EPS, w.dtype)
  # HIGHEST: exact in the dtype on every backend, value and gradient (DEFAULT is TF32 on a GPU)
  return jnp.einsum("rkio,ckio,kio->rcio", ty, tx, w / norm, precision=jax.lax.Precision.HIGHEST)


def dcls_lattice(size: int) -> np.ndarray:
  """The size x size lattice as (dx, dy) offsets, row-major (dy outer): where convert puts a
  kxk kernel's taps, element k = row * size + col. Host constants (NumPy)."""
  if not _validation.is_int(size) or size < 1:
    raise ValueError(f"size must be a positive int, got {size!r}")
  cells = np.arange(size, dtype=np.float32) - size // 2
  dy, dx = np.meshgrid(cells, cells, indexing="ij")
  return np.stack([dx.ravel(), dy.ravel()], axis=-1)
