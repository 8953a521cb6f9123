"""Runs the reproduction suite (configs/repro_fmnist.py) and writes results/REPRODUCTION.md.

  python -m train.reproduce --runs runs/repro                 # every row x seeds 0,1,2, then the report
  python -m train.reproduce --runs runs/repro --rows acb,acb_baseline --seeds 0
  python -m train.reproduce --runs runs/repro --report_only   # the report from the runs there

Each run is `python -m train.main --config configs/repro_fmnist.py:row=ROW,seed=S
--workdir RUNS/ROW/seedS` in its own process; a run whose summary.json exists
is skipped, an interrupted one resumes from its checkpoints, and one that
fails (e.g. diverges) gets a FAILED file, is counted by the report and is
not retried until that file is deleted. A run another process is training
is skipped too, so two drivers (e.g. one per core, `taskset -c 0` and
`taskset -c 1`, the second with --reverse) share a suite. After each run
the driver computes the analyses the report reads of it. Runs go seed by
seed (every row at seed 0 first), so a suite cut short still has whole rows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from configs import repro_fmnist
from train.rundir import RunDir

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", "runs/repro", "Folder of the runs (RUNS/ROW/seedS).")
flags.DEFINE_list("rows", list(repro_fmnist.ROWS), "Rows of configs/repro_fmnist.py to run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of each row.")
flags.DEFINE_string("report", "results/REPRODUCTION.md", "Where the report goes ('' for none).")
flags.DEFINE_bool("report_only", False, "Only write the report from the runs already there.")
flags.DEFINE_bool("analyze", True, "After each run, compute the analyses the report reads of it.")
flags.DEFINE_bool("reverse", False, "Take the rows in reverse order (for a second driver).")
flags.DEFINE_list("methods", list(repro_fmnist.METHODS), "The report's sections (default: all).")


def run_command(row: str, seed: int | str, runs: str | Path) -> list[str]:
  """The one command that trains (or resumes) one row at one seed."""
  return [sys.executable, "-m", "train.main", f"--config=configs/repro_fmnist.py:row={row},seed={seed}",
          f"--workdir={Path(runs) / row / f'seed{seed}'}"]


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.rows) - set(repro_fmnist.ROWS))
  if unknown:
    raise app.UsageError(f"unknown rows {unknown}; expected some of {list(repro_fmnist.ROWS)}")
  if not FLAGS.report_only:
    for seed in FLAGS.seeds:
      for row in reversed(FLAGS.rows) if FLAGS.reverse else FLAGS.rows:
        workdir = Path(FLAGS.runs) / row / f"seed{seed}"
        rundir = RunDir(workdir)
        if rundir.summary_path.exists() or rundir.failed_path.exists() or rundir.holder():
          continue
        cmd = run_command(row, seed, FLAGS.runs)
        print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])}", flush=True)
        code = subprocess.run(cmd, check=False).returncode
        if code in (130, 143):  # Ctrl-C or SIGTERM: the run saved a checkpoint; so stops the suite
          raise KeyboardInterrupt
        if code == 4:  # its workdir was taken meanwhile (another driver) or is unusable: not a result
          continue
        if code:  # a diverged run is a result: the report counts it; the suite goes on
          rundir.failed_path.write_text(f"exit status {code} (3: diverged, see python -m train.main)\n")
        elif FLAGS.analyze:  # the report's analyses of this run, while the machine is busy anyway
          from train.suite import Suite  # here: it imports matplotlib and the analyses

          Suite(FLAGS.runs).results(row, f"seed{seed}")
  if FLAGS.report:
    from train import report  # here: it imports matplotlib and the analyses
    text = report.write_report(FLAGS.runs, FLAGS.report, FLAGS.methods)
    print(f"wrote {FLAGS.report} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
  app.run(main)
