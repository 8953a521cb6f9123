"""ACBlock: kxk + 1xk + kx1 with BN per branch, fused into one conv (Ding et al. 2019)."""

from __future__ import annotations

import functools
import operator
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding
from kshapes_jax.kernels import acb_kernel, fuse_acb, fuse_bn, pad_kernel, scale_output
from kshapes_jax.nn.base import (
  ConvLayer,
  check_layer,
  record,
  set_value,
  symmetric_padding,
)
from kshapes_jax.nn.batchnorm import batch_norm, bn_params, set_affine
from kshapes_jax.nn.branches import Place, branch_scales, scaled_sum, stacked_branches

Asymmetric = Literal["both", "hor", "ver"]  # which asymmetric branches (Table 5 ablations)
BNMode = Literal["branch", "sum"]  # a BN per branch (the paper), or one after the sum
Impl = Literal["auto", "branches", "stacked"]  # how training mode computes the same block


def resolve_impl(impl: str, platform: str | None = None) -> str:
  """The training-mode implementation "auto" stands for on `platform` (default: JAX's default
  backend).

  "branches" on CPU: with `conv.conv`'s matmul kernel gradient the branches' 1xk and kx1 convs
  cost about their taps' share of a kxk one, and the branches are the faster form there, per
  layer and in whole networks. "stacked" elsewhere: one conv to 3 O maps and one BN pass, the
  faster form in whole networks on GPU. The Speed guide (docs/guides/speed.md) has the ratios.

  Args:
    impl: "auto", "branches" or "stacked".
    platform: "cpu", "gpu", "tpu", ...

  Raises:
    ValueError: for an unknown impl.
  """
  if impl not in get_args(Impl):
    raise ValueError(f"impl must be 'auto', 'branches' or 'stacked', got {impl!r}")
  if impl != "auto":
    return impl
  platform = jax.default_backend() if platform is None else platform
  return "branches" if platform == "cpu" else "stacked"


