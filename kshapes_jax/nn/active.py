"""ActiveConv layer: the Active Convolution Unit (Jeon and Kim 2017)."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import _validation, kernels
from kshapes_jax import conv as conv_lib
from kshapes_jax.conv import Padding
from kshapes_jax.gradients import normalize_position_grad
from kshapes_jax.kernels import active_kernel, clip_positions, lattice_offsets, radius_for_positions
from kshapes_jax.nn.base import (
  ConvLayer,
  PlainConv,
  check_layer,
  record,
  set_bias,
  set_value,
  symmetric_padding,
)
from kshapes_jax.nn.variables import Position

# effective kernel + one conv, or the literal bilinear gather
ActiveImpl = Literal["splat", "gather"]
PositionInit = Literal["lattice", "circle"]  # where the synapses start


def bucket_radius(positions, margin: float, cap: int) -> int:
  """The smallest R >= 1 that holds every position moved by up to `margin` pixels, at most `cap`.

  "Extent bucketing": a training loop that reads the positions every N
  steps and re-jits the ACU with this radius pays for a (2R + 1)^2 conv only
  as far as the synapses have actually moved; `margin` bounds how far they
  can move before the next check (0 while they are frozen). Runs on the host.
  """
  p = np.abs(np.asarray(positions, np.float64))
  if p.size and not np.all(np.isfinite(p)):
    raise ValueError("positions must be finite")
  if margin < 0:
    raise ValueError(f"margin must be >= 0 pixels, got {margin}")
  need = max(1, math.ceil(float(p.max()) + margin)) if p.size else 1
  return min(need, cap)


def initial_positions(synapses: int, init: PositionInit) -> np.ndarray:
  """Positions (K, 2), synapse 0 at the origin: the 3x3 lattice or a unit circle.

  NumPy on the host: they are constants, also when the model is built under
  jit or eval_shape.
  """
  if init == "lattice":
    size = math.isqrt(synapses)
    if size * size != synapses or size % 2 == 0:
      raise ValueError(f"init='lattice' needs an odd square number of synapses, got {synapses}")
    return lattice_offsets(size)
  if init == "circle":
    angles = 2 * math.pi * np.arange(synapses - 1) / max(synapses - 1, 1)
    ring = np.stack([np.cos(angles), -np.sin(angles)], axis=-1)
    return np.concatenate([np.zeros((1, 2)), ring]).astype(np.float32)
  raise ValueError(f"init must be 'lattice' or 'circle', got {init!r}")


class ActiveConv(ConvLayer):
  """ACU with K synapses; synapse 0 is fixed at the origin (not a parameter).

  By default K = kernel_size^2 synapses start on the lattice of the
  kernel_size conv it replaces (9 for 3x3, the paper's ACU) and the kernel
  radius is kernel_size // 2 + 1 (2 for 3x3), one ring of room to move.

  The learned positions are a `Position` parameter of shape (K - 1, 2), or
  (G, K - 1, 2) with `position_groups=G` (one set per group of output
  channels). `impl="splat"` builds the (2R + 1)^2 kernel and makes one conv;
  `impl="gather"` runs the literal bilinear gather (the reference). `radius`
  R is static: positions beyond it act clipped to it (`acting_positions`), in every path, jitted
  or not (their gradient outward stops at the edge); `bucket_radius` and the trainer's extent
  bucketing keep R above where the positions go.
  `padding` is that of the nominal kernel_size conv the ACU replaces, so the
  output grid does not depend on R.
  """

  padding: int  # the nominal conv's, on every side (the radius' padding derives from it)
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
    synapses: int | None = None,
    init: PositionInit = "lattice",
    position_groups: int = 1,
    radius: int | None = None,
    impl: ActiveImpl = "splat",
    normalize_grad: bool = True,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer(
      "ActiveConv", in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation
    )
    if dilation != 1:
      raise ValueError(
        "ActiveConv learns where its synapses are, so it takes no dilation: a dilated start "
        f"is positions scaled by it (init='lattice' then multiply); got dilation={dilation}"
      )
    # defaults: the kxk lattice it replaces, with one ring of room to move
    synapses = kernel_size * kernel_size if synapses is None else synapses
    radius = kernel_size // 2 + 1 if radius is None else radius
    if impl not in get_args(ActiveImpl):
      raise ValueError(f"impl must be 'splat' or 'gather', got {impl!r}")
    # synapse 0 is fixed at the origin: one synapse would learn no position (a 1x1 conv)
    synapses = _validation.positive_int("ActiveConv synapses", synapses, minimum=2)
    position_groups = _validation.positive_int("ActiveConv position_groups", position_groups)
    radius = kernels.check_radius(radius, in_features * out_features)
    if out_features % position_groups:
      raise ValueError(f"position_groups={position_groups} must divide out_features={out_features}")
    if position_groups > 1 and position_groups % groups:
      raise ValueError(
        f"position_groups={position_groups} must be a multiple of groups={groups}, so that "
        "each feature group has its own position sets"
      )
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
    self.padding = symmetric_padding(padding, kernel_size, int_only_for="ActiveConv")
    # radius may be lowered later by extent bucketing; max_radius is what was asked for
    self.radius, self.max_radius, self.impl, self.normalize_grad = (
      radius,
      radius,
      impl,
      normalize_grad,
    )
    self.synapses, self.position_groups = synapses, position_groups
    self.set_numerics(precision, dtype, param_dtype)
    start = initial_positions(synapses, init)
    if np.max(np.abs(start)) > radius:
      raise ValueError(
        f"radius {radius} does not hold the initial positions (max |p| = {np.max(np.abs(start))})"
      )
    shape = (synapses - 1, 2) if position_groups == 1 else (position_groups, synapses - 1, 2)
    self.positions = Position(jnp.asarray(np.broadcast_to(start[1:], shape)))
    cin = in_features // groups
    self.weights = self.init_weight(rngs, (synapses, cin, out_features), synapses * cin)
    self.bias = self.init_bias(out_features) if use_bias else None

  def all_positions(self) -> jax.Array:
    """(K, 2) or (G, K, 2): the fixed origin followed by the learned positions."""
    p = self.positions[...]
    if self.normalize_grad:
      p = normalize_position_grad(p)
    return jnp.asarray(kernels.with_origin(p))

  @property
  def conv_padding(self):
    return self.padding + self.radius - self.kernel_size // 2

  def acting_positions(self) -> jax.Array:
    """`all_positions` clipped into [-radius, radius]: where the synapses act, in every path
    (splat and gather, eager and jitted, deploy), so that a network does not depend on whether it
    was jitted."""
    return clip_positions(self.all_positions(), self.radius)

  def effective_kernel(self):
    kernel = active_kernel(self.weights[...], self.acting_positions(), self.radius)
    return kernel, None if self.bias is None else self.bias[...]

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl == "splat":
      return super().__call__(x)
    y = self.gather(x)
    record(self, x, y)
    return y

  def gather(
    self, x: jax.Array, offsets: jax.Array | None = None, modulation: jax.Array | None = None
  ) -> jax.Array:
    """The literal bilinear gather (`conv.active_conv_gather`) with this layer's weights, grid and
    bias.

    Args:
      x: (N, H, W, C) input.
      offsets: optional (N, H', W', K, 2) per-pixel moves added to the shared positions
        (`DeformableActiveConv`); one position set and groups=1 only.
      modulation: optional (N, H', W', K) factors, as for `active_conv_gather`.
    """
    positions, weights = self.acting_positions(), self.weights[...]
    if offsets is not None:
      if self.groups != 1 or self.position_groups != 1:
        raise ValueError(
          "per-pixel offsets need one position set and groups=1, got "
          f"position_groups={self.position_groups}, groups={self.groups}"
        )
      positions = positions + offsets

    def gather(xg, wg, pg):
      return conv_lib.active_conv_gather(
        xg,
        wg,
        pg,
        stride=self.stride,
        padding=self.conv_padding,
        radius=self.radius,
        modulation=modulation,
        **self.numerics,
      )

    if self.groups == 1:
      y = gather(x, weights, positions)
    else:  # group g: its inputs, its outputs' weights and (per group of outputs) position sets
      cin, og = weights.shape[1], weights.shape[2] // self.groups
      if positions.ndim == 3:  # (G, K, 2), G a multiple of groups (checked at construction)
        positions = positions.reshape(self.groups, -1, *positions.shape[1:])
      y = jnp.concatenate(
        [
          gather(
            x[..., g * cin : (g + 1) * cin],
            weights[..., g * og : (g + 1) * og],
            positions if positions.ndim == 2 else positions[g],
          )
          for g in range(self.groups)
        ],
        axis=-1,
      )
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y

  def trained_output(self, x: jax.Array) -> jax.Array:
    """The literal bilinear gather (eq. 5-9), whatever `impl` says."""
    return self.gather(x)

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """The synapses on the kxk lattice take the kernel's taps.

    Raises:
      ValueError: unless the layer has k * k synapses on the lattice and one position set.
    """
    k = self.kernel_size
    if self.synapses != k * k or self.position_groups != 1:
      raise ValueError(
        f"init='preserve' puts the {k}x{k} kernel's taps on the ACU's lattice; it needs "
        f"synapses={k * k} and position_groups=1, got {self.synapses} and {self.position_groups}"
      )
    positions = np.asarray(self.all_positions())
    if not np.allclose(positions, np.round(positions)):
      raise ValueError("init='preserve' needs the ACU's lattice start (init='lattice')")
    # where each synapse lands in the (2R + 1)^2 kernel: a one-hot weight per synapse
    eye = jnp.eye(k * k)[:, None, :]
    taps = np.asarray(active_kernel(eye, jnp.asarray(positions), self.radius))[:, :, 0]
    r, c = self.radius, k // 2
    window = taps[r - c : r + c + 1, r - c : r + c + 1]  # (k, k, K): one-hot per cell
    # on the host in float64: a one-hot contraction, exact (no TF32 on a GPU)
    set_value(self.weights, np.einsum("hwk,hwio->kio", window, np.asarray(kernel, np.float64)))
    set_bias(self, bias)

  def prepare_deploy(self) -> None:
    """Shrinks the radius to the smallest that holds the (clipped) positions: what `deploy`
    makes, decided on the host so that a jitted deploy sees it as static."""
    self.radius = radius_for_positions(self.acting_positions())

  def deploy(self) -> PlainConv:
    """A plain conv with the SMALLEST radius that holds the (clipped) positions (traced, as in a
    jitted deploy: the layer's radius, which `prepare_deploy` shrank)."""
    positions = self.acting_positions()
    concrete = _validation.concrete_or_none(positions)
    radius = self.radius if concrete is None else radius_for_positions(concrete)
    kernel = active_kernel(self.weights[...], positions, radius)
    padding = self.padding + radius - self.kernel_size // 2
    bias = None if self.bias is None else self.bias[...]
    return PlainConv.from_kernel(
      kernel, bias, stride=self.stride, padding=padding, groups=self.groups, **self.numerics
    )

  def weight_count(self) -> int:
    return int(self.weights[...].size)


# ---------------------------------------------------------------- extent bucketing of a model's
# ACUs


def active_convs(model: nnx.Module) -> list[tuple[tuple, ActiveConv]]:
  """(path, layer) of every ActiveConv of a model, in a fixed order (the order of a radius list)."""
  return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, ActiveConv)]


