"""ACBlock: kxk + 1xk + kx1 with BN per branch, fused into one conv (Ding et al. 2019)."""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from kshapes_jax import _validation
from kshapes_jax.kernels import BatchNormParams, acb_kernel, fuse_acb, fuse_bn
from kshapes_jax.nn.base import ConvLayer, PlainConv, check_layer, he_normal, record, symmetric_padding

Asymmetric = Literal["both", "hor", "ver"]  # which asymmetric branches (Table 5 ablations)
BNMode = Literal["branch", "sum"]  # a BN per branch (the paper), or one after the sum


def batch_norm(features: int, rngs: nnx.Rngs, scale_init: float = 1.0, dtype=None) -> nnx.BatchNorm:
  """BN with PyTorch's defaults (momentum 0.1, eps 1e-5), the official codes' setting.

  `dtype` is the compute dtype of its output (statistics and parameters stay
  float32), as the conv layers' `dtype`.
  """
  bn = nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=_validation.compute_dtype(dtype),
                     rngs=rngs)
  if scale_init != 1.0:
    bn.scale[...] = jnp.full((features,), scale_init, bn.scale[...].dtype)
  return bn


def bn_params(bn: nnx.BatchNorm) -> BatchNormParams:
  return BatchNormParams(bn.scale[...], bn.bias[...], bn.mean[...], bn.var[...])


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
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               stride: int = 1, padding=None, use_bias: bool = False, asymmetric: Asymmetric = "both",
               bn: BNMode = "branch", border: bool = False, asym_scale_init: float = 1.0,
               precision=None, dtype=None, rngs: nnx.Rngs):
    check_layer("ACBlock", in_features, out_features, kernel_size, stride, rngs=rngs)
    if kernel_size % 2 == 0:
      raise ValueError(f"ACB needs an odd kernel size, got {kernel_size}")
    if asymmetric not in get_args(Asymmetric):
      raise ValueError(f"asymmetric must be 'both', 'hor' or 'ver', got {asymmetric!r}")
    if bn not in get_args(BNMode):
      raise ValueError(f"bn must be 'branch' or 'sum', got {bn!r}")
    del use_bias  # the BN supplies the bias
    k = kernel_size
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride = k, stride
    self.padding = symmetric_padding(padding, k, int_only_for="ACBlock")
    self.bn_mode, self.border = bn, border
    self.set_numerics(precision, dtype)
    self.line = k - 1 if border else k // 2  # row of hor / column of ver
    fan = k * k * in_features
    self.square = nnx.Param(he_normal(rngs.params(), (k, k, in_features, out_features), fan))
    use_hor, use_ver = asymmetric in ("both", "hor"), asymmetric in ("both", "ver")
    self.hor = nnx.Param(he_normal(rngs.params(), (1, k, in_features, out_features), fan)) if use_hor else None
    self.ver = nnx.Param(he_normal(rngs.params(), (k, 1, in_features, out_features), fan)) if use_ver else None
    if bn == "branch":
      self.square_bn = batch_norm(out_features, rngs, dtype=dtype)
      self.hor_bn = batch_norm(out_features, rngs, asym_scale_init, dtype) if self.hor is not None else None
      self.ver_bn = batch_norm(out_features, rngs, asym_scale_init, dtype) if self.ver is not None else None
    else:
      self.sum_bn = batch_norm(out_features, rngs, dtype=dtype)

  def _branches(self):
    """(kernel, padding, bn-or-None) per branch; the official code's paddings."""
    p, k, r = self.padding, self.kernel_size, self.line
    across = (p - r, p - (k - 1 - r))  # rows of hor / columns of ver
    out = [(self.square[...], ((p, p), (p, p)), getattr(self, "square_bn", None))]
    if self.hor is not None:
      out.append((self.hor[...], (across, (p, p)), getattr(self, "hor_bn", None)))
    if self.ver is not None:
      out.append((self.ver[...], ((p, p), across), getattr(self, "ver_bn", None)))
    return out

  def _frozen(self) -> bool:
    """Every BN uses its running statistics (eval mode): the block is then one fused conv."""
    bns = [getattr(self, name, None) for name in ("square_bn", "hor_bn", "ver_bn", "sum_bn")]
    return all(bn.use_running_average for bn in bns if bn is not None)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self._frozen():  # eq. 6-7: in eval mode the branches and BNs fold into one kxk conv
      return super().__call__(x)
    y = 0
    for kernel, padding, bn in self._branches():
      branch = self.conv(x, kernel, padding=padding)
      y = y + (bn(branch) if bn is not None else branch)
    if self.bn_mode == "sum":
      y = self.sum_bn(y)
    record(self, x, y)
    return y

  def effective_kernel(self):
    hor = None if self.hor is None else self.hor[...]
    ver = None if self.ver is None else self.ver[...]
    if self.bn_mode == "sum":
      kernel = acb_kernel(self.square[...], hor, ver, hor_row=self.line, ver_col=self.line)
      return fuse_bn(kernel, *bn_params(self.sum_bn), eps=self.sum_bn.epsilon)
    return fuse_acb(
        self.square[...], bn_params(self.square_bn),
        hor, None if hor is None else bn_params(self.hor_bn),
        ver, None if ver is None else bn_params(self.ver_bn),
        eps=self.square_bn.epsilon, hor_row=self.line, ver_col=self.line)

  def deploy(self) -> PlainConv:
    kernel, bias = self.effective_kernel()
    return PlainConv.from_kernel(kernel, bias, stride=self.stride, padding=self.padding, **self.numerics)

  def weight_count(self) -> int:
    return sum(int(v[...].size) for v in (self.square, self.hor, self.ver) if v is not None)

  def multiplications(self, out_shape) -> int:
    """Training-time cost: k^2 + 2k taps (the deployed conv costs k^2)."""
    k = self.kernel_size
    taps = k * k + k * ((self.hor is not None) + (self.ver is not None))
    return int(out_shape[1] * out_shape[2] * taps * self.in_features * self.out_features)
