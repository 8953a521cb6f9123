"""What the tests that train share: the small config, a run by overrides, and comparing runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

from configs import default
from train import trainer
from train.trainer import trained_run
from train.trainer.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def small_config(**overrides):
  """The default config (SN on synthetic data) at 64 / 40 examples, 4 steps of 16."""
  c = default.get_config()
  c.data.update(train_size=64, test_size=40)
  c.update(batch_size=16, eval_batch_size=16, num_steps=4, log_every_steps=1, progress=False)
  c.update_from_flattened_dict(overrides)
  return c


def train(workdir: Path, **overrides):
  """`small_config(**overrides)` trained into `workdir`; its summary."""
  return trainer.train_and_evaluate(small_config(**overrides), workdir)


def copy_run(source: Path, workdir: Path) -> Path:
  """A copy of a finished run's directory (a session's shared run, for one test to change)."""
  shutil.copytree(source, workdir)
  return workdir


def metrics(workdir: Path) -> list[dict]:
  """metrics.jsonl without the speed, which differs between two equal runs."""
  return [
    {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  ]


def assert_same_run(a: Path, b: Path) -> None:
  """The two runs logged the same epochs and saved the same last state, bit for bit."""
  assert metrics(a) == metrics(b)
  (step_a, state_a), (step_b, state_b) = trained_run.load_state(a), trained_run.load_state(b)
  assert step_a == step_b
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(x, y)


def checkpoint_steps(workdir: Path) -> list[int]:
  return RunDir(workdir).checkpoints.steps()


def kinds(slow: tuple[str, ...] = ("rotate2",)) -> list:
  """Every registered kind as test parameters, those in `slow` with -m slow: by default rotate2,
  RotateConv's second name (rotate4's module with one shared weight), where a path under test is
  the same for both (the trainer's per-kind test keeps it in the default run)."""
  import pytest

  from kshapes_jax.nn import kind_names

  return [pytest.param(k, marks=pytest.mark.slow) if k in slow else k for k in kind_names()]
