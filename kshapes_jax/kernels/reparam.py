"""Structural re-parameterization: the six transforms that fold a multi-branch block into one conv.

A block of linear branches (convs, average pooling, identity), each followed by a BN, is one
kxk conv with a bias once its BNs use running statistics. The Diverse Branch Block paper lists
six transforms that prove it; every multi-branch kind here (ACB, DBB, RepVGG) fuses with them,
in training (the online form) and at deploy:

  I    `fuse_bn`           a conv then a BN is one conv with a bias
  II   `add_branches`      parallel convs of one geometry, summed, are one conv
  III  `fuse_1x1_kxk`      a 1x1 conv, its bias, then a kxk conv is one kxk conv (per group)
  IV   `concat_depth`      convs concatenated on the output axis are one conv
  V    `avg_pool_kernel`   kxk average pooling is a kxk conv
  VI   `pad_kernel`        a smaller kernel, zero-padded (centred), is a larger one

plus `identity_kernel`, the identity map as a conv (RepVGG's identity branch, DBB's
identity-based 1x1). Kernels are HWIO; I is the input channels per group. Every contraction
runs at HIGHEST precision, so a fused kernel is exact in its dtype on every backend.

References:
  Ding, Zhang, Han and Ding, "Diverse Branch Block: Building a Convolution as an
  Inception-like Unit", CVPR 2021, section 3.2 (Transforms I-VI).
  Ding, Zhang, Ma, Han, Ding and Sun, "RepVGG: Making VGG-style ConvNets Great Again",
  CVPR 2021, section 3.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from kshapes_jax import _validation

_HIGHEST = jax.lax.Precision.HIGHEST


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
  """Transform I: folds an eval-mode batch normalisation into the conv kernel before it.

  BN(conv(x, K)) = conv(x, K * gamma / sigma) + (beta - mu * gamma / sigma)
  with sigma = sqrt(var + eps) (DBB eq. 2-3; ACNet eq. 6-7 per branch).

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


def add_branches(
  kernels: Sequence[ArrayLike], biases: Sequence[ArrayLike | None] | None = None
) -> tuple[jax.Array, jax.Array | None]:
  """Transform II: parallel convs of one geometry, their outputs summed, are one conv.

  conv(x, K1) + b1 + conv(x, K2) + b2 = conv(x, K1 + K2) + (b1 + b2), by linearity.

  Args:
    kernels: one or more (H, W, I, O) kernels of equal shape (pad smaller ones first with
      `pad_kernel`).
    biases: their (O,) biases, None entries for none; None for no bias at all.

  Returns:
    (kernel, bias): the summed kernel, and the summed bias (None where no branch had one).

  Raises:
    ValueError: for no kernels, kernels of different shapes, or biases that do not match.
  """
  if len(kernels) == 0:
    raise ValueError("add_branches needs at least one kernel")
  shape = _validation.require_rank("kernels[0]", kernels[0], 4, "(H, W, I, O)")
  for i, kernel in enumerate(kernels[1:], 1):
    _validation.require_shape(
      f"kernels[{i}]", kernel, shape, "the shape of kernels[0] (pad smaller ones: pad_kernel)"
    )
  total = jnp.asarray(kernels[0])
  for kernel in kernels[1:]:
    total = total + jnp.asarray(kernel)
  given = [b for b in (biases or ()) if b is not None]
  if biases is not None and len(biases) != len(kernels):
    raise ValueError(f"add_branches got {len(kernels)} kernels and {len(biases)} biases")
  if not given:
    return total, None
  bias = jnp.zeros((shape[-1],), jnp.result_type(*given))
  for i, b in enumerate(given):
    _validation.require_shape(f"biases[{i}]", b, (shape[-1],), "(O,)")
    bias = bias + jnp.asarray(b)
  return total, bias


