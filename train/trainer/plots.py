"""Every figure the training system draws: the learning curve and the papers' analysis plots
(PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

import kshapes_jax as K
from kshapes_jax.analysis import active, dcls, rotate


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
  path = Path(path)
  partial = path.with_name(f".{path.name}.partial")  # a crash mid-write leaves the old figure
  fig.savefig(partial, dpi=100, format=path.suffix.lstrip(".") or "png")
  plt.close(fig)
  partial.replace(path)
  return path


def plot_angle_histograms(layers: list[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
  plt, fig, axes = _grid(len(layers), columns=4)
  for ax, (name, angles) in zip(axes, layers):
    counts, edges = rotate.angle_histogram(angles, bins=36)
    ax.bar(
      edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white"
    )
    ax.set(
      title=f"{name} {angles.shape[0]}x{angles.shape[1]}",
      xlabel="angle mod 180 (deg)",
      xlim=(0, 180),
      xticks=[0, 45, 90, 135, 180],
    )
  return _save(plt, fig, path, title)


def _lines(ax, angles: np.ndarray, title: str) -> None:
  """Each angle as a line segment through the origin (angle 0 = right, 90 = up)."""
  for theta in np.deg2rad(angles):
    ax.plot(
      [-np.cos(theta), np.cos(theta)],
      [-np.sin(theta), np.sin(theta)],
      color="tab:red",
      alpha=0.5,
      lw=1,
    )
  ax.set(
    xlim=(-1.1, 1.1),
    ylim=(-1.1, 1.1),
    aspect="equal",
    xticks=[],
    yticks=[],
    title=f"{title}\nconcentration {rotate.axial_concentration(angles):.2f}",
  )


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
    ax.set(
      xlim=(-lim, lim),
      ylim=(lim, -lim),
      aspect="equal",
      title=f"{name} (extent {active.extent(p):.2f})",
      xlabel="alpha (x, px)",
      ylabel="beta (y, px)",
    )
    ax.grid(alpha=0.3)
  return _save(plt, fig, path, title)


def plot_dcls_positions(layers: list, path: Path, title: str) -> Path:
  """Each DCLS layer's element density over its window (`analysis.dcls.density`), the nominal
  kxk's centre marked."""
  plt, fig, axes = _grid(len(layers), columns=3)
  for ax, layer in zip(axes, layers):
    half = layer.extent // 2
    counts = dcls.density(layer.positions, layer.extent)
    ax.imshow(counts, cmap="viridis", extent=(-half - 0.5, half + 0.5, half + 0.5, -half - 0.5))
    ax.scatter([0], [0], marker="+", s=80, color="white")
    ax.set(
      title=f"{layer.name} (spread {dcls.spread(layer.positions):.2f} px)",
      xlabel="dx (px)",
      ylabel="dy (px)",
    )
  return _save(plt, fig, path, title)


def plot_movement(
  steps: Sequence[int], trajectories: dict[str, np.ndarray], path: Path, title: str
) -> Path:
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
    ax.text(
      c, r, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if v > 0.6 else "black"
    )
  ax.set(xticks=[], yticks=[])
  return _save(plt, fig, path, title)


def plot_pruning(
  sparsities: Sequence[float], curves: dict[str, np.ndarray], path: Path, title: str
) -> Path:
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


def learning_curve(history: list[dict], path: Path, title: str) -> Path:
  """Loss and accuracy per epoch, train and test."""
  plt = _plt()
  epochs = [h["epoch"] for h in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
  tested = [h for h in history if "test_loss" in h]
  ax_loss.plot([h["epoch"] for h in tested], [h["test_loss"] for h in tested], "s--", label="test")
  ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
  ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
  ax_acc.plot(
    [h["epoch"] for h in tested], [100 * h["test_accuracy"] for h in tested], "s--", label="test"
  )
  ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  return _save(plt, fig, path, title)
