"""VersatileConv layer: spatial and channel versatile filters (Wang et al. 2018)."""

from __future__ import annotations

import math
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import conv as conv_lib
from kshapes_jax.conv import Padding
from kshapes_jax.kernels import (
  channel_versatile_kernel,
  channel_windows,
  spatial_versatile_kernel,
  summed_versatile_kernel,
)
from kshapes_jax.nn.base import ConvLayer, check_layer, record, symmetric_padding

VersatileMode = Literal["spatial", "sum", "none"]
VersatileBias = Literal["separate", "shared"]
VersatileImpl = Literal["auto", "stacked", "cropped"]

# Below this many multiply-adds per output pixel and tap of one scale's conv
# (input channels x its n F maps), the cropped form's extra small convs and
# concat cost more on CPU than the taps it saves (the CPU layer benchmarks,
# results/bench-cpu.md, put the crossover between 128 and 357).
CROPPED_MIN_WORK = 256


def _checked(impl: str) -> str:
  if impl not in get_args(VersatileImpl):
    raise ValueError(f"impl must be 'auto', 'stacked' or 'cropped', got {impl!r}")
  return impl


def resolve_impl(impl: str, in_features: int, maps: int, platform: str | None = None) -> str:
  """The spatial versatile implementation "auto" stands for on `platform` (default: JAX's default
  backend).

  "cropped" on CPU where in_features * maps >= CROPPED_MIN_WORK, where the
  (d - 2j)^2 taps of Proposition 1 beat one conv over the masked stack;
  "stacked" elsewhere, GPU and TPU included: there the cropped form made
  whole networks slower in the benchmarks (docs/guides/speed.md).

  Args:
    impl: "auto", "stacked" or "cropped".
    in_features: the layer's input channels.
    maps: the maps of one scale, n F (n channel windows of F filters).
    platform: "cpu", "gpu", "tpu", ...

  Raises:
    ValueError: for an unknown impl.
  """
  if _checked(impl) != "auto":
    return impl
  platform = jax.default_backend() if platform is None else platform
  return "cropped" if platform == "cpu" and in_features * maps >= CROPPED_MIN_WORK else "stacked"


