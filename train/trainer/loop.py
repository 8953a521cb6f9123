"""The training loop: `train_and_evaluate(config, workdir)` wires the named parts of a run.

  settings.read         the config checked once into typed Settings (settings.py)
  experiment.build      the settings made concrete: data, model, optimizer, length (experiment.py)
  TrainState            what the jitted step carries (state.py)
  RunDir                config.json, metrics.jsonl, checkpoints, summary.json (rundir.py,
  checkpoints.py)
  ProgramCache          the compiled step and evaluator per ACU radius set (programs.py)
  MetricsLogger         the bar, the epoch lines, metrics.jsonl and the plot (logger.py)
  final_evaluation      the trained model and deploy(model) on the test set (evaluation.py)
  Summary               what summary.json holds (summary.py)

A second call with the same workdir resumes from the latest checkpoint; the
batches and augmentation are functions of the step, so the resumed run is
the uninterrupted one. The state is replicated over a 1-D device mesh while
every batch is sharded along it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kshapes_jax as K
from train import data, signals
from train.trainer import determinism, experiment
from train.trainer.evaluation import final_evaluation
from train.trainer.experiment import Experiment
from train.trainer.logger import MetricsLogger, Throughput
from train.trainer.programs import ProgramCache, Programs
from train.trainer.rundir import RunDir
from train.trainer.settings import ConfigError, Settings, config_changes, read
from train.trainer.state import EpochSums, TrainState
from train.trainer.step import shard
from train.trainer.summary import Summary


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf, or exceeded the config's bound (max_loss_factor)."""


class TrainingStopped(signals.Stopped):
  """SIGTERM or Ctrl-C: the run saved a checkpoint at a step boundary and stopped; `signum` says
  which."""

  def __init__(self, message: str, signum: int):
    super().__init__(signum, message)