def fuse_1x1_kxk(
  first: ArrayLike,
  first_bias: ArrayLike | None,
  second: ArrayLike,
  second_bias: ArrayLike | None = None,
  *,
  groups: int = 1,
) -> tuple[jax.Array, jax.Array]:
  """Transform III: a 1x1 conv (+ bias), then a kxk conv (+ bias), as one kxk conv.

  With T the 1x1 conv's output channels, per group g (DBB eq. 8-10):

    K[h, w, i, o] = sum_t first[0, 0, i, t] second[h, w, t, o]
    b[o] = sum_{h, w, t} second[h, w, t, o] first_bias[t] + second_bias[o]

  where t runs over group g's T / groups channels and o over its outputs. The identity is
  exact only where the kxk conv pads its input with first_bias, the value of the first conv
  on zeros: DBB's BNAndPadLayer does, a zero padding does not.

  Args:
    first: (1, 1, I, T) kernel of the 1x1 conv; I is input channels per group.
    first_bias: (T,) its bias, or None.
    second: (k, k, T / groups, O) kernel of the kxk conv.
    second_bias: (O,) its bias, or None.
    groups: the groups of both convs.

  Returns:
    (kernel, bias): the (k, k, I, O) kernel and (O,) bias.

  Raises:
    ValueError: for shapes that do not chain or a groups that does not divide T and O.
  """
  _validation.positive_int("groups", groups)
  s1 = _validation.require_rank("first", first, 4, "(1, 1, I, T)")
  s2 = _validation.require_rank("second", second, 4, "(k, k, T / groups, O)")
  i, t = s1[2], s1[3]
  out = s2[3]
  if s1[:2] != (1, 1) or t % groups or out % groups or s2[2] * groups != t:
    raise ValueError(
      f"fuse_1x1_kxk: first must be (1, 1, I, T) and second (k, k, T / groups, O) with groups "
      f"= {groups} dividing T and O, got {s1} and {s2}"
    )
  tg, og = t // groups, out // groups
  a = jnp.asarray(first)[0, 0].reshape(i, groups, tg)  # [i, g, t]
  b = jnp.asarray(second).reshape(*s2[:2], tg, groups, og)  # [h, w, t, g, o]
  kernel = jnp.einsum("igt,hwtgo->hwigo", a, b, precision=_HIGHEST).reshape(*s2[:2], i, out)
  bias = jnp.zeros((out,), kernel.dtype)
  if first_bias is not None:
    _validation.require_shape("first_bias", first_bias, (t,), "(T,)")
    fb = jnp.asarray(first_bias).reshape(groups, tg)
    bias = jnp.einsum("gt,hwtgo->go", fb, b, precision=_HIGHEST).reshape(out)
  if second_bias is not None:
    _validation.require_shape("second_bias", second_bias, (out,), "(O,)")
    bias = bias + jnp.asarray(second_bias)
  return kernel, bias


def fuse_1x1_avg(first: ArrayLike, kernel_size: int) -> jax.Array:
  """Transforms III and V at once: a 1x1 conv, then kxk average pooling (every tap counted), as
  one kxk conv of the 1x1's groups.

  The pooling kernel is diagonal (`avg_pool_kernel`), so transform III's sum over t has one
  term: K[h, w, i, o] = first[0, 0, i, o] / k^2 at every tap, the value
  `fuse_1x1_kxk(first, None, avg_pool_kernel(O, k, groups), groups=groups)` gives for any
  groups, at O(k^2 I O) instead of O(k^2 I O^2 / groups): DBB online builds it every step.

  Args:
    first: (1, 1, I, O) kernel of the 1x1 conv; I is input channels per group.
    kernel_size: k, the pooling's window.

  Returns:
    The (k, k, I, O) kernel.

  Raises:
    ValueError: for a first kernel that is not 1x1 or a kernel_size that is not positive.
  """
  _validation.positive_int("kernel_size", kernel_size)
  shape = _validation.require_rank("first", first, 4, "(1, 1, I, O)")
  if shape[:2] != (1, 1):
    raise ValueError(f"fuse_1x1_avg: first must be a (1, 1, I, O) kernel, got {shape}")
  first = jnp.asarray(first)
  k = kernel_size
  tap = jnp.asarray(1.0 / k**2, first.dtype)  # avg_pool_kernel's value, in the same dtype
  return jnp.broadcast_to(first * tap, (k, k, *shape[2:]))


def concat_depth(
  kernels: Sequence[ArrayLike], biases: Sequence[ArrayLike] | None = None
) -> tuple[jax.Array, jax.Array | None]:
  """Transform IV: convs of one geometry concatenated on the output axis are one conv.

  Args:
    kernels: (H, W, I, O_j) kernels that differ only in O_j.
    biases: their (O_j,) biases, or None.

  Returns:
    (kernel, bias): (H, W, I, sum O_j) and (sum O_j,) (None without biases).

  Raises:
    ValueError: for no kernels or kernels whose (H, W, I) differ.
  """
  if len(kernels) == 0:
    raise ValueError("concat_depth needs at least one kernel")
  shape = _validation.require_rank("kernels[0]", kernels[0], 4, "(H, W, I, O)")
  for i, kernel in enumerate(kernels):
    _validation.require_shape(f"kernels[{i}]", kernel, (*shape[:3], None), "(H, W, I, O_j)")
  kernel = jnp.concatenate([jnp.asarray(k) for k in kernels], axis=-1)
  if biases is None:
    return kernel, None
  if len(biases) != len(kernels):
    raise ValueError(f"concat_depth got {len(kernels)} kernels and {len(biases)} biases")
  for i, (b, k) in enumerate(zip(biases, kernels)):
    _validation.require_shape(f"biases[{i}]", b, (np.shape(k)[-1],), "(O_j,)")
  return kernel, jnp.concatenate([jnp.asarray(b) for b in biases])


