"""The papers' analyses of a trained run: PNGs and a markdown report.

  python -m train.analyze --workdir runs/repro/sn_v4/seed0          # -> runs/.../analysis/report.md
  python -m train.analyze --workdir runs/acb --sections acb --prune_seeds 5

Sections, one module of train/analyze each (default: those the run's layers call for):
  rotate     RotateConv angles: per-layer histograms, Fig. 5 (a) and (b) of the last layer
  active     ACU positions per layer (Fig. 5/9), their movement over the saved checkpoints (Fig. 6)
  acb        ACNet, of the DEPLOYED net: magnitude matrix A (eq. 9-10, Fig. 6), accuracy vs sparsity
             pruned at corners / skeleton / globally (Fig. 5), accuracy on rotated / flipped inputs
             (Table 4); automatic for ACB runs, ask for it for their plain baselines
  versatile  weights / memory / multiplications per layer (Tables 2-4), first-layer filters (Fig. 3)

The run's config.json rebuilds the model; the latest checkpoint (or --step) fills it.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from train import analyze, cli
from train.data import DataError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command's flags on absl's FLAGS (those another command defined already are
  shared)."""
  cli.define_once(flags.DEFINE_string, "workdir", None, "Workdir of a run of python -m train.main.")
  cli.define_once(flags.DEFINE_string, "out", "", "Output folder (default WORKDIR/analysis).")
  cli.define_once(
    flags.DEFINE_list,
    "sections",
    [],
    f"Some of {list(analyze.ANALYSES)} (default: those the run's layers call for).",
  )
  cli.validate_once(
    "sections",
    lambda names: set(names) <= set(analyze.ANALYSES),
    f"--sections must be some of {list(analyze.ANALYSES)}",
  )
  cli.define_once(
    flags.DEFINE_integer,
    "step",
    None,
    "Checkpoint step to analyse (default: the latest).",
    lower_bound=0,
  )
  cli.define_once(
    flags.DEFINE_integer,
    "prune_examples",
    2000,
    "acb: test images per pruned evaluation (0: all).",
    lower_bound=0,
  )
  cli.define_once(
    flags.DEFINE_integer,
    "prune_seeds",
    3,
    "acb: random masks per sparsity (0: no pruning curves).",
    lower_bound=0,
  )
  cli.define_debug()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(flags.Error(f"unexpected arguments: {argv[1:]}"), 2)
  try:
    results = analyze.analyze(
      FLAGS.workdir,
      FLAGS.out or None,
      FLAGS.sections or None,
      FLAGS.step,
      prune_examples=FLAGS.prune_examples,
      prune_seeds=FLAGS.prune_seeds,
    )
  except Exception as e:  # a workdir that is not a run's, a missing step, a section it lacks
    if FLAGS.debug:
      raise
    cli.fail(e, 2 if isinstance(e, (FileNotFoundError, ValueError, DataError)) else None)
  out = FLAGS.out or str(Path(FLAGS.workdir) / "analysis")
  print(f"sections {results['sections']}: wrote {out}/report.md")


def run() -> None:
  """Entry point of python -m train.analyze."""
  cli.run(main, define_flags, required=["workdir"])


if __name__ == "__main__":
  run()
