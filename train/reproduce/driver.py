"""Runs the reproduction suite (configs/repro_fmnist.py) and writes results/REPRODUCTION.md.

  python -m train.reproduce --runs runs/repro           # every row x seeds 0,1,2, then the report
  python -m train.reproduce --runs runs/repro --epochs 20 --parallel 4    # 4 runs at once
  python -m train.reproduce --runs runs/repro --epochs 10,rotate=20 --rows acb,acb_baseline
  python -m train.reproduce --runs runs/repro --epochs 10 --report_only   # the runs there

Each run is `python -m train.main --config configs/repro_fmnist.py:row=ROW,seed=S,epochs=N
--workdir RUNS/eN/ROW/seedS` in its own process, so runs of different lengths
never mix. A run whose summary.json exists is skipped (never redone), an
interrupted one resumes from its checkpoints, and one that diverges (exit
status 3) gets a FAILED file, is counted by the report and is not retried
until that file is deleted. Any other failure (a child killed by a signal,
as the OOM killer does, a busy workdir, a bug) is not a result: it is said,
not recorded, and the same command resumes the run from its checkpoint. A
run another process is training is skipped too, so drivers on several
machines can share a suite folder.

Each finished or failed run gets its record in the ledger (`--ledger`,
results/runs: train/ledger.py), which is committed: the report reads the
runs that are not on this machine from there, and a recorded run is not
trained again (delete its record to redo it).

`--parallel K` trains K runs at once: on a GPU they share it (memory
preallocation is off in the runs); on a CPU each run is pinned to its share
of the cores (`--pin_cpus`). After each run its worker computes the analyses
the report reads of it. Runs go seed by seed (every row at seed 0 first), so
a suite cut short still has whole rows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import flags

from configs import repro_fmnist
from train import cli, signals
from train.reproduce import layout, ledger
from train.reproduce.rows import METHODS, ROWS, parse_lengths
from train.reproduce.suite import Suite
from train.trainer.rundir import RunDir

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags on absl's FLAGS (those another command defined already are
  shared)."""
  cli.define_once(
    flags.DEFINE_string, "runs", "runs/repro", "Folder of the runs (RUNS/eN/ROW/seedS)."
  )
  cli.define_once(
    flags.DEFINE_list, "rows", list(repro_fmnist.ROWS), "Rows of configs/repro_fmnist.py to run."
  )
  cli.define_once(flags.DEFINE_list, "seeds", ["0", "1", "2"], "Seeds of each row.")
  cli.validate_once(
    "seeds",
    lambda seeds: all(s.isdigit() and int(s) < 2**32 for s in seeds),
    "--seeds must be integers in [0, 4294967295]",
  )
  cli.define_once(
    flags.DEFINE_string,
    "epochs",
    "",
    "Length of the runs: N (every method), METHOD=N,... or N,METHOD=M; "
    f"methods not named keep {repro_fmnist.EPOCHS}.",
  )
  cli.define_once(flags.DEFINE_integer, "parallel", 1, "Runs trained at once.", lower_bound=1)
  cli.define_once(
    flags.DEFINE_bool,
    "pin_cpus",
    True,
    "With --parallel K > 1, pin each run to 1/K of this process's cores.",
  )
  cli.define_once(
    flags.DEFINE_string, "report", "results/REPRODUCTION.md", "Where the report goes ('' for none)."
  )
  cli.define_once(
    flags.DEFINE_string,
    "ledger",
    str(ledger.LEDGER),
    "The runs' records, kept in the repository ('' for none).",
  )
  cli.define_once(
    flags.DEFINE_bool, "report_only", False, "Only write the report from the runs already there."
  )
  cli.define_once(
    flags.DEFINE_bool,
    "analyze",
    True,
    "After each run, compute the analyses the report reads of it and write its "
    "record (else the report's step does both).",
  )
  cli.define_once(
    flags.DEFINE_bool,
    "analyze_only",
    False,
    "Only compute the analyses of the finished runs that lack them, and write their records.",
  )
  cli.define_once(
    flags.DEFINE_bool, "reverse", False, "Take the rows in reverse order (for a second driver)."
  )
  cli.define_once(
    flags.DEFINE_list, "methods", list(METHODS), "The report's sections (default: all)."
  )
  cli.validate_once(
    "methods",
    lambda names: set(names) <= set(METHODS),
    f"--methods must be some of {list(METHODS)}",
  )
  cli.define_debug()


# exit statuses of train.main: Ctrl-C / SIGTERM (it saved a checkpoint), diverged (a result)
_STOPPED, _DIVERGED = (130, 143), 3


def _exit_reason(code: int) -> str:
  """'killed by SIGKILL' for a negative status (the signal), 'exit status N' otherwise."""
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit status {code}"


def run_command(row: str, seed: int | str, runs: str | Path, epochs: float) -> list[str]:
  """The one command that trains (or resumes) one row at one seed and length."""
  return [
    sys.executable,
    "-m",
    "train.main",
    f"--config=configs/repro_fmnist.py:row={row},seed={seed},epochs={epochs:g}",
    f"--workdir={layout.run_dir(runs, row, seed, epochs)}",
  ]


