"""RotateConv kernel angles (Ma et al., section IV-D and Fig. 5).

Angles are axial: a line segment at theta is the same line at theta + 180,
so every function here works on theta mod 180.
"""

from __future__ import annotations

import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from kshapes_jax import kernels
from kshapes_jax.nn.rotate import RotateConv


def _angles_2d(angles: ArrayLike) -> np.ndarray:
  a = np.asarray(angles, np.float64)
  if a.ndim != 2:
    raise ValueError(
      f"angles must be (I, O) degrees (one per input x output channel), got shape {a.shape}"
    )
  return a


def wrap_angles(angles: ArrayLike) -> np.ndarray:
  """Angles in degrees taken modulo 180, in [0, 180) (the kernel's theta mod 180, eq. 3), in
  float64."""
  return np.asarray(kernels.wrap_angles(np.asarray(angles, np.float64)))


def axial_difference(a: ArrayLike, b: ArrayLike) -> np.ndarray:
  """The angle between lines at a and b degrees, in [0, 90] (lines have no sign: 170 vs 10 is
  20)."""
  d = wrap_angles(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return np.minimum(d, 180.0 - d)


def angles_along_inputs(angles: ArrayLike, output_channel: int = 0) -> np.ndarray:
  """Fig. 5(a): the I angles {theta_(o, j)} one output channel applies to its inputs, mod 180.

  Args:
    angles: (I, O) angles of a RotateConv layer, degrees.
    output_channel: o (0-based; the paper shows the first).

  Returns:
    (I,) angles in [0, 180).
  """
  a = _angles_2d(angles)
  if not 0 <= output_channel < a.shape[1]:
    raise ValueError(f"output_channel must be in [0, {a.shape[1]}), got {output_channel}")
  return wrap_angles(a[:, output_channel])


def angles_along_outputs(angles: ArrayLike, input_channel: int = 0) -> np.ndarray:
  """Fig. 5(b): the O angles {theta_(i, 1)} with which the outputs read one input channel, mod
  180."""
  a = _angles_2d(angles)
  if not 0 <= input_channel < a.shape[0]:
    raise ValueError(f"input_channel must be in [0, {a.shape[0]}), got {input_channel}")
  return wrap_angles(a[input_channel, :])


def angle_histogram(angles: ArrayLike, bins: int = 36) -> tuple[np.ndarray, np.ndarray]:
  """Counts of the angles (mod 180) in `bins` equal bins over [0, 180).

  Returns:
    (counts (bins,), edges (bins + 1,)); counts sum to angles.size.
  """
  if bins < 1:
    raise ValueError(f"bins must be >= 1, got {bins}")
  counts, edges = np.histogram(wrap_angles(angles).ravel(), bins=bins, range=(0.0, 180.0))
  return counts, edges


def axial_concentration(angles: ArrayLike) -> float:
  """How aligned a set of lines is: |mean(exp(2i theta))| in [0, 1].

  1 when every angle is the same line; 0 for lines spread evenly (e.g. 0,
  45, 90, 135). Doubling the angle makes theta and theta + 180 one
  direction (axial statistics).
  """
  theta = np.deg2rad(np.asarray(angles, np.float64).ravel())
  if theta.size == 0:
    raise ValueError("axial_concentration needs at least one angle")
  return float(np.abs(np.mean(np.exp(2j * theta))))


def rotate_layers(model: nnx.Module) -> list[tuple[str, np.ndarray]]:
  """(path, (I, O) angles in degrees) of every RotateConv in `model`, in order."""
  return [
    ("/".join(map(str, path)), np.asarray(m.angles[...]))
    for path, m in nnx.iter_modules(model)
    if isinstance(m, RotateConv)
  ]
