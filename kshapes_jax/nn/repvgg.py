"""RepVGGBlock: kxk-BN + 1x1-BN + identity-BN, fused into one conv (Ding et al. 2021), and
QARepVGG's quantization-friendly form of it (Chu et al. 2023)."""

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
from kshapes_jax.kernels import add_branches, fuse_bn, identity_kernel, pad_kernel
from kshapes_jax.nn.base import ConvLayer, check_layer, record, set_value, symmetric_padding
from kshapes_jax.nn.batchnorm import batch_norm, bn_params, set_affine
from kshapes_jax.nn.branches import Place, branch_scales, scaled_sum

# a BN per branch (RepVGG), or QARepVGG's: a BN on the kxk branch only, one after the sum
RepVGGBN = Literal["branch", "qa"]


class RepVGGBlock(ConvLayer):
  """RepVGG's training-time block; replaces a kxk conv AND the BN after it.

  Branches: a kxk conv + BN (`dense`, `dense_bn`), a 1x1 conv + BN at the kxk conv's centre
  tap (`one`, `one_bn`) and, where the block maps a tensor onto one of its own shape
  (in == out, stride 1 and the 'same' padding), a BN of the input (`identity_bn`). In eval
  mode the block is `effective_kernel()`: one kxk conv with a bias (the 1x1 padded to kxk
  and the identity written as a kxk conv, each BN folded in: transforms I, II and VI). The
  block's ReLU is the model's, after it.

  Beyond the official block (kernel 3 and padding 1 only; its 1x1 branch ignores dilation,
  RepVGG#57), any odd kernel, any padding and any dilation work: the 1x1 branch reads the
  centre tap with padding p - d (k - 1) / 2 (cropping where negative), and a block whose
  output is not its input's shape (another padding) has no identity branch.

  It takes the arguments every kind takes (`make_conv`), and its own:

  Args:
    bn: "branch" (a BN per branch, RepVGG) or "qa", QARepVGG's quantization-friendly block
      (Chu et al. 2023, the official `QARepVGGBlockV2`): a BN on the kxk branch only
      (`dense_bn`), the 1x1 and the identity without BN, and one BN after the sum (`bn`):
      bn(dense_bn(kxk) + 1x1 + x). It deploys to the same one conv; it is the paper's remedy
      for the ranges that make RepVGG's fused kernels and outputs lose accuracy in INT8.
    online: train online (OREPA): learned per-channel branch scales (`scales`, rows dense /
      1x1 / identity) instead of the branch BNs, the scaled kernels summed into one every step,
      then ONE conv and ONE BN (`bn`). Deploys exactly, as the offline block does.
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
    bn: RepVGGBN = "branch",
    online: bool = False,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer(
      "RepVGGBlock", in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation
    )
    if kernel_size % 2 == 0:
      raise ValueError(f"RepVGGBlock needs an odd kernel size (a centre tap), got {kernel_size}")
    if not isinstance(online, bool):
      raise ValueError(f"RepVGGBlock online must be a bool, got {online!r}")
    if bn not in get_args(RepVGGBN):
      raise ValueError(f"RepVGGBlock bn must be 'branch' or 'qa', got {bn!r}")
    if online and bn != "branch":
      raise ValueError(
        "RepVGGBlock online=True replaces the branch BNs by scales and one BN after the sum "
        f"(already QARepVGG's BN after the sum); leave bn at 'branch' (got bn={bn!r})"
      )
    del use_bias  # the BNs supply the bias
    k = kernel_size
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups, self.dilation = k, stride, groups, dilation
    self.padding = symmetric_padding(padding, k, int_only_for="RepVGGBlock", dilation=dilation)
    self.bn_mode, self.online = bn, online
    self.set_numerics(precision, dtype, param_dtype)
    # the identity adds the input to an output of its shape: in == out and stride 1 (the official
    # rule, whose padding is always the 'same' one), and the 'same' padding
    same = dilation * (k // 2)
    self.has_identity = in_features == out_features and stride == 1 and self.padding == same
    cin = in_features // groups
    self.dense = self.init_weight(rngs, (k, k, cin, out_features), k * k * cin)
    self.one = self.init_weight(rngs, (1, 1, cin, out_features), cin)
    norm: dict[str, Any] = {"dtype": dtype, "param_dtype": param_dtype}
    if online:
      self.scales = branch_scales(out_features, *([1.0] * (2 + self.has_identity)))
      self.bn = batch_norm(out_features, rngs, **norm)
    elif bn == "qa":
      self.dense_bn = batch_norm(out_features, rngs, **norm)
      self.bn = batch_norm(out_features, rngs, **norm)
    else:
      self.dense_bn = batch_norm(out_features, rngs, **norm)
      self.one_bn = batch_norm(out_features, rngs, **norm)
      self.identity_bn = batch_norm(in_features, rngs, **norm) if self.has_identity else None

  def _bns(self) -> list[nnx.BatchNorm]:
    if self.online:
      return [self.bn]
    if self.bn_mode == "qa":
      return [self.dense_bn, self.bn]
    return [bn for bn in (self.dense_bn, self.one_bn, self.identity_bn) if bn is not None]

  def _branch_parts(self) -> tuple[list[jax.Array], list[Place]]:
    """The branches' kernels as they are, and how each becomes kxk: dense, the 1x1 (padded to
    the centre), the identity."""
    dense, k = self.dense[...], self.kernel_size
    kernels = [dense, self.one[...]]
    place: list[Place] = [None, functools.partial(pad_kernel, size=k)]
    if self.has_identity:
      kernels.append(identity_kernel(self.in_features, self.groups, k, dense.dtype))
      place.append(None)
    return kernels, place

  def _kernels(self) -> list[jax.Array]:
    """The branches' kernels as kxk convs: dense, the 1x1 at the centre, the identity."""
    kernels, place = self._branch_parts()
    return [kernel if put is None else put(kernel) for kernel, put in zip(kernels, place)]

  def _online_kernel(self) -> jax.Array:
    """The scaled branches summed into one kxk kernel, the 1x1 scaled before it is padded."""
    kernels, place = self._branch_parts()
    return scaled_sum(kernels, self.scales[...], place)

  def __call__(self, x: jax.Array) -> jax.Array:
    bns = self._bns()
    if all(bn.use_running_average for bn in bns):  # eval: one fused conv
      return super().__call__(x)
    if self.online:
      y = self.bn(self.conv(x, self._online_kernel(), padding=self.padding))
    else:  # a conv and a BN per branch: the 1x1 costs 1 / k^2 of the dense conv as it is
      y = self.branched(x)
    record(self, x, y)
    return y

  def branched(self, x: jax.Array) -> jax.Array:
    """The block as the official code computes it, branch by branch (the 1x1 as a 1x1 conv, the
    identity as the input itself), each BN in its mode: the reference of the fused conv."""
    p = self.padding - self.dilation * (self.kernel_size // 2)  # the 1x1 at the centre tap
    dense = self.conv(x, self.dense[...], padding=self.padding)
    one = self.conv(x, self.one[...], padding=p)
    if self.online:
      scales = self.scales[...]
      outs = [dense * scales[0], one * scales[1]]
      if self.has_identity:
        outs.append(x * scales[2])
      return self.bn(functools.reduce(operator.add, outs))
    if self.bn_mode == "qa":
      y = self.dense_bn(dense) + one
      return self.bn(y if not self.has_identity else y + x)
    y = self.dense_bn(dense) + self.one_bn(one)
    return y if self.identity_bn is None else y + self.identity_bn(x)

  def trained_output(self, x: jax.Array) -> jax.Array:
    return self.branched(x)

  def effective_kernel(self):
    kernels = self._kernels()
    if self.online:
      return fuse_bn(self._online_kernel(), *bn_params(self.bn), eps=self.bn.epsilon)
    if self.bn_mode == "qa":  # the kxk's BN folded, the plain branches added, the sum's BN folded
      dense, dense_bias = fuse_bn(kernels[0], *bn_params(self.dense_bn), eps=self.dense_bn.epsilon)
      total = functools.reduce(operator.add, kernels[1:], dense)
      # BN(z + b) has BN's fold with the running mean less b
      scale, beta, mean, var = bn_params(self.bn)
      return fuse_bn(total, scale, beta, mean - dense_bias, var, eps=self.bn.epsilon)
    fused = [
      fuse_bn(kernel, *bn_params(bn), eps=bn.epsilon) for kernel, bn in zip(kernels, self._bns())
    ]
    return add_branches([k for k, _ in fused], [b for _, b in fused])

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """Dense = the kernel with an identity BN (its scale sqrt(1 + eps) cancels the eps of a new
    BN's unit variance), the bias as its shift; the 1x1 kernel zero, and the identity branch's
    scale zero: the block's eval function is the conv's. With bn="qa" both BNs are identities
    (the sum's holds the bias) and, where the block has its (unscaled) identity branch, the 1x1
    kernel is minus the identity to cancel it."""
    set_value(self.dense, kernel)
    set_value(self.one, self.one[...] * 0)
    if self.bn_mode == "qa":
      set_affine(self.dense_bn, (1 + self.dense_bn.epsilon) ** 0.5, jnp.zeros(self.out_features))
      set_affine(self.bn, (1 + self.bn.epsilon) ** 0.5, bias)
      if self.has_identity:
        one = self.one[...]
        set_value(self.one, -identity_kernel(self.in_features, self.groups, 1, one.dtype))
      return
    main = self.bn if self.online else self.dense_bn
    set_affine(main, (1 + main.epsilon) ** 0.5, bias)
    if self.online:
      set_value(self.scales, self.scales[...].at[0].set(1.0).at[2:].set(0.0))
    elif self.identity_bn is not None:
      set_affine(self.identity_bn, 0.0)

  def weight_count(self) -> int:
    return int(self.dense[...].size + self.one[...].size)

  def multiplications(self, out_shape) -> int:
    """Training-time cost: k^2 + 1 taps offline, k^2 online (as the deployed conv)."""
    taps = self.kernel_size**2 + (not self.online)
    return int(
      out_shape[1] * out_shape[2] * taps * self.in_features // self.groups * self.out_features
    )