def data_mesh() -> jax.sharding.Mesh:
  """Every device on one 'data' axis (Auto: XLA propagates the batch sharding)."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def train_and_evaluate(
  config: ml_collections.ConfigDict | Mapping[str, Any],
  workdir: str | Path,
  *,
  allow_config_change: bool = False,
) -> Summary:
  """Trains config's model on its dataset in workdir (resuming if it holds checkpoints).

  Args:
    config: the run's config (configs/default.py lists the keys and their defaults).
    workdir: its directory; one run at a time (WORKDIR/LOCK).
    allow_config_change: resume even when the config changes what the checkpoint's state
      means (model, conv, optimizer, batch size, seed, data); its arrays must still fit.

  Returns:
    The run's summary, also written to workdir/summary.json.

  Raises:
    ConfigError: for a config that cannot run, or that differs from the checkpoint's it
      would resume (before anything is compiled).
    data.DataError: for a dataset that is missing, with how to get it.
    RunDirError: for a workdir that is in use by another run or cannot be written.
    CheckpointError: when no checkpoint can be restored (damaged ones are set aside).
    TrainingDiverged: when the loss becomes NaN or inf or exceeds its bound; the
      checkpoints keep the last good state.
    TrainingStopped: on SIGTERM or Ctrl-C, after saving a checkpoint to resume from.
  """
  settings = read(config)
  deterministic = determinism.request(settings.deterministic)
  if settings.distributed:
    initialize_distributed()  # before anything asks JAX for its devices (experiment.build does)
  t_start = time.perf_counter()
  rundir = RunDir(workdir, keep_checkpoints=settings.keep_checkpoints)
  writer = jax.process_index() == 0
  say = (lambda m: print(m, flush=True)) if writer else (lambda m: None)
  # Ctrl-C / SIGTERM during start-up and training (one since the command began, too) are
  # honoured at the next step boundary, after a checkpoint
  with (
    rundir.locked(say) if writer else contextlib.nullcontext(),
    _closed_on_error(rundir),
  ):
    with signals.deferred():
      saved = rundir.checkpoints.saved_config()
      check_resume(rundir, saved, settings, allow_config_change, say)
      exp = experiment.build(settings)
      check_schedule_resume(rundir, saved, exp, allow_config_change, say)
      check_data_resume(rundir, exp, allow_config_change, say)
      bucketing = bool(settings.acu_radius_every_steps) and _check_bucketing(exp)
      mesh = data_mesh()
      state, history = restore_or_start(exp, rundir, mesh, say)
      # the run's wall time spans its commands: this one's, plus what its checkpoint had spent
      before = rundir.checkpoints.saved_seconds(int(state.step)) or 0.0

      def clock() -> float:
        return before + time.perf_counter() - t_start

      if not bucketing and state.radii_list() != K.nn.active_radii(exp.model):
        # fixed radii are the config's: a resume allowed to change them runs with the new ones
        radii = np.asarray(K.nn.active_radii(exp.model), np.int32)
        state = dataclasses.replace(state, radii=jax.device_put(radii, NamedSharding(mesh, P())))
      if writer:
        rundir.write_config(settings)
      title = f"{settings.model} / {settings.conv} on {exp.dataset.name}"
      logger = MetricsLogger(rundir, title, history, settings.progress)
      num_params = K.models.count_params(exp.model)
      logger.say(
        f"{title}: {num_params:,} parameters, {exp.steps_per_epoch} steps/epoch, {exp.total_steps} "
        f"steps, {jax.device_count()} device(s) ({jax.devices()[0].platform})"
      )
      programs = ProgramCache(
        exp.model,
        exp.tx,
        exp.dataset,
        augment=exp.device_augment,
        seed=settings.seed,
        eval_batch_size=settings.eval_batch_size,
        mesh=mesh,
        max_loss=settings.max_loss(exp.dataset.num_classes),
        repulsion_from_step=settings.dcls_repulsion_from_step(exp.steps_per_epoch),
      )
      state, current = Loop(exp, programs, rundir, logger, mesh, bucketing, clock).run(state)
    # the final evaluation may be cut at any moment: the last checkpoint holds the whole run
    final = final_evaluation(
      current.eval_graphdef,
      state.params,
      state.rest,
      exp.dataset,
      settings.eval_batch_size,
      mesh,
      current.evaluate,
    )
    rundir.checkpoints.close()
    steps = int(state.step)
    summary = Summary(
      model=settings.model,
      conv=settings.conv,
      dataset=exp.dataset.name,
      source=settings.data.source,
      seed=settings.seed,
      steps=steps,
      epochs=steps / exp.steps_per_epoch,
      devices=jax.device_count(),
      platform=jax.devices()[0].platform,
      device_kind=jax.devices()[0].device_kind,
      host_cores=_cores(),
      precision=settings.precision,
      dtype=settings.dtype,
      deterministic=deterministic,
      parameters=num_params,
      **final,
      acu_radii=state.radii_list(),
      final_train_loss=logger.history[-1]["train_loss"] if logger.history else None,
      seconds_total=clock(),
      workdir=str(rundir.path),
    )
    if writer:
      rundir.write_summary(summary)
      print(
        f"test accuracy {100 * summary.test_accuracy:.2f}% "
        + (
          f"(top-5 {100 * summary.test_top5_accuracy:.2f}%) "
          if exp.dataset.num_classes > 10 and summary.test_top5_accuracy is not None
          else ""
        )
        + f"(deployed: "
        f"{100 * summary.deployed_test_accuracy:.2f}%, predictions agree on "
        f"{100 * summary.deployed_prediction_agreement:.2f}%), "
        f"{num_params:,} parameters ({summary.deployed_parameters:,} deployed), "
        f"{summary.seconds_total:.0f} s; written to {rundir.path}",
        flush=True,
      )
      warning = chance_warning(summary.test_accuracy, exp.dataset.num_classes)
      if warning:
        print(warning, file=sys.stderr, flush=True)
  return summary


def chance_warning(accuracy: float, num_classes: int) -> str | None:
  """A warning line when a test accuracy is within 1.5x of a uniform guess's (1 / classes): the
  run did not learn, whatever its exit status says."""
  chance = 1 / max(num_classes, 2)
  if accuracy > 1.5 * chance:
    return None
  return (
    f"warning: the test accuracy {100 * accuracy:.2f}% is at chance ({100 * chance:.2f}% for "
    f"{num_classes} classes): the model did not learn. Try a lower optim.learning_rate, a warm-up "
    "(optim.warmup_epochs) or more steps"
  )


def initialize_distributed() -> None:
  """Joins this process to the others of the run (`jax.distributed.initialize`).

  Plain environment variables give the cluster where they are set (any launcher, one
  machine or many): JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES
  and JAX_PROCESS_ID. Where they are not, JAX detects SLURM, Open MPI or a Cloud TPU.

  Raises:
    ConfigError: when neither gives the cluster.
  """

  def number(var: str) -> int | None:
    return int(os.environ[var]) if var in os.environ else None

  try:
    jax.distributed.initialize(
      num_processes=number("JAX_NUM_PROCESSES"), process_id=number("JAX_PROCESS_ID")
    )
  except ValueError as e:  # JAX found no cluster: "coordinator_address should be defined"
    raise ConfigError(
      "distributed=True, but this process cannot find the run's others: set "
      "JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID on "
      f"every process, or launch under SLURM or Open MPI ({e})"
    ) from e


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
      rundir.checkpoints.close()
    raise


def check_resume(
  rundir: RunDir,
  saved: dict[str, Any] | None,
  settings: Settings,
  allow_config_change: bool,
  say: Callable[[str], None],
) -> None:
  """ConfigError, naming the keys, when the settings change what the workdir's checkpoints mean."""
  changes = config_changes(saved, settings) if saved is not None else []
  if not changes:
    return
  if not allow_config_change:
    raise ConfigError(
      f"{rundir.path} holds checkpoints of another config: {', '.join(changes)}. Use another "
      "--workdir, or pass --allow_config_change to resume them anyway"
    )
  say(f"resuming {rundir.path} with config changes (--allow_config_change): {', '.join(changes)}")


