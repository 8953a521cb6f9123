"""A run's state restored from its checkpoints into the state its config builds, and the model
that state holds: what reading a finished run (trained_run) and fine-tuning one (the trainer's
quantize.qat) share."""

from __future__ import annotations

import sys

from flax import nnx

import kshapes_jax as K
from train.trainer.checkpoints import CheckpointError
from train.trainer.rundir import RunDir
from train.trainer.state import TrainState

READ_ATTEMPTS = 3  # listings of a live run's checkpoints a reader tries


def restore(rundir: RunDir, template: TrainState, step: int | None = None) -> TrainState:
  """Checkpoint `step` of a run, or (None) its latest intact one as the trainer finds it: past
  damaged ones (reported on stderr, left in place), and listed anew when a run training right now
  has rotated the checkpoint being read away.

  Raises:
    FileNotFoundError: without checkpoints, or without that step.
    CheckpointError: when it (every one, for None) is damaged.
  """
  if step is not None:
    return rundir.checkpoints.restore(template, step)[0]
  for _ in range(READ_ATTEMPTS):
    listed = rundir.checkpoints.steps()
    try:
      return rundir.checkpoints.restore(template, say=_warn)[0]
    except (CheckpointError, FileNotFoundError):
      rundir.checkpoints.close()  # the next listing reads the directory again
      if rundir.checkpoints.steps() == listed:  # nothing moved: the damage is real
        raise
  return rundir.checkpoints.restore(template, say=_warn)[0]


def _warn(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def model_of(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  """The model a restored state holds, with its ACU radii, in eval mode."""
  model = K.nn.with_radii(nnx.merge(graphdef, state.params, state.rest), state.radii_list())
  model.eval()
  return model
