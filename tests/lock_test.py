"""FOLDER/LOCK (train/lock.py) damaged, foreign or in the way: one line saying so, never its
contents printed, and a lock that works after a take-over."""

import os

import pytest

from train import lock
from train.trainer.rundir import RunDir, RunDirError

_DAMAGE = {
  "garbage": os.urandom(300),
  "text": b"hello\nworld\n" * 50,
  "truncated": b"pid 12",
  "foreign_pid": b"pid 999999999 on elsewhere",
  "empty": b"",
}


@pytest.mark.parametrize("how", list(_DAMAGE))
def test_a_damaged_lock_file_is_taken_over_with_one_line(tmp_path, how):
  (tmp_path / "LOCK").write_bytes(_DAMAGE[how])
  said = []
  with lock.held(tmp_path / "LOCK", RuntimeError, "advice", said.append):
    assert lock.holder(tmp_path / "LOCK") == f"pid {os.getpid()} on {os.uname().nodename}"
  assert len(said) <= 1 and all("\n" not in s and len(s) < 300 for s in said), said
  assert (tmp_path / "LOCK").read_bytes() == b""


def test_a_lock_in_the_way_is_one_error(tmp_path):
  (tmp_path / "LOCK").mkdir()
  with pytest.raises(RunDirError, match=r"cannot create .*LOCK: Is a directory"):
    with RunDir(tmp_path).locked(lambda m: None):
      pass
