"""DCLS (Khalfaoui-Hassani et al.): where each layer's elements went in their window, how far
from the centre, how many the clamp holds at the edge, and the Gaussian's widths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kshapes_jax.analysis import dcls
from train.analyze.common import first_seed_figures, markdown_table, per_layer_table
from train.trainer import plots

NAME = "dcls"


def applies(run) -> bool:
  return bool(dcls.dcls_layers(run.model))


def compute(run, **options) -> dict[str, Any]:
  """Per layer: the spread (mean distance from the centre, px) at step 0 and now, the share of
  coordinates on the window's edge, the mean Gaussian width, and the density over the window."""
  del options
  layers = dcls.dcls_layers(run.model)
  if not layers:
    raise ValueError("section dcls: the model has no DclsConv layers")
  initial = {layer.name: layer for layer in dcls.dcls_layers(run.initial)}
  return {
    "spread": {x.name: dcls.spread(x.positions) for x in layers},
    "initial_spread": {x.name: dcls.spread(initial[x.name].positions) for x in layers},
    "at_bound": {x.name: dcls.at_bound(x.positions, x.extent) for x in layers},
    "sigma": {x.name: None if x.sigmas is None else float(x.sigmas.mean()) for x in layers},
    "density": {x.name: dcls.density(x.positions, x.extent).tolist() for x in layers},
  }


def render(run, results: dict[str, Any], out: Path, title: str) -> list[str]:
  layers = dcls.dcls_layers(run.model)
  plots.plot_dcls_positions(layers, out / "dcls_positions.png", f"{title}: DCLS positions")
  rows = [
    (
      x.name,
      f"{results['initial_spread'][x.name]:.3f}",
      f"{results['spread'][x.name]:.3f}",
      f"{100 * results['at_bound'][x.name]:.1f}",
      "-" if results["sigma"][x.name] is None else f"{results['sigma'][x.name]:.3f}",
    )
    for x in layers
  ]
  return [
    "## DCLS positions",
    "",
    *markdown_table(
      ("layer", "spread at step 0 (px)", "spread now (px)", "on the edge (%)", "mean sigma (px)"),
      rows,
    ),
    "",
    "![positions](dcls_positions.png)",
    "",
  ]


def summarise(suite, figures: Path) -> list[str]:
  lines = [
    "DCLS: spread of the elements (mean distance from the window's centre, px) per layer, mean "
    "+- std over seeds:",
    "",
  ]
  lines += per_layer_table(suite, NAME, "spread")
  for row in suite.figure_rows(NAME):
    lines += first_seed_figures(
      suite,
      row.name,
      figures,
      f"`{row.name}` seed {{number}}: the elements' density over each window:",
      [("dcls_positions.png", f"dcls_positions_{row.name}.png")],
    )
  return lines