def active_radii(model: nnx.Module) -> list[int]:
  """Each ActiveConv's radius, in `active_convs` order."""
  return [layer.radius for _, layer in active_convs(model)]


def with_radii(model: nnx.Module, radii: list[int] | tuple[int, ...]) -> nnx.Module:
  """A copy of `model` whose ActiveConvs (in `active_convs` order) have these radii; `model` is
  unchanged.

  Raises:
    ValueError: unless there is one radius per ActiveConv.
  """
  copy = nnx.clone(model)
  layers = active_convs(copy)
  if len(layers) != len(radii):
    raise ValueError(f"expected one radius per ActiveConv ({len(layers)}), got {len(radii)}")
  for (_, layer), r in zip(layers, radii):
    layer.radius = int(r)
  return copy


def check_bucketable(model: nnx.Module) -> None:
  """ValueError, naming the layer, unless every ACU is a splat ACU with the normalized gradient.

  Bucketing bounds a synapse's move by the unit-length normalized gradient (eq. 15-16), and only
  the splat path has a radius that sets the conv's size.
  """
  for path, layer in active_convs(model):
    if layer.impl != "splat" or not layer.normalize_grad:
      raise ValueError(
        f"extent bucketing needs splat ACUs with the normalized gradient; "
        f"{'/'.join(map(str, path))} has impl={layer.impl!r}, normalize_grad={layer.normalize_grad}"
      )


def sgd_position_margin(
  step: int, every: int, warmup: int, learning_rate: float, momentum: float
) -> float:
  """How far (pixels) SGD can move a synapse from `step` to the next bucketing check.

  With the normalized gradient (a unit vector per synapse) and momentum m, one step moves a
  coordinate by at most learning_rate / (1 - m) (Nesterov included), where learning_rate is the
  positions' (the schedule's top times their multiplier); while they are frozen (the first `warmup`
  steps) they do not move. The next check is the next multiple of `every`, or the warm-up's end.
  """
  next_check = (step // every + 1) * every
  if step < warmup:
    next_check = min(next_check, warmup)
  moving = max(0, next_check - max(step, warmup))
  return moving * learning_rate / (1 - momentum)


def bucketed_radii(model: nnx.Module, params: nnx.State, margin: float) -> list[int]:
  """Each ACU's radius that holds its positions in `params` moved by up to `margin`, capped at the
  layer's own radius (so nothing is clipped that the fixed-radius model would not clip)."""
  radii = []
  for path, layer in active_convs(model):
    node: Any = params
    for key in path:
      node = node[key]
    radii.append(bucket_radius(np.asarray(node["positions"].get_value()), margin, layer.max_radius))
  return radii
