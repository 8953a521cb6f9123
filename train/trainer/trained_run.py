"""A trained run rebuilt from its run directory: the config's model filled from a checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from train import data
from train.trainer import experiment
from train.trainer.restored import model_of, restore
from train.trainer.rundir import RunDir
from train.trainer.settings import Settings, read
from train.trainer.state import TrainState, split_model


@dataclasses.dataclass
class TrainedRun:
  """A trained run at one checkpoint.

  Attributes:
    rundir: its directory.
    settings: its config (config.json), checked.
    dataset: its data, loaded as the trainer loaded it.
    model: the trained model at `step`, eval mode, with the ACU radii the run had there.
    initial: the same model at initialisation (settings.seed), eval mode.
    step: the checkpoint's step.
    steps: every saved checkpoint's step.
  """

  rundir: RunDir
  settings: Settings
  dataset: data.Dataset
  model: nnx.Module
  initial: nnx.Module
  step: int
  steps: list[int]
  template: TrainState = dataclasses.field(repr=False)  # what a checkpoint restores into
  graphdef: nnx.GraphDef = dataclasses.field(repr=False)

  @property
  def workdir(self) -> Path:
    return self.rundir.path

  def model_at(self, step: int) -> nnx.Module:
    """The trained model at another saved step (eval mode)."""
    return model_of(self.graphdef, self.rundir.checkpoints.restore(self.template, step)[0])


def load_run(workdir: str | Path, step: int | None = None) -> TrainedRun:
  """Rebuilds a run's model from workdir/config.json and fills it from a checkpoint: `step`, or
  the latest intact one (`restore`), also beside a run training in workdir right now.

  Raises:
    FileNotFoundError: when workdir has no config.json or no such checkpoint.
    CheckpointError: when the checkpoint (every one, for step None) is damaged.
  """
  rundir = RunDir(workdir)
  settings = read(rundir.read_config())
  rundir.checkpoints.find(step)  # FileNotFoundError, with the saved steps, before any build
  exp = experiment.build(settings)
  initial = nnx.clone(exp.model)
  initial.eval()
  template = jax.device_put(exp.initial_state())
  graphdef = split_model(exp.model)[0]
  state = restore(rundir, template, step)
  step = int(state.step)
  model = model_of(graphdef, state)
  return TrainedRun(
    rundir,
    settings,
    exp.dataset,
    model,
    initial,
    step,
    rundir.checkpoints.steps(),
    template,
    graphdef,
  )


def load_state(workdir: str | Path, step: int | None = None) -> tuple[int, TrainState]:
  """(step, the trainer's TrainState) of a checkpoint (default: the latest), restored into the
  state the run's config builds, on the default device."""
  rundir = RunDir(workdir)
  template = jax.device_put(experiment.build(rundir.read_config()).initial_state())
  state = restore(rundir, template, step)
  return int(state.step), state
