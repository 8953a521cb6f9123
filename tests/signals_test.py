"""Signals at any moment (train/signals.py): Ctrl-C, SIGTERM and kill -9 at sampled moments of the
commands, children included, end each with one `stopped:` line and status 128 + the signal (or
finish), no traceback, no process left behind, and a folder the same command takes up again.
The mechanisms are tested alone first: a stop discarded by a callback or landing in an import is
delivered again, a deferred one waits for its region, a child dies with its parent."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train import signals

REPO = Path(__file__).resolve().parents[1]
_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _script(tmp_path: Path, name: str, text: str) -> Path:
  path = tmp_path / name
  path.write_text(textwrap.dedent(text))
  return path


def _python(*args: str, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, env=_ENV, timeout=120, **kwargs
  )


def test_a_stop_discarded_by_a_callback_is_delivered_again(tmp_path):
  """JAX's gc callback discarded a Ctrl-C that landed in it, and the run trained to its end."""
  script = _script(
    tmp_path,
    "gc.py",
    """
    import gc, os, signal, time
    from train import signals
    signals.install()
    def callback(phase, info):  # the signal lands here, where exceptions are discarded
      if phase == "start" and not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10000))
    fired = []
    gc.callbacks.append(callback)
    try:
      gc.collect()
      time.sleep(30)  # a blocking call returns for it
      print("LOST")
    except signals.Stopped as e:
      print("STOPPED", e.signum)
    """,
  )
  started = time.perf_counter()
  run = _python(str(script))
  assert run.stdout.split() == ["STOPPED", str(int(signal.SIGINT))], run.stdout + run.stderr
  assert time.perf_counter() - started < 20
  assert "Traceback" not in run.stderr, run.stderr


def test_a_stop_during_an_import_lands_after_it(tmp_path):
  """An exception inside a native extension's initialisation aborted the process (status -6)."""
  _script(
    tmp_path,
    "slow_module.py",
    """
    import os, signal
    os.kill(os.getpid(), signal.SIGTERM)
    total = sum(range(200000))  # the import goes on past the signal
    """,
  )
  script = _script(
    tmp_path,
    "imports.py",
    """
    import sys, time
    from train import signals
    signals.install()
    try:
      import slow_module
      print("IMPORTED", slow_module.total)
      time.sleep(30)
      print("LOST")
    except signals.Stopped as e:
      print("STOPPED", e.signum, "slow_module" in sys.modules)
    """,
  )
  started = time.perf_counter()
  run = _python(str(script), cwd=tmp_path)
  assert time.perf_counter() - started < 20
  lines = run.stdout.splitlines()
  assert lines == [f"IMPORTED {sum(range(200000))}", f"STOPPED {int(signal.SIGTERM)} True"], (
    run.stdout + run.stderr
  )


def test_a_deferred_stop_waits_for_its_region_and_a_second_ctrl_c_does_not(tmp_path):
  script = _script(
    tmp_path,
    "deferred.py",
    """
    import os, signal
    from train import signals
    signals.install()
    os.kill(os.getpid(), signal.SIGINT)  # before the region: recorded, raised here
    """,
  )
  run = _python(str(script))
  assert "Stopped: SIGINT received" in run.stderr
  script = _script(
    tmp_path,
    "region.py",
    """
    import os, signal
    from train import signals
    signals.install()
    with signals.deferred():
      os.kill(os.getpid(), signal.SIGTERM)
      os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
      print("RECORDED", signals.requested())
      try:
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100000))
        print("LOST")
      except signals.Stopped as e:
        print("TWICE", e)
    """,
  )
  run = _python(str(script))
  assert run.stdout.splitlines() == [
    f"RECORDED {int(signal.SIGTERM)}",
    "TWICE interrupted twice: stopped without saving",
  ], run.stdout + run.stderr


