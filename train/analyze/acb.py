"""ACNet (Ding et al.) on the DEPLOYED net: magnitude matrix A (eq. 9-10, Fig. 6), accuracy vs
sparsity pruned at corners / skeleton / globally (Fig. 5), accuracy on rotated / flipped inputs
(Table 4).

It applies to ACB runs by itself; their plain baselines ask for it by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

import kshapes_jax as K
from kshapes_jax.analysis import acb
from train import data
from train.analyze.common import fmt, markdown_table
from train.trainer import plots
from train.trainer.evaluation import accuracy

NAME = "acb"
SPARSITIES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.6)


# the test examples of a streamed dataset the section holds in memory (5,000 at 224 px: 750 MB)
STREAMED_TEST_EXAMPLES = 5000


def applies(run) -> bool:
  return any(isinstance(m, K.nn.ACBlock) for _, m in nnx.iter_modules(run.model))


def subset(split: data.Held, n: int) -> data.Held:
  """The first n examples (all if n <= 0)."""
  return (
    split if n <= 0 or n >= len(split) else data.MemorySplit(split.images[:n], split.labels[:n])
  )


def pruning_curves(
  deployed: nnx.Module,
  dataset: data.Dataset,
  split: data.Held,
  sparsities: Sequence[float] = SPARSITIES,
  seeds: Sequence[int] = (0, 1, 2),
  regions: Sequence[str] = acb.REGIONS,
  batch_size: int = 1000,
) -> dict[str, np.ndarray]:
  """Accuracy of the pruned deployed net (Fig. 5): {region: (len(seeds), len(sparsities))}, NaN
  where the region of some kxk layer (every one is pruned) cannot hold that sparsity."""
  sizes = {layer.kernel[...].shape[0] for _, layer in acb.square_convs(deployed)}
  out = {}
  for region in regions:
    # every kxk layer is pruned: the smallest kernel's region bounds the sparsity (AlexNet's 3x3)
    capacity = min(acb.region_mask(k, region).mean() for k in sizes)
    acc = np.full((len(seeds), len(sparsities)), np.nan)
    for j, sparsity in enumerate(sparsities):
      if sparsity > capacity + 1e-9:
        continue
      if sparsity == 0:  # nothing to draw
        acc[:, j] = accuracy(deployed, dataset, split, batch_size)
        continue
      for i, seed in enumerate(seeds):
        acc[i, j] = accuracy(
          acb.prune(deployed, sparsity, region, seed), dataset, split, batch_size
        )
    out[region] = acc
  return out


def distorted_accuracies(
  model: nnx.Module,
  dataset: data.Dataset,
  split: data.Held,
  batch_size: int = 1000,
) -> dict[str, float]:
  """Table 4: accuracy on the original, 90-degree rotated, 180-degree rotated and up-down flipped
  split."""
  return {
    kind: accuracy(
      model,
      dataset,
      data.MemorySplit(acb.distort(split.images, kind), split.labels),
      batch_size,
    )
    for kind in acb.DISTORTIONS
  }


def magnitude(deployed: nnx.Module) -> tuple[np.ndarray, int]:
  """A (eq. 9-10) over the kxk layers of a deployed model of its most common k (the smaller on a
  tie: ACNet's AlexNet has one 11x11, one 5x5 and three 3x3), and how many there are."""
  convs = acb.square_convs(deployed)
  if not convs:
    raise ValueError("section acb: the deployed model has no kxk convs")
  sizes = [layer.kernel[...].shape[0] for _, layer in convs]
  k = max(sorted(set(sizes)), key=sizes.count)
  kernels = [layer.kernel[...] for _, layer in convs if layer.kernel[...].shape[0] == k]
  return acb.magnitude_matrix(kernels), len(kernels)


def compute(
  run,
  *,
  prune_examples: int = 2000,
  prune_seeds: int = 3,
  sparsities: Sequence[float] = SPARSITIES,
  **options,
) -> dict[str, Any]:
  """A (trained and at initialisation), the pruning curves (prune_seeds masks per sparsity on the
  first prune_examples test images; none for prune_seeds=0) and the distorted accuracies, of the
  deployed net."""
  del options
  deployed = K.deploy(run.model)
  matrix, layers = magnitude(deployed)
  initial = magnitude(K.deploy(run.initial))[0]
  # a streamed test split (ImageNet) is analysed on an evenly spread subset held in memory
  full = run.dataset.test.held(STREAMED_TEST_EXAMPLES)
  test = subset(full, prune_examples)
  curves = (
    pruning_curves(deployed, run.dataset, test, sparsities, range(prune_seeds))
    if prune_seeds
    else {}
  )
  return {
    "magnitude_matrix": matrix.tolist(),
    "initial_magnitude_matrix": initial.tolist(),
    "layers": layers,
    "sparsities": list(sparsities),
    "pruning": {r: a.tolist() for r, a in curves.items()},
    "prune_examples": len(test),
    "distorted": distorted_accuracies(deployed, run.dataset, full),
    "distorted_examples": len(full),
  }


def render(run, results: dict[str, Any], out: Path, title: str) -> list[str]:
  del run  # everything is in the results
  matrix = np.asarray(results["magnitude_matrix"])
  sparsities, n = results["sparsities"], results["prune_examples"]
  curves = {r: np.asarray(a, np.float64) for r, a in results["pruning"].items()}
  distorted = results["distorted"]
  plots.plot_magnitude(matrix, out / "acnet_magnitude.png", f"A over {results['layers']} layers")
  seeds = len(next(iter(curves.values()))) if curves else 0
  if curves:
    plots.plot_pruning(
      sparsities,
      curves,
      out / "acnet_pruning.png",
      f"{title}\n{n} test images, mean +- std over {seeds} masks",
    )
  prune_rows = [
    (
      r,
      *(
        "-"
        if np.all(np.isnan(col))
        else f"{100 * np.nanmean(col):.2f} +- {100 * np.nanstd(col):.2f}"
        for col in a.T
      ),
    )
    for r, a in curves.items()
  ]
  return [
    "## ACNet (deployed network)",
    "",
    "Average kernel magnitude matrix A (eq. 9-10):",
    "",
    *markdown_table([""] * matrix.shape[1], [[f"{v:.3f}" for v in row] for row in matrix]),
    "",
    "![A](acnet_magnitude.png)",
    "",
    *(
      [
        f"Accuracy (%) vs sparsity of every kxk layer, {n} test images, {seeds} masks:",
        "",
        *markdown_table(("region", *(f"{100 * s:g}%" for s in sparsities)), prune_rows),
        "",
        "![pruning](acnet_pruning.png)",
        "",
      ]
      if curves
      else []
    ),
    "Accuracy (%) on distorted test images (Table 4):",
    "",
    *markdown_table(acb.DISTORTIONS, [[f"{100 * distorted[k]:.2f}" for k in acb.DISTORTIONS]]),
    "",
  ]


def _skeleton_line(row: str, when: str, a: np.ndarray) -> str:
  k = a.shape[0]
  skeleton = acb.skeleton_mask(k)
  return (
    f"- `{row}` {when}: centre {a[k // 2, k // 2]:.3f}, skeleton mean {a[skeleton].mean():.3f}, "
    f"other positions mean {a[~skeleton].mean():.3f}, corners "
    f"{np.mean([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]]):.3f}"
  )


def _magnitude_and_pruning(suite, figures: Path) -> list[str]:
  """A (trained and at initialisation) and the pruning curves of the rows whose figures the report
  shows."""
  matrices, initial, curves = {}, {}, {}
  sparsities: list[float] = []
  for row in (r.name for r in suite.figure_rows(NAME)):
    results = [suite.results(row, s)[NAME] for s in suite.seeds(row)]
    if not results:
      continue
    matrices[row] = np.mean([r["magnitude_matrix"] for r in results], axis=0)
    initial[row] = np.mean([r["initial_magnitude_matrix"] for r in results], axis=0)
    sparsities = results[0]["sparsities"]
    curves[row] = {
      region: np.concatenate([np.asarray(r["pruning"][region], np.float64) for r in results])
      for region in acb.REGIONS
    }
    plots.plot_magnitude(
      matrices[row],
      figures / f"acnet_magnitude_{row}.png",
      f"A, {row}, mean of {len(results)} seeds",
    )
    plots.plot_pruning(
      sparsities,
      curves[row],
      figures / f"acnet_pruning_{row}.png",
      f"{row}: {len(results)} seeds x masks, {results[0]['prune_examples']} test images",
    )
  if not matrices:
    return []
  lines = [
    "Average kernel magnitude matrix A of the deployed 5x5 layers (eq. 9-10), mean over seeds; "
    "the paper's Fig. 6 (ResNet-56, 3x3): centre 1.000, skeleton above 0.666 and corners below "
    "0.400 for ACNet.",
    "",
  ]
  for row, m in matrices.items():
    lines += [
      _skeleton_line(row, "trained", m),
      _skeleton_line(row, "at initialisation (same seeds)", initial[row]),
    ]
  lines += ["", " ".join(f"![](repro/acnet_magnitude_{row}.png)" for row in matrices), ""]
  lines += [
    "Accuracy (%) after pruning a fraction of every 5x5 layer's weights at random in a region "
    "(Fig. 5), mean +- std over seeds x 3 masks:",
    "",
  ]
  table = [
    (
      f"`{row}`",
      region,
      *(
        "-"
        if np.all(np.isnan(col))
        else f"{100 * np.nanmean(col):.1f} +- {100 * np.nanstd(col):.1f}"
        for col in acc.T
      ),
    )
    for row, c in curves.items()
    for region, acc in c.items()
  ]
  lines += markdown_table(("row", "region", *(f"{100 * s:g}%" for s in sparsities)), table) + [""]
  return lines + [" ".join(f"![](repro/acnet_pruning_{row}.png)" for row in curves), ""]


def summarise(suite, figures: Path) -> list[str]:
  lines = _magnitude_and_pruning(suite, figures)
  table = []
  for row in suite.analysed_rows(NAME):
    results = [suite.results(row.name, s)[NAME] for s in suite.seeds(row.name)]
    if results:
      table.append(
        (
          f"`{row.name}`",
          *(fmt([100 * r["distorted"][k] for r in results]) for k in acb.DISTORTIONS),
          " / ".join(f"{v:.2f}" for v in row.paper_distorted),
        )
      )
  if table:
    lines += [
      "Accuracy (%) on the whole test set rotated or flipped (Table 4; the paper's numbers are "
      "ResNet-18 on ImageNet, trained with left-right flips; ours had no augmentation):",
      "",
      *markdown_table(("row", *acb.DISTORTIONS, "paper: original / 90 / 180 / flip"), table),
      "",
    ]
  return lines
