"""The training loop: `train_and_evaluate(config, workdir)` wires the named parts of a run.

  experiment.build      the checked config made concrete: data, model, optimizer, length
  TrainState            what the jitted step carries (train/state.py)
  RunDir                config.json, metrics.jsonl, checkpoints, summary.json (train/rundir.py)
  ProgramCache          the compiled step and evaluator per ACU radius set (train/programs.py)
  MetricsLogger         the bar, the epoch lines, metrics.jsonl and the plot (train/logger.py)
  final_evaluation      the trained model and deploy(model) on the test set (train/evaluation.py)

A second call with the same workdir resumes from the latest checkpoint; the
batches and augmentation are functions of the step, so the resumed run is
the uninterrupted one. The state is replicated over a 1-D device mesh while
every batch is sharded along it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kshapes_jax as K
from train import determinism, experiment, input_pipeline
from train.evaluation import final_evaluation
from train.experiment import ConfigError, Experiment, check_config  # noqa: F401 (the trainer's API)
from train.logger import MetricsLogger, Throughput
from train.programs import BucketingError, ProgramCache, Programs, acu_convs, bucketed_radii, check_bucketing
from train.rundir import CheckpointError, RunDir, RunDirError  # noqa: F401 (the trainer's API)
from train.state import EpochSums, TrainState
from train.step import shard


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf, or exceeded the config's bound (max_loss_factor)."""


class TrainingStopped(KeyboardInterrupt):
  """SIGTERM or Ctrl-C: the run saved a checkpoint at a step boundary and stopped; `signum` says which."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


def data_mesh() -> jax.sharding.Mesh:
  """Every device on one 'data' axis (Auto: XLA propagates the batch sharding)."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def train_and_evaluate(config, workdir: str | Path, *, allow_config_change: bool = False) -> dict[str, Any]:
  """Trains config's model on its dataset in workdir (resuming if it holds checkpoints).

  Args:
    config: the run's config (see configs/default.py).
    workdir: its directory; one run at a time (WORKDIR/LOCK).
    allow_config_change: resume even when the config changes what the checkpoint's state
      means (model, conv, optimizer, batch size, seed, data); its arrays must still fit.

  Returns:
    The summary that is also written to workdir/summary.json.

  Raises:
    ConfigError: for a config that cannot run, or that differs from the checkpoint's it
      would resume (before anything is compiled).
    input_pipeline.DataError: for a dataset that is missing, with how to get it.
    RunDirError: for a workdir that is in use by another run or cannot be written.
    CheckpointError: when no checkpoint can be restored (damaged ones are set aside).
    TrainingDiverged: when the loss becomes NaN or inf or exceeds its bound; the
      checkpoints keep the last good state.
    TrainingStopped: on SIGTERM or Ctrl-C, after saving a checkpoint to resume from.
  """
  deterministic = determinism.request(config.get("deterministic", True))
  if config.get("distributed", False):
    initialize_distributed()
  t_start = time.perf_counter()
  check_config(config)
  experiment.check_keys(config)
  rundir = RunDir(workdir, keep_checkpoints=config.keep_checkpoints)
  writer = jax.process_index() == 0
  say = (lambda m: print(m, flush=True)) if writer else (lambda m: None)
  with rundir.locked(say) if writer else contextlib.nullcontext(), _closed_on_error(rundir):
    check_resume(rundir, config, allow_config_change, say)
    exp = experiment.build(config)
    bucketing = bool(config.acu_radius_every_steps) and _check_bucketing(exp)
    mesh = data_mesh()
    state, history = restore_or_start(exp, rundir, mesh, say)
    if writer:
      rundir.write_config(config)
    title = f"{config.model} / {config.conv} on {exp.dataset.name}"
    logger = MetricsLogger(rundir, title, history, config.progress)
    num_params = K.models.count_params(exp.model)
    logger.say(f"{title}: {num_params:,} parameters, {exp.steps_per_epoch} steps/epoch, {exp.total_steps} steps, "
               f"{jax.device_count()} device(s) ({jax.devices()[0].platform})")
    programs = ProgramCache(exp.model, exp.tx, exp.dataset, augment=config.data.augment, seed=config.seed,
                            eval_batch_size=config.eval_batch_size, mesh=mesh, max_loss=max_loss(exp))
    state, current = Loop(exp, programs, rundir, logger, mesh, bucketing).run(state)
    final = final_evaluation(current.eval_graphdef, state.params, state.rest, exp.dataset,
                             config.eval_batch_size, mesh, current.evaluate)
    rundir.close()
    steps = int(state.step)
    summary = {
        "model": config.model, "conv": config.conv, "dataset": exp.dataset.name, "source": config.data.source,
        "seed": config.seed, "steps": steps, "epochs": steps / exp.steps_per_epoch,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind, "host_cores": _cores(),
        "precision": config.get("precision", "default"), "dtype": config.get("dtype", "float32"),
        "deterministic": deterministic, "parameters": num_params, **final,
        "acu_radii": state.radii_list(),
        "final_train_loss": logger.history[-1]["train_loss"] if logger.history else None,
        "seconds_total": time.perf_counter() - t_start, "workdir": str(rundir.path),
    }
    if writer:
      rundir.write_summary(summary)
      agree = summary["deployed_prediction_agreement"]
      print(f"test accuracy {100 * summary['test_accuracy']:.2f}% (deployed: "
            f"{100 * summary['deployed_test_accuracy']:.2f}%, predictions agree on "
            f"{100 * agree:.2f}%), "
            f"{num_params:,} parameters ({summary['deployed_parameters']:,} deployed), "
            f"{summary['seconds_total']:.0f} s; written to {rundir.path}", flush=True)
  return summary


