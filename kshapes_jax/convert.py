"""convert(model, kind): a copy of any Flax NNX model whose kxk convolutions are shaped convs.

A user's own network, written with `flax.nnx.Conv` (or our `PlainConv`), in
containers of any depth (attributes, `nnx.Sequential`, lists, dicts), gets
ACBs, RotateConvs, ACUs or versatile filters in one call, trains as it is,
and deploys back to plain convolutions (`deploy`, also `to="flax"`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kshapes_jax import _validation
from kshapes_jax._modules import map_modules, path_str
from kshapes_jax.kernels import active_kernel, rotate_kernel
from kshapes_jax.nn import CONV_KINDS, PlainConv, RotateConv, make_conv

Init = Literal["preserve", "fresh"]
# kinds whose padding sets other convs' (ACB's branches, the ACU's radius): one int per side
_INT_PADDING_KINDS = ("acb", "active")
# a 1-degree grid for fitting RotateConv's angle to a given 3x3 kernel
_FIT_ANGLES = np.arange(180.0)


@dataclasses.dataclass(frozen=True)
class ConvertedLayer:
  """What `convert` did to one layer.

  Attributes:
    path: where the layer is in the model, e.g. "blocks/0/conv1".
    kind: the conv kind it became.
    kernel_size: its k.
    preserved: the converted layer computes the original's function in eval
      mode, to float rounding (init="preserve" with a kind that can hold
      the kernel).
    kernel_error: ||K' - K|| / ||K|| of the converted layer's effective
      kernel against the original one (0 when preserved; RotateConv's fit
      otherwise; None for init="fresh").
  """

  path: str
  kind: str
  kernel_size: int
  preserved: bool
  kernel_error: float | None


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """A conv's geometry and values, read off `nnx.Conv` or `PlainConv`."""

  in_features: int
  out_features: int
  kernel_size: int
  stride: Any
  padding: Any
  dilation: int
  groups: int
  kernel: jax.Array
  bias: jax.Array | None
  numerics: dict


def _square(path: str, what: str, value: Any) -> int:
  """An int, or a pair of equal ints, as one int."""
  values = (1, 1) if value is None else _validation.pair(f"{path}: {what}", value)
  if values[0] != values[1]:
    raise ValueError(f"{path}: {what} {value!r} is not the same on both axes; the kinds take one")
  return values[0]


