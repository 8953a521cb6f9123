"""The training system end to end: every conv kind, TFDS mock data, kill -9 resume, 4 devices,
failures."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import driver
import jax
import numpy as np
import pytest
import runs
from runs import small_config

from configs import default
from kshapes_jax import nn as knn
from train import data, trainer
from train.trainer import trained_run
from train.trainer.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def _metrics(workdir):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def _final_state(workdir):
  """(step, TrainState) of the latest checkpoint, through the run directory as analyze reads it."""
  return trained_run.load_state(workdir)


def _positions(state, layer):
  return np.asarray(state.params["convs"][layer]["positions"].get_value())


# repvgg with -m slow: the trainer's path for a multi-branch kind is dbb's and acb's
@pytest.mark.parametrize("conv", runs.kinds(slow=("repvgg",)))
def test_every_conv_kind_trains_and_deploys(tmp_path, conv):
  # exact float32, so that the deployed net's loss is the trained one's to 1e-4 on a GPU too
  config = small_config(conv=conv, precision="highest", **{"optim.position_warmup_steps": 2})
  summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary.steps == 4 and summary.test_examples == 40
  # deploy(model) is the same network: same accuracy, same predictions
  assert summary.deployed_test_accuracy == summary.test_accuracy
  assert summary.deployed_prediction_agreement == 1.0
  assert abs(summary.deployed_test_loss - summary.test_loss) < 1e-4
  for name in ("summary.json", "metrics.jsonl", "learning_curve.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert json.loads((tmp_path / "summary.json").read_text())["conv"] == conv
  assert [m["epoch"] for m in _metrics(tmp_path)] == [1]
  step, state = _final_state(tmp_path)
  assert step == 4 and state.step == 4
  if conv == "active":  # positions moved after the warm-up; synapse 0 is fixed by construction
    positions = _positions(state, 1)
    lattice = np.asarray(knn.initial_positions(9, "lattice"))[1:]
    assert 0 < np.max(np.abs(positions - lattice)) < 0.05


def test_tfds_mock_data_run_with_cifar_augmentation(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = small_config(
    model="cifar_quick",
    conv="acb",
    **{"data.name": "cifar10", "data.source": "tfds", "data.augment": "cifar"},
  )
  with tfds.testing.mock_data(num_examples=48):
    summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary.dataset == "cifar10" and summary.test_examples == 48
  assert summary.deployed_test_accuracy == summary.test_accuracy


def test_resume_is_a_no_op_once_finished_and_continues_a_longer_run(tmp_path):
  first = trainer.train_and_evaluate(small_config(num_steps=4), tmp_path)
  again = trainer.train_and_evaluate(small_config(num_steps=4), tmp_path)
  assert again.test_loss == first.test_loss
  start = time.perf_counter()
  longer = trainer.train_and_evaluate(small_config(num_steps=8), tmp_path)
  command = time.perf_counter() - start
  fresh = trainer.train_and_evaluate(small_config(num_steps=8), tmp_path / "fresh")
  assert longer.test_loss == fresh.test_loss
  assert _metrics(tmp_path) == _metrics(tmp_path / "fresh")
  # the run's wall time spans its commands: each resume adds to what its checkpoint had spent
  checkpoints = RunDir(tmp_path).checkpoints
  at_4, at_8 = checkpoints.saved_seconds(4), checkpoints.saved_seconds(8)
  assert at_4 is not None and at_8 is not None
  assert 0 < at_4 < first.seconds_total and at_4 < again.seconds_total
  assert at_4 < at_8 < longer.seconds_total
  assert at_4 + 0.5 * command < longer.seconds_total <= at_4 + command


def _run(tmp_path, workdir, overrides, kill_at=-1, devices=1):
  """(exit status, output) of the default config with `overrides`, trained in its own process."""
  env = driver.environment(devices)
  return driver.run(tmp_path, workdir, overrides, kill_at=kill_at, env=env)


def _overrides(**kw):
  base = {
    "data.train_size": 64,
    "data.test_size": 40,
    "batch_size": 16,
    "eval_batch_size": 16,
    "log_every_steps": 1,
    "progress": False,
  }
  base.update(kw)
  return base


# slow: the default run's multihost test kills its processes after a checkpoint and resumes them
# to the one-process run's numbers (and the signals harness stops the command at sampled moments)
@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run_bitwise(tmp_path):
  overrides = _overrides(num_steps=12, checkpoint_every_steps=3, conv="rotate4")
  code, out = _run(tmp_path, tmp_path / "killed", overrides, kill_at=8)
  assert code == -9, out[-2000:]
  saved = sorted(
    int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit()
  )
  assert saved and max(saved) < 12, saved
  code, out = _run(tmp_path, tmp_path / "killed", overrides)
  assert code == 0, out[-2000:]
  assert f"resumed from step {max(saved)}" in out
  code, out = _run(tmp_path, tmp_path / "clean", overrides)
  assert code == 0, out[-2000:]

  assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "clean")
  step_a, a = _final_state(tmp_path / "killed")
  step_b, b = _final_state(tmp_path / "clean")
  assert step_a == step_b == 12
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)

  def summary(d):
    return {
      k: v
      for k, v in json.loads((d / "summary.json").read_text()).items()
      if k not in ("seconds_total", "workdir")
    }

  assert summary(tmp_path / "killed") == summary(tmp_path / "clean")


@pytest.mark.slow  # the two-process test (multihost_test.py) trains on two devices by default
def test_four_devices_follow_the_one_device_trajectory(tmp_path):
  overrides = _overrides(
    model="cifar_quick",
    conv="active",
    num_steps=8,
    **{"data.name": "cifar10", "data.augment": "cifar", "data.train_size": 32},
  )
  one = _run(tmp_path, tmp_path / "one", overrides, devices=1)
  four = _run(tmp_path, tmp_path / "four", overrides, devices=4)
  assert one[0] == 0, one[1][-2000:]
  assert four[0] == 0, four[1][-2000:]
  assert "4 device(s)" in four[1] and "1 device(s)" in one[1]
  m1, m4 = _metrics(tmp_path / "one"), _metrics(tmp_path / "four")
  assert len(m1) == len(m4) == 4  # 2 steps per epoch
  for a, b in zip(m1, m4):
    np.testing.assert_allclose(
      [a["train_loss"], a["test_loss"]], [b["train_loss"], b["test_loss"]], rtol=2e-4
    )
  s1 = RunDir(tmp_path / "one").read_summary()
  s4 = RunDir(tmp_path / "four").read_summary()
  assert s4.devices == 4 and abs(s1.test_accuracy - s4.test_accuracy) <= 1 / 40


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = small_config(
    num_steps=20,
    checkpoint_every_steps=1,
    **{"optim.learning_rate": 1e8, "optim.weight_decay": 0.0},
  )
  with pytest.raises(trainer.TrainingDiverged, match="diverged at step .* NaN or inf") as info:
    trainer.train_and_evaluate(config, tmp_path)
  bad = int(str(info.value).split("at step ")[1].split()[0])
  step, state = _final_state(tmp_path)
  assert step <= bad
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  assert f"last good checkpoint is step {step}" in str(info.value)


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(model="resnet21"), "unknown model 'resnet21'"),
    (dict(model="lenet", conv="rotate4"), "does not apply to lenet"),
    ({"data.name": "imagenet"}, "unknown dataset"),
    (
      {"data.source": "s3"},
      r"data.source must be one of \['tfds', 'idx', 'npz', 'synthetic', 'arrayrecord'\]",
    ),
    ({"data.augment": "mixup"}, "data.augment"),
    ({"optim.schedule": "linear"}, "optim.schedule"),
    ({"optim.name": "lamb"}, "optim.name must be one of"),
    (
      {"optim.name": "adamw", "conv": "active", "acu_radius_every_steps": 2},
      "needs optim.name='sgd'",
    ),
    ({"optim.decay_labels": ("kernel",)}, "unknown parameter label 'kernel'"),
    (dict(batch_size=0), r"batch_size must be an int in \[1, inf\), got 0"),
    (dict(num_steps=0, num_epochs=0.0), "num_epochs > 0 or num_steps > 0"),
    (
      dict(model="sn", **{"data.name": "cifar10"}),
      r"cannot take cifar10 images of shape \(32, 32, 3\)",
    ),
  ],
)
def test_bad_configs_fail_fast_with_a_readable_message(tmp_path, overrides, match):
  with pytest.raises(trainer.ConfigError, match=match):
    trainer.train_and_evaluate(small_config(**overrides), tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_batch_must_split_over_devices(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 3)
  with pytest.raises(trainer.ConfigError, match="multiple of the 3 devices"):
    trainer.check_config(small_config())


def test_missing_data_fails_before_compiling(tmp_path):
  config = small_config(
    **{"data.name": "fashion_mnist", "data.source": "idx", "data.data_dir": "/nonexistent"}
  )
  with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
    trainer.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_command_line_trains_and_reports(tmp_path):
  proc = driver.command(
    tmp_path, "--config.num_steps=2", "--config.data.train_size=64", "--config.progress=False"
  )
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  assert "test accuracy" in out and "deployed" in out


def test_extent_bucketing_keeps_3x3_while_frozen_and_matches_the_fixed_radius(tmp_path):
  # exact float32: the 3x3 and 5x5 kernels then give the same sums on any backend
  common = {
    "conv": "active",
    "num_steps": 6,
    "optim.position_warmup_steps": 4,
    "precision": "highest",
  }
  fixed = trainer.train_and_evaluate(small_config(**common), tmp_path / "fixed")
  short = trainer.train_and_evaluate(
    small_config(acu_radius_every_steps=2, **dict(common, num_steps=4)), tmp_path / "short"
  )
  assert short.acu_radii == [1, 1, 1, 1]  # frozen lattice: a 3x3 conv is enough
  bucketed = trainer.train_and_evaluate(
    small_config(acu_radius_every_steps=2, **common), tmp_path / "bucketed"
  )
  assert fixed.acu_radii == [2, 2, 2, 2]
  assert bucketed.acu_radii == [2, 2, 2, 2]  # moving corners need R = 2 (the layers' cap)
  for a, b in zip(_metrics(tmp_path / "fixed"), _metrics(tmp_path / "bucketed")):
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-5)
  _, f = _final_state(tmp_path / "fixed")
  _, b = _final_state(tmp_path / "bucketed")
  np.testing.assert_allclose(_positions(f, 2), _positions(b, 2), atol=1e-6)


def test_bucket_radius():
  lattice = knn.initial_positions(9, "lattice")
  assert knn.bucket_radius(lattice, 0.0, 3) == 1
  assert knn.bucket_radius(lattice, 0.01, 3) == 2
  assert knn.bucket_radius(lattice * 2.5, 1.0, 3) == 3  # capped
  assert knn.bucket_radius(np.zeros((0, 2)), 0.0, 2) == 1
  with pytest.raises(ValueError, match="margin"):
    knn.bucket_radius(lattice, -1.0, 2)


# ACB in the default run (the ACNet ImageNet recipes are bf16), every kind with -m slow (each
# layer's bf16 path against its float32 twin: precision_test.py)
@pytest.mark.parametrize(
  "conv", [k if k == "acb" else pytest.param(k, marks=pytest.mark.slow) for k in knn.CONV_KINDS]
)
def test_mixed_precision_is_a_config_switch(tmp_path, conv):
  """dtype=bfloat16: bf16 convs, float32 parameters, optimizer state and loss; it trains and
  deploys."""
  summary = trainer.train_and_evaluate(
    small_config(conv=conv, dtype="bfloat16", num_steps=6), tmp_path
  )
  assert np.isfinite(summary.test_loss) and np.isfinite(summary.final_train_loss)
  # the deployed net computes in bf16 too: its predictions may differ in a near tie, not more
  assert summary.deployed_prediction_agreement >= 0.9
  _, state = _final_state(tmp_path)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype in (np.float32, np.int32) for x in jax.tree.leaves(state.opt_state))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["dtype"] == "bfloat16" and config["precision"] == "default"


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(precision="tf32"), "precision must be one of"),
    (dict(dtype="int8"), "dtype must be one of"),
  ],
)
def test_bad_numerics_fail_fast(tmp_path, overrides, match):
  with pytest.raises(trainer.ConfigError, match=match):
    trainer.train_and_evaluate(small_config(**overrides), tmp_path)


def test_deterministic_ops_are_requested_before_jax_starts():
  from train.trainer import determinism

  assert determinism.with_flag("") == determinism.FLAG
  assert determinism.with_flag("--a=1") == f"--a=1 {determinism.FLAG}"
  assert (
    determinism.with_flag("--xla_gpu_deterministic_ops=false")
    == "--xla_gpu_deterministic_ops=false"
  )
  code = (
    "import os; from train.trainer import determinism; import jax; "
    "print(determinism.request(True), os.environ['XLA_FLAGS']); print(jax.numpy.ones(2).sum())"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split("\n")[0] == f"True {determinism.FLAG}"
  off = subprocess.run(
    [
      sys.executable,
      "-c",
      code.replace("request(True)", "request(False)").replace(
        ", os.environ['XLA_FLAGS']", ", os.environ.get('XLA_FLAGS')"
      ),
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert off.stdout.split("\n")[0] == "False None"


def test_adamw_is_a_config_switch_and_keeps_the_papers_rules(tmp_path):
  config = small_config(
    conv="active",
    num_steps=6,
    **{"optim.name": "adamw", "optim.learning_rate": 1e-2, "optim.position_warmup_steps": 4},
  )
  summary = trainer.train_and_evaluate(config, tmp_path)
  assert np.isfinite(summary.test_loss)
  _, state = _final_state(tmp_path)
  start = np.asarray(knn.initial_positions(9, "lattice"))[1:]
  moved = np.abs(_positions(state, 1) - start)
  # frozen for 4 steps, then 2 Adam steps of at most ~lr x 0.01 each (normalized gradient, unit
  # moments)
  assert 0 < moved.max() <= 2 * 1e-2 * 0.01 * 1.01
  assert {"mu", "nu"} <= {
    getattr(k, "name", None)
    for path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    for k in path
  }


def test_the_default_recipe_learns(tmp_path, capsys):
  summary = trainer.train_and_evaluate(default.get_config(), tmp_path)
  assert summary.epochs == 5 and summary.test_accuracy > 0.9, summary
  assert "at chance" not in capsys.readouterr().err


def test_a_run_that_ends_at_chance_says_so(tmp_path, capsys):
  from train.trainer import loop

  assert loop.chance_warning(0.9, 10) is None
  assert "at chance (10.00% for 10 classes)" in loop.chance_warning(0.12, 10)
  trainer.train_and_evaluate(small_config(num_steps=1, **{"optim.learning_rate": 1e-6}), tmp_path)
  assert "the model did not learn" in capsys.readouterr().err