def test_outside_a_command_a_region_installs_its_handlers_for_itself_only():
  """A library caller (train_and_evaluate from a notebook or pytest) keeps its own handlers."""
  mine = []
  previous = signal.signal(signal.SIGTERM, lambda *_: mine.append(1))
  try:
    with signals.deferred():
      with signals.deferred():  # nested: the loop's region inside the run's
        os.kill(os.getpid(), signal.SIGTERM)
      assert signals.requested() == signal.SIGTERM
    assert signals.requested() == 0 and not mine
    os.kill(os.getpid(), signal.SIGTERM)
    assert mine == [1]
  finally:
    signal.signal(signal.SIGTERM, previous)


def _stat(pid: int) -> tuple[str, int, int] | None:
  """(state, parent pid, start time) of a process, None when it is gone."""
  try:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return None
  return fields[0], int(fields[1]), int(fields[19])


# A process is its pid AND its start time: pids wrap around (pid_max is 32768 here, and each of
# JAX's threads takes one), so a pid seen earlier may be another process now, a test's own.
Proc = tuple[int, int]


def _alive(procs: set[Proc]) -> set[Proc]:
  """Those of `procs` that still run (zombies, waiting for a dead parent's reaper, do not)."""
  alive = set()
  for pid, start in procs:
    stat = _stat(pid)
    if stat is not None and stat[2] == start and stat[0] != "Z":
      alive.add((pid, start))
  return alive


