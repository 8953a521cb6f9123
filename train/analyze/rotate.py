"""RotateConv (Ma et al.): the learned angles per layer, their histograms and Fig. 5, how far they
turned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

import kshapes_jax as K
from kshapes_jax.analysis import rotate
from train.analyze.common import first_seed_figures, fmt, markdown_table
from train.trainer import plots

NAME = "rotate"


def applies(run) -> bool:
  return any(isinstance(m, K.nn.RotateConv) for _, m in nnx.iter_modules(run.model))


def compute(run, **options) -> dict[str, Any]:
  """Per layer: axial concentration, the 45-degree histogram and the turn from initialisation
  (deg)."""
  del options
  layers = rotate.rotate_layers(run.model)
  if not layers:
    raise ValueError("section rotate: the model has no RotateConv layers")
  out = {}
  for (name, a), (_, a0) in zip(layers, rotate.rotate_layers(run.initial)):
    moved = rotate.axial_difference(a, a0)
    sector, sector0 = np.floor(rotate.wrap_angles(a) / 45), np.floor(rotate.wrap_angles(a0) / 45)
    out[name] = {
      "concentration": rotate.axial_concentration(a),
      "histogram_45deg": rotate.angle_histogram(a, bins=4)[0].tolist(),
      "turned_mean_deg": float(moved.mean()),
      "turned_median_deg": float(np.median(moved)),
      "turned_max_deg": float(moved.max()),
      "changed_sector": float(np.mean(sector != sector0)),
    }
  return out


def render(run, results: dict[str, Any], out: Path, title: str) -> list[str]:
  layers = rotate.rotate_layers(run.model)
  plots.plot_angle_histograms(layers, out / "rotate_histograms.png", title)
  name, angles = layers[-1]
  plots.plot_angles_fig5(name, angles, out / "rotate_fig5.png", title)
  rows = [
    (
      n,
      f"{a.shape[0]}x{a.shape[1]}",
      f"{results[n]['concentration']:.3f}",
      " ".join(str(c) for c in results[n]["histogram_45deg"]),
      f"{results[n]['turned_mean_deg']:.1f} / {results[n]['turned_median_deg']:.1f} / "
      f"{results[n]['turned_max_deg']:.1f}",
    )
    for n, a in layers
  ]
  return [
    "## RotateConv angles",
    "",
    "Concentration = |mean exp(2i theta)|: 1 when every kernel is the same line, 0 when evenly "
    "spread.",
    "Turned: the angle between each kernel's line now and at initialisation (config.seed).",
    "",
    *markdown_table(
      (
        "layer",
        "I x O",
        "concentration",
        "angles in [0,45) [45,90) [90,135) [135,180)",
        "turned mean / median / max (deg)",
      ),
      rows,
    ),
    "",
    "![histograms](rotate_histograms.png)",
    "",
    f"Fig. 5 for the last layer ({name}):",
    "",
    "![fig5](rotate_fig5.png)",
    "",
  ]


def summarise(suite, figures: Path) -> list[str]:
  lines = [
    "Angles: how far each kernel's line turned from its initial angle (train.analyze, deg) and the "
    "share of angles now in another 45-degree sector, mean over layers, mean +- std over seeds:",
    "",
  ]
  table = []
  for row in suite.analysed_rows(NAME):
    layers = [suite.results(row.name, s)[NAME].values() for s in suite.seeds(row.name)]
    turned = [np.mean([v["turned_mean_deg"] for v in per_layer]) for per_layer in layers]
    # older results have no sector count
    changed = [
      100 * np.mean([v["changed_sector"] for v in per_layer])
      for per_layer in layers
      if all("changed_sector" in v for v in per_layer)
    ]
    table.append((f"`{row.name}`", fmt(turned), fmt(changed)))
  lines += markdown_table(("row", "mean turn (deg)", "angles that changed sector (%)"), table) + [
    ""
  ]
  for row in suite.figure_rows(NAME):
    lines += first_seed_figures(
      suite,
      row.name,
      figures,
      f"`{row.name}` {{seed}}, angle histograms per layer and Fig. 5 of the last layer:",
      [
        ("rotate_histograms.png", f"rotate_hist_{row.name}.png"),
        ("rotate_fig5.png", f"rotate_fig5_{row.name}.png"),
      ],
    )
  return lines