def _padding(path: str, padding: Any) -> Any:
  """Flax's padding forms as ours: 'SAME' / 'VALID', an int, or ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"{path}: padding {padding!r} cannot be converted; 'SAME', 'VALID' or ints")
    return padding.upper()
  if _validation.is_int(padding):
    return int(padding)
  given = [(p, p) if _validation.is_int(p) else tuple(p) for p in padding]
  if len(given) != 2 or not all(len(p) == 2 and all(map(_validation.is_int, p)) for p in given):
    raise ValueError(f"{path}: padding {padding!r} is not one for a 2-D conv")
  pads = tuple((int(a), int(b)) for a, b in given)
  return pads[0][0] if len({*pads[0], *pads[1]}) == 1 else pads


def _geometry(path: str, layer: Any) -> _Geometry:
  """`layer`: an nnx.Conv or a PlainConv."""
  if isinstance(layer, PlainConv):
    numerics = {**layer.numerics, "param_dtype": layer.kernel[...].dtype}
    return _Geometry(
      layer.in_features,
      layer.out_features,
      layer.kernel_size,
      layer.stride,
      layer.padding,
      layer.dilation,
      layer.groups,
      layer.kernel[...],
      None if layer.bias is None else layer.bias[...],
      numerics,
    )
  size = (
    tuple(layer.kernel_size)
    if not _validation.is_int(layer.kernel_size)
    else 2 * (layer.kernel_size,)
  )
  if len(size) != 2:
    raise ValueError(f"{path}: a {len(size)}-D conv (kernel_size {size}); the kinds are 2-D")
  if size[0] != size[1]:
    raise ValueError(
      f"{path}: kernel_size {size} is not square; the kinds build kxk kernels "
      "(pass where= to leave this layer as it is)"
    )
  if _square(path, "input_dilation", layer.input_dilation) != 1:
    raise ValueError(f"{path}: input_dilation (a transposed conv) cannot be converted")
  if layer.mask is not None:
    raise ValueError(f"{path}: a masked conv cannot be converted: the kinds build their kernel")
  bias = layer.bias[...] if layer.use_bias and layer.bias is not None else None
  return _Geometry(
    layer.in_features,
    layer.out_features,
    size[0],
    _square(path, "strides", layer.strides),
    _padding(path, layer.padding),
    _square(path, "kernel_dilation", layer.kernel_dilation),
    layer.feature_group_count,
    layer.kernel[...],
    bias,
    {"precision": layer.precision, "dtype": layer.dtype, "param_dtype": layer.kernel[...].dtype},
  )


def _int_padding(path: str, kind: str, g: _Geometry) -> int:
  """ACB's and the ACU's padding: one int, what 'SAME' is at stride 1 for an odd kernel."""
  p = g.padding
  if p == "VALID":
    return 0
  if p == "SAME":
    if g.stride == 1 and g.kernel_size % 2:
      return g.dilation * (g.kernel_size // 2)
    raise ValueError(
      f"{path}: kind {kind!r} takes one int padding per side; 'SAME' here "
      f"(stride {g.stride}, kernel {g.kernel_size}) depends on the input size: give the conv "
      "an int padding"
    )
  if not _validation.is_int(p):
    raise ValueError(f"{path}: kind {kind!r} takes one int padding per side, got {p!r}")
  return p


def _build(path: str, kind: str, g: _Geometry, rngs: nnx.Rngs, options: dict) -> Any:
  padding = _int_padding(path, kind, g) if kind in _INT_PADDING_KINDS else g.padding
  try:
    new = make_conv(
      kind,
      g.in_features,
      g.out_features,
      g.kernel_size,
      stride=g.stride,
      padding=padding,
      use_bias=g.bias is not None,
      groups=g.groups,
      dilation=g.dilation,
      rngs=rngs,
      **{**g.numerics, **options},
    )
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: cannot become {kind!r}: {e}") from e
  if new.out_features != g.out_features:  # versatile layers round their maps up
    raise ValueError(
      f"{path}: {kind!r} would make {new.out_features} maps, not the layer's {g.out_features} "
      "(versatile filters come in multiples of s * n per group); leave it out with where="
    )
  return new


def _relative(got: jax.Array, want: jax.Array) -> float:
  """||got - want|| / ||want||, want zero-padded to got's size if smaller (an ACU's kernel has
  room to move)."""
  a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
  margin = (a.shape[0] - b.shape[0]) // 2
  b = np.pad(b, ((margin, margin), (margin, margin), (0, 0), (0, 0)))
  norm = np.linalg.norm(b)
  return float(np.linalg.norm(a - b) / norm) if norm > 0 else float(np.linalg.norm(a))


def _set(variable: Any, value: Any) -> None:
  """Sets an nnx.Variable to `value` in the variable's dtype."""
  variable.set_value(jnp.asarray(value, variable[...].dtype))


def _preserve_acb(layer: Any, g: _Geometry) -> None:
  """Square = the kernel, 1xk / kx1 = 0, the square BN the identity in eval mode (a new BN has
  mean 0, var 1 and shift 0: its scale sqrt(1 + eps) cancels the eps), the original bias as its
  shift. The asymmetric branches' BNs then give 0 in eval mode whatever their scale."""
  _set(layer.square, g.kernel)
  for branch in (layer.hor, layer.ver):
    if branch is not None:
      _set(branch, jnp.zeros_like(branch[...]))
  square_bn: Any = layer.square_bn if layer.bn_mode == "branch" else layer.sum_bn
  _set(square_bn.scale, jnp.full_like(square_bn.scale[...], np.sqrt(1 + square_bn.epsilon)))
  if g.bias is not None:
    _set(square_bn.bias, g.bias)


