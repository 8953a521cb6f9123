"""Stops at the worst moments: SIGTERM while an epoch is logged or saved, at random moments, to
the command; Ctrl-C while the run is being set up. Each resume equals the uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import driver
import pytest
import runs
from runs import REPO

from train import trainer
from train.trainer import logger
from train.trainer.checkpoints import Checkpoints
from train.trainer.rundir import RunDir

_RUN = dict(num_steps=24, checkpoint_every_steps=5, keep_checkpoints=2)  # 4 steps/epoch, 6 epochs
pytestmark = pytest.mark.xdist_group("stops")  # one worker trains the uninterrupted run once


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  """The run every stopped one must equal once resumed."""
  workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
  runs.train(workdir, **_RUN)
  return workdir


@pytest.fixture
def sigterm_is_caught():
  """SIGTERM outside the loop (its handler is installed only while it runs) must not kill pytest."""
  missed = []
  previous = signal.signal(signal.SIGTERM, lambda *_: missed.append(1))
  yield missed
  signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
  "where",
  [
    "checkpoint",
    pytest.param("epoch_line", marks=pytest.mark.slow),
    pytest.param("mid_epoch", marks=pytest.mark.slow),
  ],
)
def test_sigterm_while_an_epoch_is_logged_or_saved_loses_nothing(
  tmp_path, monkeypatch, sigterm_is_caught, uninterrupted, where
):
  """The failure of the review: a SIGTERM after a step and before its epoch line was appended
  (while a checkpoint is saved in the default run; at the epoch line and mid-epoch: -m slow)."""
  fired = []

  def kill():
    if not fired:
      fired.append(1)
      os.kill(os.getpid(), signal.SIGTERM)

  if where == "epoch_line":
    epoch = logger.MetricsLogger.epoch
    monkeypatch.setattr(
      logger.MetricsLogger,
      "epoch",
      lambda self, r: (kill() if r["epoch"] == 2 else None, epoch(self, r))[1],
    )
  elif where == "checkpoint":
    save = Checkpoints.save
    monkeypatch.setattr(
      Checkpoints,
      "save",
      lambda self, step, *a, **k: (kill() if step == 10 else None, save(self, step, *a, **k))[1],
    )
  else:
    step = logger.MetricsLogger.step
    calls = []
    monkeypatch.setattr(
      logger.MetricsLogger,
      "step",
      lambda self, *a: (calls.append(1), kill() if len(calls) == 7 else None, step(self, *a))[2],
    )
  with pytest.raises(trainer.TrainingStopped) as info:
    runs.train(tmp_path / "stopped", **_RUN)
  assert info.value.signum == signal.SIGTERM
  monkeypatch.undo()
  runs.train(tmp_path / "stopped", **_RUN)
  runs.assert_same_run(tmp_path / "stopped", uninterrupted)


@pytest.mark.slow
def test_sigterm_at_ten_random_moments_then_resume_equals_the_uninterrupted_run(
  tmp_path, monkeypatch, sigterm_is_caught, uninterrupted
):
  clean = uninterrupted
  # the moments are drawn over a warm run's length (programs compiled and cached, as the trials'
  # are): the fixture's first run, compiling, lasts several times longer
  started = time.perf_counter()
  runs.train(tmp_path / "timing", **_RUN)
  duration = time.perf_counter() - started
  rng = random.Random(14)
  run_loop = trainer.loop.Loop.run
  stopped_at = []
  for trial in range(10):
    delay = rng.uniform(0.0, 0.6 * duration)

    def run(self, state, delay=delay):
      timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
      timer.start()
      try:
        return run_loop(self, state)
      finally:
        timer.cancel()

    workdir = tmp_path / f"trial{trial}"
    monkeypatch.setattr(trainer.loop.Loop, "run", run)
    try:
      runs.train(workdir, **_RUN)
      stopped_at.append(None)
    except trainer.TrainingStopped as e:
      stopped_at.append(str(e).split("step ")[1].split(";")[0])
    monkeypatch.setattr(trainer.loop.Loop, "run", run_loop)
    runs.train(workdir, **_RUN)
    runs.assert_same_run(workdir, clean)
  print("SIGTERM trials stopped at steps:", stopped_at)
  assert sum(s is not None for s in stopped_at) >= 5, stopped_at


def _start_training(workdir, *overrides) -> subprocess.Popen:
  """`python -m train.main` of the default config for 100,000 steps, in the background."""
  return driver.command(workdir, "--config.num_steps=100000", "--config.progress=False", *overrides)


def test_sigterm_to_the_command_exits_143_with_a_checkpoint(tmp_path):
  proc = _start_training(
    tmp_path, "--config.data.train_size=64", "--config.batch_size=16", "--config.log_every_steps=1"
  )
  line = proc.stdout.readline()  # the title line: the loop is about to start
  assert "parameters" in line, line + proc.stderr.read()
  deadline = time.time() + 120
  while not RunDir(tmp_path).read_metrics() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  step = RunDir(tmp_path).checkpoints.latest_step()
  assert step and f"training stopped at step {step}" in err
  assert not (tmp_path / "LOCK").read_text()


_STARTUP_SIGINT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from configs import default
from train import trainer
from train.trainer import experiment

build = experiment.build
def interrupted(*args, **kwargs):  # Ctrl-C while the run is being set up
  built = build(*args, **kwargs)
  os.kill(os.getpid(), signal.SIGINT)
  return built
experiment.build = interrupted
config = default.get_config()
config.update(num_steps=4, progress=False)
try:
  trainer.train_and_evaluate(config, sys.argv[2])
except trainer.TrainingStopped as e:
  print("STOPPED", e.signum, e)
"""


def test_ctrl_c_during_start_up_stops_before_the_first_step(tmp_path):
  run = subprocess.run(
    [sys.executable, "-c", _STARTUP_SIGINT, str(REPO), str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert (
    f"STOPPED {int(signal.SIGINT)} training stopped before its first step; nothing was saved"
    in (run.stdout)
  ), run.stdout + run.stderr[-2000:]
  assert not (tmp_path / "summary.json").exists() and not RunDir(tmp_path).checkpoints.steps()
