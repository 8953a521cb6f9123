"""The papers' analyses of a trained run: PNGs and a markdown report.

  python -m train.analyze --workdir runs/repro/sn_v4/seed0          # -> runs/.../analysis/report.md
  python -m train.analyze --workdir runs/acb --sections acnet --prune_seeds 5

Sections (default: those the run's layers call for):
  rotate     RotateConv angles: per-layer histograms, Fig. 5 (a) and (b) of the last layer
  acu        ACU positions per layer (Fig. 5/9), their movement over the saved checkpoints (Fig. 6)
  acnet      of the DEPLOYED net: magnitude matrix A (eq. 9-10, Fig. 6), accuracy vs sparsity pruned
             at corners / skeleton / globally (Fig. 5), accuracy on rotated / flipped inputs (Table 4);
             automatic for ACB runs, ask for it for their plain baselines
  versatile  weights / memory / multiplications per layer (Tables 2-4), first-layer filters (Fig. 3)

The run's config.json (written by the trainer) rebuilds the model; the
latest checkpoint (or --step) fills it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx

import kshapes_jax as K
from kshapes_jax.analysis import acnet, active, rotate, versatile
from kshapes_jax.models.accounting import conv_records
from train import input_pipeline
from train import train as trainer

SECTIONS = ("rotate", "acu", "acnet", "versatile")
SPARSITIES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.6)

# ---------------------------------------------------------------- loading a run


@dataclasses.dataclass
class Run:
  """A trained run: its config, data and model (eval mode) at one checkpoint."""

  workdir: Path
  config: ml_collections.ConfigDict
  dataset: input_pipeline.Dataset
  model: nnx.Module
  initial: nnx.Module  # the same model at initialisation (config.seed)
  step: int
  steps: list[int]  # every saved checkpoint


def checkpoint_steps(workdir: str | Path) -> list[int]:
  """The steps of the checkpoints saved in workdir/checkpoints, ascending."""
  ckpt = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()) if ckpt.exists() else []


def saved_state(workdir: str | Path, step: int) -> dict[str, Any]:
  """The trainer's saved state at `step` as nested dicts of arrays (no target needed)."""
  path = (Path(workdir) / "checkpoints" / str(step) / "state").absolute()
  return ocp.StandardCheckpointer().restore(path)


def _lookup(saved: dict, path: tuple) -> np.ndarray:
  node = saved
  for key in path:
    node = node[str(key)]
  return node["value"] if isinstance(node, dict) else node


def load_params(model: nnx.Module, state: dict[str, Any]) -> None:
  """Copies a saved trainer state (params, BN statistics, ACU radii) into `model` in place."""
  for group, variables in (("params", nnx.state(model, nnx.Param)), ("rest", nnx.state(model, nnx.Not(nnx.Param)))):
    for path, var in nnx.to_flat_state(variables):
      try:
        value = _lookup(state[group], path)
      except KeyError as e:
        entry = "/".join(map(str, path))
        raise ValueError(f"the checkpoint has no {group} entry {entry}: is it this model's run?") from e
      var.set_value(jnp.asarray(value, var.get_value().dtype))
  if "radii" in state:
    for (_, layer), r in zip(trainer.active_layers(model), np.asarray(state["radii"]).tolist()):
      layer.radius = int(r)


def load_run(workdir: str | Path, step: int | None = None) -> Run:
  """Rebuilds a run's model from workdir/config.json and fills it from a checkpoint.

  Raises:
    FileNotFoundError: when workdir has no config.json or no checkpoint.
  """
  workdir = Path(workdir)
  if not (workdir / "config.json").exists():
    raise FileNotFoundError(f"{workdir}/config.json not found: is it a workdir of python -m train.main?")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"no checkpoints in {workdir}/checkpoints")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}; saved: {steps}")
  data_cfg = config.data.copy_and_resolve_references()
  data_cfg.seed = config.seed
  dataset = input_pipeline.load(data_cfg)
  model = trainer.build_model(config, dataset)
  initial = nnx.clone(model)
  initial.eval()
  load_params(model, saved_state(workdir, step))
  model.eval()
  return Run(workdir, config, dataset, model, initial, step, steps)


_EVALUATORS: dict[tuple, trainer.Evaluator] = {}


