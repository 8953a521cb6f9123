"""deploy(model): the same network made only of plain convolutions (ours, or flax.nnx's)."""

from __future__ import annotations

from typing import Any, Literal

from flax import nnx

from kshapes_jax._modules import map_modules
from kshapes_jax.nn.base import ConvLayer, Dense, PlainConv

Target = Literal["kshapes", "flax"]


def _deployed(path: tuple, module: Any) -> nnx.Module | None:
  del path
  return module.deploy() if callable(getattr(module, "deploy", None)) else None


def _fused(model: nnx.Module) -> nnx.Module:
  """A copy of `model` with every module that has a `deploy()` replaced by what it returns."""
  return map_modules(nnx.clone(model), _deployed)


# one program for the whole model: op by op, each kernel's many small ops are dispatched (and
# compiled) one at a time
_fused_jit = nnx.jit(_fused)


def flax_conv(layer: PlainConv) -> nnx.Conv:
  """The `flax.nnx.Conv` that computes as a PlainConv: its kernel, bias, stride, padding,
  dilation, groups, precision and dtypes."""
  kernel = layer.kernel[...]
  bias = None if layer.bias is None else layer.bias[...]
  k = kernel.shape[0]
  conv = nnx.eval_shape(  # shapes only: the values are the layer's
    lambda: nnx.Conv(
      kernel.shape[2] * layer.groups,
      kernel.shape[3],
      (k, k),
      strides=layer.stride,
      padding=layer.padding,
      kernel_dilation=layer.dilation,
      feature_group_count=layer.groups,
      use_bias=bias is not None,
      dtype=layer.dtype,
      param_dtype=kernel.dtype,
      precision=layer.precision,  # type: ignore[arg-type]
      rngs=nnx.Rngs(0),
    )
  )
  conv.kernel = nnx.Param(kernel)
  if bias is not None:
    conv.bias = nnx.Param(bias)
  return conv


def flax_linear(layer: Dense) -> nnx.Linear:
  """The `flax.nnx.Linear` with our Dense's weights and numerics."""
  kernel = layer.kernel[...]
  bias = None if layer.bias is None else layer.bias[...]
  linear = nnx.eval_shape(
    lambda: nnx.Linear(
      *kernel.shape,
      use_bias=bias is not None,
      dtype=layer.dtype,
      param_dtype=kernel.dtype,
      precision=layer.precision,
      rngs=nnx.Rngs(0),
    )
  )
  linear.kernel = nnx.Param(kernel)
  if bias is not None:
    linear.bias = nnx.Param(bias)
  return linear


def _to_flax(path: tuple, module: nnx.Module) -> nnx.Module | None:
  del path
  if isinstance(module, PlainConv):
    return flax_conv(module)
  if isinstance(module, Dense):
    return flax_linear(module)
  return None


def deploy(model: nnx.Module, *, to: Target = "kshapes", jit: bool = True) -> nnx.Module:
  """Returns a copy of `model` in eval mode with every shaped conv made plain.

  RotateConv -> its 3x3 kernel; ACBlock -> one kxk conv with bias (BN per
  branch folded, eq. 6-7); ActiveConv -> the dense kernel of the smallest
  radius that holds its positions; VersatileConv -> the stacked kernel; a
  conv followed by its BN (`ConvBN`) -> one conv with the BN folded in. BNs
  that come before a conv (pre-activation) stay. The copy's eval outputs
  equal the model's eval outputs; the model itself is not changed.

  Args:
    model: any NNX module.
    to: "kshapes" (the convs are `kshapes_jax.nn.PlainConv`) or "flax"
      (they are `flax.nnx.Conv` with the folded bias, our `Dense` layers
      `flax.nnx.Linear`: a user's own model then holds flax.nnx layers only,
      and its state loads into the same model written with flax.nnx alone).
    jit: fuse the whole model in one jitted program (the default: bitwise the same arrays as
      op by op, False, and several times faster on a deep model).

  Raises:
    TypeError: for anything that is not an nnx.Module.
    ValueError: for an unknown `to`.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"deploy takes a flax nnx.Module, got {type(model).__name__}")
  if to not in ("kshapes", "flax"):
    raise ValueError(f"to must be 'kshapes' or 'flax', got {to!r}")
  copy = nnx.clone(model)
  for _, module in nnx.iter_modules(copy):
    if isinstance(module, ConvLayer):
      module.prepare_deploy()  # static choices from concrete values (the ACU's radius)
  copy = _fused_jit(copy) if jit else _fused(copy)
  if to == "flax":
    copy = map_modules(copy, _to_flax)
  copy.eval()
  return copy
