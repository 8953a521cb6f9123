"""Active Convolution Unit: learned synapse positions and their movement (Jeon and Kim, Fig. 5, 6,
9).

Positions are (dx, dy) = (alpha, beta) in pixels (x to the right, y down),
synapse 0 at the origin; a layer's learned parameter holds synapses 1..K-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from kshapes_jax import kernels
from kshapes_jax.nn.active import ActiveConv


def with_origin(positions: ArrayLike) -> np.ndarray:
  """The learned (..., K - 1, 2) positions with synapse 0 = (0, 0) put first, in float64: (..., K,
  2)."""
  return np.asarray(kernels.with_origin(np.asarray(positions, np.float64)))


def trajectories(snapshots: Sequence[ArrayLike]) -> np.ndarray:
  """Stacks one layer's positions over saved checkpoints: T x (K, 2) -> (T, K, 2).

  Raises:
    ValueError: for no snapshots or snapshots of different shapes.
  """
  if not snapshots:
    raise ValueError("trajectories needs at least one snapshot")
  arrays = [np.asarray(s, np.float64) for s in snapshots]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise ValueError(f"all snapshots must have one shape, got {sorted(shapes)}")
  return np.stack(arrays)


def displacement(trajectory: ArrayLike) -> np.ndarray:
  """Euclidean distance of every synapse from where it started: (T, K, 2) -> (T, K)."""
  t = np.asarray(trajectory, np.float64)
  if t.ndim < 3 or t.shape[-1] != 2:
    raise ValueError(f"trajectory must be (T, ..., K, 2), got shape {t.shape}")
  return np.linalg.norm(t - t[:1], axis=-1)


def extent(positions: ArrayLike) -> float:
  """Chebyshev radius max(|alpha|, |beta|) over the synapses: 1 for the 3x3 lattice."""
  p = np.asarray(positions, np.float64)
  if p.ndim < 2 or p.shape[-1] != 2:
    raise ValueError(f"positions must be (..., K, 2), got shape {p.shape}")
  return float(np.max(np.abs(p))) if p.size else 0.0


def active_layers(model: nnx.Module) -> list[tuple[str, np.ndarray]]:
  """(path, (K, 2) or (G, K, 2) positions with the origin) of every ActiveConv in `model`."""
  return [
    ("/".join(map(str, path)), with_origin(m.positions[...]))
    for path, m in nnx.iter_modules(model)
    if isinstance(m, ActiveConv)
  ]
