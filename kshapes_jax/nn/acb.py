"""ACBlock: kxk + 1xk + kx1 with BN per branch, fused into one conv (Ding et al. 2019)."""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from kshapes_jax import _validation
from kshapes_jax.kernels import BatchNormParams, acb_kernel, fuse_acb, fuse_bn
from kshapes_jax.nn.base import ConvLayer, check_layer, record, symmetric_padding

Asymmetric = Literal["both", "hor", "ver"]  # which asymmetric branches (Table 5 ablations)
BNMode = Literal["branch", "sum"]  # a BN per branch (the paper), or one after the sum
Impl = Literal["auto", "branches", "stacked"]  # how training mode computes the same block


def resolve_impl(impl: str) -> str:
  """The training-mode implementation "auto" stands for: "stacked" on every platform measured.

  Whole ResNet-56 train steps (results/bench-cpu.md, issue 17): on 2 CPU
  cores stacked costs 2.26x a plain net at batch 64 and 2.62x at batch 128,
  branches 2.95x and 2.94x (a second batch-64 run: 2.40x against 3.15x); on
  an H100 (issue 17, stacking patched in) 1.95x against 2.77x. On CPU a single stacked LAYER timed alone is slower
  (2.3-8.0x a conv + BN against 1.75-2.8x), so a user timing one layer may
  prefer "branches"; in a network the single BN pass and fewer ops win.

  Args:
    impl: "auto", "branches" or "stacked".

  Raises:
    ValueError: for an unknown impl.
  """
  if impl not in get_args(Impl):
    raise ValueError(f"impl must be 'auto', 'branches' or 'stacked', got {impl!r}")
  return "branches" if impl == "branches" else "stacked"


def batch_norm(features: int, rngs: nnx.Rngs, scale_init: float = 1.0, dtype=None,
               param_dtype=None) -> nnx.BatchNorm:
  """BN with PyTorch's defaults (momentum 0.1, eps 1e-5), the official codes' setting.

  `dtype` is the compute dtype of its output, as the conv layers' `dtype`;
  `param_dtype` that of its scale and bias (float32 by default; the running
  statistics stay float32).
  """
  bn = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=_validation.compute_dtype(dtype),
                     param_dtype=_validation.param_dtype(param_dtype), rngs=rngs)
  if scale_init != 1.0:
    bn.scale.set_value(jnp.full((features,), scale_init, bn.scale[...].dtype))  # see stacked_batch_norm
  return bn


def bn_params(bn: nnx.BatchNorm) -> BatchNormParams:
  return BatchNormParams(bn.scale[...], bn.bias[...], bn.mean[...], bn.var[...])


def stacked_batch_norm(z: jax.Array, bns: list[nnx.BatchNorm]) -> jax.Array:
  """Trains the BNs `bns` at once on `z`, their output maps stacked on the last axis.

  BN statistics are per channel, so one BN over the stacked maps is the
  BNs one per group: the same outputs, gradients and running statistics as
  calling each BN on its slice (flax's nnx.BatchNorm arithmetic, fast
  variance, statistics in at least float32), in one pass over `z`. The
  running statistics of each BN are updated in place, as its own call would.
  """
  first = bns[0]
  scale = jnp.concatenate([bn.scale[...] for bn in bns])
  bias = jnp.concatenate([bn.bias[...] for bn in bns])
  z, scale, bias = first.promote_dtype((z, scale, bias), dtype=first.dtype)
  stats_dtype = jnp.promote_types(first.dtype or jnp.result_type(z), jnp.float32)
  axes = tuple(range(z.ndim - 1))
  zs = jnp.asarray(z, stats_dtype)
  mean = zs.mean(axes)
  var = jnp.maximum(0.0, jnp.mean(zs * zs, axes) - mean * mean)
  start = 0
  for bn in bns:
    n = bn.num_features
    # set_value, not `[...] =`: under a trace that probes `.sharding`, whose error
    # message walks the whole trace (jax-ml/jax#40041), quadratic in the model's depth
    bn.mean.set_value(jax.lax.stop_gradient(bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean[start:start + n]))
    bn.var.set_value(jax.lax.stop_gradient(bn.momentum * bn.var[...] + (1 - bn.momentum) * var[start:start + n]))
    start += n
  mean, var = (jnp.asarray(a, jnp.result_type(z, a)) for a in (mean, var))
  mul = jax.lax.rsqrt(var + first.epsilon) * scale
  y = (z - mean) * mul + bias
  return jnp.asarray(y, first.dtype or jnp.result_type(z, scale, bias))


