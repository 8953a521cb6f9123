"""convert(model, kind): a copy of any Flax NNX model whose kxk convolutions are shaped convs.

A user's own network, written with `flax.nnx.Conv` (or our `PlainConv`), in
containers of any depth (attributes, `nnx.Sequential`, lists, dicts), gets
ACBs, RotateConvs, ACUs or versatile filters in one call, trains as it is,
and deploys back to plain convolutions (`deploy`, also `to="flax"`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx

from kshapes_jax import _validation
from kshapes_jax._modules import map_modules, path_str
from kshapes_jax.nn.base import ConvGeometry, ConvLayer, PlainConv
from kshapes_jax.nn.kinds import Kind, get_kind

Init = Literal["preserve", "fresh"]


@dataclasses.dataclass(frozen=True)
class ConvertedLayer:
  """What `convert` did to one layer.

  Attributes:
    path: where the layer is in the model, e.g. "blocks/0/conv1".
    kind: the conv kind it became.
    kernel_size: its k.
    preserved: the converted layer computes the original's function in eval
      mode, to float rounding (init="preserve" with a kind that holds the
      kernel exactly: `preserves == "exact"`).
    kernel_error: ||K' - K|| / ||K|| of the converted layer's effective
      kernel against the original one (0 when preserved; a fit's error
      otherwise, RotateConv's; None for init="fresh").
  """

  path: str
  kind: str
  kernel_size: int
  preserved: bool
  kernel_error: float | None


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


def _read(path: str, layer: Any) -> tuple[ConvGeometry, jax.Array, jax.Array | None]:
  """(geometry, kernel, bias) of an nnx.Conv or a PlainConv."""
  if isinstance(layer, PlainConv):
    bias = None if layer.bias is None else layer.bias[...]
    geometry = ConvGeometry(
      layer.in_features,
      layer.out_features,
      layer.kernel_size,
      layer.stride,
      layer.padding,
      layer.dilation,
      layer.groups,
      bias is not None,
      **{**layer.numerics, "param_dtype": layer.kernel[...].dtype},
    )
    return geometry, layer.kernel[...], bias
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
  geometry = ConvGeometry(
    layer.in_features,
    layer.out_features,
    size[0],
    _square(path, "strides", layer.strides),
    _padding(path, layer.padding),
    _square(path, "kernel_dilation", layer.kernel_dilation),
    layer.feature_group_count,
    bias is not None,
    precision=layer.precision,
    dtype=layer.dtype,
    param_dtype=layer.kernel[...].dtype,
  )
  return geometry, layer.kernel[...], bias


def _build(path: str, kind: Kind, g: ConvGeometry, rngs: nnx.Rngs, options: dict) -> ConvLayer:
  try:
    new = kind.from_geometry(g, rngs=rngs, **options)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: cannot become {kind.name!r}: {e}") from e
  if new.out_features != g.out_features:  # versatile layers round their maps up
    raise ValueError(
      f"{path}: {kind.name!r} would make {new.out_features} maps, not the layer's "
      f"{g.out_features} (versatile filters come in multiples of s * n per group); leave it out "
      "with where="
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


def _convert_layer(
  path: str, kind: Kind, layer: nnx.Module, init: Init, rngs: nnx.Rngs, options: dict
) -> tuple[nnx.Module, ConvertedLayer]:
  g, kernel, bias = _read(path, layer)
  new = _build(path, kind, g, rngs, options)
  if init == "fresh":
    return new, ConvertedLayer(path, kind.name, g.kernel_size, False, None)
  try:
    new.init_from_kernel(kernel, bias)
  except ValueError as e:
    raise ValueError(f"{path}: {kind.name!r} cannot hold the layer's kernel: {e}") from e
  view = nnx.clone(new)
  view.eval()  # ACB: the kernel its identity BNs fuse to
  error = _relative(view.effective_kernel()[0], kernel)
  return new, ConvertedLayer(path, kind.name, g.kernel_size, kind.preserves == "exact", error)


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

  init="preserve" fills each new layer from the original kernel and bias
  with the kind's `init_from_kernel`, so that the converted model computes
  the original function in eval mode where the kind can hold the kernel:
  plain (a copy); ACB (square branch = the kernel, 1xk and kx1 branches 0,
  BNs the identity in eval mode, the bias as the square BN's shift; in
  training mode the BNs normalize on batch statistics, as ACNet's do); ACU
  (the synapses on the kxk lattice carry the kernel's taps). RotateConv (3x3
  only) starts from the least-squares line kernel on a 1-degree grid of
  angles: an approximation whose error `report` receives. Versatile filters
  cannot hold an arbitrary kernel: they need init="fresh", which initialises
  every layer as the kind does.

  Args:
    model: any NNX module; it is not changed.
    kind: a registered conv kind (`kshapes_jax.nn.CONV_KINDS`).
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
  conv_kind = get_kind(kind)
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
    new, record = _convert_layer(where_str, conv_kind, module, init, rngs, options)
    done.append(record)
    return new

  converted = map_modules(copy, swap)
  for record in done:
    if report is not None:
      report(record)
  return converted
