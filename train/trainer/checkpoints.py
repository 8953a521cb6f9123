"""A run's checkpoints: orbax save, verified restore (checksum, structure) and damaged ones set
aside.

  checkpoints/STEP/   orbax: `state` (the TrainState as a dict), `history` (the metrics) and
                      `meta` (a SHA-256 of both and the config that made them)

`RunDir.checkpoints` (train/trainer/rundir.py) is the one instance of a run's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from train import json_files, signals
from train.trainer.state import TrainState


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
  """What failed, in one short line: the error's first line without TensorStore's pointer to
  its details (a bound-method repr, not the details)."""
  text = str(e).strip().splitlines()
  first = text[0].split(" See full TensorStore details")[0] if text else ""
  return f"{type(e).__name__}: {first[:200]}"


class Checkpoints:
  """A run's checkpoints: orbax saves of the TrainState and history with their checksum and config.

  Args:
    directory: where the checkpoints are (WORKDIR/checkpoints).
    damaged_dir: where damaged ones are set aside (WORKDIR/damaged_checkpoints).
    keep: how many to keep when saving (None: all).
    config_path: the run's config.json, the config of a checkpoint saved before configs were saved
      with them.
  """

  def __init__(
    self,
    directory: Path,
    damaged_dir: Path,
    keep: int | None = None,
    config_path: Path | None = None,
  ):
    self.directory, self.damaged_dir, self.config_path = directory, damaged_dir, config_path
    self._keep = keep
    self._manager: ocp.CheckpointManager | None = None

  def _orbax(self, create: bool = False) -> ocp.CheckpointManager:
    if self._manager is None:
      handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "history": ocp.JsonCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
      }
      self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=create),
      )
    return self._manager

  def steps(self) -> list[int]:
    """The steps of the saved checkpoints, ascending."""
    if not self.directory.exists():
      return []
    return sorted(self._orbax().all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def find(self, step: int | None = None) -> int:
    """`step` if it was saved (default: the latest); FileNotFoundError, with the saved steps, if
    not."""
    steps = self.steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoints in {self.directory}")
    if step is None:
      return steps[-1]
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; saved: {steps}")
    return step

  def save(
    self,
    step: int,
    state: TrainState,
    history: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
    data: str | None = None,
    seconds: float | None = None,
  ) -> None:
    """Saves state, history and their checksum (and the config, the data's fingerprint and the
    wall seconds the run had trained) as checkpoint `step`.

    Asynchronous; a step saved already is kept.
    """
    manager = self._orbax(create=True)
    if manager.latest_step() == step:
      return
    tree = state.to_tree()
    meta = {
      "checksum": checksum(tree, history),
      "config": config,
      "data": data,
      "seconds": seconds,
    }
    manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        history=ocp.args.JsonSave(history),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  def saved_config(self, step: int | None = None) -> dict[str, Any] | None:
    """The config checkpoint `step` (default: the latest) was saved with; the run's config.json
    (`config_path`) for a checkpoint saved before configs were; None without checkpoints."""
    if not self.steps():
      return None
    step = self.find(step)
    meta = self._meta(step)
    if meta.get("config") is not None:
      return meta["config"]
    return (
      json_files.read(self.config_path) if self.config_path and self.config_path.exists() else None
    )

  def saved_data(self, step: int | None = None) -> str | None:
    """The data fingerprint checkpoint `step` (default: the latest) was saved with (None: none
    saved, or a checkpoint from before fingerprints were)."""
    if not self.steps():
      return None
    return self._meta(self.find(step)).get("data")

  def saved_seconds(self, step: int) -> float | None:
    """The wall seconds the run had spent when checkpoint `step` was saved, over every command
    that trained it (None: no such checkpoint, or one from before they were recorded)."""
    if step not in self.steps():
      return None
    seconds = self._meta(step).get("seconds")
    return None if seconds is None else float(seconds)

  def _meta(self, step: int) -> dict[str, Any]:
    """A checkpoint's meta item ({} when it has none, or a damaged one: the restore says so)."""
    if (self.directory / str(step) / "meta").exists():
      with contextlib.suppress(Exception):
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        return dict(self._orbax().restore(step, args=args).meta)
    return {}

  def restore(
    self,
    like: TrainState,
    step: int | None = None,
    *,
    set_aside: bool = False,
    say: Callable[[str], None] = print,
  ) -> tuple[TrainState, list[dict[str, Any]]]:
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
    if step is not None:
      try:
        return self._restore_verified(like, self.find(step))
      except _Damaged as e:
        raise CheckpointError(f"checkpoint {step} in {self.directory} is damaged: {e}") from e
    damaged: list[int] = []
    tried: set[int] = set()
    # A run that trains while this reads it saves new checkpoints and removes old ones: a
    # checkpoint that vanished was rotated away, not damaged; the steps are listed again.
    for _ in range(3):
      steps = [s for s in self.steps()[::-1] if s not in tried]
      if not steps and not tried:
        raise FileNotFoundError(f"no checkpoints in {self.directory}")
      vanished = False
      for i, s in enumerate(steps):
        tried.add(s)
        try:
          return self._restore_verified(like, s)
        except _Damaged as e:
          if not (self.directory / str(s)).exists():
            vanished = True
            continue
          where = self._set_aside(s) if set_aside else None
          damaged.append(s)
          say(
            f"checkpoint {s} is damaged ({e})"
            + (f"; moved to {where}" if where else "")
            + (f"; trying step {steps[i + 1]}" if i + 1 < len(steps) else "")
          )
      if not vanished:
        break
      self.close()  # lists the directory anew
    if not damaged:
      raise FileNotFoundError(
        f"no checkpoints in {self.directory}: the run writing it removed them while they were read"
      )
    raise CheckpointError(
      f"every checkpoint in {self.directory} is damaged (steps {damaged})"
      + (f"; they are in {self.damaged_dir}, and a new run starts from step 0" if set_aside else "")
    )

  def _restore_verified(
    self, like: TrainState, step: int
  ) -> tuple[TrainState, list[dict[str, Any]]]:
    _discard_abandoned_reads()  # a damaged array abandons the others while they are read
    manager = self._orbax()
    has_meta = (self.directory / str(step) / "meta").exists()
    try:
      saved_tree = manager.item_metadata(step)["state"]
      saved = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    except Exception as e:  # orbax raises many types for a damaged file
      raise _damaged_unless_stopped(e) from e
    if not saved:
      raise _Damaged("its array metadata is missing")
    like_tree = like.to_tree()
    moved = _moved_optimizer_state(like_tree, saved)
    if moved is None:
      _check_structure(like_tree, saved, step)
      abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like_tree
      )
    else:  # read as saved, then placed where this optimizer keeps each array
      sharding = jax.tree.leaves(like_tree)[0].sharding
      abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), saved_tree
      )
    items = dict(state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore())
    if has_meta:
      items["meta"] = ocp.args.JsonRestore()
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
      tree, history = restored.state, list(restored.history)
    except Exception as e:
      raise _damaged_unless_stopped(e) from e
    if has_meta and checksum(tree, history) != restored.meta.get("checksum"):
      raise _Damaged("its arrays or history do not match the checksum saved with them")
    if int(np.asarray(tree["step"])) != step:  # a folder renamed, or copied in under another name
      raise _Damaged(f"it holds the state of step {int(np.asarray(tree['step']))}, not {step}")
    if moved is not None:
      read = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
      tree = jax.tree_util.tree_map_with_path(lambda k, _: read[moved[_path(k)]], like_tree)
    return TrainState.from_tree(tree), history

  def _set_aside(self, step: int) -> Path:
    """Moves checkpoint `step` out of the manager's sight, under a name not used yet."""
    self.close()
    self.damaged_dir.mkdir(exist_ok=True)
    target, n = self.damaged_dir / str(step), 1
    while target.exists():
      target, n = self.damaged_dir / f"{step}-{n}", n + 1
    shutil.move(str(self.directory / str(step)), target)
    return target

  def wait(self) -> None:
    """Blocks until every save has been written."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None


class _Damaged(Exception):
  """A checkpoint that cannot be read or does not match its checksum (the message says which)."""


def _damaged_unless_stopped(e: Exception) -> _Damaged:
  """The read failure `e` as damage, unless a stop signal came during the read: orbax re-raises
  the stop its reading thread was interrupted by as an error of its own ("Encountered error
  while reading array index"), and an intact checkpoint was then reported damaged and the
  command failed with status 4 instead of stopping (found by the signals test at sampled
  moments). The stop is raised instead."""
  signals.raise_stop(signals.requested())
  return _Damaged(_first_line(e))


def _check_structure(tree: dict[str, Any], saved: dict[str, Any], step: int) -> None:
  """CheckpointError, one line, when checkpoint `step` holds other arrays than the state to
  restore."""
  want = {
    _path(k): (tuple(v.shape), np.dtype(v.dtype))
    for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
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
  paths = sorted(
    (p for p in want.keys() | have.keys() if want.get(p) != have.get(p)),
    key=lambda p: (not p.startswith("params/"), p),
  )
  diffs = [describe(p) for p in paths]
  more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
  raise CheckpointError(
    f"checkpoint {step} holds a state of another structure than this config's: "
    f"{'; '.join(diffs[:3])}{more}"
  )


def _moved_optimizer_state(tree: dict[str, Any], saved: dict[str, Any]) -> dict[str, str] | None:
  """{path here: path saved} when the checkpoint holds the same arrays as `tree` and only the
  optimizer chain's positions differ (a transform without arrays added or removed: weight decay
  turned on or off, the angle projection), else None.

  Arrays of one name are matched in chain order, with equal shapes and dtypes.
  """

  def spec(m: Any) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(m.shape), np.dtype(m.dtype)

  want = {_path(k): spec(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  have = {p: spec(m) for p, m in saved.items()}
  if want == have:
    return None

  def by_name(paths: dict[str, Any]) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for p in paths:
      head, *rest = p.split("/")
      if head == "opt_state" and rest and rest[0].isdigit():  # the chain position
        names.setdefault("/".join([head, *rest[1:]]), []).append(p)
      else:
        names.setdefault(p, []).append(p)
    for group in names.values():
      group.sort(key=lambda p: int(p.split("/")[1]) if p.startswith("opt_state/") else 0)
    return names

  mine, theirs = by_name(want), by_name(have)
  if mine.keys() != theirs.keys() or any(len(mine[n]) != len(theirs[n]) for n in mine):
    return None
  moved = {a: b for n in mine for a, b in zip(mine[n], theirs[n], strict=True)}
  if any(want[a] != have[b] for a, b in moved.items()):
    return None
  return moved


def _discard_abandoned_reads() -> None:
  """From now on in this process, says nothing of the reads a failed restore abandoned.

  When one array of a checkpoint cannot be read, orbax gives up its other reads: Python prints
  each of their coroutines' errors when it collects them, asyncio logs each task whose error was
  not retrieved, and tensorstore's threads print "Event loop is closed" as each read still in
  flight completes (about fifty tracebacks a checkpoint, after the restore's one line has said
  what is wrong). A stop (Ctrl-C) and every other error still pass.
  """
  previous = sys.unraisablehook
  if getattr(previous, "discards_abandoned_reads", False):
    return

  def hook(args: Any) -> None:
    if not _abandoned_read(args):
      previous(args)

  hook.discards_abandoned_reads = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook
  # and asyncio logs each abandoned task of orbax's whose error nobody retrieved
  logging.getLogger("asyncio").addFilter(
    lambda record: (
      not ("never retrieved" in record.getMessage() and "/orbax/" in record.getMessage())
    )
  )


def _abandoned_read(args: Any) -> bool:
  if isinstance(args.exc_value, KeyboardInterrupt):
    return False
  if isinstance(args.object, Coroutine):
    return "/orbax/" in getattr(getattr(args.object, "cr_code", None), "co_filename", "")
  return (
    args.object is None
    and isinstance(args.exc_value, RuntimeError)
    and str(args.exc_value) == "Event loop is closed"
  )