class VersatileConv(ConvLayer):
  """F primary dxdxc^ filters giving s * n * F output maps in one conv.

  Modes (the paper's MNIST models):
    * `mode="spatial"`, `bias="separate"`: eq. 3 with b_1..b_s (Model 2);
      `bias="shared"`: b_1 = ... = b_s (Model 3);
    * `mode="sum"`: the naive aggregate of eq. 4 (Model 1), s = 1 output map;
    * `channel_delta = c - c^ > 0` with `channel_stride = g`: channel windows
      (eq. 8), alone (`mode="none"`) or with the spatial stack (versatile v2).

  `out_features` asks for a number of maps; the layer takes
  F = ceil(out_features / (s * n)) filters, so its `out_features` may be a
  little larger (the paper's LeNet: 20 requested, 7 filters, 21 maps).

  `impl` (spatial mode only) picks how the s secondary filters run:
  `"stacked"` is one conv with the (d, d, I, s*F) masked stack (eq. 3 as
  written); `"cropped"` runs s convs, secondary filter j being the central
  (d - 2j) x (d - 2j) crop of f with the padding reduced by j, so scale j
  costs (d - 2j)^2 taps, as Proposition 1 counts; `"auto"` (the default)
  picks per layer and platform (`resolve_impl`). All give the same maps in
  the same order (j * F + o); `deploy()` always makes the stacked conv.

  `groups=G` splits inputs and filters into G groups (the versatile paper's
  AlexNet and ResNeXt-50): each group's F / G filters read its c / G inputs
  (channel windows slide within them) and make its maps, the groups' maps
  side by side, as G ungrouped layers would; such a layer is stacked only.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    use_bias: bool = True,
    mode: VersatileMode = "spatial",
    bias: VersatileBias = "shared",
    channel_delta: int = 0,
    channel_stride: int = 1,
    impl: VersatileImpl = "auto",
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer(
      "VersatileConv",
      in_features,
      out_features,
      kernel_size,
      stride,
      groups,
      rngs,
      dilation=dilation,
    )
    if groups != 1 and impl == "cropped":
      raise ValueError(
        "VersatileConv impl='cropped' takes groups=1 only: its per-scale convs would order the "
        f"maps scale-major across groups; use impl='stacked' or 'auto' with groups={groups}"
      )
    if mode not in get_args(VersatileMode):
      raise ValueError(f"mode must be 'spatial', 'sum' or 'none', got {mode!r}")
    self.impl = _checked(impl)  # resolved when traced: building a layer must not start a backend
    self.set_numerics(precision, dtype, param_dtype)
    if bias not in get_args(VersatileBias):
      raise ValueError(f"bias must be 'separate' or 'shared', got {bias!r}")
    group_in = in_features // groups  # c of eq. 8: the channels one group's filters read
    if not 0 <= channel_delta < group_in:
      raise ValueError(
        f"channel versatile filters need c^ < c with c^ >= 1: channel_delta = c - c^ = "
        f"{channel_delta} must be in [0, {group_in})"
        + (f" (c = {in_features} / {groups} groups)" if groups > 1 else "")
      )
    self.mode, self.bias_mode = mode, bias
    self.channel_delta, self.channel_stride = channel_delta, channel_stride
    self.window = group_in - channel_delta
    self.windows = channel_windows(group_in, self.window, channel_stride) if channel_delta else 1
    self.scales = (kernel_size + 1) // 2 if mode == "spatial" else 1
    per_filter = self.scales * self.windows
    self.filters = groups * math.ceil(out_features / (groups * per_filter))
    self.in_features, self.out_features = in_features, per_filter * self.filters
    self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
    self.groups = groups
    self.padding = symmetric_padding(padding, kernel_size, dilation=dilation)
    shape = (kernel_size, kernel_size, self.window, self.filters)
    self.f = self.init_weight(rngs, shape, kernel_size * kernel_size * self.window)
    size = self.filters * (self.windows if bias == "shared" else per_filter)
    self.bias = self.init_bias(size) if use_bias else None

  def _group_kernel(self, f: jax.Array) -> jax.Array:
    """The stacked kernel of one group's primary filters (eqs. 3, 4 and 8)."""
    if self.channel_delta:
      f = channel_versatile_kernel(f, self.in_features // self.groups, self.channel_stride)
    if self.mode == "spatial":
      f = spatial_versatile_kernel(f)
    elif self.mode == "sum":
      f = summed_versatile_kernel(f)
    return f

  def effective_kernel(self):
    f = self.f[...]
    if self.groups == 1:
      return self._group_kernel(f), self.effective_kernel_bias()[1]
    # group g's filters make group g's maps, contiguous on the output axis (a grouped conv's
    # layout); within a group they are ordered as an ungrouped layer's
    d, _, window, filters = f.shape
    per_group = f.reshape(d, d, window, self.groups, filters // self.groups)
    stacked = jax.vmap(self._group_kernel, in_axes=3, out_axes=3)(per_group)
    return stacked.reshape(*stacked.shape[:3], -1), self.effective_kernel_bias()[1]

  def __call__(self, x: jax.Array) -> jax.Array:
    if (
      self.mode != "spatial"
      or self.groups != 1
      or resolve_impl(self.impl, self.in_features, self.windows * self.filters) == "stacked"
    ):
      return super().__call__(x)
    f = self.f[...]
    if self.channel_delta:
      f = channel_versatile_kernel(f, self.in_features, self.channel_stride)
    d, r = self.kernel_size, self.dilation
    (top, bottom), (left, right) = conv_lib.resolve_padding(
      self.padding, x.shape[1:3], (d, d), self.stride, r
    )
    # secondary filter j: the central (d - 2j)^2 crop, read through a window shrunk by j taps on
    # every side
    ys = [
      self.conv(
        x,
        f[j : d - j, j : d - j],
        padding=((top - r * j, bottom - r * j), (left - r * j, right - r * j)),
      )
      for j in range(self.scales)
    ]
    y = jnp.concatenate(ys, axis=-1)
    _, bias = self.effective_kernel_bias()
    if bias is not None:
      y = y + bias.astype(y.dtype)
    record(self, x, y)
    return y

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    del kernel, bias
    raise ValueError(
      "versatile filters are nested masks of fewer primary filters; use init='fresh'"
    )

  def effective_kernel_bias(self):
    """The bias of the stacked kernel's outputs, without building the kernel."""
    if self.bias is None:
      return None, None
    b = self.bias[...]
    if self.mode == "spatial" and self.bias_mode == "shared":
      # within each group the output index is scale-major
      b = jnp.tile(b.reshape(self.groups, -1), self.scales).reshape(-1)
    return None, b

  def weight_count(self) -> int:
    return int(self.f[...].size)

  def multiplications(self, out_shape) -> int:
    """Proposition 1: scale i costs (d - 2i + 2)^2 c^ per output pixel and map."""
    d = self.kernel_size
    taps = (
      sum((d - 2 * i + 2) ** 2 for i in range(1, self.scales + 1))
      if self.mode == "spatial"
      else d * d
    )
    per_pixel = taps * self.window * self.windows * self.filters
    return int(out_shape[1] * out_shape[2] * per_pixel)
