"""Markdown table of parameter counts, every model x conv kind.

  python -m kshapes_jax.models.table
"""

from __future__ import annotations

from flax import nnx

from kshapes_jax.models.registry import count_params, create, list_models, spec
from kshapes_jax.nn import CONV_KINDS


def _human(n: int) -> str:
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def parameter_table() -> str:
  """One row per model, one column per kind; built from shapes only (no compute)."""
  kinds = list(CONV_KINDS)
  lines = ["| model | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
  for name in list_models():
    cells = []
    for kind in kinds:
      if kind in spec(name).kinds:
        model = nnx.eval_shape(lambda: create(name, conv=kind))
        cells.append(_human(count_params(model)))
      else:
        cells.append("-")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(parameter_table())