def _preserve_active(path: str, layer: Any, g: _Geometry) -> None:
  """The lattice synapses take the kernel's taps."""
  k = g.kernel_size
  if layer.synapses != k * k or layer.position_groups != 1:
    raise ValueError(
      f"{path}: init='preserve' puts the {k}x{k} kernel's taps on the ACU's lattice; it needs "
      f"synapses={k * k} and position_groups=1, got {layer.synapses} and {layer.position_groups}"
    )
  positions = np.asarray(layer.all_positions())
  if not np.allclose(positions, np.round(positions)):
    raise ValueError(f"{path}: init='preserve' needs the lattice start (init='lattice')")
  # where each synapse lands in the (2R + 1)^2 kernel: a one-hot weight per synapse
  taps = active_kernel(jnp.eye(k * k)[:, None, :], jnp.asarray(positions), layer.radius)[:, :, 0]
  r, c = layer.radius, k // 2
  window = np.asarray(taps)[r - c : r + c + 1, r - c : r + c + 1]  # (k, k, K): one-hot per cell
  weights = jnp.einsum("hwk,hwio->kio", jnp.asarray(window, g.kernel.dtype), g.kernel)
  _set(layer.weights, weights)
  if g.bias is not None:
    _set(layer.bias, g.bias)


@functools.cache
def _line_bases(taps: int) -> np.ndarray:
  """(angles, 9, taps): the RotateConv kernel of each weight alone at each grid angle (the kernel
  is linear in its weights at a fixed angle); one rotate_kernel call, once per version."""
  n = len(_FIT_ANGLES)
  if taps == 3:  # output o = (angle, tap): weight tap of that output 1, the others 0
    weights = np.tile(np.eye(3), (1, n)).reshape(3, 1, 3 * n)
  else:
    weights = np.ones((1, n))
  angles = np.repeat(_FIT_ANGLES, taps)[None, :]
  kernel = np.asarray(rotate_kernel(weights, angles), np.float64)  # (3, 3, 1, n * taps)
  return kernel.reshape(9, n, taps).transpose(1, 0, 2)


def _fit_rotate(layer: Any, g: _Geometry) -> None:
  """The least-squares line kernel on a 1-degree grid of angles, per (input, output) pair."""
  kernel = np.asarray(g.kernel, np.float64).reshape(9, -1)  # (9, I * O)
  taps = 3 if layer.version == 4 else 1
  best_err = np.full(kernel.shape[1], np.inf)
  best_w = np.zeros((taps, kernel.shape[1]))
  best_angle = np.zeros(kernel.shape[1])
  for angle, a in zip(_FIT_ANGLES, _line_bases(taps)):
    w, *_ = np.linalg.lstsq(a, kernel, rcond=None)
    err = np.sum((a @ w - kernel) ** 2, axis=0)
    better = err < best_err
    best_err, best_angle = np.where(better, err, best_err), np.where(better, angle, best_angle)
    best_w[:, better] = w[:, better]
  shape = layer.weights[...].shape
  _set(layer.weights, best_w.reshape(shape) if taps == 3 else best_w[0].reshape(shape))
  _set(layer.angles, best_angle.reshape(layer.angles[...].shape))
  if g.bias is not None:
    _set(layer.bias, g.bias)


def _convert_layer(
  path: str, kind: str, layer: nnx.Module, init: Init, rngs: nnx.Rngs, options: dict
) -> tuple[nnx.Module, ConvertedLayer]:
  g = _geometry(path, layer)
  new = _build(path, kind, g, rngs, options)
  if init == "fresh":
    return new, ConvertedLayer(path, kind, g.kernel_size, False, None)
  if kind == "plain":
    _set(new.kernel, g.kernel)
    if g.bias is not None:
      _set(new.bias, g.bias)
  elif kind == "acb":
    _preserve_acb(new, g)
  elif kind == "active":
    _preserve_active(path, new, g)
  elif isinstance(new, RotateConv):
    _fit_rotate(new, g)
  else:
    raise ValueError(
      f"{path}: {kind!r} cannot hold the layer's kernel (versatile filters are nested masks of "
      "fewer primary filters); use init='fresh'"
    )
  view = nnx.clone(new)
  view.eval()  # ACB: the kernel its identity BNs fuse to
  error = _relative(view.effective_kernel()[0], g.kernel)
  preserved = not isinstance(new, RotateConv)
  return new, ConvertedLayer(path, kind, g.kernel_size, preserved, error)