def core_groups(parallel: int, cores: Sequence[int] | None = None) -> list[list[int]]:
  """This process's cores split into `parallel` groups (fewer when there are fewer cores)."""
  cores = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
  k = min(parallel, len(cores))
  return [cores[i * len(cores) // k : (i + 1) * len(cores) // k] for i in range(k)]


def recorded(ledger_dir: str | Path | None, row: str, seed: str, epochs: float) -> bool:
  """Whether the ledger holds that run: its record, or its row's aggregate of lost runs names it."""
  if not ledger_dir:
    return False
  aggregate = ledger.read_aggregate(ledger_dir, row, epochs)
  return layout.record_path(ledger_dir, row, seed, epochs).exists() or (
    aggregate is not None and layout.seed_name(seed) in aggregate.seeds
  )


def settled(rundir: RunDir) -> bool:
  """Finished, failed (not retried until its FAILED file is deleted) or being trained by another
  process."""
  return rundir.summary_path.exists() or rundir.failed_path.exists() or rundir.holder() is not None


def pending(
  runs: str | Path,
  rows: Sequence[str],
  seeds: Sequence[str],
  lengths: dict[str, float],
  reverse: bool = False,
  ledger_dir: str | Path | None = None,
) -> list[tuple[str, str, float]]:
  """(row, seed, epochs) of the runs still to train, seed by seed; finished, failed, busy and
  recorded ones left out."""
  todo = []
  for seed in seeds:
    for row in reversed(rows) if reverse else rows:
      epochs = lengths[ROWS[row].method]
      if not (
        settled(RunDir(layout.run_dir(runs, row, seed, epochs)))
        or recorded(ledger_dir, row, seed, epochs)
      ):
        todo.append((row, seed, epochs))
  return todo


class Driver:
  """Trains the pending runs, `parallel` at a time, each in its own process."""

  def __init__(
    self,
    runs: str | Path,
    parallel: int = 1,
    pin_cpus: bool = True,
    analyze: bool = True,
    ledger_dir: str | Path | None = None,
  ):
    self.runs, self.analyze, self.ledger_dir = Path(runs), analyze, ledger_dir
    self.stop = threading.Event()
    pin = pin_cpus and parallel > 1 and hasattr(os, "sched_setaffinity")  # Linux
    self._free: list[list[int] | None] = list(core_groups(parallel)) if pin else [None] * parallel
    self._lock = threading.Lock()
    self._running: set[subprocess.Popen] = set()

  def run_all(self, todo: Sequence[tuple[str, str, float]]) -> None:
    """Trains them all (or until one is stopped by Ctrl-C / SIGTERM: raises KeyboardInterrupt)."""
    with ThreadPoolExecutor(len(self._free)) as pool:
      futures = [pool.submit(self._one, *run) for run in todo]
      try:
        for future in futures:
          future.result()
      except KeyboardInterrupt:
        # the running ones save and stop (a Ctrl-C at the terminal reached them already: a
        # SIGTERM after it changes nothing); the queued ones do not start
        self.stop.set()
        with self._lock:
          for proc in self._running:
            with contextlib.suppress(ProcessLookupError):
              proc.send_signal(signal.SIGTERM)
        raise
    if self.stop.is_set():
      raise KeyboardInterrupt

  def _one(self, row: str, seed: str, epochs: float) -> None:
    if self.stop.is_set():
      return
    rundir = RunDir(layout.run_dir(self.runs, row, seed, epochs))
    if settled(rundir) or recorded(self.ledger_dir, row, seed, epochs):
      return  # another driver took or finished it meanwhile
    with self._lock:
      cores = self._free.pop()
    try:
      cmd = run_command(row, seed, self.runs, epochs)
      print(
        f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])}"
        + (f" (cores {cores})" if cores else ""),
        flush=True,
      )
      code = self._run(cmd, cores)
      if code in _STOPPED:
        self.stop.set()
      elif code == _DIVERGED:  # a result: the report counts it; the suite goes on
        rundir.failed_path.write_text(
          f"exit status {code} (3: diverged, see python -m train.main)\n"
        )
        if self.ledger_dir:
          ledger.write(
            layout.record_path(self.ledger_dir, row, seed, epochs),
            None,
            None,
            failed=rundir.failed_path.read_text().strip(),
          )
      elif code:  # killed (the OOM killer's SIGKILL), a busy workdir, a bug: no result
        print(
          f"{row} seed{seed}: {_exit_reason(code)}; not recorded, the same command resumes it",
          file=sys.stderr,
          flush=True,
        )
      elif self.analyze:  # the report's analyses of this run and its record, on its cores
        self._run(
          [
            sys.executable,
            "-m",
            "train.reproduce",
            f"--runs={self.runs}",
            f"--rows={row}",
            f"--seeds={seed}",
            f"--epochs={epochs:g}",
            "--analyze_only",
            "--report=",
            f"--ledger={self.ledger_dir or ''}",
          ],
          cores,
        )
    finally:
      with self._lock:
        self._free.append(cores)

  def _run(self, cmd: list[str], cores: list[int] | None) -> int:
    """Runs a command (on those cores) and returns its exit status; the command stops (SIGTERM:
    it saves) if this process dies."""
    env = signals.child_environment()
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # runs share one GPU
    with self._lock:
      if self.stop.is_set():
        return 128 + signal.SIGTERM  # stopped before it began
      proc = subprocess.Popen(cmd, env=env)
      self._running.add(proc)
    try:
      if cores:  # at once, before its interpreter starts the threads that would inherit the mask
        with contextlib.suppress(ProcessLookupError):
          os.sched_setaffinity(proc.pid, cores)
      return proc.wait()
    finally:
      with self._lock:
        self._running.discard(proc)