def accuracy(model: nnx.Module, dataset: input_pipeline.Dataset, split: input_pipeline.Split,
             batch_size: int = 1000) -> float:
  """Test accuracy of a model (eval mode) on a split, normalised as in training.

  The compiled evaluation is reused for models of one structure (e.g. the
  pruned copies of a net), so only their values change between calls.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  key = (graphdef, dataset.name, dataset.mean, dataset.std, batch_size)
  if key not in _EVALUATORS:
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    _EVALUATORS[key] = trainer.Evaluator(graphdef, dataset, batch_size, mesh)
  return _EVALUATORS[key](params, rest, split)["accuracy"]


def subset(split: input_pipeline.Split, n: int) -> input_pipeline.Split:
  """The first n examples (all if n <= 0)."""
  return split if n <= 0 or n >= len(split) else input_pipeline.Split(split.images[:n], split.labels[:n])


# ---------------------------------------------------------------- computations


def position_trajectories(workdir: str | Path, initial: nnx.Module) -> tuple[list[int], dict[str, np.ndarray]]:
  """Every ACU's positions (with the origin) at step 0 and every saved checkpoint.

  Args:
    workdir: the run's workdir.
    initial: the run's model at initialisation (step 0).

  Returns:
    steps (0 first), {layer: (T, K, 2) or (T, G, K, 2)}.
  """
  steps = checkpoint_steps(workdir)
  snapshots = {name: [p] for name, p in active.active_layers(initial)}
  probe = nnx.clone(initial)
  for step in steps:
    load_params(probe, saved_state(workdir, step))
    for name, positions in active.active_layers(probe):
      snapshots[name].append(positions)
  return [0, *steps], {name: active.trajectories(s) for name, s in snapshots.items()}


def pruning_curves(deployed: nnx.Module, dataset: input_pipeline.Dataset, split: input_pipeline.Split,
                   sparsities: Sequence[float] = SPARSITIES, seeds: Sequence[int] = (0, 1, 2),
                   regions: Sequence[str] = acnet.REGIONS, batch_size: int = 1000) -> dict[str, np.ndarray]:
  """Accuracy of the pruned deployed net (Fig. 5): {region: (len(seeds), len(sparsities))}, NaN where
  the region cannot hold that sparsity."""
  k = acnet.square_convs(deployed)[0][1].kernel[...].shape[0]
  out = {}
  for region in regions:
    capacity = acnet.region_mask(k, region).mean()
    acc = np.full((len(seeds), len(sparsities)), np.nan)
    for j, sparsity in enumerate(sparsities):
      if sparsity > capacity + 1e-9:
        continue
      if sparsity == 0:  # nothing to draw
        acc[:, j] = accuracy(deployed, dataset, split, batch_size)
        continue
      for i, seed in enumerate(seeds):
        acc[i, j] = accuracy(acnet.prune(deployed, sparsity, region, seed), dataset, split, batch_size)
    out[region] = acc
  return out


def distorted_accuracies(model: nnx.Module, dataset: input_pipeline.Dataset, split: input_pipeline.Split,
                         batch_size: int = 1000) -> dict[str, float]:
  """Table 4: accuracy on the original, 90-degree rotated, 180-degree rotated and up-down flipped split."""
  return {kind: accuracy(model, dataset, input_pipeline.Split(acnet.distort(split.images, kind), split.labels),
                         batch_size) for kind in acnet.DISTORTIONS}


def sections_for(run: Run) -> list[str]:
  """The sections a run's layers call for."""
  kinds = {type(m) for _, m in nnx.iter_modules(run.model)}
  out = []
  if K.nn.RotateConv in kinds:
    out.append("rotate")
  if K.nn.ActiveConv in kinds:
    out.append("acu")
  if K.nn.ACBlock in kinds:
    out.append("acnet")
  if K.nn.VersatileConv in kinds or run.config.model == "lenet":
    out.append("versatile")
  return out


# ---------------------------------------------------------------- plots


