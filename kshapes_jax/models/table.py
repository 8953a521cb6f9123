"""Markdown table of parameter counts, every model x conv kind.

python -m kshapes_jax.models.table
"""

from __future__ import annotations

import functools

from flax import nnx

from kshapes_jax.models.registry import count_params, create, list_models, spec
from kshapes_jax.nn import CONV_KINDS


def _human(n: int) -> str:
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def table_header() -> str:
  """The table's two header lines: one column per conv kind."""
  kinds = list(CONV_KINDS)
  return "| model | " + " | ".join(kinds) + " |\n" + "|---" * (len(kinds) + 1) + "|"


def parameter_row(name: str) -> str:
  """One model's row: its parameter count per kind, '-' where the kind does not apply.

  Built from shapes only (no compute). Tracing is quadratic in the model's size
  under JAX 0.10 (NNX probes each traced value's `.sharding`, whose error message
  walks the whole trace: jax-ml/jax#40041), so the deepest models are slow to count.
  """
  cells = []
  for kind in CONV_KINDS:
    if kind in spec(name).kinds:
      model = nnx.eval_shape(functools.partial(create, name, conv=kind))
      cells.append(_human(count_params(model)))
    else:
      cells.append("-")
  return f"| {name} | " + " | ".join(cells) + " |"


def parameter_table() -> str:
  """One row per model, one column per kind."""
  return "\n".join([table_header(), *(parameter_row(name) for name in list_models())])


if __name__ == "__main__":
  print(parameter_table())
