"""What keeps a run sound: one run per workdir (its lock), and a loss that diverges stops it."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import runs

from train import trainer
from train.cli import one_line
from train.trainer import trained_run
from train.trainer.rundir import RunDir, RunDirError

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"pid {os.getpid()} on testhost".encode())
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_workdir_is_refused_while_the_first_lives(tmp_path):
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLDER, str(tmp_path / "LOCK")], stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(
      RunDirError, match=rf"{tmp_path} is in use by pid {holder.pid} on testhost"
    ) as e:
      runs.train(tmp_path, num_steps=2)
    assert not (tmp_path / "checkpoints").exists()
    # the line a user sees is ours, not the BlockingIOError flock raised (`from None`)
    assert one_line(e.value).startswith(f"{tmp_path} is in use by pid {holder.pid} on testhost")
  finally:
    holder.kill()
    holder.wait()
  # its process is gone: the lock is taken over, with a message
  said = []
  with RunDir(tmp_path).locked(said.append):
    assert (tmp_path / "LOCK").read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
  assert said == [
    f"taking over {tmp_path / 'LOCK'}, left by pid {holder.pid} on testhost, which is no longer "
    "running"
  ]
  assert (tmp_path / "LOCK").read_text() == ""  # released


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(RunDirError, match=r"workdir .*file exists and is not a directory"):
    runs.train(tmp_path / "file", num_steps=2)


# ------------------------------------------------------------------ divergence


def test_a_finite_but_huge_loss_stops_the_run_like_a_nan(tmp_path):
  # lr = 3: without the bound the epoch losses are 1.5e7, 3.8, 2.8, 3.1e14, ... every number finite,
  # and the run ended at chance accuracy with exit 0 and only garbage checkpoints
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"diverged at step 1 .* or its loss exceeded 2303 "
    r"\(max_loss_factor 1000 x ln\(classes\)\); stopped. No checkpoint",
  ):
    runs.train(
      tmp_path / "fresh", num_steps=40, checkpoint_every_steps=2, **{"optim.learning_rate": 3.0}
    )
  assert not RunDir(tmp_path / "fresh").checkpoints.steps()
  # from a good checkpoint (the learning rate is not part of the state's meaning)
  runs.train(tmp_path / "run", num_steps=4, checkpoint_every_steps=2)
  with pytest.raises(
    trainer.TrainingDiverged, match=r"The last good checkpoint is step \d+"
  ) as info:
    runs.train(
      tmp_path / "run", num_steps=40, checkpoint_every_steps=2, **{"optim.learning_rate": 3.0}
    )
  bad = int(str(info.value).split("at step ")[1].split()[0])
  step, state = trained_run.load_state(tmp_path / "run")
  assert 4 <= step <= bad and f"last good checkpoint is step {step} " in str(info.value)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def test_max_loss_factor_zero_turns_the_bound_off(tmp_path):
  with pytest.raises(trainer.TrainingDiverged, match="diverged at step 0"):
    runs.train(tmp_path / "tiny", num_steps=2, max_loss_factor=1e-4)
  assert runs.train(tmp_path / "off", num_steps=2, max_loss_factor=0.0).steps == 2