class ACBlock(ConvLayer):
  """Asymmetric Convolution Block; replaces a kxk conv AND the BN after it.

  In training mode it runs its branches (kxk, 1xk, kx1), each with its BN on
  batch statistics. In eval mode (every BN on running statistics) it runs
  the fused kernel of `effective_kernel()`: one kxk conv, the same outputs
  as the branches to float rounding, at the cost of a plain conv.

  It takes the arguments every kind takes (`make_conv`), and its own:

  Args:
    asymmetric: "both", "hor" (horizontal only) or "ver" (vertical only).
    bn: "branch" (BN per branch, the paper) or "sum" (one BN after the sum).
    border: add the asymmetric kernels at the bottom row / right column
      instead of the skeleton (the paper's section 4.4).
    asym_scale_init: initial BN gamma of the asymmetric branches.
    asym_size: the length m (odd, <= k) of the 1xm and mx1 kernels, centred
      on the skeleton; k by default. ACNet's AlexNet gives its 11x11 and 5x5
      layers 1x3 and 3x1 branches (asym_size=3).
    impl: how training mode computes the block, all equal in value, gradient
      and running statistics: "branches" (a conv and a BN per branch),
      "stacked" (the 1xk and kx1 kernels zero-padded to kxk and stacked with
      the kxk one on the output axis: ONE conv to 3*O maps, ONE BN over them,
      then the sum of the three groups; with bn="sum", one conv with the
      summed kernel), or "auto" (`resolve_impl`: "branches" on CPU, "stacked"
      elsewhere, the faster form on each; with one BN, bn="sum" or online,
      always the one conv with the summed kernel).
      Parameters and checkpoints do not depend on it.
    online: train online (Hu et al., OREPA): no BN per branch but a learned per-channel
      scale (`scales`, rows square / hor / ver; the asymmetric ones start at asym_scale_init),
      the scaled kernels summed into one every step, then ONE conv and ONE BN (`sum_bn`): a
      plain conv's cost in training. Deploys as exactly as the offline block.
  """

  padding: int  # on every side: the branches' paddings derive from it
  int_padding = True
  normalizes = True  # its BNs: it replaces a conv AND the BN after it
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
    asymmetric: Asymmetric = "both",
    bn: BNMode = "branch",
    border: bool = False,
    asym_scale_init: float = 1.0,
    asym_size: int | None = None,
    impl: Impl = "auto",
    online: bool = False,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer(
      "ACBlock", in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation
    )
    if kernel_size % 2 == 0:
      raise ValueError(f"ACB needs an odd kernel size, got {kernel_size}")
    if asymmetric not in get_args(Asymmetric):
      raise ValueError(f"asymmetric must be 'both', 'hor' or 'ver', got {asymmetric!r}")
    if bn not in get_args(BNMode):
      raise ValueError(f"bn must be 'branch' or 'sum', got {bn!r}")
    resolve_impl(impl)  # checks it
    if not isinstance(online, bool):
      raise ValueError(f"ACB online must be a bool, got {online!r}")
    if online and bn != "branch":
      raise ValueError(
        "ACB online=True replaces the branch BNs by scales and one BN after the sum; leave bn "
        f"at 'branch' (got bn={bn!r})"
      )
    del use_bias  # the BN supplies the bias
    k = kernel_size
    m = k if asym_size is None else asym_size
    if isinstance(m, bool) or not isinstance(m, int) or m < 1 or m > k or m % 2 == 0:
      raise ValueError(f"ACB asym_size must be an odd int in [1, {k}] (the kernel size), got {m!r}")
    self.asym_size = m
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups, self.dilation = k, stride, groups, dilation
    self.padding = symmetric_padding(padding, k, int_only_for="ACBlock", dilation=dilation)
    self.bn_mode, self.border, self.impl, self.online = bn, border, impl, online
    self.set_numerics(precision, dtype, param_dtype)
    self.line = k - 1 if border else k // 2  # row of hor / column of ver
    cin = in_features // groups
    fan = k * k * cin
    self.square = self.init_weight(rngs, (k, k, cin, out_features), fan)
    use_hor, use_ver = asymmetric in ("both", "hor"), asymmetric in ("both", "ver")
    self.hor = self.init_weight(rngs, (1, m, cin, out_features), fan) if use_hor else None
    self.ver = self.init_weight(rngs, (m, 1, cin, out_features), fan) if use_ver else None
    norm: dict[str, Any] = {"dtype": dtype, "param_dtype": param_dtype}
    if online:
      scales = [1.0] + [asym_scale_init] * ((self.hor is not None) + (self.ver is not None))
      self.scales = branch_scales(out_features, *scales)
      self.sum_bn = batch_norm(out_features, rngs, **norm)
    elif bn == "branch":
      self.square_bn = batch_norm(out_features, rngs, **norm)
      self.hor_bn = (
        batch_norm(out_features, rngs, asym_scale_init, **norm) if self.hor is not None else None
      )
      self.ver_bn = (
        batch_norm(out_features, rngs, asym_scale_init, **norm) if self.ver is not None else None
      )
    else:
      self.sum_bn = batch_norm(out_features, rngs, **norm)

  def _branches(self):
    """(kernel, padding, bn-or-None) per branch; the official code's paddings (taps `dilation`
    apart). Online, each kernel carries its branch scale and no branch has a BN."""
    p, k, r, d = self.padding, self.kernel_size, self.line, self.dilation
    across = (p - d * r, p - d * (k - 1 - r))  # rows of hor / columns of ver
    inset = p - d * ((k - self.asym_size) // 2)  # along a branch shorter than k, centred
    out = [(self.square[...], ((p, p), (p, p)), getattr(self, "square_bn", None))]
    if self.hor is not None:
      out.append((self.hor[...], (across, (inset, inset)), getattr(self, "hor_bn", None)))
    if self.ver is not None:
      out.append((self.ver[...], ((inset, inset), across), getattr(self, "ver_bn", None)))
    if self.online:
      scales = self.scales[...]
      out = [
        (scale_output(kernel, scales[b].astype(kernel.dtype)), pad, bn)
        for b, (kernel, pad, bn) in enumerate(out)
      ]
    return out

  def _bns(self) -> list[nnx.BatchNorm]:
    names = ("square_bn", "hor_bn", "ver_bn", "sum_bn")
    return [bn for bn in (getattr(self, name, None) for name in names) if bn is not None]

  def _asymmetric(self) -> tuple[jax.Array | None, jax.Array | None]:
    return (None if self.hor is None else self.hor[...]), (
      None if self.ver is None else self.ver[...]
    )

  def _frozen(self) -> bool:
    """Every BN uses its running statistics (eval mode): the block is then one fused conv."""
    return all(bn.use_running_average for bn in self._bns())

  def __call__(self, x: jax.Array) -> jax.Array:
    if self._frozen():  # eq. 6-7: in eval mode the branches and BNs fold into one kxk conv
      return super().__call__(x)
    # one BN after the sum (bn="sum", online): "auto" runs ONE conv with the summed kernel
    impl = "stacked" if self.impl == "auto" and self._one_bn() else resolve_impl(self.impl)
    # stacked shares one BN pass, so a partly frozen block (a user's choice) runs its branches
    stacked = impl == "stacked" and not any(bn.use_running_average for bn in self._bns())
    y = self._stacked(x) if stacked else self._branched(x)
    record(self, x, y)
    return y

  def branched(self, x: jax.Array) -> jax.Array:
    """The block as its branches, each conv and its BN in the BNs' mode: in eval mode the
    reference its fused conv (eq. 6-7) is measured against (`kshapes_jax.certify`)."""
    return self._branched(x)

  def trained_output(self, x: jax.Array) -> jax.Array:
    return self.branched(x)

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """Square = the kernel, 1xk / kx1 = 0, the square BN the identity in eval mode (a new BN has
    mean 0, var 1 and shift 0: its scale sqrt(1 + eps) cancels the eps), the bias as its shift.
    The asymmetric branches' BNs then give 0 in eval mode whatever their scale; in training mode
    the BNs normalize on batch statistics, as ACNet's do."""
    set_value(self.square, kernel)
    for branch in (self.hor, self.ver):
      if branch is not None:
        set_value(branch, jnp.zeros_like(branch[...]))
    square_bn: Any = self.sum_bn if self._one_bn() else self.square_bn
    if self.online:  # the square's scale 1: the kernel as it is
      set_value(self.scales, self.scales[...].at[0].set(1.0))
    set_affine(square_bn, (1 + square_bn.epsilon) ** 0.5, bias)

  def _branched(self, x: jax.Array) -> jax.Array:
    outs = []
    for kernel, padding, bn in self._branches():
      branch = self.conv(x, kernel, padding=padding)
      outs.append(bn(branch) if bn is not None else branch)
    y = functools.reduce(operator.add, outs)
    return self.sum_bn(y) if self._one_bn() else y

  def _one_bn(self) -> bool:
    """One BN after the branches' sum (bn='sum', or online) instead of one per branch."""
    return self.bn_mode == "sum" or self.online

  def _summed_kernel(self) -> jax.Array:
    """eq. 6: the asymmetric kernels added onto the square one's skeleton (or border); online,
    each scaled by its branch scale first."""
    hor, ver = self._asymmetric()
    if not self.online:
      return acb_kernel(self.square[...], hor, ver, hor_row=self.line, ver_col=self.line)
    k, m = self.kernel_size, self.asym_size
    kernels = [self.square[...]]
    place: list[Place] = [None]
    if hor is not None:
      kernels.append(hor)
      place.append(functools.partial(pad_kernel, size=k, offset=(self.line, (k - m) // 2)))
    if ver is not None:
      kernels.append(ver)
      place.append(functools.partial(pad_kernel, size=k, offset=((k - m) // 2, self.line)))
    return scaled_sum(kernels, self.scales[...], place)

  def _stacked(self, x: jax.Array) -> jax.Array:
    """Training mode as one conv: the branch kernels zero-embedded in kxk (the same sums)."""
    if self._one_bn():  # linear up to the BN: one conv with the summed kernel
      return self.sum_bn(self.conv(x, self._summed_kernel(), padding=self.padding))
    hor, ver = self._asymmetric()
    kernels, bns = [self.square[...]], [self.square_bn]
    zero = jnp.zeros_like(self.square[...])
    if hor is not None and self.hor_bn is not None:
      kernels.append(acb_kernel(zero, hor, None, hor_row=self.line))
      bns.append(self.hor_bn)
    if ver is not None and self.ver_bn is not None:
      kernels.append(acb_kernel(zero, None, ver, ver_col=self.line))
      bns.append(self.ver_bn)
    return stacked_branches(self, x, kernels, bns, self.padding)

  def effective_kernel(self):
    if self._one_bn():
      return fuse_bn(self._summed_kernel(), *bn_params(self.sum_bn), eps=self.sum_bn.epsilon)
    hor, ver = self._asymmetric()
    return fuse_acb(
      self.square[...],
      bn_params(self.square_bn),
      hor,
      None if hor is None else bn_params(self.hor_bn),
      ver,
      None if ver is None else bn_params(self.ver_bn),
      eps=self.square_bn.epsilon,
      hor_row=self.line,
      ver_col=self.line,
    )

  def weight_count(self) -> int:
    return sum(int(v[...].size) for v in (self.square, self.hor, self.ver) if v is not None)

  def multiplications(self, out_shape) -> int:
    """Training-time cost: k^2 + 2m taps offline, k^2 online (as the deployed conv)."""
    k = self.kernel_size
    taps = k * k
    if not self.online:
      taps += self.asym_size * ((self.hor is not None) + (self.ver is not None))
    return int(
      out_shape[1] * out_shape[2] * taps * self.in_features // self.groups * self.out_features
    )