def avg_pool_kernel(
  channels: int, kernel_size: int, groups: int = 1, dtype: DTypeLike = jnp.float32
) -> jax.Array:
  """Transform V: kxk average pooling (every tap counted) as a kxk conv of `groups` groups.

  Output channel c reads its own channel of the input with weight 1 / k^2 at every tap
  (channel c mod channels / groups of its group), so conv(x, K, groups=groups) with the
  pooling's stride and zero padding equals AvgPool(k, count_include_pad=True) channel by
  channel.

  Args:
    channels: input = output channels.
    kernel_size: k.
    groups: the conv's groups (dividing channels).
    dtype: the kernel's dtype.

  Returns:
    (k, k, channels / groups, channels).

  Raises:
    ValueError: for sizes that are not positive or groups that do not divide channels.
  """
  return identity_kernel(channels, groups, kernel_size, dtype, spread=True)


def identity_kernel(
  channels: int,
  groups: int = 1,
  kernel_size: int = 1,
  dtype: DTypeLike = jnp.float32,
  *,
  spread: bool = False,
) -> jax.Array:
  """The identity map as a kxk conv of `groups` groups: 1 at the centre tap from channel c to c.

  Args:
    channels: input = output channels.
    groups: the conv's groups (dividing channels).
    kernel_size: k (odd, for a centre tap).
    dtype: the kernel's dtype.
    spread: 1 / k^2 at every tap instead of 1 at the centre (`avg_pool_kernel`).

  Returns:
    (k, k, channels / groups, channels).

  Raises:
    ValueError: for sizes that are not positive, an even k, or groups not dividing channels.
  """
  _validation.positive_int("channels", channels)
  _validation.positive_int("groups", groups)
  _validation.positive_int("kernel_size", kernel_size)
  if channels % groups:
    raise ValueError(f"groups={groups} must divide channels={channels}")
  if not spread and kernel_size % 2 == 0:
    raise ValueError(f"an identity kernel needs an odd kernel_size (a centre), got {kernel_size}")
  per_group = channels // groups
  k = kernel_size
  onehot = np.zeros((per_group, channels), np.float64)
  onehot[np.arange(channels) % per_group, np.arange(channels)] = 1.0
  taps = np.full((k, k), 1.0 / k**2) if spread else np.eye(1, k * k, k * k // 2).reshape(k, k)
  return jnp.asarray(taps[:, :, None, None] * onehot, dtype)


def pad_kernel(
  kernel: ArrayLike, size: int | tuple[int, int], *, offset: tuple[int, int] | None = None
) -> jax.Array:
  """Transform VI: a (h, w) kernel zero-padded into a larger (H, W) one.

  Centred (`offset` None) a conv with the smaller kernel and padding p equals a conv with
  the padded one and padding p + (H - h) / 2: the same taps, read through zeros (DBB's
  multi-scale branches; RepVGG's 1x1). With `offset`, the kernel's top-left tap goes to
  (row, col): ACNet's asymmetric kernels on the border.

  Args:
    kernel: (h, w, I, O).
    size: H = W, or (H, W), each >= the kernel's.
    offset: (row, col) of the kernel's top-left tap; centred by default, where H - h and
      W - w must then be even.

  Returns:
    (H, W, I, O).

  Raises:
    ValueError: for a kernel that does not fit at that place, or no centre.
  """
  shape = _validation.require_rank("kernel", kernel, 4, "(h, w, I, O)")
  if _validation.is_int(size):
    big: tuple = (size, size)
  elif isinstance(size, (tuple, list)):
    big = tuple(size)
  else:
    big = ()
  if len(big) != 2 or not all(_validation.is_int(v) and v >= 1 for v in big):
    raise ValueError(f"size must be a positive int or a pair of them, got {size!r}")
  if offset is None:
    if (big[0] - shape[0]) % 2 or (big[1] - shape[1]) % 2:
      raise ValueError(
        f"a {shape[0]}x{shape[1]} kernel has no centre in a {big[0]}x{big[1]} one: give offset="
      )
    offset = ((big[0] - shape[0]) // 2, (big[1] - shape[1]) // 2)
  row, col = offset
  if not (0 <= row and row + shape[0] <= big[0] and 0 <= col and col + shape[1] <= big[1]):
    raise ValueError(
      f"a {shape[0]}x{shape[1]} kernel at offset {offset} does not fit in {big[0]}x{big[1]}"
    )
  pads = ((row, big[0] - row - shape[0]), (col, big[1] - col - shape[1]), (0, 0), (0, 0))
  return jnp.pad(jnp.asarray(kernel), pads)


def scale_output(kernel: ArrayLike, scale: ArrayLike) -> jax.Array:
  """A kernel with each output channel multiplied by its scale: the online form's branch scale
  (OREPA eq. 5; transform I with a BN of scale `scale`, mean 0, var 1 - eps and shift 0).

  Args:
    kernel: (H, W, I, O).
    scale: (O,).

  Raises:
    ValueError: for a scale that is not (O,).
  """
  shape = _validation.require_rank("kernel", kernel, 4, "(H, W, I, O)")
  _validation.require_shape("scale", scale, (shape[-1],), "(O,) with O the kernel's outputs")
  return jnp.asarray(kernel) * jnp.asarray(scale)
