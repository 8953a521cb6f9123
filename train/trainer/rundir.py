"""The run directory: the one place that knows where a run's files are, and its lock.

  WORKDIR/config.json          the config (what `train.analyze` rebuilds the model from)
  WORKDIR/metrics.jsonl        one JSON object per epoch
  WORKDIR/learning_curve.png   loss and accuracy per epoch
  WORKDIR/summary.json         the final numbers, written when the run ends
  WORKDIR/checkpoints/STEP/    the checkpoints (train/trainer/checkpoints.py)
  WORKDIR/damaged_checkpoints/ checkpoints that failed to restore or verify, set aside (kept)
  WORKDIR/LOCK                 the PID and host of the run writing here (held with flock)
  WORKDIR/analysis/            what `train.analyze` writes
  WORKDIR/FAILED               left by the suite driver when the run stopped with an error

The trainer, `train.analyze`, the report and the tests all go through
`RunDir`; nothing else spells these paths.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train import json_files, lock
from train.atomic import write_atomic
from train.trainer.checkpoints import Checkpoints
from train.trainer.summary import Summary

if TYPE_CHECKING:
  from train.trainer.settings import Settings


class RunDirError(RuntimeError):
  """A workdir that cannot be used: a file, not writable, or in use by another run."""


class RunDir:
  """One run's directory.

  Args:
    path: the workdir.
    keep_checkpoints: how many checkpoints to keep when saving (None: all).
  """

  def __init__(self, path: str | Path, keep_checkpoints: int | None = None):
    if not str(path).strip():
      raise RunDirError("the workdir is empty: pass --workdir=DIR, the run's directory")
    self.path = Path(path).absolute()
    self.checkpoints = Checkpoints(
      self.checkpoint_dir, self.damaged_dir, keep_checkpoints, self.config_path
    )

  config_path = property(lambda self: self.path / "config.json")
  metrics_path = property(lambda self: self.path / "metrics.jsonl")
  summary_path = property(lambda self: self.path / "summary.json")
  learning_curve_path = property(lambda self: self.path / "learning_curve.png")
  checkpoint_dir = property(lambda self: self.path / "checkpoints")
  damaged_dir = property(lambda self: self.path / "damaged_checkpoints")
  lock_path = property(lambda self: self.path / "LOCK")
  analysis_dir = property(lambda self: self.path / "analysis")
  failed_path = property(lambda self: self.path / "FAILED")

  # ---------------------------------------------------------------- the lock

  @contextlib.contextmanager
  def locked(self, say: Callable[[str], None] = print) -> Iterator[None]:
    """Holds WORKDIR/LOCK (`train.lock`) while the block runs.

    Raises:
      RunDirError: when another live process holds the lock, or the workdir cannot be written.
    """
    self.make()
    with lock.held(
      self.lock_path, RunDirError, "wait for that run to end or use another --workdir", say
    ):
      yield

  def holder(self) -> str | None:
    """Who holds WORKDIR/LOCK now ('pid N on HOST'), or None; takes nothing (for a driver's
    look)."""
    return lock.holder(self.lock_path)

  def make(self) -> None:
    """Creates the workdir; RunDirError, saying why, when it cannot be (a file, no permission, no
    space)."""
    if self.path.is_symlink() and not self.path.exists():
      raise RunDirError(
        f"workdir {self.path} is a symbolic link to {os.readlink(self.path)}, which does not exist"
      )
    if self.path.exists() and not self.path.is_dir():
      raise RunDirError(f"workdir {self.path} exists and is not a directory")
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise RunDirError(f"cannot create workdir {self.path}: {e.strerror}") from e
    if not os.access(self.path, os.W_OK | os.X_OK):
      raise RunDirError(f"workdir {self.path} is not writable")

  # ---------------------------------------------------------------- files

  def write_config(self, settings: Settings) -> None:
    self.path.mkdir(parents=True, exist_ok=True)
    write_atomic(self.config_path, json.dumps(settings.to_dict(), indent=2) + "\n")

  def read_config(self) -> dict[str, Any]:
    """The run's config as JSON (settings.read takes it). Raises FileNotFoundError when this is not
    a run's workdir."""
    if not self.config_path.exists():
      raise FileNotFoundError(
        f"{self.config_path} not found: is it a workdir of python -m train.main?"
      )
    return json_files.read(
      self.config_path, "restore it, or the checkpoints keep the config they were made with"
    )

  def write_metrics(self, history: list[dict[str, Any]]) -> None:
    write_atomic(self.metrics_path, "".join(json.dumps(h) + "\n" for h in history))

  def append_metrics(self, record: dict[str, Any]) -> None:
    with self.metrics_path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def read_metrics(self) -> list[dict[str, Any]]:
    if not self.metrics_path.exists():
      return []
    return json_files.read_lines(self.metrics_path)

  def write_summary(self, summary: Summary) -> None:
    write_atomic(self.summary_path, json.dumps(summary.to_json(), indent=2) + "\n")

  def read_summary(self) -> Summary | None:
    """The final summary, or None for a run that has not finished."""
    if not self.summary_path.exists():
      return None
    path = self.summary_path
    return json_files.parse(path, json_files.read(path), Summary.from_json)
