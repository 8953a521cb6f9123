"""Damaged checkpoints, resumes that change what a state means, and readers of a run: the run
resumes from the last intact state, equal to an uninterrupted one, or says why it cannot."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import driver
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import runs
from runs import small_config

from train import data as pipeline
from train import trainer
from train.trainer import experiment
from train.trainer.checkpoints import CheckpointError, Checkpoints
from train.trainer.rundir import RunDir

# one xdist worker trains the module's shared runs once (pytest runs with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("checkpoints")
_EVERY_2 = dict(checkpoint_every_steps=2, keep_checkpoints=10)


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
  """The runs the tests copy and damage, trained once: "clean" (8 steps, checkpoints every 2),
  "six" (its first 6 steps) and "two" (2 steps of the small config)."""
  root = tmp_path_factory.mktemp("saved")
  summaries = {
    "clean": runs.train(root / "clean", num_steps=8, **_EVERY_2),
    "six": runs.train(root / "six", num_steps=6, **_EVERY_2),
    "two": runs.train(root / "two", num_steps=2),
  }
  return root, summaries


def _damage(step_dir: Path, how: str) -> None:
  state = step_dir / "state"
  # ocdbt's data
  data_files = sorted(p for p in state.rglob("*") if p.is_file() and p.parent.name == "d")
  if how == "array_edited":  # one number changed, saved soundly: only the checksum tells
    checkpointer = ocp.StandardCheckpointer()
    leaves, treedef = jax.tree_util.tree_flatten(checkpointer.restore(state))
    largest = max(range(len(leaves)), key=lambda i: np.size(leaves[i]))
    leaves[largest] = np.array(leaves[largest])
    leaves[largest].flat[0] += 1
    shutil.rmtree(state)
    checkpointer.save(state, jax.tree_util.tree_unflatten(treedef, leaves))
    checkpointer.wait_until_finished()
  elif how == "bit_flip":  # mid-file: hits a compressed chunk (unreadable) or raw bytes (checksum)
    target = max(data_files, key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    target.write_bytes(bytes(raw))
  elif how == "data_deleted":
    for p in data_files:
      p.unlink()
  elif how == "data_truncated":
    for p in data_files:
      p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
  elif how == "metadata_missing":
    (state / "_METADATA").unlink()
  elif how == "history_garbled":
    (step_dir / "history" / "metadata").write_text('[{"epoch": 1, "train_loss": 9.0')
  elif how == "empty_step_dir":
    shutil.rmtree(step_dir)
    step_dir.mkdir()


@pytest.mark.parametrize(
  "how",
  [
    "array_edited",
    "bit_flip",
    "data_deleted",
    "data_truncated",
    "metadata_missing",
    "history_garbled",
    "empty_step_dir",
  ],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
  tmp_path, saved, how
):
  root, summaries = saved
  rundir = RunDir(runs.copy_run(root / "six", tmp_path / "run"))
  assert rundir.checkpoints.steps() == [2, 4, 6]
  _damage(rundir.checkpoint_dir / "6", how)
  with pytest.raises(CheckpointError, match="checkpoint 6 in .* is damaged"):
    rundir.checkpoints.restore(
      jax.device_put(experiment.build(small_config()).initial_state()), step=6
    )
  resumed = runs.train(tmp_path / "run", num_steps=8, **_EVERY_2)
  assert (rundir.damaged_dir / "6").is_dir()  # kept aside, not deleted
  assert resumed.test_loss == summaries["clean"].test_loss
  runs.assert_same_run(tmp_path / "run", root / "clean")


def test_restore_says_which_step_is_damaged_and_when_all_are(tmp_path, saved):
  rundir = RunDir(runs.copy_run(saved[0] / "six", tmp_path / "run"))
  shutil.rmtree(rundir.checkpoint_dir / "6")  # steps 2 and 4
  _damage(rundir.checkpoint_dir / "4", "array_edited")
  _damage(rundir.checkpoint_dir / "2", "bit_flip")
  like = jax.device_put(experiment.build(small_config()).initial_state())
  said = []
  with pytest.raises(
    CheckpointError, match=r"every checkpoint in .* is damaged \(steps \[4, 2\]\)"
  ):
    rundir.checkpoints.restore(like, say=said.append)
  assert said[0].startswith(
    "checkpoint 4 is damaged (its arrays or history do not match the checksum"
  )
  assert said[0].endswith("trying step 2")
  assert rundir.checkpoints.steps() == [2, 4]  # a reader moves nothing


@pytest.mark.parametrize("rotated", [1, 2])
def test_a_checkpoint_rotated_away_while_it_is_read_is_not_called_damaged(
  tmp_path, saved, monkeypatch, rotated
):
  """A reader of a run that trains right now (analyze, export) lists the checkpoints, then the
  trainer removes the oldest: those vanish under the reader, which takes another one, silently
  (it printed 'checkpoint N is damaged (FileNotFoundError ...)')."""
  rundir = RunDir(runs.copy_run(saved[0] / "six", tmp_path / "run"))
  like = jax.device_put(experiment.build(small_config()).initial_state())
  verified = Checkpoints._restore_verified
  gone = []

  def rotate_then_read(self, like, step):
    if len(gone) < rotated:  # the trainer removes this one just as it is read
      gone.append(step)
      shutil.rmtree(self.directory / str(step))
    return verified(self, like, step)

  monkeypatch.setattr(Checkpoints, "_restore_verified", rotate_then_read)
  said = []
  state, _ = rundir.checkpoints.restore(like, say=said.append)
  assert said == [] and gone == [6, 4][:rotated]
  assert int(state.step) == (4 if rotated == 1 else 2)


def test_a_checkpoint_under_another_steps_name_is_not_taken_for_that_step(tmp_path, saved, capsys):
  root, summaries = saved
  rundir = RunDir(runs.copy_run(root / "six", tmp_path / "run"))
  shutil.rmtree(rundir.checkpoint_dir / "6")
  (rundir.checkpoint_dir / "4").rename(rundir.checkpoint_dir / "6")  # step 4's state, named 6
  resumed = runs.train(tmp_path / "run", num_steps=8, **_EVERY_2)
  assert "checkpoint 6 is damaged (it holds the state of step 4, not 6)" in capsys.readouterr().out
  assert resumed.test_loss == summaries["clean"].test_loss


def test_a_resume_that_changes_what_the_state_means_is_refused_naming_the_keys(tmp_path, saved):
  tmp_path = runs.copy_run(saved[0] / "two", tmp_path / "run")
  for overrides, named in [
    ({"conv": "rotate4"}, "conv ('plain' -> 'rotate4')"),
    ({"batch_size": 8}, "batch_size (16 -> 8)"),
    ({"optim.name": "adamw"}, "optim.name ('sgd' -> 'adamw')"),
    ({"data.train_size": 32}, "data.train_size (64 -> 32)"),
  ]:
    with pytest.raises(
      trainer.ConfigError, match="holds checkpoints of another config: " + _re(named)
    ):
      trainer.train_and_evaluate(small_config(num_steps=4, **overrides), tmp_path)
  # what does not change the state's meaning resumes: a longer run, another learning rate, the data
  # moved
  summary = trainer.train_and_evaluate(
    small_config(num_steps=4, **{"optim.learning_rate": 0.01, "data.data_dir": "/elsewhere"}),
    tmp_path,
  )
  assert summary.steps == 4


def test_allow_config_change_resumes_if_the_arrays_fit_and_otherwise_says_which_do_not(
  tmp_path, saved
):
  tmp_path = runs.copy_run(saved[0] / "two", tmp_path / "run")
  summary = trainer.train_and_evaluate(
    small_config(num_steps=4, seed=3), tmp_path, allow_config_change=True
  )
  assert summary.steps == 4
  with pytest.raises(
    CheckpointError,
    match=r"checkpoint 4 holds a state of another structure than this "
    r"config's: .*params/convs/0/(angles|weights)/value is not saved",
  ):
    trainer.train_and_evaluate(
      small_config(num_steps=6, conv="rotate4"), tmp_path, allow_config_change=True
    )


def _re(text: str) -> str:
  import re

  return re.escape(text)


def _start_training(workdir, *overrides) -> subprocess.Popen:
  """`python -m train.main` of the default config for 100,000 steps, in the background (its
  epoch lines to a file: nobody reads them while it runs)."""
  return driver.command(
    workdir,
    "--config.num_steps=100000",
    "--config.progress=False",
    *overrides,
    stdout=workdir.parent / f"{workdir.name}.stdout",
  )


def test_a_resume_keeps_the_schedule_it_trained_with_and_applies_what_it_allows(
  tmp_path, saved, capsys
):
  # a longer cosine would restart its decay from the top: refused
  runs.train(tmp_path / "cos", num_steps=4, **{"optim.schedule": "cosine"})
  with pytest.raises(trainer.ConfigError, match=r"the schedule of the 4 steps .* changes"):
    runs.train(tmp_path / "cos", num_steps=8, **{"optim.schedule": "cosine"})
  # a longer constant schedule continues the run
  runs.copy_run(saved[0] / "two", tmp_path / "const")
  assert runs.train(tmp_path / "const", num_steps=4).steps == 4
  # an allowed change of the ACU radius is applied, not only said
  runs.train(tmp_path / "acu", num_steps=2, conv="active")
  capsys.readouterr()
  config = small_config(num_steps=4, conv="active", **{"conv_options.radius": 3})
  summary = trainer.train_and_evaluate(config, tmp_path / "acu", allow_config_change=True)
  assert "conv_options.radius (None -> 3)" in capsys.readouterr().out
  assert summary.acu_radii == [3] * 4


def test_readers_fall_back_past_a_damaged_latest_checkpoint_as_the_trainer_does(
  tmp_path, saved, capsys
):
  from train.trainer import trained_run

  tmp_path = runs.copy_run(saved[0] / "six", tmp_path / "run")
  _damage(RunDir(tmp_path).checkpoint_dir / "6", "bit_flip")
  run = trained_run.load_run(tmp_path)
  assert run.step == 4 and "checkpoint 6 is damaged" in capsys.readouterr().err
  assert RunDir(tmp_path).checkpoints.steps() == [2, 4, 6]  # a reader moves nothing
  with pytest.raises(CheckpointError, match="checkpoint 6 in .* is damaged"):
    trained_run.load_run(tmp_path, step=6)  # the step asked for, or an error


def test_readers_of_a_run_training_right_now_get_an_intact_checkpoint(tmp_path):
  from train import export
  from train.trainer import trained_run

  workdir = tmp_path / "live"
  proc = _start_training(
    workdir,
    "--config.checkpoint_every_steps=3",
    "--config.keep_checkpoints=2",
    "--config.eval_every_epochs=100000",
  )
  try:
    deadline = time.monotonic() + 120
    while not RunDir(workdir).checkpoints.steps():
      assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
      time.sleep(0.2)
      RunDir(workdir).checkpoints.close()
    seen: list[int] = []
    # read while the checkpoints rotate, until a reader has seen two of them (the run's speed
    # decides how many reads that takes: on a loaded machine more than on an idle one)
    while len(set(seen)) < 2 or len(seen) < 4:
      assert time.monotonic() < deadline + 120, f"the run saved no new checkpoint: {seen}"
      run = trained_run.load_run(workdir)
      seen.append(run.step)
      assert run.step % 3 == 0 and run.model is not None
    results = export.export_run(workdir, ("jax",), out=tmp_path / "ship", check_images=64)
    assert results["jax"]["agreement"] == 1.0
    assert proc.poll() is None, "the run was disturbed"
    assert len(set(seen)) > 1, seen  # the readers did read a moving run
  finally:
    proc.terminate()
    proc.wait(timeout=120)
  assert proc.returncode == 143, proc.stderr.read()[-2000:]


def test_a_resume_on_other_data_under_the_same_config_is_refused(tmp_path, capsys):
  data = tmp_path / "npz"
  data.mkdir()

  def write(n, seed):
    train, test = pipeline.synthetic_splits((28, 28, 1), 10, n, 40, seed)
    for name, split in (("train", train), ("test", test)):
      np.savez(data / f"{name}.npz", image=split.images, label=split.labels)

  write(64, 0)
  npz = {"data.source": "npz", "data.data_dir": str(data)}
  runs.train(tmp_path / "run", num_steps=4, **npz)
  write(96, 1)  # regenerated in the same folder
  with pytest.raises(trainer.ConfigError, match=r"the data differs .* \(train\+test examples and"):
    runs.train(tmp_path / "run", num_steps=8, **npz)
  config = small_config(num_steps=8, **npz)
  trainer.train_and_evaluate(config, tmp_path / "run", allow_config_change=True)
  assert "resuming with other data (--allow_config_change)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["analyze", "export"])
def test_commands_falling_back_past_damaged_checkpoints_print_only_their_own_lines(
  tmp_path, saved, command
):
  """orbax's abandoned reads printed 52 "Event loop is closed" tracebacks (156-463 lines) and
  export its INFO lines before the command's own (issue 39, case 4)."""
  workdir = runs.copy_run(saved[0] / "six", tmp_path / "run")
  for step in (6, 4):
    _damage(RunDir(workdir).checkpoint_dir / str(step), "data_truncated")
  args = ["--format=jax", f"--out={tmp_path / 'ship'}"] if command == "export" else []
  done = subprocess.run(
    [sys.executable, "-m", f"train.{command}", f"--workdir={workdir}", *args],
    cwd=driver.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stderr.splitlines()
  assert [line.split(" (")[0] for line in lines] == [
    "checkpoint 6 is damaged",
    "checkpoint 4 is damaged",
  ], done.stderr[-3000:]


@pytest.mark.parametrize("before,after", [(0.0, 5e-4), (5e-4, 0.0)])
def test_a_resume_may_turn_weight_decay_on_or_off(tmp_path, capsys, before, after):
  """The optimizer chain lost or gained a transform without arrays, so its arrays moved: "holds a
  state of another structure", even with --allow_config_change (issue 39, case 14)."""
  runs.train(tmp_path / "run", num_steps=4, **{"optim.weight_decay": before})
  capsys.readouterr()
  summary = runs.train(tmp_path / "run", num_steps=8, **{"optim.weight_decay": after})
  assert "resumed from step 4" in capsys.readouterr().out
  assert summary.steps == 8 and np.isfinite(summary.test_loss)
