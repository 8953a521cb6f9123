"""Shape checks shared by the pure functions; every failure is a ValueError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

if TYPE_CHECKING:
  from flax import nnx
from jax.typing import DTypeLike


def shape_of(name: str, x: ArrayLike) -> tuple[int, ...]:
  """Returns the shape of an array-like, raising ValueError if it has none."""
  try:
    return tuple(np.shape(x))
  except Exception as e:  # pragma: no cover - exotic inputs only
    raise ValueError(f"{name} must be an array, got {type(x).__name__}") from e


def require_rank(
  name: str, x: ArrayLike, ranks: int | Sequence[int], layout: str
) -> tuple[int, ...]:
  """Checks the rank of `x`; `layout` names the axes expected, for the message."""
  shape = shape_of(name, x)
  allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
  if len(shape) not in allowed:
    raise ValueError(f"{name} must be {layout}, got shape {shape} (rank {len(shape)})")
  return shape


def require_shape(
  name: str, x: ArrayLike, expected: Sequence[int | None], layout: str
) -> tuple[int, ...]:
  """Checks a full shape; None in `expected` accepts any size on that axis."""
  shape = shape_of(name, x)
  ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
  if not ok:
    want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
    raise ValueError(f"{name} must be {layout} = {want}, got shape {shape}")
  return shape


def concrete_or_none(x: ArrayLike) -> np.ndarray | None:
  """The value of `x` on the host, or None when it is traced (inside jit/grad)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def is_int(value: Any) -> bool:
  """A Python or NumPy integer, not a bool (True is an int to Python, never a size here)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
  """`value` as an int >= minimum; ValueError naming the argument otherwise."""
  if not is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def pair(name: str, value: Any) -> tuple[int, int]:
  """Normalises an int or a pair of positive ints (strides, dilations)."""
  values = (value, value) if is_int(value) else value
  try:
    ok = len(values) == 2 and all(is_int(v) and v >= 1 for v in values)
  except TypeError:  # not a sequence: 1.5, None
    ok = False
  if not ok:
    raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
  return int(values[0]), int(values[1])


def require_rngs(layer: str, rngs: nnx.Rngs | None) -> None:
  """Layers draw their initial parameters from `rngs`; say so instead of an AttributeError later."""
  from flax import nnx

  if not isinstance(rngs, nnx.Rngs):
    raise ValueError(
      f"{layer} needs rngs=nnx.Rngs(seed) to draw its initial parameters, got {rngs!r}"
    )


def floating(dtype: DTypeLike | None) -> np.dtype:
  """`dtype` if it is floating, else the float that integers and bools promote to (float32, or
  float64 under jax_enable_x64): bilinear weights of an integer array would round to 0."""
  dtype = jnp.dtype(dtype)
  return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.result_type(dtype, float)


# lax's names: "bfloat16" / "tensorfloat32" / "float32" are DEFAULT / HIGH / HIGHEST
_PRECISION_NAMES = {
  "default": None,
  "high": lax.Precision.HIGH,
  "highest": lax.Precision.HIGHEST,
  "bfloat16": lax.Precision.DEFAULT,
  "tensorfloat32": lax.Precision.HIGH,
  "float32": lax.Precision.HIGHEST,
}


def precision(value: Any) -> lax.PrecisionLike:
  """Normalises a conv / matmul precision to what lax takes, and keeps it hashable.

  None or "default" -> None (the backend's default: TF32 on a GPU, bf16
  passes on a TPU, float32 on a CPU; `jax.default_matmul_precision` still
  applies); "high" / "highest" (or lax's "tensorfloat32" / "float32") ->
  that `lax.Precision`; a `lax.Precision`, a `lax.DotAlgorithmPreset` or a
  pair of precisions (lhs, rhs) passes as it is.
  """
  if value is None or isinstance(value, (lax.Precision, lax.DotAlgorithmPreset)):
    return value
  if isinstance(value, str) and value.lower() in _PRECISION_NAMES:
    return _PRECISION_NAMES[value.lower()]
  if isinstance(value, tuple) and len(value) == 2:
    pair = tuple(precision(v) for v in value)
    lhs, rhs = (lax.Precision.DEFAULT if p is None else p for p in pair)
    return cast(lax.PrecisionLike, (lhs, rhs))
  raise ValueError(
    f"precision must be None, 'default', 'high', 'highest', a lax.Precision, a pair of them or a "
    f"lax.DotAlgorithmPreset, got {value!r}"
  )


def _floating_dtype(value: Any, message: str) -> np.dtype:
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise ValueError(f"{message}, got {value!r}") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{message}, got {value!r}")
  return dtype


def compute_dtype(value: Any) -> np.dtype | None:
  """None (promote inputs and parameters) or a floating dtype, as a numpy dtype."""
  if value is None:
    return None
  return _floating_dtype(value, "dtype must be None or a floating dtype such as 'bfloat16'")


def param_dtype(value: Any) -> np.dtype:
  """The dtype weights are stored in: float32 by default, or another floating dtype."""
  if value is None:
    return jnp.dtype(jnp.float32)
  return _floating_dtype(
    value, "param_dtype must be a floating dtype such as 'float32' or 'bfloat16'"
  )
