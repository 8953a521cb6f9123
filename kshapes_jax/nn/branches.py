"""What the multi-branch kinds (ACB, DBB, RepVGG) share: their branches trained as one conv, and
the online form's branch scales.

Offline, a block trains a BN per branch (the papers). ACB's kxk-shaped branches run as ONE
conv to (branches x O) maps and ONE BN pass over them (`stacked_branches`): the same outputs,
gradients and running statistics as a conv and a BN per branch, in fewer, larger ops. (RepVGG
and DBB run their branches apart: a 1x1 padded to kxk would cost k^2 times its own conv.)

Online (Hu et al., OREPA), each branch BN becomes a learned per-channel scale (`branch_scales`),
the scaled branch kernels are summed into one kernel every step, and the block runs one conv
and one BN: a plain conv's cost in training, and the same deploy (transform I on the sum).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kshapes_jax.conv import Padding
from kshapes_jax.kernels import scale_output
from kshapes_jax.nn.base import ConvLayer
from kshapes_jax.nn.batchnorm import stacked_batch_norm
from kshapes_jax.nn.variables import BranchScale


def stacked_branches(
  layer: ConvLayer,
  x: jax.Array,
  kernels: Sequence[jax.Array],
  bns: Sequence[nnx.BatchNorm],
  padding: Padding,
) -> jax.Array:
  """sum_b bns[b](conv(x, kernels[b])) as one conv and one BN pass (training mode).

  Args:
    layer: the block, whose stride, groups, dilation and numerics the conv takes.
    x: the input, NHWC.
    kernels: the branches' kernels, each (k, k, I, O) (a smaller branch zero-padded to kxk:
      transform VI, the same sums).
    bns: each branch's BN, in training mode.
    padding: the kxk conv's padding.
  """
  o = kernels[0].shape[-1]
  z = layer.conv(x, by_group(list(kernels), layer.groups), padding=padding)
  z = stacked_batch_norm(by_branch(z, len(kernels), layer.groups), list(bns))
  return functools.reduce(operator.add, (z[..., i * o : (i + 1) * o] for i in range(len(kernels))))


def by_group(kernels: list[jax.Array], groups: int) -> jax.Array:
  """The branch kernels stacked on the output axis so that a grouped conv gives each group all
  branches.

  A conv with feature groups splits its outputs into `groups` consecutive blocks, block g reading
  input group g: the stack is ordered (group, branch, map of the group)."""
  *rest, o = kernels[0].shape
  stacked = jnp.stack([k.reshape(*rest, groups, o // groups) for k in kernels], axis=-2)
  return stacked.reshape(*rest, len(kernels) * o)


def by_branch(z: jax.Array, branches: int, groups: int) -> jax.Array:
  """The stacked conv's maps from (group, branch, map) order to (branch, group, map):
  branch-major."""
  *rest, n = z.shape
  z = z.reshape(*rest, groups, branches, n // (groups * branches))
  return jnp.swapaxes(z, -3, -2).reshape(*rest, n)


def branch_scales(out_features: int, *values: float) -> BranchScale:
  """The online form's learned scales: one (O,) row per branch, row b starting at values[b]."""
  rows = jnp.asarray(values, jnp.float32)[:, None]
  return BranchScale(jnp.broadcast_to(rows, (len(values), out_features)))


# how an online branch's scaled kernel becomes kxk (None: it is kxk already)
Place = Callable[[jax.Array], jax.Array] | None


def scaled_sum(
  kernels: Sequence[jax.Array], scales: jax.Array, place: Sequence[Place] | None = None
) -> jax.Array:
  """sum_b place[b](kernels[b] * scales[b]) per output channel: the online block's one kernel
  (OREPA eq. 5, then transform II).

  `place[b]`, where given, turns branch b's scaled kernel into a kxk one (a zero padding,
  transform VI; a spread, `fuse_1x1_avg`). It is linear and per output channel, so placing after
  the scale is the same kernel, and the step keeps no kxk copy of a small kernel for its scale's
  gradient (placing first, the compiled ResNet-18 DBB step held 25% more memory).
  """
  place = place if place is not None else [None] * len(kernels)
  if len(place) != len(kernels):
    raise ValueError(f"scaled_sum got {len(kernels)} kernels and {len(place)} placements")
  parts = []
  for b, (kernel, put) in enumerate(zip(kernels, place)):
    part = scale_output(kernel, scales[b].astype(kernel.dtype))
    parts.append(part if put is None else put(part))
  return functools.reduce(operator.add, parts)
