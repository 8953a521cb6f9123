"""Command line: train one config.

  python -m train.main --config configs/quickstart.py --workdir /tmp/quickstart
  kshapes-train --config configs/acu_cifar.py:cifar100 --workdir runs/acu \\
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

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from train import cli
from train.cli import exit_status, one_line

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
  cli.define_once(
    flags.DEFINE_bool,
    "debug",
    False,
    "On a failure, show the traceback instead of one error: line.",
  )


def _fail(e: BaseException, status: int) -> None:
  known = status != 1
  print(
    f"error: {one_line(e) if known else f'{type(e).__name__}: {one_line(e)}'}"
    + ("" if known else " (--debug shows the traceback)"),
    file=sys.stderr,
  )
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag or config file as one error: line (status 2)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error; the config file's own errors (SyntaxError, ImportError...)
    if "--debug" in argv:
      raise
    message = one_line(e)
    key = message.strip("'\"")
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    culprit = [a for a in overrides if a.split(".")[-1] == key]
    if isinstance(e, (AttributeError, KeyError)) and culprit:  # a locked config refuses new keys
      message = (
        f"unknown config key {culprit[0][len('--config.') :]!r} ({culprit[0]}); the config file "
        "lists the keys (configs/default.py documents them)"
      )
    elif not isinstance(e, flags.Error):
      message = f"the config file cannot be loaded: {type(e).__name__}: {message}"
    _fail(flags.Error(message), 2)
    raise  # unreachable: _fail exits


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS[
    "verbosity"
  ].present:  # orbax logs every save at INFO, and a failed one at ERROR
    logging.set_verbosity(
      logging.WARNING if FLAGS.debug else logging.FATAL
    )  # before our error: line
  from train import trainer  # after flag parsing: --help stays fast

  try:
    config = FLAGS.config
    config.get("model")  # config_flags defers a file that cannot be read to the first use
  except Exception as e:
    if FLAGS.debug:
      raise
    _fail(flags.Error(f"the config file cannot be loaded: {one_line(e)}"), 2)
  try:
    trainer.train_and_evaluate(config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change)
  except trainer.TrainingStopped as e:
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt as e:
    print(
      f"stopped: {e or 'interrupted'}; run the same command to resume from the latest checkpoint",
      file=sys.stderr,
    )
    sys.exit(130)
  except Exception as e:
    if FLAGS.debug:
      raise
    _fail(e, exit_status(e))


def run() -> None:
  """Entry point of the `kshapes-train` console script and of python -m train.main."""
  define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
