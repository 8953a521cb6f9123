"""Deterministic GPU runs: XLA's deterministic ops, requested before JAX starts its backend.

On a GPU, XLA picks convolution algorithms by autotuning and some of them
(and scatter-adds, and some reductions) sum in an order that changes from run
to run, so two runs from the same checkpoint drift apart in the last bits
within a few steps. `--xla_gpu_deterministic_ops=true` restricts XLA to
deterministic algorithms. XLA reads XLA_FLAGS once, when the backend starts,
so the flag must be in the environment before the first computation.

CPU runs are deterministic without it, and the flag does nothing there;
TPU runs are deterministic as they are.
"""

from __future__ import annotations

import os
import warnings

import jax

FLAG = "--xla_gpu_deterministic_ops=true"


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge  # noqa: PLC0415  (no public way to ask)

    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # pragma: no cover - a JAX without it: assume started
    return True


def with_flag(xla_flags: str) -> str:
  """XLA_FLAGS with the deterministic-ops flag added, unless it is already set (either way)."""
  if "--xla_gpu_deterministic_ops" in xla_flags:
    return xla_flags
  return f"{xla_flags} {FLAG}".strip()


def request(deterministic: bool) -> bool:
  """Asks XLA for deterministic GPU ops; returns whether a GPU run will have them.

  Sets XLA_FLAGS when JAX has not started its backend yet (the command line
  and a fresh process). When it has, and this is a GPU without the flag,
  warns: the run trains normally, but a resumed run may differ in the last
  bits from an uninterrupted one.
  """
  if not deterministic:
    return False
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG in flags:
    return True
  if not _backend_started():
    os.environ["XLA_FLAGS"] = with_flag(flags)
    return True
  if jax.default_backend() == "gpu":
    warnings.warn(
      "config.deterministic: JAX started its GPU backend before the flag could be set, so this run "
      f"is not deterministic. Start Python with XLA_FLAGS='{FLAG}', or train with `python -m "
      "train.main`.",
      stacklevel=2,
    )
    return False
  return True
