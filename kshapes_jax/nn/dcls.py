"""DclsConv: Dilated Convolution with Learnable Spacings (Khalfaoui-Hassani et al. 2023)."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import _validation
from kshapes_jax.conv import Padding
from kshapes_jax.kernels.dcls import (
  NORM_EPS,
  SIGMA_FLOOR,
  Interpolation,
  dcls_kernel,
  dcls_lattice,
)
from kshapes_jax.nn.base import (
  ConvLayer,
  bucketed,
  check_layer,
  set_bias,
  set_value,
  symmetric_padding,
)
from kshapes_jax.nn.variables import ShapeParam

DclsInit = Literal["normal", "lattice"]  # where the elements start
# the official positions' initial spread: N(0, 0.5) pixels, clamped into the window
POSITION_STD = 0.5
# the official Gaussian's initial SIG (a standard deviation of 0.23 + SIGMA_FLOOR = 0.5)
SIGMA_INIT = 0.23


class DclsPosition(ShapeParam):
  """DCLS element positions in pixels, (K, I, O, 2) as (dx, dy). `bound` (metadata) is the
  window's half-size: `kshapes_jax.optim.clamp_to_bounds` keeps them in [-bound, bound] after
  every step, as the official `clamp_parameters`. The official recipe (ConvNeXt-dcls) trains
  them at 5 x the base learning rate and without weight decay."""

  label = "dcls_positions"
  lr_multiplier: ClassVar[float] = 5.0


class DclsSigma(ShapeParam):
  """The Gaussian DCLS's standard deviations before their floor, (K, I, O, 2): the kernel
  uses |sigma| + 0.27 (the official SIG). At the positions' learning rate, not decayed."""

  label = "dcls_sigmas"
  lr_multiplier: ClassVar[float] = 5.0


