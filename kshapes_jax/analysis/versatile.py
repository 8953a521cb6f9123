"""Versatile filters: cost per layer (Wang et al., Tables 2-4, Proposition 1) and the filters of
Fig. 3."""

from __future__ import annotations

import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from kshapes_jax.kernels.versatile import spatial_versatile_kernel
from kshapes_jax.models.accounting import model_cost


def cost_table(model: nnx.Module, input_shape: tuple[int, int, int]) -> list[dict]:
  """Weights, memory (32-bit floats) and multiplications of every layer, then a total row.

  Multiplications follow Proposition 1 for versatile layers (secondary filter
  i costs (d - 2i + 2)^2 c H' W' per map) and are dense otherwise; biases and
  BN are not weights, as in the paper's tables.

  Returns:
    Dicts with keys layer, weights, memory_kb, multiplications; the last has
    layer "total".
  """
  cost = model_cost(model, input_shape)
  rows = [
    dict(
      layer=f"{i}: {c.name}",
      weights=c.weights,
      memory_kb=4 * c.weights / 1024,
      multiplications=c.multiplications,
    )
    for i, c in enumerate(cost.layers)
  ]
  rows.append(
    dict(
      layer="total",
      weights=cost.weights,
      memory_kb=cost.memory_bytes / 1024,
      multiplications=cost.multiplications,
    )
  )
  return rows


def secondary_filters(f: ArrayLike) -> np.ndarray:
  """The s nested secondary filters M_i o f of primary filters f (eq. 2): (d, d, I, O) -> (s, d, d,
  I, O)."""
  f = np.asarray(f)
  if f.ndim != 4 or f.shape[0] != f.shape[1]:
    raise ValueError(f"f must be square primary filters (d, d, I, O), got shape {f.shape}")
  stacked = np.asarray(spatial_versatile_kernel(f))  # (d, d, I, s * O), secondary filter major
  return np.moveaxis(stacked.reshape(*f.shape[:3], -1, f.shape[3]), 3, 0)


def filter_mosaic(kernel: ArrayLike, columns: int = 10, pad: int = 1) -> np.ndarray:
  """Tiles the (d, d) filters of one input channel into a 2-D image, as in Fig. 3.

  Args:
    kernel: (d, d, O) or (d, d, 1, O) filters.
    columns: filters per row of the mosaic.
    pad: NaN pixels between filters (drawn blank).

  Returns:
    (rows * (d + pad) - pad, columns' * (d + pad) - pad) float array with
    filter o at tile (o // columns, o % columns); unused tiles are NaN.
  """
  k = np.asarray(kernel, np.float64)
  if k.ndim == 4 and k.shape[2] == 1:
    k = k[:, :, 0]
  if k.ndim != 3:
    raise ValueError(f"kernel must be (d, d, O) or (d, d, 1, O), got shape {np.shape(kernel)}")
  if columns < 1 or pad < 0:
    raise ValueError(f"columns must be >= 1 and pad >= 0, got {columns}, {pad}")
  h, w, n = k.shape
  cols = min(columns, n)
  rows = -(-n // cols)
  out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), np.nan)
  for o in range(n):
    r, c = divmod(o, cols)
    out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = k[:, :, o]
  return out