def _descendants(pid: int) -> set[Proc]:
  children: dict[int, list[Proc]] = {}
  for path in Path("/proc").glob("[0-9]*"):
    stat = _stat(int(path.name))
    if stat is not None:
      children.setdefault(stat[1], []).append((int(path.name), stat[2]))
  found, todo = set(), [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      found.add(child)
      todo.append(child[0])
  return found


def _kill(procs: set[Proc]) -> None:
  for pid, _ in _alive(procs):  # checked just before: the same process
    with contextlib.suppress(ProcessLookupError):
      os.kill(pid, signal.SIGKILL)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


@needs_proc
def test_a_child_stops_with_its_parent_even_on_kill_9(tmp_path):
  """A child command (the reproduction driver's runs) gets SIGTERM, and saves, when its parent is
  killed; a pool worker (prepare's, grain's) dies with its parent."""
  child = _script(
    tmp_path,
    "child.py",
    """
    import sys, time
    from train import signals
    signals.install()
    try:
      time.sleep(60)
    except signals.Stopped as e:
      open(sys.argv[1], "w").write(str(e.signum))
    """,
  )
  parent = _script(
    tmp_path,
    "parent.py",
    """
    import concurrent.futures, os, subprocess, sys, time
    from train import signals
    if __name__ == "__main__":
      subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], env=signals.child_environment())
      pool = concurrent.futures.ProcessPoolExecutor(
        1, initializer=signals.quiet_worker, initargs=(os.getpid(),)
      )
      pool.submit(time.sleep, 60)
      time.sleep(60)
    """,
  )
  proc = subprocess.Popen(
    [sys.executable, str(parent), str(child), str(tmp_path / "saved")], env=_ENV
  )
  deadline = time.time() + 60
  while len(_descendants(proc.pid)) < 2 and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(1.0)  # the child's handlers are installed
  family = _descendants(proc.pid)
  proc.kill()
  proc.wait()
  deadline = time.time() + 30
  while _alive(family) and time.time() < deadline:
    time.sleep(0.1)
  assert not _alive(family)
  assert (tmp_path / "saved").read_text() == str(int(signal.SIGTERM))


# The commands at sampled moments. A moment is a delay after the start; the machine's speed decides
# which phase it hits (imports, flag parsing, set-up, compiling, a step, a save, the final
# evaluation, Python's exit), so the draws are many short ones over a command's whole length.


def _stop(cmd: list[str], delay: float, sig: int, group: bool = False, **kwargs):
  """Runs `cmd`, sends `sig` after `delay` s (to its process group when `group`, as a terminal's
  Ctrl-C does); returns (status, stdout, stderr, the processes it had started)."""
  proc = subprocess.Popen(
    cmd,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
    **kwargs,
  )
  family: set[int] = set()
  deadline = time.time() + delay
  while time.time() < deadline and proc.poll() is None:
    family |= _descendants(proc.pid)
    time.sleep(0.02)
  family |= _descendants(proc.pid)
  if proc.poll() is None:
    (os.killpg if group else os.kill)(proc.pid, sig)
  out, err = proc.communicate(timeout=300)
  deadline = time.time() + 20
  while _alive(family) and time.time() < deadline:
    time.sleep(0.1)
  left = _alive(family)
  _kill(left)
  assert not left, f"{cmd[2]} left {len(left)} processes alive after {signal.Signals(sig).name}"
  return proc.returncode, out, err


def _check_stopped(status: int, err: str, sig: int, finished: bool) -> None:
  """One stopped: line and 128 + the signal, or a finished command (status 0); never a
  traceback."""
  lines = [
    line
    for line in err.splitlines()
    # grain's shared memory, unlinked by this process, is counted as leaked by Python's tracker
    if "resource_tracker" not in line and "warnings.warn(" not in line
  ]
  assert "Traceback" not in err, err[-3000:]
  if sig == signal.SIGKILL:
    assert status in (0, -signal.SIGKILL), err[-2000:]
  elif status == 0:
    assert finished, err[-2000:]
  else:
    assert status == 128 + sig, err[-2000:]
    assert [line for line in lines if line.startswith("stopped:")] == lines[-1:], err[-2000:]


def _moments(seed: int, count: int, longest: float) -> list[tuple[float, int]]:
  rng = random.Random(seed)
  sigs = (signal.SIGINT, signal.SIGTERM)
  return [(rng.uniform(0.05, longest), sigs[i % 2]) for i in range(count)]


_TRAIN = [
  sys.executable,
  "-m",
  "train.main",
  "--config",
  "configs/default.py",
  "--config.num_steps=24",
  "--config.checkpoint_every_steps=5",
  "--config.progress=False",
]


@needs_proc
@pytest.mark.parametrize(
  "seed,count", [(0, 3), pytest.param(1, 12, marks=pytest.mark.slow)], ids=["3", "12"]
)
def test_train_main_at_sampled_moments_stops_cleanly_and_resumes(tmp_path, seed, count):
  """Ctrl-C in the first 1.2 s was lost, SIGTERM in the final evaluation ignored (case 2)."""
  for i, (delay, sig) in enumerate(_moments(seed, count, 14.0)):
    workdir = tmp_path / f"run{i}"
    status, out, err = _stop([*_TRAIN, f"--workdir={workdir}"], delay, sig)
    _check_stopped(status, err, sig, finished="test accuracy" in out)
    lock = workdir / "LOCK"
    assert not lock.exists() or not lock.read_text(), f"{lock} still held after a stop"
  # the last stopped one: the same command takes it up and finishes
  resumed = _python("-m", "train.main", *_TRAIN[3:], f"--workdir={workdir}", cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-2000:]


def _noise_tree(root: Path, per_class: int) -> Path:
  """An ImageFolder tree of noise JPEGs large enough that prepare's workers run for seconds."""
  rng = np.random.default_rng(0)
  for split, n in (("train", per_class), ("val", per_class // 8)):
    for name in ("a", "b"):
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
  return root


@needs_proc
def test_prepare_at_sampled_moments_leaves_no_worker_and_prepares_again(tmp_path):
  """kill -9 or SIGTERM left the two workers alive indefinitely; Ctrl-C to the group printed a
  35-line traceback (case 3)."""
  tree = _noise_tree(tmp_path / "tree", 160)
  rng = random.Random(3)
  trials = [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGINT, True)]
  for i, (sig, group) in enumerate(trials):
    out = tmp_path / f"out{i}"
    cmd = [sys.executable, "-m", "train.prepare", f"--src={tree}", f"--out={out}", "--workers=2"]
    status, _, err = _stop(cmd, rng.uniform(1.0, 3.0), sig, group)
    _check_stopped(status, err, sig, finished=(out / "metadata.json").exists())
    again = _python(*cmd[1:], cwd=REPO)
    assert again.returncode == 0 or "already holds a prepared dataset" in again.stderr, again.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  import runs

  workdir = tmp_path_factory.mktemp("finished") / "run"
  runs.train(workdir)
  return workdir


@needs_proc
@pytest.mark.parametrize(
  "name,seed,count",
  [
    ("train.export", 5, 2),
    pytest.param("train.analyze", 6, 2, marks=pytest.mark.slow),
    pytest.param("train.export", 7, 8, marks=pytest.mark.slow),
    pytest.param("train.analyze", 8, 8, marks=pytest.mark.slow),
  ],
)
def test_readers_of_a_run_at_sampled_moments_stop_cleanly(
  tmp_path, finished_run, name, seed, count
):
  """export and analyze: one stopped: line, no partial file left, the run untouched."""
  before = sorted(p.relative_to(finished_run) for p in finished_run.rglob("*"))
  for i, (delay, sig) in enumerate(_moments(seed, count, 8.0)):
    out = tmp_path / f"out{i}"
    flags = ["--format=jax", "--check_images=64"] if name == "train.export" else []
    cmd = [sys.executable, "-m", name, f"--workdir={finished_run}", f"--out={out}", *flags]
    status, _, err = _stop(cmd, delay, sig)
    _check_stopped(status, err, sig, finished=status == 0)
    assert not list(out.glob(".*.partial")), sorted(out.iterdir())
  assert sorted(p.relative_to(finished_run) for p in finished_run.rglob("*")) == before


@needs_proc
@pytest.mark.slow
@pytest.mark.skipif(
  not Path("/usr/share/datasets/fashion-mnist").is_dir(),
  reason="the reproduction suite trains on Fashion-MNIST: apt-get install -y dataset-fashion-mnist",
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_reproduction_drivers_runs_stop_and_save_with_it(tmp_path, sig):
  """SIGTERM to the driver alone left its run training; kill -9 left it an orphan. Now the run
  gets SIGTERM either way, saves a checkpoint and stops; nothing is left."""
  cmd = [
    sys.executable, "-m", "train.reproduce", f"--runs={tmp_path}", "--rows=sn_v4", "--seeds=0",
    "--epochs=2", "--report=", "--ledger=", "--noanalyze",
  ]  # fmt: skip
  proc = subprocess.Popen(
    cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV
  )
  deadline, family = time.time() + 120, set()
  while time.time() < deadline and not list(tmp_path.rglob("checkpoints/*")):
    family |= _descendants(proc.pid)
    time.sleep(0.2)  # the run trains: its first checkpoint is the sign
  time.sleep(1.0)
  family |= _descendants(proc.pid)
  assert family, "the driver started no run"
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  deadline = time.time() + 120
  while _alive(family) and time.time() < deadline:
    time.sleep(0.2)
  assert not _alive(family), "the run outlived its driver"
  if sig == signal.SIGTERM:
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
  # the run's own line (it writes to the driver's stderr, which outlives a killed driver)
  assert "training stopped at step" in err and "a checkpoint was saved" in err, err[-3000:]


def test_a_checkpoint_read_that_fails_under_a_stop_is_the_stop_not_damage(monkeypatch):
  """orbax re-raises the stop that interrupted its read as an error of its own: with a stop
  pending, a failed read stops the command; without one, it is damage."""
  from train import signals
  from train.trainer import checkpoints

  monkeypatch.setattr(signals, "_state", signals._State())  # this process's own stop state
  error = ValueError("Encountered error while reading array index: (slice(0, 3, 1),)")
  assert isinstance(checkpoints._damaged_unless_stopped(error), checkpoints._Damaged)
  signals._state.signum = signal.SIGTERM  # what the handler records first
  with pytest.raises(signals.Stopped) as stopped:
    checkpoints._damaged_unless_stopped(error)
  assert stopped.value.signum == signal.SIGTERM
