"""Command line: train one config.

  python -m train.main --config configs/quickstart.py --workdir /tmp/quickstart
  kshapes-train --config configs/acu_cifar.py:cifar100 --workdir runs/acu \\
      --config.seed=1 --config.optim.learning_rate=0.05

`--config path.py[:arg]` loads `get_config(arg)` from the file; any key can be
overridden with `--config.key=value`. Running the same command again with the
same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (get_config() -> ConfigDict).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the summary.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from train import input_pipeline, train  # after flag parsing: --help stays fast

  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (train.ConfigError, input_pipeline.DataError, train.TrainingDiverged) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2 if not isinstance(e, train.TrainingDiverged) else 3)
  except KeyboardInterrupt as e:
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(130)


def run() -> None:
  """Entry point of the `kshapes-train` console script."""
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  run()
