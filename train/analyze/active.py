"""Active Convolution Unit (Jeon and Kim): learned positions per layer (Fig. 5/9) and their movement
(Fig. 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

import kshapes_jax as K
from kshapes_jax.analysis import active
from train.analyze.common import first_seed_figures, markdown_table, per_layer_table
from train.trainer import plots

NAME = "active"


def applies(run) -> bool:
  return any(isinstance(m, K.nn.ActiveConv) for _, m in nnx.iter_modules(run.model))


def position_trajectories(run) -> tuple[list[int], dict[str, np.ndarray]]:
  """Every ACU's positions (with the origin) at step 0 and at every saved checkpoint.

  Returns:
    steps (0 first), {layer: (T, K, 2) or (T, G, K, 2)}.
  """
  snapshots = {name: [p] for name, p in active.active_layers(run.initial)}
  for step in run.steps:
    for name, positions in active.active_layers(run.model_at(step)):
      snapshots[name].append(positions)
  return [0, *run.steps], {name: active.trajectories(s) for name, s in snapshots.items()}


def compute(run, **options) -> dict[str, Any]:
  """Extent per layer, the largest move since step 0, the positions and their trajectories."""
  del options
  layers = active.active_layers(run.model)
  if not layers:
    raise ValueError("section active: the model has no ActiveConv layers")
  steps, traj = position_trajectories(run)
  return {
    "extent": {n: active.extent(p) for n, p in layers},
    "max_moved": {n: float(active.displacement(t)[-1].max()) for n, t in traj.items()},
    "checkpoint_steps": steps,
    "positions": {n: p.tolist() for n, p in layers},
    "trajectories": {n: t.tolist() for n, t in traj.items()},
  }


def render(run, results: dict[str, Any], out: Path, title: str) -> list[str]:
  layers = active.active_layers(run.model)
  steps = results["checkpoint_steps"]
  plots.plot_positions(
    layers, out / "acu_positions.png", f"{title}: learned positions (ACU Fig. 5)"
  )
  plots.plot_movement(
    steps,
    {n: np.asarray(t) for n, t in results["trajectories"].items()},
    out / "acu_movement.png",
    title,
  )
  rows = [(n, f"{results['extent'][n]:.3f}", f"{results['max_moved'][n]:.3f}") for n, _ in layers]
  return [
    "## ACU positions",
    "",
    f"Checkpoints read for the movement: {len(steps)} (steps {steps[0]}..{steps[-1]}).",
    "",
    *markdown_table(
      ("layer", "extent max|alpha|,|beta| (px)", f"largest move since step {steps[0]} (px)"), rows
    ),
    "",
    "![positions](acu_positions.png)",
    "",
    "![movement](acu_movement.png)",
    "",
  ]


def summarise(suite, figures: Path) -> list[str]:
  lines = [
    "Learned positions: extent max(|alpha|, |beta|) per ACU layer (px; 1 = the 3x3 lattice), "
    "mean +- std over seeds:",
    "",
  ]
  lines += per_layer_table(suite, NAME, "extent")
  for row in suite.figure_rows(NAME):
    lines += first_seed_figures(
      suite,
      row.name,
      figures,
      f"`{row.name}` seed {{number}}: learned positions (Fig. 5) and their movement (Fig. 6):",
      [
        ("acu_positions.png", f"acu_positions_{row.name}.png"),
        ("acu_movement.png", f"acu_movement_{row.name}.png"),
      ],
    )
  return lines