def check_schedule_resume(
  rundir: RunDir,
  saved: dict[str, Any] | None,
  exp: Experiment,
  allow_config_change: bool,
  say: Callable[[str], None],
) -> None:
  """ConfigError when the schedule's shape (the learning rate relative to its base rate) over the
  steps the checkpoint has taken differs under the new settings: the remaining steps would not
  continue that run (a cosine stretched by a longer num_steps restarts from its top). A longer
  run whose past shape is unchanged resumes, and so does another base rate."""
  step = rundir.checkpoints.latest_step()
  if not step or saved is None:
    return
  old = read(saved)
  before = experiment.make_schedule(
    old.optim, exp.steps_per_epoch, experiment.length(old, exp.steps_per_epoch)
  )
  taken = np.arange(step)
  old_lr = np.broadcast_to(np.asarray(before(taken)), taken.shape) / old.optim.learning_rate
  new_lr = np.broadcast_to(np.asarray(exp.schedule(taken)), taken.shape)
  new_lr = new_lr / exp.settings.optim.learning_rate
  changed = np.flatnonzero(~np.isclose(old_lr, new_lr, rtol=1e-6, atol=1e-9))
  if not changed.size:
    return
  k = int(changed[0])
  what = (
    f"the schedule of the {step} steps {rundir.path}'s checkpoint has taken changes (step {k}: "
    f"{old_lr[k]:.6g} -> {new_lr[k]:.6g} of the base rate), so the remaining steps would not "
    "continue that run"
  )
  if not allow_config_change:
    raise ConfigError(
      f"{what}. Use another --workdir, or pass --allow_config_change to resume it anyway"
    )
  say(f"resuming with a changed schedule (--allow_config_change): {what}")


def check_data_resume(
  rundir: RunDir, exp: Experiment, allow_config_change: bool, say: Callable[[str], None]
) -> None:
  """ConfigError when the data differs from the data the latest checkpoint trained on (its
  fingerprint: sizes and a hash), under the same config: a regenerated train.npz, another
  prepared folder at the same path."""
  saved, now = rundir.checkpoints.saved_data(), exp.dataset.fingerprint
  if saved is None or not now or saved in (now, *exp.dataset.earlier_fingerprints):
    return
  what = (
    f"the data differs from what {rundir.path}'s checkpoint trained on (train+test examples and "
    f"hash {saved} -> {now}), so the remaining steps would not continue that run"
  )
  if not allow_config_change:
    raise ConfigError(
      f"{what}. Use another --workdir, or pass --allow_config_change to resume it anyway"
    )
  say(f"resuming with other data (--allow_config_change): {what}")


