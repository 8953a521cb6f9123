"""Command line: train one config.

  python -m train.main --config configs/quickstart.py --workdir /tmp/quickstart
  python -m train.main --config configs/acu_cifar.py:data=cifar100 --workdir runs/acu \\
      --config.seed=1 --config.optim.learning_rate=0.05

`--config path.py[:arg]` loads `get_config(arg)` from the file; any key can be
overridden with `--config.key=value`. Running the same command again with the
same workdir resumes from its latest intact checkpoint; a config that changes
what the checkpoints mean is refused unless `--allow_config_change`.

Every failure is one `error:` line on stderr (`--debug` shows the traceback)
and an exit status:
  0    trained and evaluated
  2    a bad flag, config or dataset (before anything is compiled)
  3    the training diverged (the checkpoints keep the last good state)
  4    the workdir is in use by another run or unusable (not writable, disk full), or no
       checkpoint restores
  1    anything else
  130  stopped by Ctrl-C, 143 by SIGTERM (128 + the signal), after saving a checkpoint
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from train import cli
from train.cli import one_line

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags on absl's FLAGS (those another command defined already are
  shared)."""
  cli.define_once(
    config_flags.DEFINE_config_file,
    "config",
    None,
    "Training config file (get_config() -> ConfigDict).",
    lock_config=True,
  )
  cli.define_once(
    flags.DEFINE_string,
    "workdir",
    None,
    "Directory for checkpoints, metrics, plots and the summary.",
  )
  cli.define_once(
    flags.DEFINE_bool,
    "allow_config_change",
    False,
    "Resume a workdir whose checkpoints were made by a config "
    "that differs in model, conv, optimizer, batch size, seed or data.",
  )
  cli.define_debug()


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(flags.Error(f"unexpected arguments: {argv[1:]}"), 2)
  from train import trainer  # after flag parsing: --help stays fast
  from train.trainer.rundir import RunDir

  try:
    config = FLAGS.config
    config.get("model")  # config_flags defers a file that cannot be read to the first use
  except Exception as e:
    if FLAGS.debug:
      raise
    cli.fail(flags.Error(f"the config file cannot be loaded: {one_line(e)}"), 2)
  try:
    trainer.train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
  except trainer.TrainingStopped as e:
    cli.stopped(e)
  except KeyboardInterrupt as e:  # a stop outside the loop (the final evaluation), a second Ctrl-C
    saved = RunDir(FLAGS.workdir).checkpoints.latest_step() if FLAGS.workdir else None
    resume = (
      f"run the same command to resume from its checkpoint of step {saved}"
      if saved is not None
      else "no checkpoint was saved: the same command starts again"
    )
    cli.stopped(e, f"{str(e) or 'interrupted'}; {resume}")
  except Exception as e:
    if FLAGS.debug:
      raise
    cli.fail(e)


def run() -> None:
  """Entry point of python -m train.main."""
  cli.run(main, define_flags, required=["config", "workdir"])


if __name__ == "__main__":
  run()