def _is_conv(node: Any) -> bool:
  return isinstance(node, (nnx.Conv, PlainConv))


def _larger_than_1x1(layer: Any) -> bool:
  size = layer.kernel_size
  return any(s > 1 for s in ((size, size) if _validation.is_int(size) else size))


def convert(
  model: nnx.Module,
  kind: str,
  *,
  where: Callable[[str, nnx.Module], bool] | None = None,
  init: Init = "preserve",
  rngs: nnx.Rngs | None = None,
  report: Callable[[ConvertedLayer], None] | None = None,
  **options,
) -> nnx.Module:
  """A copy of `model` with its convolutions larger than 1x1 made layers of `kind`.

  Every `flax.nnx.Conv` and `kshapes_jax.nn.PlainConv` with a kernel larger
  than 1x1 (and, with `where`, for which `where(path, layer)` is true) is
  replaced; 1x1 convs and everything else stay. The geometry carries over
  exactly: kernel size, strides, padding (ints, pairs, 'SAME', 'VALID'),
  dilation, feature groups, bias, dtype and param_dtype. An ACB replaces the
  conv only: a BN the model has after it stays.

  init="preserve" makes the converted model compute the original function in
  eval mode where the kind can hold the kernel: plain (a copy); ACB (square
  branch = the kernel, 1xk and kx1 branches 0, BNs the identity in eval mode,
  the bias as the square BN's shift; in training mode the BNs normalize on
  batch statistics, as ACNet's do); ACU (the synapses on the kxk lattice
  carry the kernel's taps). RotateConv (3x3 only) starts from the least-
  squares line kernel on a 1-degree grid of angles: an approximation whose
  error `report` receives. Versatile filters cannot hold an arbitrary kernel:
  they need init="fresh", which initialises every layer as the kind does.

  Args:
    model: any NNX module; it is not changed.
    kind: one of `kshapes_jax.nn.CONV_KINDS`.
    where: a predicate on (path, layer), e.g. `lambda path, layer: "stem" not in path`.
    init: "preserve" or "fresh".
    rngs: random streams for the new layers (nnx.Rngs(0) by default).
    report: called with a `ConvertedLayer` for each converted layer.
    **options: the kind's options (e.g. `asymmetric="hor"`, `radius=3`).

  Returns:
    The converted copy; its new layers start in training mode (call
    `.eval()` on it for the preserved eval-mode function).

  Raises:
    ValueError: for an unknown kind or init, or a layer the kind cannot represent (its path
      and the reason in the message).
    TypeError: if `model` is not an nnx.Module.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"convert takes a flax nnx.Module, got {type(model).__name__}")
  if kind not in CONV_KINDS:
    raise ValueError(f"unknown conv kind {kind!r}; expected one of {sorted(CONV_KINDS)}")
  if init not in ("preserve", "fresh"):
    raise ValueError(f"init must be 'preserve' or 'fresh', got {init!r}")
  rngs = rngs or nnx.Rngs(0)
  copy = nnx.clone(model)
  done: list[ConvertedLayer] = []

  def swap(path: tuple, module: nnx.Module) -> nnx.Module | None:
    if not _is_conv(module) or not _larger_than_1x1(module):
      return None
    where_str = path_str(path)
    if where is not None and not where(where_str, module):
      return module
    new, record = _convert_layer(where_str, kind, module, init, rngs, options)
    done.append(record)
    return new

  converted = map_modules(copy, swap)
  for record in done:
    if report is not None:
      report(record)
  return converted
