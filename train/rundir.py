"""The run directory: the one place that knows where a run's files are and how checkpoints are stored.

  WORKDIR/config.json          the config (what `train.analyze` rebuilds the model from)
  WORKDIR/metrics.jsonl        one JSON object per epoch
  WORKDIR/learning_curve.png   loss and accuracy per epoch
  WORKDIR/summary.json         the final numbers, written when the run ends
  WORKDIR/checkpoints/STEP/    orbax: `state` (the TrainState as a dict) and `history` (the metrics)
  WORKDIR/analysis/            what `train.analyze` writes
  WORKDIR/FAILED               left by the suite driver when the run stopped with an error

The trainer, `train.analyze`, the report and the tests all go through
`RunDir`; nothing else spells these paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from train.state import TrainState


class RunDir:
  """One run's directory.

  Args:
    path: the workdir.
    keep_checkpoints: how many checkpoints to keep when saving (None: all).
  """

  def __init__(self, path: str | Path, keep_checkpoints: int | None = None):
    self.path = Path(path).absolute()
    self._keep = keep_checkpoints
    self._manager: ocp.CheckpointManager | None = None

  config_path = property(lambda self: self.path / "config.json")
  metrics_path = property(lambda self: self.path / "metrics.jsonl")
  summary_path = property(lambda self: self.path / "summary.json")
  learning_curve_path = property(lambda self: self.path / "learning_curve.png")
  checkpoint_dir = property(lambda self: self.path / "checkpoints")
  analysis_dir = property(lambda self: self.path / "analysis")
  failed_path = property(lambda self: self.path / "FAILED")

  # ---------------------------------------------------------------- files

  def write_config(self, config: ml_collections.ConfigDict) -> None:
    self.path.mkdir(parents=True, exist_ok=True)
    self.config_path.write_text(config.to_json_best_effort(indent=2) + "\n")

  def read_config(self) -> ml_collections.ConfigDict:
    """The run's config. Raises FileNotFoundError when this is not a run's workdir."""
    if not self.config_path.exists():
      raise FileNotFoundError(f"{self.config_path} not found: is it a workdir of python -m train.main?")
    return ml_collections.ConfigDict(json.loads(self.config_path.read_text()))

  def write_metrics(self, history: list[dict[str, Any]]) -> None:
    self.metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

  def append_metrics(self, record: dict[str, Any]) -> None:
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def read_metrics(self) -> list[dict[str, Any]]:
    if not self.metrics_path.exists():
      return []
    return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

  def write_summary(self, summary: dict[str, Any]) -> None:
    self.summary_path.write_text(json.dumps(summary, indent=2) + "\n")

  def read_summary(self) -> dict[str, Any] | None:
    """The final summary, or None for a run that has not finished."""
    return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else None

  # ---------------------------------------------------------------- checkpoints

  def _checkpoints(self, create: bool = False) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.checkpoint_dir, item_names=("state", "history"),
          options=ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=create))
    return self._manager

  def checkpoint_steps(self) -> list[int]:
    """The steps of the saved checkpoints, ascending."""
    if not self.checkpoint_dir.exists():
      return []
    return sorted(self._checkpoints().all_steps())

  def latest_step(self) -> int | None:
    steps = self.checkpoint_steps()
    return steps[-1] if steps else None

  def checkpoint_step(self, step: int | None = None) -> int:
    """`step` if it was saved (default: the latest); FileNotFoundError, with the saved steps, if not."""
    steps = self.checkpoint_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoints in {self.checkpoint_dir}")
    if step is None:
      return steps[-1]
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.path}; saved: {steps}")
    return step

  def save(self, step: int, state: TrainState, history: list[dict[str, Any]]) -> None:
    """Saves state and history as checkpoint `step` (asynchronously; a step saved already is kept)."""
    manager = self._checkpoints(create=True)
    if manager.latest_step() != step:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state.to_tree()),
                                                 history=ocp.args.JsonSave(history)))

  def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, list[dict[str, Any]]]:
    """Checkpoint `step` (default: the latest) into the structure, dtypes and shardings of `like`.

    Raises:
      FileNotFoundError: when there is no such checkpoint.
    """
    step = self.checkpoint_step(step)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            like.to_tree())
    restored = self._checkpoints().restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    return TrainState.from_tree(restored.state), list(restored.history)

  def wait(self) -> None:
    """Blocks until every save has been written."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None