class DclsConv(ConvLayer):
  """DCLS: K elements per (input, output) pair, each at a learned position in an extent x extent
  window, interpolated into one dense kernel (`kernels.dcls_kernel`) and ONE conv.

  `kernel_size` and `padding` are those of the nominal kxk conv the layer replaces (so the
  output grid does not depend on the extent), as for the ACU: the conv runs the extent x extent
  kernel with padding + extent // 2 - kernel_size // 2. The official `Dcls2d(C, C,
  kernel_count=34, dilated_kernel_size=17, padding=8, groups=C)` is `DclsConv(C, C, 7,
  kernel_count=34, extent=17, groups=C)` (padding 3, the 7x7's).

  It takes the arguments every kind takes (`make_conv`), and its own:

  Args:
    kernel_count: K, the elements per pair; default k * k.
    extent: the dense window, >= kernel_size and of its parity; default kernel_size + 2 (k // 2),
      the span of the kxk conv dilated by 2.
    interpolation: "bilinear" (official version="v1") or "gauss" (version="gauss", a learned
      standard deviation per element and axis, `sigmas`).
    init: "normal" (the official: N(0, 0.5) pixels, clamped into the window) or "lattice" (the
      kxk lattice, K = k * k: where convert's init="preserve" puts a kernel's taps).
    shared_positions: a `DclsPosition` of shape (K, I / groups, O, 2) to use instead of one of
      its own: ConvNeXt-dcls shares one position set among the blocks of a stage.

  A position exactly on the lattice has no bilinear position gradient (the tent's kinks, as in
  the official autodiff), so a layer that starts there (init="lattice", convert's preserve) moves
  its positions only with the Gaussian. The weights are He-normal (fan-in K x I / groups), as
  the other kinds'; the official Dcls2d draws kaiming_uniform(a=sqrt(5)), ConvNeXt-dcls
  trunc_normal(0.02).
  """

  padding: int  # the nominal conv's, on every side
  int_padding = True
  preserves = "exact"

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    use_bias: bool = False,
    kernel_count: int | None = None,
    extent: int | None = None,
    interpolation: Interpolation = "bilinear",
    init: DclsInit = "normal",
    shared_positions: DclsPosition | None = None,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer(
      "DclsConv", in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation
    )
    k = kernel_size
    if dilation != 1:
      raise ValueError(
        "DclsConv learns where its elements are in its extent, so it takes no dilation (a "
        f"dilated kxk conv's span is extent={k + (dilation - 1) * (k - 1)}); got {dilation}"
      )
    kernel_count = k * k if kernel_count is None else kernel_count
    kernel_count = _validation.positive_int("DclsConv kernel_count", kernel_count)
    extent = k + 2 * (k // 2) if extent is None else extent
    extent = _validation.positive_int("DclsConv extent", extent)
    if extent < k or (extent - k) % 2:
      raise ValueError(
        f"DclsConv extent must be >= kernel_size={k} and differ from it by an even number (the "
        f"window is centred on the nominal kernel's), got {extent}"
      )
    if interpolation not in get_args(Interpolation):
      raise ValueError(f"interpolation must be 'bilinear' or 'gauss', got {interpolation!r}")
    if init not in get_args(DclsInit):
      raise ValueError(f"init must be 'normal' or 'lattice', got {init!r}")
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups = k, stride, groups
    self.padding = symmetric_padding(padding, k, int_only_for="DclsConv")
    self.kernel_count, self.extent, self.interpolation = kernel_count, extent, interpolation
    self.set_numerics(precision, dtype, param_dtype)
    cin = in_features // groups
    shape = (kernel_count, cin, out_features)
    bound = float(extent // 2)
    if shared_positions is not None:
      if not isinstance(shared_positions, DclsPosition):
        raise ValueError(f"shared_positions must be a DclsPosition, got {type(shared_positions)}")
      _validation.require_shape(
        "shared_positions", shared_positions[...], (*shape, 2), "(K, I, O, 2)"
      )
      if getattr(shared_positions, "bound", None) != bound:
        raise ValueError(
          f"shared_positions are clamped to +-{getattr(shared_positions, 'bound', None)}, this "
          f"layer's window to +-{bound}: share positions among layers of one extent"
        )
      self.positions = shared_positions
    else:
      self.positions = DclsPosition(self._initial_positions(rngs, shape, init), bound=bound)
    self.sigmas = (
      DclsSigma(jnp.full((*shape, 2), SIGMA_INIT, jnp.float32))
      if interpolation == "gauss"
      else None
    )
    self.weights = self.init_weight(rngs, shape, kernel_count * cin)
    self.bias = self.init_bias(out_features) if use_bias else None

  def _initial_positions(self, rngs: nnx.Rngs, shape: tuple[int, ...], init: DclsInit):
    lim = self.extent // 2
    if init == "lattice":
      k = self.kernel_size
      if shape[0] != k * k:
        raise ValueError(f"init='lattice' needs kernel_count={k * k} (the {k}x{k} lattice)")
      lattice = dcls_lattice(k)[:, None, None, :]
      return jnp.asarray(np.broadcast_to(lattice, (*shape, 2)))
    draw = bucketed(jax.random.normal, rngs.params(), (*shape, 2)) * POSITION_STD
    return jnp.clip(draw, -lim, lim)

  @property
  def conv_padding(self):
    return self.padding + self.extent // 2 - self.kernel_size // 2

  def acting_sigmas(self) -> jax.Array | None:
    """The Gaussian's standard deviations, |sigma| + 0.27 (the official floor); None for
    bilinear."""
    if self.sigmas is None:
      return None
    # in the weights' dtype, as the kernel is built (float64 weights: the floor in float64)
    dtype = jnp.result_type(self.weights[...].dtype, self.sigmas[...].dtype)
    return jnp.abs(self.sigmas[...].astype(dtype)) + np.asarray(SIGMA_FLOOR, dtype)

  def effective_kernel(self):
    kernel = dcls_kernel(
      self.weights[...],
      self.positions[...],
      self.extent,
      self.interpolation,
      self.acting_sigmas(),
    )
    return kernel, None if self.bias is None else self.bias[...]

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """The elements on the kxk lattice take the kernel's taps (each weight times the
    normalization's 1 + 1e-7, so that the built kernel is the given one to float rounding).

    Raises:
      ValueError: unless the layer is bilinear with k * k elements (a Gaussian spreads every
        tap over its neighbours).
    """
    k, kc = self.kernel_size, self.kernel_count
    if self.interpolation != "bilinear" or kc != k * k:
      raise ValueError(
        f"init='preserve' puts the {k}x{k} kernel's taps on the lattice; it needs "
        f"interpolation='bilinear' and kernel_count={k * k}, got {self.interpolation!r} and {kc}"
      )
    cin = self.in_features // self.groups
    lattice = np.broadcast_to(dcls_lattice(k)[:, None, None, :], (kc, cin, self.out_features, 2))
    set_value(self.positions, lattice)
    taps = np.asarray(kernel, np.float64).reshape(kc, cin, self.out_features)
    dtype = self.weights[...].dtype  # the builder's normalization, 1 * 1 + 1e-7 in its dtype
    norm = np.asarray(1, dtype) + np.asarray(NORM_EPS, dtype)
    set_value(self.weights, taps * float(norm))
    set_bias(self, bias)

  def weight_count(self) -> int:
    return int(self.weights[...].size)


def dcls_position_sets(model: nnx.Module) -> list[DclsPosition]:
  """The distinct DCLS position parameters of `model` (a set shared by several layers once), in
  module order."""
  found: list[DclsPosition] = []
  for _, m in nnx.iter_modules(model):
    if isinstance(m, DclsConv) and not any(m.positions is p for p in found):
      found.append(m.positions)
  return found


def dcls_repulsion(model: nnx.Module) -> jax.Array:
  """ConvNeXt-dcls's repulsion of a kernel's elements (its utils.get_dcls_loss_rep): per position
  set, 2 sum_{k < l} max(0, 1 - |p_k - p_l|) / (K (K - 1) I O) over the (input, output) pairs,
  averaged over the sets; the official recipe adds its square to the loss after epoch 20. 0 for a
  model without DCLS layers.

  The distance's gradient at coincident elements is 0 (torch.cdist's), not NaN.
  """
  sets = dcls_position_sets(model)
  if not sets:
    return jnp.zeros((), jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for variable in sets:
    p = variable[...]
    kc, cin, cout, _ = p.shape
    pairs = jnp.moveaxis(p.reshape(kc, cin * cout, 2), 0, 1)  # (I O, K, 2)
    squared = jnp.sum(jnp.square(pairs[:, :, None] - pairs[:, None, :]), axis=-1)
    safe = jnp.where(squared > 0, squared, 1.0)
    distance = jnp.where(squared > 0, jnp.sqrt(safe), 0.0)
    upper = jnp.triu(jnp.ones((kc, kc), bool), k=1)
    close = jnp.where(upper, jax.nn.relu(1 - distance), 0.0)
    total = total + 2 * jnp.sum(close) / (kc * max(kc - 1, 1) * cin * cout)
  return total / len(sets)