def initialize_distributed() -> None:
  """Joins this process to the others of the run (`jax.distributed.initialize`).

  Plain environment variables give the cluster where they are set (any launcher, one
  machine or many): JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES
  and JAX_PROCESS_ID. Where they are not, JAX detects SLURM, Open MPI or a Cloud TPU.
  """
  kwargs = {key: int(os.environ[var]) for key, var in (("num_processes", "JAX_NUM_PROCESSES"),
                                                       ("process_id", "JAX_PROCESS_ID")) if var in os.environ}
  jax.distributed.initialize(**kwargs)


def _cores() -> int | None:
  """The CPU cores this process may run on (a pinned run has fewer than the machine)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextlib.contextmanager
def _closed_on_error(rundir: RunDir):
  """Stops the checkpointer's threads when the run fails (they would report the failure again)."""
  try:
    yield
  except BaseException:
    with contextlib.suppress(Exception):
      rundir.close()
    raise


def max_loss(exp: Experiment) -> float:
  """The training loss beyond which a run counts as diverged: max_loss_factor x ln(classes)."""
  factor = exp.config.get("max_loss_factor", 0.0)
  return factor * math.log(max(exp.dataset.num_classes, 2)) if factor > 0 else math.inf


def check_resume(rundir: RunDir, config, allow_config_change: bool, say: Callable[[str], None]) -> None:
  """ConfigError, naming the keys, when config changes what the workdir's checkpoints mean."""
  saved = rundir.saved_config()
  changes = experiment.config_changes(saved, config) if saved is not None else []
  if not changes:
    return
  if not allow_config_change:
    raise ConfigError(f"{rundir.path} holds checkpoints of another config: {', '.join(changes)}. Use another "
                      "--workdir, or pass --allow_config_change to resume them anyway")
  say(f"resuming {rundir.path} with config changes (--allow_config_change): {', '.join(changes)}")


def _check_bucketing(exp: Experiment) -> bool:
  """Whether the model has ACUs to bucket; ConfigError if they cannot be."""
  try:
    check_bucketing(exp.model)
  except BucketingError as e:
    raise ConfigError(str(e)) from e
  return bool(acu_convs(exp.model))


def restore_or_start(exp: Experiment, rundir: RunDir, mesh: jax.sharding.Mesh,
                     say: Callable[[str], None] = print) -> tuple[TrainState, list[dict[str, Any]]]:
  """The latest intact checkpoint's state and history, or the step-0 state; replicated over the mesh.

  A damaged checkpoint is set aside (WORKDIR/damaged_checkpoints) and the one before it tried.
  """
  state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
  if rundir.latest_step() is None:
    return state, []
  state, history = rundir.restore(state, set_aside=jax.process_index() == 0, say=say)
  say(f"resumed from step {int(state.step)} ({rundir.checkpoint_dir})")
  return state, history


