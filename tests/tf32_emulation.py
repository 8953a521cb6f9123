"""Emulates a GPU's TF32 convolutions and matmuls on the CPU, to find tests that assume float32.

On an NVIDIA GPU (Ampere and later) a float32 `dot_general` or convolution at
DEFAULT precision rounds its operands to TF32 (8-bit exponent, 10-bit
mantissa) and accumulates in float32. The CPU computes them in full float32,
so a test that compares float32 convs at 1e-5 passes in CI and fails on a
GPU. `install()` re-registers the CPU lowering of both primitives so that,
at DEFAULT precision on float32 operands, the operands are first rounded
with `lax.reduce_precision(x, 8, 10)`: the same rounding, on the CPU.

  KSHAPES_EMULATE_TF32=1 pytest        # the suite as a GPU's precision sees it

`tests/conftest.py` installs it when that variable is set. It reaches only
the test process (not training subprocesses) and models only the operand
rounding (not cuDNN's algorithms), so it is a check, not a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax._src.interpreters import mlir
from jax._src.lax import convolution as _convolution
from jax._src.lax import lax as _lax

_REDUCED = (None, "default", "fastest", "bfloat16", "tensorfloat32", "ANY_F32_F32_F32")


def _is_default(precision) -> bool:
  if precision is None:
    return True
  if isinstance(precision, tuple):
    return all(p in (None, lax.Precision.DEFAULT) for p in precision)
  return precision == lax.Precision.DEFAULT


def _round_tf32(lhs, rhs, *, precision, _prim, **params):
  del precision
  lhs, rhs = lax.reduce_precision(lhs, 8, 10), lax.reduce_precision(rhs, 8, 10)
  return _prim.bind(lhs, rhs, precision=(lax.Precision.HIGHEST, lax.Precision.HIGHEST), **params)


def install() -> None:
  """Makes DEFAULT-precision float32 convs and dot_generals on the CPU round like TF32."""
  for prim in (_lax.dot_general_p, _convolution.conv_general_dilated_p):
    entry = mlir._platform_specific_lowerings["cpu"].get(prim) or mlir._lowerings[prim]  # noqa: SLF001
    original = entry.rule
    emulated = mlir.lower_fun(
      lambda *a, _p=prim, **kw: _round_tf32(*a, _prim=_p, **kw), multiple_results=False
    )

    def rule(ctx, lhs, rhs, *, precision, _original=original, _emulated=emulated, **params):
      float32 = all(a.dtype == jnp.float32 for a in ctx.avals_in)
      reduced = jax.config.jax_default_matmul_precision in _REDUCED
      if float32 and reduced and _is_default(precision):
        return _emulated(ctx, lhs, rhs, precision=precision, **params)
      return _original(ctx, lhs, rhs, precision=precision, **params)

    mlir.register_lowering(prim, rule, platform="cpu")