def analyze_finished(
  runs: str | Path,
  rows: Sequence[str],
  seeds: Sequence[str] | None,
  lengths: dict[str, float],
  ledger_dir: str | Path | None = None,
) -> list[Path]:
  """Computes (and caches in each run's analysis/) the analyses the report reads of the finished
  runs on this machine (those seeds, or all for None), and writes their records (finished or failed)
  to the ledger; returns the records written."""
  suite, written = Suite(runs, epochs=lengths, ledger=ledger_dir or None), []
  for row in rows:
    here = [p.name for p in suite.row_dir(row).glob("seed*") if p.is_dir()]
    for seed in sorted(here) if seeds is None else (f"seed{s}" for s in seeds):
      if seed in suite.on_disk(row):
        suite.results(row, seed)
      path = suite.record(row, seed)
      if path is not None:
        written.append(path)
  return written


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.rows) - set(repro_fmnist.ROWS))
  if unknown:
    cli.fail(flags.Error(f"unknown rows {unknown}; expected some of {list(repro_fmnist.ROWS)}"), 2)
  epochs = FLAGS.epochs
  if not FLAGS["epochs"].present and FLAGS.report and Path(FLAGS.report).exists():
    from train.reproduce.report import made_with

    # the same command extends the suite at its report's lengths, never a default-length one
    epochs = made_with(Path(FLAGS.report).read_text()) or ""
    if epochs:
      print(f"--epochs {epochs}: the lengths of {FLAGS.report} (pass --epochs for others)")
  try:
    lengths = parse_lengths(epochs)
  except ValueError as e:
    cli.fail(e, 2)
  if FLAGS.analyze_only:
    analyze_finished(FLAGS.runs, FLAGS.rows, FLAGS.seeds, lengths, FLAGS.ledger)
    return
  if not FLAGS.report_only:
    todo = pending(FLAGS.runs, FLAGS.rows, FLAGS.seeds, lengths, FLAGS.reverse, FLAGS.ledger)
    print(f"{len(todo)} runs to train, {FLAGS.parallel} at a time", flush=True)
    try:
      Driver(FLAGS.runs, FLAGS.parallel, FLAGS.pin_cpus, FLAGS.analyze, FLAGS.ledger).run_all(todo)
    except KeyboardInterrupt as e:  # the stopped runs saved a checkpoint: no traceback
      cli.stopped(e, "the same command resumes the runs (the report was not rewritten)")
  if FLAGS.report:
    from train.reproduce import report  # here: it imports matplotlib and the analyses

    # every run on this machine at these lengths is in the ledger before the report reads it
    if FLAGS.ledger:
      written = analyze_finished(FLAGS.runs, list(repro_fmnist.ROWS), None, lengths, FLAGS.ledger)
      print(f"recorded {len(written)} runs in {FLAGS.ledger}")
    suite = Suite(FLAGS.runs, epochs=lengths, ledger=FLAGS.ledger or None)
    if Path(FLAGS.report).exists() and not any(suite.accuracy(r).n for r in ROWS):
      raise flags.Error(
        f"no runs at --epochs {report.length_spec(lengths) or 'the default lengths'} under "
        f"{FLAGS.runs} or in the ledger: {FLAGS.report} is left as it is"
      )
    made = report.made_with(Path(FLAGS.report).read_text()) if Path(FLAGS.report).exists() else None
    if made is not None and parse_lengths(made) != lengths:
      # a report of other lengths is another table: one command must not replace it by this one
      raise flags.Error(
        f"{FLAGS.report} was made at --epochs {made or 'the default lengths'}, these runs are at "
        f"--epochs {report.length_spec(lengths) or 'the default lengths'}: it is left as it is "
        "(--report PATH writes a report of these lengths elsewhere)"
      )
    text = report.write_report(
      FLAGS.runs, FLAGS.report, FLAGS.methods, lengths, FLAGS.ledger or None
    )
    print(f"wrote {FLAGS.report} ({len(text.splitlines())} lines)")


def run() -> None:
  """python -m train.reproduce."""
  cli.run(_main, define_flags)


def _main(argv: list[str]) -> None:
  """main with one error: line for a failure (the traceback with --debug)."""
  try:
    main(argv)
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as e:
    if FLAGS.debug:
      raise
    cli.fail(e, 2 if isinstance(e, (flags.Error, FileNotFoundError, ValueError)) else None)
