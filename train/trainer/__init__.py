"""The trainer of one run: `train_and_evaluate(config, workdir)` and the errors it raises.

settings      the config read and checked once into typed settings
experiment    the settings made concrete: data, model, optimizer, length
loop          the training loop (train_and_evaluate)
state, step   the TrainState and the jitted step
programs      the compiled step and evaluator per ACU radius set
evaluation    the evaluator and the final evaluation of the trained and deployed model
rundir        where a run's files are, and its lock
checkpoints   orbax save / verified restore / set-aside of damaged checkpoints
logger, plots the progress bar, metrics.jsonl and the learning curve
summary       the typed summary.json record
trained_run   a finished run rebuilt from its directory (for the analyses and export)
"""

from train.data import DataError
from train.trainer.checkpoints import CheckpointError
from train.trainer.loop import TrainingDiverged, TrainingStopped, data_mesh, train_and_evaluate
from train.trainer.rundir import RunDirError
from train.trainer.settings import ConfigError, check_config

__all__ = [
  "CheckpointError",
  "ConfigError",
  "DataError",
  "RunDirError",
  "TrainingDiverged",
  "TrainingStopped",
  "check_config",
  "data_mesh",
  "train_and_evaluate",
]
