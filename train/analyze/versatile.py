"""Versatile filters (Wang et al.): weights, memory and multiplications per layer (Tables 2-4) and
the first layer's filters (Fig. 3). It applies to versatile runs and to LeNet baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

import kshapes_jax as K
from kshapes_jax.analysis import versatile
from kshapes_jax.models.accounting import conv_records
from train.analyze.common import KEPT, markdown_table
from train.trainer import plots

NAME = "versatile"


def applies(run) -> bool:
  return (
    any(isinstance(m, K.nn.VersatileConv) for _, m in nnx.iter_modules(run.model))
    or run.settings.model == "lenet"
  )


def first_conv(model: nnx.Module, input_shape: tuple[int, int, int]) -> K.nn.ConvLayer:
  """The conv layer the input meets first (traced on shapes, no compute)."""
  records = conv_records(model, input_shape)
  if not records:
    raise ValueError("the model has no conv layers")
  return records[0][0]


def first_layer_panels(
  model: nnx.Module, input_shape: tuple[int, int, int]
) -> list[tuple[str, np.ndarray]]:
  """Fig. 3: the first layer's filters; a spatial versatile layer also shows its secondary
  filters."""
  layer = first_conv(model, input_shape)
  if isinstance(layer, K.nn.VersatileConv):
    f = np.asarray(layer.f[...])
    if f.shape[2] != 1:
      raise ValueError("Fig. 3 shows a first layer on one input channel")
    panels = [("primary filters", versatile.filter_mosaic(f, columns=min(10, f.shape[-1])))]
    if layer.mode == "spatial":
      secondary = versatile.secondary_filters(f)[:, :, :, 0, :]  # (s, d, d, O)
      # one row per primary filter: M_1 o f, M_2 o f, ... side by side
      tiles = np.concatenate([secondary[i] for i in range(secondary.shape[0])], axis=-1)
      order = np.arange(tiles.shape[-1]).reshape(secondary.shape[0], -1).T.ravel()
      panels.append(
        (
          "secondary filters M_i o f (row = one filter)",
          versatile.filter_mosaic(tiles[..., order], columns=secondary.shape[0]),
        )
      )
    return panels
  kernel = np.asarray(layer.effective_kernel()[0])
  if kernel.shape[2] != 1:
    raise ValueError("Fig. 3 shows a first layer on one input channel")
  return [(f"{kernel.shape[-1]} filters", versatile.filter_mosaic(kernel, columns=10))]


def compute(run, **options) -> list[dict[str, Any]]:
  """The cost table of the model as built (Proposition 1), one row per layer and a total."""
  del options
  return versatile.cost_table(run.model, run.dataset.image_shape)


def render(run, results: list[dict[str, Any]], out: Path, title: str) -> list[str]:
  plots.plot_filters(
    first_layer_panels(run.model, run.dataset.image_shape),
    out / "versatile_filters.png",
    f"{title}: first layer (Fig. 3)",
  )
  return [
    "## Cost (versatile filters, Proposition 1)",
    "",
    *markdown_table(
      ("layer", "weights", "memory (KB)", "multiplications"),
      [
        (r["layer"], f"{r['weights']:,}", f"{r['memory_kb']:.1f}", f"{r['multiplications']:,}")
        for r in results
      ],
    ),
    "",
    "![filters](versatile_filters.png)",
    "",
  ]


def summarise(suite, figures: Path) -> list[str]:
  lines = [
    "Cost of the models as built (Proposition 1; `kshapes_jax.analysis.versatile.cost_table`), "
    "next to Tables 2-3:",
    "",
  ]
  table = []
  for row in suite.rows(NAME):
    config = row.config()
    model = K.models.create(config.model, conv=config.conv, **dict(config.model_kwargs))
    total = versatile.cost_table(model, (28, 28, 1))[-1]
    pw, pm, pf = row.paper_cost
    table.append(
      (
        f"`{row.name}`",
        f"{total['weights']:,}",
        f"{pw:.3g}",
        f"{total['memory_kb']:.1f}",
        f"{pm}",
        f"{total['multiplications']:,}",
        f"{pf:.4g}",
      )
    )
  lines += markdown_table(
    ("row", "weights", "paper", "memory (KB)", "paper", "multiplications", "paper"), table
  ) + [""]
  panels, figure = [], figures / "versatile_fig3.png"
  for row in suite.figure_rows(NAME):
    here = suite.on_disk(row.name)
    if here:
      run = suite.load(row.name, here[0])
      for name, mosaic in first_layer_panels(run.model, run.dataset.image_shape):
        panels.append((f"{row.figure}: {name}", mosaic))
  if panels:
    plots.plot_filters(panels, figure, "first-layer filters, first seed of each row (Fig. 3)")
    lines += ["![](repro/versatile_fig3.png)", ""]
  elif figure.exists() and any(
    suite.seeds(r.name) or suite.aggregate(r.name) for r in suite.figure_rows(NAME)
  ):
    lines += [KEPT, "", "![](repro/versatile_fig3.png)", ""]
  return lines
