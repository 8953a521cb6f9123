"""Markdown table of parameter counts, every model x conv kind.

python -m kshapes_jax.models.table
"""

from __future__ import annotations

from kshapes_jax.models.registry import abstract, count_params, list_models, spec
from kshapes_jax.nn import CONV_KINDS


def _human(n: int) -> str:
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def table_header() -> str:
  """The table's two header lines: one column per conv kind."""
  kinds = list(CONV_KINDS)
  return "| model | " + " | ".join(kinds) + " |\n" + "|---" * (len(kinds) + 1) + "|"


def parameter_row(name: str) -> str:
  """One model's row: its parameter count per kind, '-' where the kind does not apply.

  Built from shapes only (`abstract`: no compute).
  """
  cells = []
  for kind in CONV_KINDS:
    if kind in spec(name).kinds:
      cells.append(_human(count_params(abstract(name, conv=kind))))
    else:
      cells.append("-")
  return f"| {name} | " + " | ".join(cells) + " |"


def parameter_table() -> str:
  """One row per model, one column per kind."""
  return "\n".join([table_header(), *(parameter_row(name) for name in list_models())])


if __name__ == "__main__":
  print(parameter_table())