def _plt():
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _grid(n: int, columns: int = 3, size: float = 3.2):
  plt = _plt()
  cols = min(columns, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  return plt, fig, axes.ravel()


def _save(plt, fig, path: Path, title: str) -> Path:
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_angle_histograms(layers: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
  plt, fig, axes = _grid(len(layers), columns=4)
  for ax, (name, angles) in zip(axes, layers):
    counts, edges = rotate.angle_histogram(angles, bins=36)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    ax.set(title=f"{name} {angles.shape[0]}x{angles.shape[1]}", xlabel="angle mod 180 (deg)", xlim=(0, 180),
           xticks=[0, 45, 90, 135, 180])
  return _save(plt, fig, path, title)


def _lines(ax, angles: np.ndarray, title: str) -> None:
  """Each angle as a line segment through the origin (angle 0 = right, 90 = up)."""
  for theta in np.deg2rad(angles):
    ax.plot([-np.cos(theta), np.cos(theta)], [-np.sin(theta), np.sin(theta)], color="tab:red", alpha=0.5, lw=1)
  ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", xticks=[], yticks=[],
         title=f"{title}\nconcentration {rotate.axial_concentration(angles):.2f}")


def plot_angles_fig5(name: str, angles: np.ndarray, path: Path, title: str) -> Path:
  plt = _plt()
  fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
  along_in = rotate.angles_along_inputs(angles, 0)
  along_out = rotate.angles_along_outputs(angles, 0)
  _lines(axes[0], along_in, f"(a) output channel 1: {along_in.size} angles")
  axes[1].hist(along_in, bins=18, range=(0, 180), color="tab:red")
  axes[1].set(xlabel="angle mod 180 (deg)", xticks=[0, 45, 90, 135, 180])
  _lines(axes[2], along_out, f"(b) input channel 1: {along_out.size} angles")
  axes[3].hist(along_out, bins=18, range=(0, 180), color="tab:red")
  axes[3].set(xlabel="angle mod 180 (deg)", xticks=[0, 45, 90, 135, 180])
  return _save(plt, fig, path, f"{title}: {name} (RotateConv Fig. 5)")


def plot_positions(layers: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
  plt, fig, axes = _grid(len(layers), columns=3)
  lattice = np.asarray(K.kernels.lattice_positions(3))
  for ax, (name, positions) in zip(axes, layers):
    p = positions.reshape(-1, positions.shape[-2], 2)
    ax.scatter(lattice[:, 0], lattice[:, 1], marker="+", s=80, color="0.6", label="3x3 lattice")
    for g in p:
      ax.scatter(g[:, 0], g[:, 1], s=40, color="tab:blue", alpha=0.8)
    lim = max(1.5, active.extent(p) + 0.5)
    ax.set(xlim=(-lim, lim), ylim=(lim, -lim), aspect="equal", title=f"{name} (extent {active.extent(p):.2f})",
           xlabel="alpha (x, px)", ylabel="beta (y, px)")
    ax.grid(alpha=0.3)
  return _save(plt, fig, path, title)


def plot_movement(steps: Sequence[int], trajectories: dict[str, np.ndarray], path: Path, title: str) -> Path:
  names = list(trajectories)
  shown = [names[0], names[-1]] if len(names) > 1 else names
  plt = _plt()
  fig, axes = plt.subplots(len(shown), 2, figsize=(10, 3.2 * len(shown)), squeeze=False)
  for row, name in zip(axes, shown):
    t = trajectories[name].reshape(len(steps), -1, 2)
    for k in range(t.shape[1]):
      row[0].plot(steps, t[:, k, 0], lw=1)
    row[0].set(title=f"{name}: alpha_k (horizontal)", xlabel="step", ylabel="alpha (px)")
    row[1].plot(steps, active.displacement(t), lw=1)
    row[1].set(title=f"{name}: distance moved", xlabel="step", ylabel="px")
    for ax in row:
      ax.grid(alpha=0.3)
  return _save(plt, fig, path, f"{title} (ACU Fig. 6, one colour per synapse)")


def plot_magnitude(matrix: np.ndarray, path: Path, title: str) -> Path:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(3.6, 3.4))
  ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
  for (r, c), v in np.ndenumerate(matrix):
    ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v > 0.6 else "black")
  ax.set(xticks=[], yticks=[])
  return _save(plt, fig, path, title)


