"""DiverseBranchBlock: kxk, 1x1, 1x1-avg and 1x1-kxk branches, fused into one conv (Ding et al.
2021)."""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import conv as conv_lib
from kshapes_jax.conv import Padding
from kshapes_jax.kernels import (
  add_branches,
  avg_pool_kernel,
  fuse_1x1_avg,
  fuse_1x1_kxk,
  fuse_bn,
  identity_kernel,
  pad_kernel,
)
from kshapes_jax.nn.base import ConvLayer, check_layer, record, set_value, symmetric_padding
from kshapes_jax.nn.batchnorm import batch_norm, bn_params, set_affine
from kshapes_jax.nn.branches import Place, branch_scales, scaled_sum

# OREPA's initial branch scales for the branches it shares with DBB (its blocks.py)
ONLINE_SCALES = {"origin": 0.25, "one": 1.0, "avg": 0.25, "one_kxk": 0.5}


class DiverseBranchBlock(ConvLayer):
  """The Diverse Branch Block; replaces a kxk conv AND the BN after it.

  Branches, as the official `DiverseBranchBlock` (its attribute names in brackets):

  - kxk conv + BN (`origin`, `origin_bn`) [dbb_origin];
  - 1x1 conv + BN (`one`, `one_bn`) [dbb_1x1], where groups < out;
  - 1x1 conv + BN padded with the BN's own value on zeros (`avg_conv`, `avg_pad_bn`), then kxk
    average pooling + BN (`avg_bn`) [dbb_avg]; a depthwise block (groups = in = out) pools its
    input directly, zero-padded;
  - 1x1 conv + padding BN (`first`, `first_bn`), then kxk conv + BN (`second`, `second_bn`)
    [dbb_1x1_kxk]. With internal_channels = in, the 1x1 is "identity based": `first` holds the
    difference from the identity and starts at zero, as the official idconv1.

  The padding BNs (the official BNAndPadLayer) pad their output with beta - mu gamma / sigma
  from the running statistics (after this step's update, without gradient), the value the
  BN gives a zero input, so that transform III is exact. Ours updates the running variance
  with the biased batch variance (Flax), the official one with the unbiased: in training
  mode those pad values differ by the update's n / (n - 1), n the batch's pixels.

  In eval mode the block is `effective_kernel()`, one kxk conv with a bias (transforms I, II,
  III, V and VI). The official block asserts padding = k // 2 and is not dilation-aware; this
  one takes any padding p >= 0: the 1x1 branch reads the kxk conv's centre tap with padding
  p - k // 2 (cropping where negative), and the padding BNs pad p; only dilation is refused.

  It takes the arguments every kind takes (`make_conv`), and its own:

  Args:
    internal_channels: channels between the 1x1 and the kxk conv of the 1x1-kxk branch; by
      default in_features, 2 in_features for a depthwise block (the official default).
    online: train online (OREPA): learned per-channel branch scales (`scales`, rows origin /
      1x1 / avg / 1x1-kxk, starting at OREPA's 0.25 / 1 / 0.25 / 0.5) instead of every BN in
      the branches, the scaled branch kernels summed into one every step (transform III on
      the bias-free 1x1-kxk and 1x1-avg pairs), then ONE conv and ONE BN (`bn`).
  """

  padding: int
  int_padding = True
  normalizes = True
  preserves = "exact"

  @classmethod
  def takes_kernel_size(cls, kernel_size: int) -> bool:
    return kernel_size % 2 == 1

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    use_bias: bool = False,
    internal_channels: int | None = None,
    online: bool = False,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    name = "DiverseBranchBlock"
    check_layer(
      name, in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation
    )
    k = kernel_size
    if k % 2 == 0:
      raise ValueError(f"{name} needs an odd kernel size (its branches are centred), got {k}")
    if dilation != 1:
      raise ValueError(
        f"{name} takes dilation 1 only, its average and padding branches being on the undilated "
        f"kxk grid; got {dilation}"
      )
    self.padding = symmetric_padding(padding, k, int_only_for=name)
    self.depthwise = groups >= out_features
    if self.depthwise and not in_features == out_features == groups:
      raise ValueError(
        f"{name} with groups >= out_features pools its input in the average branch: it needs "
        f"in_features = out_features = groups, got {in_features}, {out_features}, {groups}"
      )
    if not isinstance(online, bool):
      raise ValueError(f"{name} online must be a bool, got {online!r}")
    if internal_channels is None:
      internal_channels = 2 * in_features if self.depthwise else in_features
    if (
      not isinstance(internal_channels, int)
      or isinstance(internal_channels, bool)
      or internal_channels < 1
      or internal_channels % groups
    ):
      raise ValueError(
        f"{name} internal_channels must be a positive int divisible by groups={groups}, got "
        f"{internal_channels!r}"
      )
    del use_bias  # the BNs supply the bias
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups, self.dilation = k, stride, groups, dilation
    self.internal_channels, self.online = internal_channels, online
    self.identity_based = internal_channels == in_features
    self.set_numerics(precision, dtype, param_dtype)
    cin, o, t = in_features // groups, out_features, internal_channels
    self.origin = self.init_weight(rngs, (k, k, cin, o), k * k * cin)
    self.one = None if self.depthwise else self.init_weight(rngs, (1, 1, cin, o), cin)
    self.avg_conv = None if self.depthwise else self.init_weight(rngs, (1, 1, cin, o), cin)
    if self.identity_based:  # the difference from the identity, zero at first (idconv1)
      self.first = nnx.Param(jnp.zeros((1, 1, cin, t), self.param_dtype))
    else:
      self.first = self.init_weight(rngs, (1, 1, cin, t), cin)
    self.second = self.init_weight(rngs, (k, k, t // groups, o), k * k * t // groups)
    norm: dict[str, Any] = {"dtype": dtype, "param_dtype": param_dtype}
    if online:
      present = [b for b in ONLINE_SCALES if not (self.depthwise and b == "one")]
      self.scales = branch_scales(o, *(ONLINE_SCALES[b] for b in present))
      self.bn = batch_norm(o, rngs, **norm)
      return
    self.origin_bn = batch_norm(o, rngs, **norm)
    self.one_bn = None if self.depthwise else batch_norm(o, rngs, **norm)
    self.avg_pad_bn = None if self.depthwise else batch_norm(o, rngs, **norm)
    self.avg_bn = batch_norm(o, rngs, **norm)
    self.first_bn = batch_norm(t, rngs, **norm)
    self.second_bn = batch_norm(o, rngs, **norm)

  # ---- pieces
  def _bns(self) -> list[nnx.BatchNorm]:
    if self.online:
      return [self.bn]
    names = ("origin_bn", "one_bn", "avg_pad_bn", "avg_bn", "first_bn", "second_bn")
    return [bn for bn in (getattr(self, n) for n in names) if bn is not None]

  def _one_padding(self) -> int:
    """The 1x1 branch's padding: its tap is the kxk conv's centre (transform VI)."""
    return self.padding - self.kernel_size // 2

  def _first(self) -> jax.Array:
    """The 1x1 kernel of the 1x1-kxk branch (the identity added where it is identity based)."""
    first = self.first[...]
    if self.identity_based:
      first = first + identity_kernel(self.in_features, self.groups, 1, first.dtype)
    return first

  def _avg_kernel(self) -> jax.Array:
    """Transform V: the kxk average pooling, over the out maps of the 1x1 (or the input)."""
    groups = self.groups if not self.depthwise else self.out_features
    return avg_pool_kernel(self.out_features, self.kernel_size, groups, self.origin[...].dtype)

  def _pointwise(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 1x1 conv of the block's groups (the first conv of a two-conv branch)."""
    return conv_lib.conv(
      x, kernel, padding=0, groups=self.groups, dtype=self.dtype, precision=self.precision
    )

  def _pool(self, x: jax.Array, padding: int) -> jax.Array:
    """kxk average pooling at the block's stride, every tap counted (AvgPool2d's default):
    transform V's op, pooled as it is (a window sum, not a depthwise conv: 6-10x faster on
    CPU, value and gradient)."""
    if self.dtype is not None:
      x = x.astype(self.dtype)
    k, s, p = self.kernel_size, self.stride, padding
    return nnx.avg_pool(x, (k, k), (s, s), ((p, p), (p, p)), count_include_pad=True)

  def _after(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The kxk conv of the 1x1-kxk branch over its already padded input."""
    return self.conv(x, kernel, padding=0)

  @staticmethod
  def _bn_and_pad(bn: nnx.BatchNorm, z: jax.Array, pad: int) -> jax.Array:
    """BNAndPadLayer: the BN, then `pad` pixels of the BN's value on zeros, read from its
    (just updated) running statistics and cut from the gradient, as the official layer's."""
    y = bn(z)
    if pad == 0:
      return y
    scale, bias, mean, var = bn_params(bn)
    value = lax.stop_gradient(bias - mean * scale * lax.rsqrt(var + bn.epsilon)).astype(y.dtype)
    return jnp.pad(y - value, ((0, 0), (pad, pad), (pad, pad), (0, 0))) + value

  # ---- forward
  def __call__(self, x: jax.Array) -> jax.Array:
    if all(bn.use_running_average for bn in self._bns()):  # eval: one fused conv
      return super().__call__(x)
    if self.online:
      y = self.bn(self.conv(x, self._online_kernel(), padding=self.padding))
    else:
      y = self.branched(x)
    record(self, x, y)
    return y

  def branched(self, x: jax.Array) -> jax.Array:
    """The block as the official code computes it, branch by branch, each BN in its mode (the
    reference of the fused conv); online, the scaled branches with zero padding, then the BN."""
    p = self.padding
    if self.online:
      return self.bn(functools.reduce(operator.add, self._online_branches(x)))
    out = self.origin_bn(self.conv(x, self.origin[...], padding=p))
    if self.one is not None and self.one_bn is not None:
      out = out + self.one_bn(self.conv(x, self.one[...], padding=self._one_padding()))
    if self.avg_conv is not None and self.avg_pad_bn is not None:
      z = self._bn_and_pad(self.avg_pad_bn, self._pointwise(x, self.avg_conv[...]), p)
      out = out + self.avg_bn(self._pool(z, 0))
    else:
      out = out + self.avg_bn(self._pool(x, p))
    z = self._bn_and_pad(self.first_bn, self._pointwise(x, self._first()), p)
    return out + self.second_bn(self._after(z, self.second[...]))

  def _online_branches(self, x: jax.Array) -> list[jax.Array]:
    p = self.padding
    scales = self.scales[...]
    outs = [self.conv(x, self.origin[...], padding=p)]
    if self.one is not None:
      outs.append(self.conv(x, self.one[...], padding=self._one_padding()))
    z = x if self.avg_conv is None else self._pointwise(x, self.avg_conv[...])
    outs.append(self._pool(z, p))
    z = jnp.pad(self._pointwise(x, self._first()), ((0, 0), (p, p), (p, p), (0, 0)))
    outs.append(self._after(z, self.second[...]))
    return [y * scales[b].astype(y.dtype) for b, y in enumerate(outs)]

  def trained_output(self, x: jax.Array) -> jax.Array:
    return self.branched(x)

  # ---- fusion
  def _online_kernel(self) -> jax.Array:
    """The branches' kernels without BNs, scaled and summed (transforms III, V, VI, II); the 1x1
    kernels scaled before they are padded or spread to kxk."""
    k = self.kernel_size
    kernels = [self.origin[...]]
    place: list[Place] = [None]
    if self.one is not None:
      kernels.append(self.one[...])
      place.append(functools.partial(pad_kernel, size=k))
    if self.avg_conv is not None:  # III + V: the 1x1 at every tap over k^2
      kernels.append(self.avg_conv[...])
      place.append(functools.partial(fuse_1x1_avg, kernel_size=k))
    else:
      kernels.append(self._avg_kernel())
      place.append(None)
    kernels.append(fuse_1x1_kxk(self._first(), None, self.second[...], groups=self.groups)[0])
    return scaled_sum(kernels, self.scales[...], place + [None])

  def effective_kernel(self):
    if self.online:
      return fuse_bn(self._online_kernel(), *bn_params(self.bn), eps=self.bn.epsilon)

    def fused(kernel: jax.Array, bn: nnx.BatchNorm) -> tuple[jax.Array, jax.Array]:
      return fuse_bn(kernel, *bn_params(bn), eps=bn.epsilon)  # transform I

    k, g = self.kernel_size, self.groups
    branches = [fused(self.origin[...], self.origin_bn)]
    if self.one is not None and self.one_bn is not None:
      kernel, bias = fused(self.one[...], self.one_bn)
      branches.append((pad_kernel(kernel, k), bias))  # VI
    avg = fused(self._avg_kernel(), self.avg_bn)  # V
    if self.avg_conv is not None and self.avg_pad_bn is not None:
      avg = fuse_1x1_kxk(*fused(self.avg_conv[...], self.avg_pad_bn), *avg, groups=g)  # III
    branches.append(avg)
    first = fused(self._first(), self.first_bn)
    branches.append(fuse_1x1_kxk(*first, *fused(self.second[...], self.second_bn), groups=g))
    kernel, bias = add_branches([b[0] for b in branches], [b[1] for b in branches])  # II
    assert bias is not None
    return kernel, bias

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """Origin = the kernel with an identity BN (scale sqrt(1 + eps) cancels a new BN's eps),
    the bias as its shift; every other branch's last scale zero: the block's eval function is
    the conv's."""
    set_value(self.origin, kernel)
    main = self.bn if self.online else self.origin_bn
    set_affine(main, (1 + main.epsilon) ** 0.5, bias)
    if self.online:
      set_value(self.scales, self.scales[...].at[0].set(1.0).at[1:].set(0.0))
      return
    for bn in (self.one_bn, self.avg_bn, self.second_bn):
      if bn is not None:
        set_affine(bn, 0.0)

  def weight_count(self) -> int:
    params = (self.origin, self.one, self.avg_conv, self.first, self.second)
    return sum(int(p[...].size) for p in params if p is not None)
