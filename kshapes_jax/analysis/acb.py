"""ACNet's analyses (Ding et al., section 4.3-4.4): kernel skeletons, magnitude matrix, pruning,
distorted inputs.

They read the DEPLOYED network (`kshapes_jax.deploy`), where every ACB is one
kxk conv with its BNs folded in, as the paper does.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from kshapes_jax.nn.base import PlainConv

REGIONS = ("corners", "skeleton", "global")
DISTORTIONS = ("original", "rotate90", "rotate180", "flip_ud")


def skeleton_mask(k: int) -> np.ndarray:
  """(k, k) bool: the central row and column (the "skeleton" an ACB adds its 1xk and kx1 kernels
  to)."""
  if not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
    raise ValueError(f"k must be an odd positive kernel size, got {k!r}")
  mask = np.zeros((k, k), bool)
  mask[k // 2, :] = mask[:, k // 2] = True
  return mask


def region_mask(k: int, region: str) -> np.ndarray:
  """(k, k) bool of a pruning region: "skeleton", "corners" (every other position) or "global"."""
  if region not in REGIONS:
    raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
  skeleton = skeleton_mask(k)
  return {"skeleton": skeleton, "corners": ~skeleton, "global": np.ones_like(skeleton)}[region]


def _square(kernel: ArrayLike) -> np.ndarray:
  k = np.asarray(kernel)
  if k.ndim != 4 or k.shape[0] != k.shape[1]:
    raise ValueError(f"kernels must be square HWIO (k, k, I, O), got shape {k.shape}")
  return k


def magnitude_matrix(kernels: Sequence[ArrayLike]) -> np.ndarray:
  """The average kernel magnitude matrix A of eq. 9-10.

  S_i = sum over filters j and input channels k of |F^(i, j)[:, :, k]| (eq. 10);
  A = mean over the L layers of S_i / max(S_i) (eq. 9). A is 1 where every
  layer has its largest total magnitude.

  Args:
    kernels: the L (k, k, I, O) kernels of the deployed kxk layers.

  Returns:
    (k, k) float64 matrix with entries in [0, 1].

  Raises:
    ValueError: for no kernels, kernels that are not square HWIO, mixed
      sizes, or an all-zero kernel (its normalisation is undefined).
  """
  if not kernels:
    raise ValueError("magnitude_matrix needs at least one kernel")
  arrays = [_square(k).astype(np.float64) for k in kernels]
  sizes = {a.shape[0] for a in arrays}
  if len(sizes) != 1:
    raise ValueError(f"all kernels must have one spatial size, got {sorted(sizes)}")
  total = np.zeros((arrays[0].shape[0],) * 2)
  for a in arrays:
    s = np.abs(a).sum(axis=(2, 3))
    if s.max() == 0:
      raise ValueError("a kernel is all zeros; its magnitude cannot be normalised")
    total += s / s.max()
  return total / len(arrays)


def pruning_mask(shape: Sequence[int], sparsity: float, region: str, seed: int) -> np.ndarray:
  """A keep-mask zeroing exactly round(sparsity * size) weights, drawn uniformly from a region (Fig.
  5).

  Args:
    shape: the (k, k, I, O) kernel shape.
    sparsity: fraction of ALL the layer's weights to zero (the paper's
      "global sparsity ratio of every layer").
    region: where the zeros may fall: "corners", "skeleton" or "global".
    seed: NumPy seed of the draw.

  Returns:
    bool array of `shape`, False at the pruned weights.

  Raises:
    ValueError: if the region cannot hold that many zeros (corners of a 3x3
      hold at most 4/9 of the weights, its skeleton 5/9).
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != 4 or shape[0] != shape[1]:
    raise ValueError(f"shape must be a square HWIO kernel shape (k, k, I, O), got {shape}")
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
  allowed = np.broadcast_to(region_mask(shape[0], region)[:, :, None, None], shape).ravel()
  candidates = np.flatnonzero(allowed)
  n = int(round(sparsity * np.prod(shape)))
  if n > candidates.size:
    raise ValueError(
      f"sparsity {sparsity} needs {n} zeros but the {region} of a {shape} kernel hold only "
      f"{candidates.size} ({candidates.size / np.prod(shape):.3f} of the weights)"
    )
  keep = np.ones(int(np.prod(shape)), bool)
  keep[np.random.default_rng(seed).choice(candidates, n, replace=False)] = False
  return keep.reshape(shape)


def square_convs(model: nnx.Module) -> list[tuple[str, PlainConv]]:
  """(path, layer) of every plain conv with a square kernel larger than 1x1 (a deployed model's kxk
  layers)."""
  out = []
  for path, m in nnx.iter_modules(model):
    if isinstance(m, PlainConv):
      shape = m.kernel[...].shape
      if shape[0] == shape[1] > 1:
        out.append(("/".join(map(str, path)), m))
  return out


def prune(model: nnx.Module, sparsity: float, region: str, seed: int) -> nnx.Module:
  """A copy of a deployed model with `sparsity` of every kxk layer's weights zeroed in `region`.

  Each layer draws its own mask (seed + layer index); the model is not changed.
  """
  copy = nnx.clone(model)
  convs = square_convs(copy)
  if not convs:
    raise ValueError(
      "the model has no kxk plain convs to prune; pass a deployed model (kshapes_jax.deploy)"
    )
  for i, (_, layer) in enumerate(convs):
    kernel = layer.kernel[...]
    mask = pruning_mask(kernel.shape, sparsity, region, seed + 1000 * i)
    layer.kernel.set_value(jnp.where(jnp.asarray(mask), kernel, 0))
  return copy


def distort(images: ArrayLike, kind: str) -> np.ndarray:
  """The distortions of Table 4 on NHWC images: "original", "rotate90" (counter-clockwise),
  "rotate180", "flip_ud"."""
  x = np.asarray(images)
  if x.ndim != 4:
    raise ValueError(f"images must be NHWC, got shape {x.shape}")
  if kind == "original":
    return x
  if kind in ("rotate90", "rotate180"):
    if kind == "rotate90" and x.shape[1] != x.shape[2]:
      raise ValueError(f"a 90-degree rotation needs square images, got {x.shape[1:3]}")
    return np.ascontiguousarray(np.rot90(x, k=1 if kind == "rotate90" else 2, axes=(1, 2)))
  if kind == "flip_ud":
    return np.ascontiguousarray(x[:, ::-1])
  raise ValueError(f"kind must be one of {DISTORTIONS}, got {kind!r}")