def plot_pruning(sparsities: Sequence[float], curves: dict[str, np.ndarray], path: Path, title: str) -> Path:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  x = 100 * np.asarray(sparsities)
  for region, acc in curves.items():
    ok = ~np.all(np.isnan(acc), axis=0)  # sparsities the region can hold
    mean = np.full(len(x), np.nan)
    std = np.full(len(x), np.nan)
    mean[ok], std[ok] = np.nanmean(100 * acc[:, ok], axis=0), np.nanstd(100 * acc[:, ok], axis=0)
    ax.plot(x[ok], mean[ok], "o-", label=region)
    ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], alpha=0.25)
  ax.set(xlabel="sparsity of every kxk layer (%)", ylabel="test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(plt, fig, path, title)


def plot_filters(panels: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
  for ax, (label, mosaic) in zip(axes[0], panels):
    lim = np.nanmax(np.abs(mosaic))
    ax.imshow(mosaic, cmap="gray", vmin=-lim, vmax=lim)
    ax.set(title=label, xticks=[], yticks=[])
  return _save(plt, fig, path, title)


def first_conv(model: nnx.Module, input_shape: tuple[int, int, int]) -> K.nn.ConvLayer:
  """The conv layer the input meets first (traced on shapes, no compute)."""
  records = conv_records(model, input_shape)
  if not records:
    raise ValueError("the model has no conv layers")
  return records[0][0]


def first_layer_panels(model: nnx.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, np.ndarray]]:
  """Fig. 3: the first layer's filters; a spatial versatile layer also shows its secondary filters."""
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
      panels.append(("secondary filters M_i o f (row = one filter)",
                     versatile.filter_mosaic(tiles[..., order], columns=secondary.shape[0])))
    return panels
  kernel, _ = layer.effective_kernel()
  kernel = np.asarray(kernel)
  if kernel.shape[2] != 1:
    raise ValueError("Fig. 3 shows a first layer on one input channel")
  return [(f"{kernel.shape[-1]} filters", versatile.filter_mosaic(kernel, columns=10))]


# ---------------------------------------------------------------- the report


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def analyze(workdir: str | Path, out: str | Path | None = None, sections: Sequence[str] | None = None,
            step: int | None = None, prune_examples: int = 2000, prune_seeds: int = 3,
            sparsities: Sequence[float] = SPARSITIES) -> dict[str, Any]:
  """Writes the analyses of a run to `out` (default workdir/analysis): PNGs, report.md, results.json.

  Returns:
    The numbers of the report (also in out/results.json).
  """
  run = load_run(workdir, step)
  out = Path(out) if out else run.workdir / "analysis"
  out.mkdir(parents=True, exist_ok=True)
  sections = list(sections) if sections else sections_for(run)
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise ValueError(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
  title = f"{run.config.model} / {run.config.conv} on {run.dataset.name}, step {run.step}"
  lines = [f"# Analysis of {run.workdir}", "", f"{title}. Written by `python -m train.analyze`.", ""]
  results: dict[str, Any] = {"workdir": str(run.workdir), "step": run.step, "sections": sections}

  if "rotate" in sections:
    layers = rotate.rotate_layers(run.model)
    if not layers:
      raise ValueError("section rotate: the model has no RotateConv layers")
    plot_angle_histograms(layers, out / "rotate_histograms.png", title)
    name, angles = layers[-1]
    plot_angles_fig5(name, angles, out / "rotate_fig5.png", title)
    moved = {n: rotate.axial_difference(a, a0) for (n, a), (_, a0) in zip(layers, rotate.rotate_layers(run.initial))}
    rows = [(n, f"{a.shape[0]}x{a.shape[1]}", f"{rotate.axial_concentration(a):.3f}",
             " ".join(str(c) for c in rotate.angle_histogram(a, bins=4)[0]),
             f"{moved[n].mean():.1f} / {np.median(moved[n]):.1f} / {moved[n].max():.1f}") for n, a in layers]
    results["rotate"] = {n: {"concentration": rotate.axial_concentration(a),
                             "histogram_45deg": rotate.angle_histogram(a, bins=4)[0].tolist(),
                             "turned_mean_deg": float(moved[n].mean())} for n, a in layers}
    lines += ["## RotateConv angles", "",
              "Concentration = |mean exp(2i theta)|: 1 when every kernel is the same line, 0 when evenly spread.",
              "Turned: the angle between each kernel's line now and at initialisation (config.seed).", "",
              *markdown_table(("layer", "I x O", "concentration", "angles in [0,45) [45,90) [90,135) [135,180)",
                       "turned mean / median / max (deg)"), rows),
              "", "![histograms](rotate_histograms.png)", "", f"Fig. 5 for the last layer ({name}):", "",
              "![fig5](rotate_fig5.png)", ""]

  if "acu" in sections:
    layers = active.active_layers(run.model)
    if not layers:
      raise ValueError("section acu: the model has no ActiveConv layers")
    plot_positions(layers, out / "acu_positions.png", f"{title}: learned positions (ACU Fig. 5)")
    steps, traj = position_trajectories(run.workdir, run.initial)
    plot_movement(steps, traj, out / "acu_movement.png", title)
    moved = {n: float(active.displacement(t)[-1].max()) for n, t in traj.items()}
    rows = [(n, f"{active.extent(p):.3f}", f"{moved[n]:.3f}") for n, p in layers]
    results["acu"] = {"extent": {n: active.extent(p) for n, p in layers}, "max_moved": moved,
                      "checkpoint_steps": steps, "positions": {n: p.tolist() for n, p in layers}}
    lines += ["## ACU positions", "",
              f"Checkpoints read for the movement: {len(steps)} (steps {steps[0]}..{steps[-1]}).",
              "", *markdown_table(("layer", "extent max|alpha|,|beta| (px)", f"largest move since step {steps[0]} (px)"), rows),
              "", "![positions](acu_positions.png)", "", "![movement](acu_movement.png)", ""]

  if "acnet" in sections:
    deployed = K.deploy(run.model)
    convs = acnet.square_convs(deployed)
    if not convs:
      raise ValueError("section acnet: the deployed model has no kxk convs")
    matrix = acnet.magnitude_matrix([layer.kernel[...] for _, layer in convs])
    plot_magnitude(matrix, out / "acnet_magnitude.png", f"A over {len(convs)} layers")
    test = subset(run.dataset.test, prune_examples)
    curves = pruning_curves(deployed, run.dataset, test, sparsities, range(prune_seeds)) if prune_seeds else {}
    if curves:
      plot_pruning(sparsities, curves, out / "acnet_pruning.png",
                   f"{title}\n{len(test)} test images, mean +- std over {prune_seeds} masks")
    distorted = distorted_accuracies(deployed, run.dataset, run.dataset.test)
    results["acnet"] = {"magnitude_matrix": matrix.tolist(), "sparsities": list(sparsities),
                        "pruning": {r: a.tolist() for r, a in curves.items()}, "prune_examples": len(test),
                        "distorted": distorted}
    prune_rows = [(r, *("-" if np.all(np.isnan(col)) else f"{100 * np.nanmean(col):.2f} +- {100 * np.nanstd(col):.2f}"
                        for col in a.T)) for r, a in curves.items()]
    lines += ["## ACNet (deployed network)", "", "Average kernel magnitude matrix A (eq. 9-10):", "",
              *markdown_table([""] * matrix.shape[1], [[f"{v:.3f}" for v in row] for row in matrix]), "",
              "![A](acnet_magnitude.png)", "",
              *([f"Accuracy (%) vs sparsity of every kxk layer, {len(test)} test images, {prune_seeds} masks:", "",
                 *markdown_table(("region", *(f"{100 * s:g}%" for s in sparsities)), prune_rows), "",
                 "![pruning](acnet_pruning.png)", ""] if curves else []),
              "Accuracy (%) on distorted test images (Table 4):", "",
              *markdown_table(acnet.DISTORTIONS, [[f"{100 * distorted[k]:.2f}" for k in acnet.DISTORTIONS]]), ""]

  if "versatile" in sections:
    rows = versatile.cost_table(run.model, run.dataset.image_shape)
    plot_filters(first_layer_panels(run.model, run.dataset.image_shape), out / "versatile_filters.png",
                 f"{title}: first layer (Fig. 3)")
    results["versatile"] = rows
    lines += ["## Cost (versatile filters, Proposition 1)", "",
              *markdown_table(("layer", "weights", "memory (KB)", "multiplications"),
                      [(r["layer"], f"{r['weights']:,}", f"{r['memory_kb']:.1f}", f"{r['multiplications']:,}")
                       for r in rows]), "", "![filters](versatile_filters.png)", ""]

  (out / "report.md").write_text("\n".join(lines))
  (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
  return results


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a run of python -m train.main.", required=True)
flags.DEFINE_string("out", "", "Output folder (default WORKDIR/analysis).")
flags.DEFINE_list("sections", [], f"Some of {list(SECTIONS)} (default: those the run's layers call for).")
flags.DEFINE_integer("step", None, "Checkpoint step to analyse (default: the latest).")
flags.DEFINE_integer("prune_examples", 2000, "Test images per pruned evaluation (0: all).")
flags.DEFINE_integer("prune_seeds", 3, "Random masks per sparsity (0: no pruning curves).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    results = analyze(FLAGS.workdir, FLAGS.out or None, FLAGS.sections or None, FLAGS.step,
                      FLAGS.prune_examples, FLAGS.prune_seeds)
  except (FileNotFoundError, ValueError, input_pipeline.DataError) as e:
    raise app.UsageError(str(e)) from e
  out = FLAGS.out or str(Path(FLAGS.workdir) / "analysis")
  print(f"sections {results['sections']}: wrote {out}/report.md")


if __name__ == "__main__":
  app.run(main)
