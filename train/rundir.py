"""The run directory: the one place that knows where a run's files are and how checkpoints are stored.

  WORKDIR/config.json          the config (what `train.analyze` rebuilds the model from)
  WORKDIR/metrics.jsonl        one JSON object per epoch
  WORKDIR/learning_curve.png   loss and accuracy per epoch
  WORKDIR/summary.json         the final numbers, written when the run ends
  WORKDIR/checkpoints/STEP/    orbax: `state` (the TrainState as a dict), `history` (the metrics) and
                               `meta` (a SHA-256 of both and the config that made them)
  WORKDIR/damaged_checkpoints/ checkpoints that failed to restore or verify, set aside (never deleted)
  WORKDIR/LOCK                 the PID and host of the run writing here (held with flock)
  WORKDIR/analysis/            what `train.analyze` writes
  WORKDIR/FAILED               left by the suite driver when the run stopped with an error

The trainer, `train.analyze`, the report and the tests all go through
`RunDir`; nothing else spells these paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from train.state import TrainState


class RunDirError(RuntimeError):
  """A workdir that cannot be used: a file, not writable, or in use by another run."""


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored: damaged, or holding a state of another structure."""


def _host(x) -> np.ndarray:
  """A state leaf on the host; a replicated array of a multi-host mesh through this host's copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


def _path(keys) -> str:
  """A leaf's path as orbax's metadata and our trees both spell it: params/convs/0/kernel/value."""
  return "/".join(re.findall(r"\w+", jax.tree_util.keystr(keys)))


def checksum(state_tree: dict[str, Any], history: list[dict[str, Any]]) -> str:
  """SHA-256 of every array (path, dtype, shape, bytes) and of the history, on the host."""
  digest = hashlib.sha256()
  for keys, leaf in jax.tree_util.tree_flatten_with_path(state_tree)[0]:
    value = np.ascontiguousarray(_host(leaf))
    digest.update(f"{_path(keys)}:{value.dtype.str}:{value.shape}".encode())
    digest.update(value.tobytes())
  digest.update(json.dumps(history, sort_keys=True).encode())
  return digest.hexdigest()


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


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
  damaged_dir = property(lambda self: self.path / "damaged_checkpoints")
  lock_path = property(lambda self: self.path / "LOCK")
  analysis_dir = property(lambda self: self.path / "analysis")
  failed_path = property(lambda self: self.path / "FAILED")

  # ---------------------------------------------------------------- the lock

  @contextlib.contextmanager
  def locked(self, say: Callable[[str], None] = print) -> Iterator[None]:
    """Holds WORKDIR/LOCK (an flock, and this PID and host for the message) while the block runs.

    A lock left by a process that died is taken over, with a message.

    Raises:
      RunDirError: when another live process holds the lock, or the workdir cannot be written.
    """
    self.make()
    try:
      fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise RunDirError(f"cannot create {self.lock_path}: {e.strerror}") from e
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise RunDirError(f"{self.path} is in use by {_lock_text(fd) or 'another process'} (its "
                          f"{self.lock_path.name} is held); wait for that run to end or use another "
                          "--workdir") from None
      stale = _lock_text(fd)
      if stale:  # a holder that is gone: its flock went with it, its PID stayed
        say(f"taking over {self.lock_path}, left by {stale}, which is no longer running")
      me = f"pid {os.getpid()} on {socket.gethostname()}"
      os.ftruncate(fd, 0)
      os.pwrite(fd, me.encode(), 0)
      try:
        yield
      finally:
        os.ftruncate(fd, 0)  # emptied, not removed: removing would race with a waiting process
    finally:
      os.close(fd)  # releases the flock

  def holder(self) -> str | None:
    """Who holds WORKDIR/LOCK now ('pid N on HOST'), or None; takes nothing (for a driver's look)."""
    try:
      fd = os.open(self.lock_path, os.O_RDONLY)
    except FileNotFoundError:
      return None
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted unless a run holds it exclusively
      fcntl.flock(fd, fcntl.LOCK_UN)
      return None
    except BlockingIOError:
      return _lock_text(fd) or "another process"
    finally:
      os.close(fd)

  def make(self) -> None:
    """Creates the workdir; RunDirError, saying why, when it cannot be (a file, no permission, no space)."""
    if self.path.exists() and not self.path.is_dir():
      raise RunDirError(f"workdir {self.path} exists and is not a directory")
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise RunDirError(f"cannot create workdir {self.path}: {e.strerror}") from e
    if not os.access(self.path, os.W_OK | os.X_OK):
      raise RunDirError(f"workdir {self.path} is not writable")

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
      handlers = {"state": ocp.StandardCheckpointHandler(), "history": ocp.JsonCheckpointHandler(),
                  "meta": ocp.JsonCheckpointHandler()}
      self._manager = ocp.CheckpointManager(
          self.checkpoint_dir, item_handlers=handlers,
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

  def save(self, step: int, state: TrainState, history: list[dict[str, Any]],
           config: ml_collections.ConfigDict | None = None) -> None:
    """Saves state, history and their checksum (and the config) as checkpoint `step`.

    Asynchronous; a step saved already is kept.
    """
    manager = self._checkpoints(create=True)
    if manager.latest_step() == step:
      return
    tree = state.to_tree()
    meta = {"checksum": checksum(tree, history),
            "config": None if config is None else json.loads(config.to_json_best_effort())}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                               history=ocp.args.JsonSave(history), meta=ocp.args.JsonSave(meta)))

  def saved_config(self, step: int | None = None) -> dict[str, Any] | None:
    """The config checkpoint `step` (default: the latest) was saved with; config.json for a
    checkpoint from before configs were saved with them; None without checkpoints."""
    if not self.checkpoint_steps():
      return None
    step = self.checkpoint_step(step)
    if (self.checkpoint_dir / str(step) / "meta").exists():
      with contextlib.suppress(Exception):  # a damaged meta: the restore will say so
        meta = self._checkpoints().restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if meta.get("config") is not None:
          return meta["config"]
    return json.loads(self.config_path.read_text()) if self.config_path.exists() else None

  def restore(self, like: TrainState, step: int | None = None, *, set_aside: bool = False,
              say: Callable[[str], None] = print) -> tuple[TrainState, list[dict[str, Any]]]:
    """A verified checkpoint into the structure, dtypes and shardings of `like`.

    Args:
      like: a state of the structure to restore into.
      step: that checkpoint only; None: the latest intact one, trying older ones when a newer
        one is damaged (unreadable, or its arrays or history differ from its checksum).
      set_aside: move each damaged checkpoint to WORKDIR/damaged_checkpoints (the trainer does,
        so that it saves anew; readers leave the directory as it is).
      say: where the damage is reported.

    Raises:
      FileNotFoundError: when there is no such checkpoint.
      CheckpointError: when the checkpoint (every one, for step None) is damaged, or holds a
        state of another structure than `like` (one line naming the differing arrays).
    """
    steps = [self.checkpoint_step(step)] if step is not None else self.checkpoint_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no checkpoints in {self.checkpoint_dir}")
    damaged = []
    for s in steps:
      try:
        return self._restore_verified(like, s)
      except _Damaged as e:
        if step is not None:
          raise CheckpointError(f"checkpoint {s} in {self.checkpoint_dir} is damaged: {e}") from e
        where = self._set_aside(s) if set_aside else None
        damaged.append(s)
        say(f"checkpoint {s} is damaged ({e})" + (f"; moved to {where}" if where else "")
            + (f"; trying step {steps[len(damaged)]}" if len(damaged) < len(steps) else ""))
    raise CheckpointError(f"every checkpoint in {self.checkpoint_dir} is damaged (steps {damaged})"
                          + (f"; they are in {self.damaged_dir}, and a new run starts from step 0"
                             if set_aside else ""))

  def _restore_verified(self, like: TrainState, step: int) -> tuple[TrainState, list[dict[str, Any]]]:
    manager = self._checkpoints()
    has_meta = (self.checkpoint_dir / str(step) / "meta").exists()
    try:
      saved = manager.item_metadata(step)["state"]
      saved = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    except Exception as e:  # orbax raises many types for a damaged file
      raise _Damaged(_first_line(e)) from e
    if not saved:
      raise _Damaged("its array metadata is missing")
    _check_structure(like.to_tree(), saved, step)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            like.to_tree())
    items = dict(state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore())
    if has_meta:
      items["meta"] = ocp.args.JsonRestore()
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
      tree, history = restored.state, list(restored.history)
    except Exception as e:
      raise _Damaged(_first_line(e)) from e
    if has_meta and checksum(tree, history) != restored.meta.get("checksum"):
      raise _Damaged("its arrays or history do not match the checksum saved with them")
    return TrainState.from_tree(tree), history

  def _set_aside(self, step: int) -> Path:
    """Moves checkpoint `step` out of the manager's sight, under a name not used yet."""
    self.close()
    self.damaged_dir.mkdir(exist_ok=True)
    target, n = self.damaged_dir / str(step), 1
    while target.exists():
      target, n = self.damaged_dir / f"{step}-{n}", n + 1
    shutil.move(str(self.checkpoint_dir / str(step)), target)
    return target

  def wait(self) -> None:
    """Blocks until every save has been written."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None


def _lock_text(fd: int) -> str:
  return os.pread(fd, 4096, 0).decode(errors="replace").strip()


class _Damaged(Exception):
  """A checkpoint that cannot be read or does not match its checksum (the message says which)."""


def _check_structure(tree: dict[str, Any], saved: dict[str, Any], step: int) -> None:
  """CheckpointError, one line, when checkpoint `step` holds other arrays than the state to restore."""
  want = {_path(k): (tuple(v.shape), np.dtype(v.dtype)) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  have = {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in saved.items()}
  if want == have:
    return
  def describe(p):
    if p not in want:
      return f"{p} is saved but not in this model"
    if p not in have:
      return f"{p} is not saved"
    return f"{p}: saved {have[p][0]} {have[p][1]}, now {want[p][0]} {want[p][1]}"

  # the model's arrays first: they say what changed; the optimizer's follow from them
  paths = sorted((p for p in want.keys() | have.keys() if want.get(p) != have.get(p)),
                 key=lambda p: (not p.startswith("params/"), p))
  diffs = [describe(p) for p in paths]
  more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
  raise CheckpointError(f"checkpoint {step} holds a state of another structure than this config's: "
                        f"{'; '.join(diffs[:3])}{more}")