class Loop:
  """The steps of a run from its state's step to the end: epochs, evaluation, checkpoints, stops."""

  def __init__(self, exp: Experiment, programs: ProgramCache, rundir: RunDir, logger: MetricsLogger,
               mesh: jax.sharding.Mesh, bucketing: bool):
    self.exp, self.config, self.programs = exp, exp.config, programs
    self.rundir, self.logger, self.bucketing = rundir, logger, bucketing
    self.replicated, self.data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def run(self, state: TrainState) -> tuple[TrainState, Programs]:
    """Trains to the end; saves every checkpoint_every_steps and when stopped (SIGTERM, Ctrl-C).

    A stop request is honoured between two steps, never inside one: the checkpoint then holds
    a state and a history that agree (a stop while an epoch was being logged lost that epoch).
    """
    config, exp = self.config, self.exp
    start = step = int(state.step)
    current = self.programs(state.radii_list())
    batches = input_pipeline.Batches(exp.dataset.train, config.batch_size, config.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count())
    throughput, whole, stop = Throughput(), True, _StopRequest(self.logger.say)
    try:
      with stop.installed(), self.logger.progress(exp.total_steps, start):
        for batch in batches.iterate(start, exp.total_steps):
          if stop.stopping():
            break
          whole = False  # until the step, its epoch line and its checkpoint are all done
          state, current = self.rebucket(state, current, step)
          state, loss = current.train_step(state, shard(batch, self.data))
          step += 1
          throughput.add(config.batch_size, loss)
          self.log_step(state, step, loss, throughput)
          if step % exp.steps_per_epoch == 0 or step == exp.total_steps:
            state = self.end_epoch(state, step, current, throughput.rate())
            throughput.reset()
          if step % config.checkpoint_every_steps == 0:
            self.save(state, step)
          whole = True
    finally:
      try:
        if whole and step > start:  # a step cut short (an error, a second Ctrl-C) is not saved
          self.save(state, step)
      finally:
        self.rundir.wait()
    if step < exp.total_steps:
      self.rundir.close()
      self.logger.say(f"stopped at step {step}; a checkpoint was saved to resume from")
      raise TrainingStopped(f"training stopped at step {step}; run the same command to resume", stop.signum)
    return state, current

  def rebucket(self, state: TrainState, current: Programs, step: int) -> tuple[TrainState, Programs]:
    """At a bucketing check: the radii the ACUs need next, and their programs."""
    every, warmup = self.config.acu_radius_every_steps, self.config.optim.position_warmup_steps
    if not self.bucketing or not (step % every == 0 or step == warmup):
      return state, current
    radii = bucketed_radii(self.config, self.exp.model, state.params, step)
    if radii == state.radii_list():
      return state, current
    self.logger.say(f"step {step}: ACU radii -> {radii}")
    state = state.replace(radii=jax.device_put(np.asarray(radii, np.int32), self.replicated))
    return state, self.programs(radii)

  def log_step(self, state: TrainState, step: int, loss: jax.Array, throughput: Throughput) -> None:
    logged = step % self.config.log_every_steps == 0 or step == self.exp.total_steps
    if logged:
      self.check_finite(state)
    self.logger.step(loss if logged else None, state.sums if logged else None, throughput.rate(),
                     float(self.exp.schedule(step - 1)))

  def end_epoch(self, state: TrainState, step: int, current: Programs, images_per_s: float) -> TrainState:
    """Logs the epoch (and its test numbers when due); the epoch sums start again at zero."""
    self.check_finite(state)
    loss, acc = jax.device_get(state.sums).means()
    record = {"epoch": math.ceil(step / self.exp.steps_per_epoch), "step": step, "train_loss": loss,
              "train_accuracy": acc, "learning_rate": float(self.exp.schedule(step - 1)),
              "images_per_s": images_per_s}
    if record["epoch"] % self.config.eval_every_epochs == 0 or step == self.exp.total_steps:
      test = current.evaluate(state.params, state.rest, self.exp.dataset.test)
      record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
    self.logger.epoch(record)
    return state.replace(sums=jax.device_put(EpochSums.zeros(), self.replicated))

  def save(self, state: TrainState, step: int) -> None:
    self.check_finite(state)
    self.rundir.save(step, state, self.logger.history, self.config)

  def check_finite(self, state: TrainState) -> None:
    """Raises TrainingDiverged once a step's loss or parameters were not finite, or the loss too large."""
    bad = int(state.bad_step)
    if bad < 0:
      return
    self.rundir.wait()
    last = self.rundir.latest_step()
    bound = self.programs.max_loss
    raise TrainingDiverged(
        f"the training diverged at step {bad} (epoch {bad // self.exp.steps_per_epoch + 1}): its loss or "
        f"parameters became NaN or inf" + (f", or its loss exceeded {bound:.4g} (max_loss_factor "
                                           f"{self.config.max_loss_factor:g} x ln(classes))"
                                           if math.isfinite(bound) else "")
        + "; stopped. "
        + (f"The last good checkpoint is step {last} in {self.rundir.checkpoint_dir}. "
           if last is not None else "No checkpoint was saved before. ")
        + "Try a lower optim.learning_rate or a warm-up (optim.warmup_epochs).")


class _StopRequest:
  """SIGTERM and Ctrl-C set `signum`; the loop stops at the next step boundary.

  A second Ctrl-C raises KeyboardInterrupt at once (nothing more is saved). Signals can be
  caught only on the main thread; elsewhere the defaults stay.
  """

  def __init__(self, say: Callable[[str], None]):
    self.signum, self._say = 0, say

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      yield
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame  # no printing here: a handler that prints while the loop prints raises
    if self.signum and signum == signal.SIGINT:
      raise KeyboardInterrupt("interrupted twice: stopped without saving")
    self.signum = self.signum or signum

  def stopping(self) -> bool:
    """Whether a stop was asked for (said once, where printing is safe)."""
    if self.signum and self._say is not None:
      self._say(f"\n{signal.Signals(self.signum).name}: stopping here, with a checkpoint")
      self._say = None
    return bool(self.signum)
