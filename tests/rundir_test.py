"""The run directory, the typed train state and the program cache: one owner each, nothing changed
behind."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from runs import small_config

from kshapes_jax import models
from kshapes_jax import nn as knn
from train import trainer
from train.trainer import experiment, programs
from train.trainer.rundir import RunDir
from train.trainer.state import EpochSums, TrainState
from train.trainer.trained_run import load_run, load_state

# A run trained by the trainer as it was before TrainState and RunDir (commit d265bff): an ACU
# net with extent bucketing (radii in the state), synthetic data, 6 steps, its final checkpoint.
BEFORE = Path(__file__).parent / "data" / "run_before_redesign"


def _synthetic_before_the_default_recipe_fix(shape, num_classes, train_size, test_size, seed=0):
  """train.data.synthetic_splits as it was before commit 0f28d28: a template per pixel."""
  rng = np.random.default_rng(seed)
  templates = rng.uniform(0, 255, size=(num_classes, *shape))

  def make(n):
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    images = 0.6 * templates[labels] + 0.4 * rng.uniform(0, 255, size=(n, *shape))
    return np.clip(images, 0, 255).astype(np.uint8), labels

  return make(train_size), make(test_size)


def test_a_run_made_before_the_redesign_restores_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(BEFORE, workdir)
  before = json.loads((BEFORE / "summary.json").read_text())
  step, state = load_state(workdir)
  assert step == 6 and state.radii_list() == before["acu_radii"] == [2] * 6
  run = load_run(workdir)
  assert [layer.radius for _, layer in knn.active_convs(run.model)] == before["acu_radii"]
  # the finished run resumes as a no-op and evaluates to the numbers it wrote then, on the data
  # it was trained on: the synthetic images of that time (per-pixel templates), as NPZ files
  config = RunDir(workdir).read_config()
  data = config["data"]
  train, test = _synthetic_before_the_default_recipe_fix((28, 28, 1), 10, data["train_size"], 40)
  for name, split in (("train", train), ("test", test)):
    np.savez(tmp_path / f"{name}.npz", image=split[0], label=split[1])
  config["data"] = {**data, "source": "npz", "data_dir": str(tmp_path)}
  summary = trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  assert summary.steps == 6
  assert summary.test_accuracy == before["test_accuracy"]
  np.testing.assert_allclose(summary.test_loss, before["test_loss"], rtol=1e-6)
  assert [m["epoch"] for m in RunDir(workdir).read_metrics()] == [1, 2]


def test_train_state_keeps_the_checkpoint_layout():
  params = {"w": np.ones(3, np.float32)}
  tx = optax.sgd(0.1, momentum=0.9)
  state = TrainState.create(tx, params, {"bn": np.zeros(2, np.float32)}, radii=[1, 2])
  tree = state.to_tree()
  assert sorted(tree) == ["bad_step", "opt_state", "params", "radii", "rest", "step", "sums"]
  assert sorted(tree["sums"]) == ["correct", "count", "loss"]
  again = TrainState.from_tree(tree)
  chex_equal = jax.tree.map(np.array_equal, jax.tree.leaves(again), jax.tree.leaves(state))
  assert all(chex_equal) and again.radii_list() == [1, 2]
  # orbax cannot save an empty array
  assert "radii" not in TrainState.create(tx, params, {}).to_tree()
  sums = EpochSums.zeros().add(np.float32(2.0), np.int32(3), 4)
  assert sums.means() == (2.0, 0.75)


def test_rundir_saves_lists_and_restores_into_the_trainers_state(tmp_path):
  exp = experiment.build(small_config())
  state = jax.device_put(exp.initial_state())
  rundir = RunDir(tmp_path, keep_checkpoints=2)
  assert (
    rundir.checkpoints.steps() == []
    and rundir.read_summary() is None
    and rundir.read_metrics() == []
  )
  for step in (1, 2, 3):
    rundir.checkpoints.save(step, state.replace(step=np.int32(step)), [{"epoch": step}])
  rundir.checkpoints.wait()
  assert rundir.checkpoints.steps() == [2, 3]  # keep_checkpoints
  restored, history = RunDir(tmp_path).checkpoints.restore(state)
  assert int(restored.step) == 3 and history == [{"epoch": 3}]
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 1 .* saved: \[2, 3\]"):
    RunDir(tmp_path).checkpoints.restore(state, step=1)
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    RunDir(tmp_path).read_config()


def test_program_cache_sets_radii_on_copies_never_on_the_model():
  exp = experiment.build(small_config(conv="active"))
  before = [layer.radius for _, layer in knn.active_convs(exp.model)]
  cache = programs.ProgramCache(
    exp.model,
    exp.tx,
    exp.dataset,
    augment="none",
    seed=0,
    eval_batch_size=16,
    mesh=trainer.data_mesh(),
  )
  small = cache([1] * len(before))
  assert cache([1] * len(before)) is small  # compiled once
  assert [layer.radius for _, layer in knn.active_convs(exp.model)] == before == [2] * 4
  radii = [
    layer.radius
    for _, layer in knn.active_convs(nnx.merge(small.eval_graphdef, nnx.state(exp.model)))
  ]
  assert radii == [1] * 4
  with pytest.raises(ValueError, match="one radius per ActiveConv"):
    knn.with_radii(exp.model, [1])


def test_bucketing_refuses_acus_it_cannot_bound(tmp_path):
  config = small_config(conv="active", acu_radius_every_steps=2, **{"conv_options.impl": "gather"})
  with pytest.raises(trainer.ConfigError, match="needs splat ACUs with the normalized gradient"):
    trainer.train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize("padding", ["SAME", (1, 1), 1.0, True])
def test_layers_that_derive_paddings_take_an_int_only(padding):
  for layer in (knn.ACBlock, knn.ActiveConv):
    with pytest.raises(ValueError, match=f"{layer.__name__} padding must be an int"):
      layer(2, 3, 3, padding=padding, rngs=nnx.Rngs(0))
  assert knn.RotateConv(2, 3, padding="SAME", rngs=nnx.Rngs(0)).padding == "SAME"
  assert models.create("sn", conv="acb").convs[0].padding == 1


@pytest.mark.parametrize("progress, terminal", [(False, False), (True, False), (False, True)])
def test_every_epoch_line_is_printed_with_or_without_the_bar(
  tmp_path, capsys, monkeypatch, progress, terminal
):
  """A job's log (progress off, or no terminal) shows every epoch: the line went only through the
  bar, and a run with progress=False printed none for 20 minutes."""
  from train.trainer.logger import MetricsLogger

  monkeypatch.setattr("sys.stderr.isatty", lambda: terminal)
  log = MetricsLogger(RunDir(tmp_path), "test", [], progress=progress)
  record = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "images_per_s": 100.0}
  with log.progress(total=10, initial=0):
    assert log._bar is None  # no bar off a terminal, nor when asked for none
    log.epoch(record)
  assert capsys.readouterr().out == "epoch 1: train loss 0.5000 acc 80.00%, 100 images/s\n"