def _check_bucketing(exp: Experiment) -> bool:
  """Whether the model has ACUs to bucket; ConfigError if they cannot be."""
  try:
    K.nn.check_bucketable(exp.model)
  except ValueError as e:
    raise ConfigError(f"acu_radius_every_steps: {e}") from e
  return bool(K.nn.active_convs(exp.model))


def restore_or_start(
  exp: Experiment, rundir: RunDir, mesh: jax.sharding.Mesh, say: Callable[[str], None] = print
) -> tuple[TrainState, list[dict[str, Any]]]:
  """The latest intact checkpoint's state and history, or the step-0 state; replicated over the
  mesh.

  A damaged checkpoint is set aside (WORKDIR/damaged_checkpoints) and the one before it tried.
  """
  state = jax.device_put(exp.initial_state(), NamedSharding(mesh, P()))
  if rundir.checkpoints.latest_step() is None:
    return state, []
  state, history = rundir.checkpoints.restore(state, set_aside=jax.process_index() == 0, say=say)
  say(f"resumed from step {int(state.step)} ({rundir.checkpoint_dir})")
  return state, history


class Loop:
  """The steps of a run from its state's step to the end: epochs, evaluation, checkpoints, stops."""

  def __init__(
    self,
    exp: Experiment,
    programs: ProgramCache,
    rundir: RunDir,
    logger: MetricsLogger,
    mesh: jax.sharding.Mesh,
    bucketing: bool,
    clock: Callable[[], float] = time.perf_counter,
  ):
    self.exp, self.settings, self.programs = exp, exp.settings, programs
    self.clock = clock  # the run's wall seconds so far, saved with each checkpoint
    self.rundir, self.logger, self.bucketing = rundir, logger, bucketing
    self.replicated, self.data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def run(self, state: TrainState) -> tuple[TrainState, Programs]:
    """Trains to the end; saves every checkpoint_every_steps and when stopped (SIGTERM, Ctrl-C).

    A stop request is honoured between two steps, never inside one: the checkpoint then holds
    a state and a history that agree (a stop while an epoch was being logged lost that epoch).
    Runs inside a `signals.deferred()` region (train_and_evaluate's).
    """
    settings, exp = self.settings, self.exp
    start = step = int(state.step)
    current = self.programs(state.radii_list())
    batches = data.Batches(
      exp.dataset.train,
      settings.batch_size,
      settings.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    throughput, whole = Throughput(), True
    try:
      with (  # inside train_and_evaluate's signals.deferred(): a stop waits for a boundary
        self.logger.progress(exp.total_steps, start),
        # closed at once: a stopped run exits without the collector, and grain's workers and
        # shared memory with it
        contextlib.closing(batches.iterate(start, exp.total_steps)) as steps,
      ):
        for batch in steps:
          if signals.requested():
            break
          whole = False  # until the step, its epoch line and its checkpoint are all done
          state, current = self.rebucket(state, current, step)
          state, loss = current.train_step(state, shard(batch, self.data))
          step += 1
          throughput.add(settings.batch_size, loss)
          self.log_step(state, step, loss, throughput)
          if step % exp.steps_per_epoch == 0 or step == exp.total_steps:
            state = self.end_epoch(state, step, current, throughput.rate())
            throughput.reset()
          if step % settings.checkpoint_every_steps == 0:
            self.save(state, step)
          whole = True
    finally:
      try:
        if whole and step > start:  # a step cut short (an error, a second Ctrl-C) is not saved
          self.save(state, step)
      finally:
        self.rundir.checkpoints.wait()
    signum = signals.requested()
    if signum:
      latest = self.rundir.checkpoints.latest_step()
      self.rundir.checkpoints.close()
      if step == exp.total_steps and step > start:
        where = f"stopped after its last step ({step}), before its final evaluation; a checkpoint "
        where += "was saved"
      elif step > start:
        where = f"stopped at step {step}; a checkpoint was saved to resume from"
      elif latest is not None:
        where = f"stopped before its first step; the checkpoint of step {latest} is unchanged"
      else:
        where = "stopped before its first step; nothing was saved"
      self.logger.say(f"\n{signal.Signals(signum).name}: training {where}")
      raise TrainingStopped(f"training {where}; run the same command to resume", signum)
    return state, current

  def rebucket(
    self, state: TrainState, current: Programs, step: int
  ) -> tuple[TrainState, Programs]:
    """At a bucketing check: the radii the ACUs need next, and their programs."""
    o, every = self.settings.optim, self.settings.acu_radius_every_steps
    if not self.bucketing or not (step % every == 0 or step == o.position_warmup_steps):
      return state, current
    margin = K.nn.sgd_position_margin(
      step,
      every,
      o.position_warmup_steps,
      o.learning_rate * o.lr_multipliers.get("positions", 1.0),
      o.momentum,
    )
    radii = K.nn.bucketed_radii(self.exp.model, state.params, margin)
    if radii == state.radii_list():
      return state, current
    self.logger.say(f"step {step}: ACU radii -> {radii}")
    state = dataclasses.replace(
      state, radii=jax.device_put(np.asarray(radii, np.int32), self.replicated)
    )
    return state, self.programs(radii)

  def log_step(self, state: TrainState, step: int, loss: jax.Array, throughput: Throughput) -> None:
    logged = step % self.settings.log_every_steps == 0 or step == self.exp.total_steps
    if logged:
      self.check_finite(state)
    self.logger.step(
      loss if logged else None,
      state.sums if logged else None,
      throughput.rate(),
      float(self.exp.schedule(step - 1)),
    )

  def end_epoch(
    self, state: TrainState, step: int, current: Programs, images_per_s: float
  ) -> TrainState:
    """Logs the epoch (and its test numbers when due); the epoch sums start again at zero."""
    self.check_finite(state)
    loss, acc = jax.device_get(state.sums).means()
    record = {
      "epoch": math.ceil(step / self.exp.steps_per_epoch),
      "step": step,
      "train_loss": loss,
      "train_accuracy": acc,
      "learning_rate": float(self.exp.schedule(step - 1)),
      "images_per_s": images_per_s,
    }
    if record["epoch"] % self.settings.eval_every_epochs == 0 or step == self.exp.total_steps:
      test = current.evaluate(state.params, state.rest, self.exp.dataset.test)
      record.update(
        test_loss=test["loss"],
        test_accuracy=test["accuracy"],
        test_top5_accuracy=test["top5_accuracy"],
      )
    self.logger.epoch(record)
    return dataclasses.replace(state, sums=jax.device_put(EpochSums.zeros(), self.replicated))

  def save(self, state: TrainState, step: int) -> None:
    self.check_finite(state)
    self.rundir.checkpoints.save(
      step,
      state,
      self.logger.history,
      self.settings.to_dict(),
      data=self.exp.dataset.fingerprint or None,
      seconds=self.clock(),
    )

  def check_finite(self, state: TrainState) -> None:
    """Raises TrainingDiverged once a step's loss or parameters were not finite, or the loss too
    large."""
    bad = int(state.bad_step)
    if bad < 0:
      return
    self.rundir.checkpoints.wait()
    last = self.rundir.checkpoints.latest_step()
    bound = self.programs.max_loss
    raise TrainingDiverged(
      f"the training diverged at step {bad} (epoch {bad // self.exp.steps_per_epoch + 1}): its "
      f"loss or parameters became NaN or inf"
      + (
        f", or its loss exceeded {bound:.4g} (max_loss_factor "
        f"{self.settings.max_loss_factor:g} x ln(classes))"
        if math.isfinite(bound)
        else ""
      )
      + "; stopped. "
      + (
        f"The last good checkpoint is step {last} in {self.rundir.checkpoint_dir}. "
        if last is not None
        else "No checkpoint was saved before. "
      )
      + "Try a lower optim.learning_rate or a warm-up (optim.warmup_epochs)."
    )