class ACBlock(ConvLayer):
  """Asymmetric Convolution Block; replaces a kxk conv AND the BN after it.

  In training mode it runs its branches (kxk, 1xk, kx1), each with its BN on
  batch statistics. In eval mode (every BN on running statistics) it runs
  the fused kernel of `effective_kernel()`: one kxk conv, the same outputs
  as the branches to float rounding, at the cost of a plain conv.

  Args (beyond the shared ones):
    asymmetric: "both", "hor" (horizontal only) or "ver" (vertical only).
    bn: "branch" (BN per branch, the paper) or "sum" (one BN after the sum).
    border: add the asymmetric kernels at the bottom row / right column
      instead of the skeleton (the paper's section 4.4).
    asym_scale_init: initial BN gamma of the asymmetric branches.
    impl: how training mode computes the block, all equal in value, gradient
      and running statistics: "branches" (a conv and a BN per branch),
      "stacked" (the 1xk and kx1 kernels zero-padded to kxk and stacked with
      the kxk one on the output axis: ONE conv to 3*O maps, ONE BN over them,
      then the sum of the three groups; with bn="sum", one conv with the
      summed kernel), or "auto" (`resolve_impl`: "stacked", the faster in
      whole networks on CPU and GPU). Parameters and checkpoints do not
      depend on it.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               stride: int = 1, padding=None, use_bias: bool = False, asymmetric: Asymmetric = "both",
               bn: BNMode = "branch", border: bool = False, asym_scale_init: float = 1.0,
               impl: Impl = "auto", groups: int = 1, dilation: int = 1, precision=None, dtype=None,
               param_dtype=None, rngs: nnx.Rngs):
    check_layer("ACBlock", in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation)
    if kernel_size % 2 == 0:
      raise ValueError(f"ACB needs an odd kernel size, got {kernel_size}")
    if asymmetric not in get_args(Asymmetric):
      raise ValueError(f"asymmetric must be 'both', 'hor' or 'ver', got {asymmetric!r}")
    if bn not in get_args(BNMode):
      raise ValueError(f"bn must be 'branch' or 'sum', got {bn!r}")
    resolve_impl(impl)  # checks it
    del use_bias  # the BN supplies the bias
    k = kernel_size
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups, self.dilation = k, stride, groups, dilation
    self.padding = symmetric_padding(padding, k, int_only_for="ACBlock", dilation=dilation)
    self.bn_mode, self.border, self.impl = bn, border, impl
    self.set_numerics(precision, dtype, param_dtype)
    self.line = k - 1 if border else k // 2  # row of hor / column of ver
    cin = in_features // groups
    fan = k * k * cin
    self.square = self.init_weight(rngs, (k, k, cin, out_features), fan)
    use_hor, use_ver = asymmetric in ("both", "hor"), asymmetric in ("both", "ver")
    self.hor = self.init_weight(rngs, (1, k, cin, out_features), fan) if use_hor else None
    self.ver = self.init_weight(rngs, (k, 1, cin, out_features), fan) if use_ver else None
    norm = {"dtype": dtype, "param_dtype": param_dtype}
    if bn == "branch":
      self.square_bn = batch_norm(out_features, rngs, **norm)
      self.hor_bn = batch_norm(out_features, rngs, asym_scale_init, **norm) if self.hor is not None else None
      self.ver_bn = batch_norm(out_features, rngs, asym_scale_init, **norm) if self.ver is not None else None
    else:
      self.sum_bn = batch_norm(out_features, rngs, **norm)

  def _branches(self):
    """(kernel, padding, bn-or-None) per branch; the official code's paddings (taps `dilation` apart)."""
    p, k, r, d = self.padding, self.kernel_size, self.line, self.dilation
    across = (p - d * r, p - d * (k - 1 - r))  # rows of hor / columns of ver
    out = [(self.square[...], ((p, p), (p, p)), getattr(self, "square_bn", None))]
    if self.hor is not None:
      out.append((self.hor[...], (across, (p, p)), getattr(self, "hor_bn", None)))
    if self.ver is not None:
      out.append((self.ver[...], ((p, p), across), getattr(self, "ver_bn", None)))
    return out

  def _bns(self) -> list[nnx.BatchNorm]:
    names = ("square_bn", "hor_bn", "ver_bn", "sum_bn")
    return [bn for bn in (getattr(self, name, None) for name in names) if bn is not None]

  def _asymmetric(self) -> tuple[jax.Array | None, jax.Array | None]:
    return (None if self.hor is None else self.hor[...]), (None if self.ver is None else self.ver[...])

  def _frozen(self) -> bool:
    """Every BN uses its running statistics (eval mode): the block is then one fused conv."""
    return all(bn.use_running_average for bn in self._bns())

  def __call__(self, x: jax.Array) -> jax.Array:
    if self._frozen():  # eq. 6-7: in eval mode the branches and BNs fold into one kxk conv
      return super().__call__(x)
    # stacked shares one BN pass, so a partly frozen block (a user's choice) runs its branches
    stacked = resolve_impl(self.impl) == "stacked" and not any(bn.use_running_average for bn in self._bns())
    y = self._stacked(x) if stacked else self._branched(x)
    record(self, x, y)
    return y

  def _branched(self, x: jax.Array) -> jax.Array:
    y = 0
    for kernel, padding, bn in self._branches():
      branch = self.conv(x, kernel, padding=padding)
      y = y + (bn(branch) if bn is not None else branch)
    return self.sum_bn(y) if self.bn_mode == "sum" else y

  def _summed_kernel(self) -> jax.Array:
    """eq. 6: the asymmetric kernels added onto the square one's skeleton (or border)."""
    hor, ver = self._asymmetric()
    return acb_kernel(self.square[...], hor, ver, hor_row=self.line, ver_col=self.line)

  def _stacked(self, x: jax.Array) -> jax.Array:
    """Training mode as one conv: the branch kernels zero-embedded in kxk (the same sums)."""
    if self.bn_mode == "sum":  # linear up to the BN: one conv with the summed kernel
      return self.sum_bn(self.conv(x, self._summed_kernel(), padding=self.padding))
    hor, ver = self._asymmetric()
    o = self.out_features
    kernels, bns = [self.square[...]], [self.square_bn]
    zero = jnp.zeros_like(self.square[...])
    if hor is not None:
      kernels.append(acb_kernel(zero, hor, None, hor_row=self.line))
      bns.append(self.hor_bn)
    if ver is not None:
      kernels.append(acb_kernel(zero, None, ver, ver_col=self.line))
      bns.append(self.ver_bn)
    z = self.conv(x, _by_group(kernels, self.groups), padding=self.padding)
    z = stacked_batch_norm(_by_branch(z, len(kernels), self.groups), bns)
    return sum(z[..., i * o:(i + 1) * o] for i in range(len(kernels)))

  def effective_kernel(self):
    if self.bn_mode == "sum":
      return fuse_bn(self._summed_kernel(), *bn_params(self.sum_bn), eps=self.sum_bn.epsilon)
    hor, ver = self._asymmetric()
    return fuse_acb(
        self.square[...], bn_params(self.square_bn),
        hor, None if hor is None else bn_params(self.hor_bn),
        ver, None if ver is None else bn_params(self.ver_bn),
        eps=self.square_bn.epsilon, hor_row=self.line, ver_col=self.line)

  def weight_count(self) -> int:
    return sum(int(v[...].size) for v in (self.square, self.hor, self.ver) if v is not None)

  def multiplications(self, out_shape) -> int:
    """Training-time cost: k^2 + 2k taps (the deployed conv costs k^2)."""
    k = self.kernel_size
    taps = k * k + k * ((self.hor is not None) + (self.ver is not None))
    return int(out_shape[1] * out_shape[2] * taps * self.in_features // self.groups * self.out_features)


def _by_group(kernels: list[jax.Array], groups: int) -> jax.Array:
  """The branch kernels stacked on the output axis so that a grouped conv gives each group all branches.

  A conv with feature groups splits its outputs into `groups` consecutive blocks, block g reading input
  group g: the stack is ordered (group, branch, map of the group).
  """
  *rest, o = kernels[0].shape
  stacked = jnp.stack([k.reshape(*rest, groups, o // groups) for k in kernels], axis=-2)
  return stacked.reshape(*rest, len(kernels) * o)


def _by_branch(z: jax.Array, branches: int, groups: int) -> jax.Array:
  """The stacked conv's maps from (group, branch, map) order to (branch, group, map): branch-major."""
  *rest, n = z.shape
  z = z.reshape(*rest, groups, branches, n // (groups * branches))
  return jnp.swapaxes(z, -3, -2).reshape(*rest, n)
