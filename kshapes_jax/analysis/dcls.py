"""DCLS: where the learned element positions went, per layer (Khalfaoui-Hassani et al., the
kernel figures of the ICLR paper), as numbers and a density over the window.

Positions are (dx, dy) in pixels from the window's centre (x to the right, y down); a layer's
`bound` is its window's half-size, where the optimizer clamps them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from flax import nnx

from kshapes_jax.nn.dcls import DclsConv


class DclsLayer(NamedTuple):
  """One DCLS layer's learned positions, (K * I * O, 2) in float64, and its window."""

  name: str
  positions: np.ndarray
  extent: int
  sigmas: np.ndarray | None  # the Gaussian's acting standard deviations, (K * I * O, 2)


def dcls_layers(model: nnx.Module) -> list[DclsLayer]:
  """Every DclsConv of `model`, in module order (a shared position set under each layer that
  uses it)."""
  out = []
  for path, m in nnx.iter_modules(model):
    if isinstance(m, DclsConv):
      sigmas = m.acting_sigmas()
      out.append(
        DclsLayer(
          "/".join(map(str, path)),
          np.asarray(m.positions[...], np.float64).reshape(-1, 2),
          m.extent,
          None if sigmas is None else np.asarray(sigmas, np.float64).reshape(-1, 2),
        )
      )
  return out


def spread(positions: np.ndarray) -> float:
  """Mean Euclidean distance of the elements from the window's centre (px)."""
  p = np.asarray(positions, np.float64).reshape(-1, 2)
  return float(np.linalg.norm(p, axis=-1).mean()) if p.size else 0.0


def at_bound(positions: np.ndarray, extent: int) -> float:
  """The share of coordinates on the window's edge, where the clamp holds them."""
  p = np.abs(np.asarray(positions, np.float64))
  return float(np.mean(p >= extent // 2 - 1e-6)) if p.size else 0.0


def density(positions: np.ndarray, extent: int) -> np.ndarray:
  """How many elements lie nearest to each cell of the window: (extent, extent) counts, rows y."""
  p = np.asarray(positions, np.float64).reshape(-1, 2)
  cells = np.clip(np.round(p).astype(int) + extent // 2, 0, extent - 1)
  counts = np.zeros((extent, extent))
  np.add.at(counts, (cells[:, 1], cells[:, 0]), 1)
  return counts
