"""The kshapes-jax training system: `python -m train.main --config configs/<experiment>.py --workdir
DIR`."""

import sys as _sys

from train import signals as _signals

# `python -m train.COMMAND`: a Ctrl-C or SIGTERM while the command's modules import (seconds, in
# packages that import JAX) ends it at once with its stopped: line; cli.run takes over after
if _signals.command_name(_sys.orig_argv).startswith("train."):
  _signals.install_early()
