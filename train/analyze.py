"""The papers' analyses of a trained run: PNGs and a markdown report.

  python -m train.analyze --workdir runs/repro/sn_v4/seed0          # -> runs/.../analysis/report.md
  python -m train.analyze --workdir runs/acb --sections acb --prune_seeds 5

Sections, one module of train/analyses each (default: those the run's layers call for):
  rotate     RotateConv angles: per-layer histograms, Fig. 5 (a) and (b) of the last layer
  active     ACU positions per layer (Fig. 5/9), their movement over the saved checkpoints (Fig. 6)
  acb        ACNet, of the DEPLOYED net: magnitude matrix A (eq. 9-10, Fig. 6), accuracy vs sparsity
             pruned at corners / skeleton / globally (Fig. 5), accuracy on rotated / flipped inputs (Table 4);
             automatic for ACB runs, ask for it for their plain baselines
  versatile  weights / memory / multiplications per layer (Tables 2-4), first-layer filters (Fig. 3)
(`acu` and `acnet`, their former names, still work.)

The run's config.json rebuilds the model; the latest checkpoint (or --step) fills it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from train import analyses, input_pipeline
from train.trained_run import load_run


def analyze(workdir: str | Path, out: str | Path | None = None, sections: Sequence[str] | None = None,
            step: int | None = None, **options) -> dict[str, Any]:
  """Writes the analyses of a run to `out` (default workdir/analysis): PNGs, report.md, results.json.

  Args:
    workdir: the run's workdir.
    out: where to write.
    sections: names of train/analyses modules (default: those the run's layers call for).
    step: the checkpoint (default: the latest).
    **options: passed to every analysis' compute (e.g. acb's prune_examples, prune_seeds, sparsities).

  Returns:
    The numbers of the report (also in out/results.json).

  Raises:
    ValueError: for an unknown section or one the run's layers cannot give.
    FileNotFoundError: for a workdir that is not a run's, or a missing checkpoint.
  """
  modules = [analyses.get(name) for name in sections] if sections else None
  run = load_run(workdir, step)
  modules = modules or [analyses.get(name) for name in analyses.names_for(run)]
  out = Path(out) if out else run.rundir.analysis_dir
  out.mkdir(parents=True, exist_ok=True)
  title = f"{run.config.model} / {run.config.conv} on {run.dataset.name}, step {run.step}"
  lines = [f"# Analysis of {run.workdir}", "", f"{title}. Written by `python -m train.analyze`.", ""]
  results: dict[str, Any] = {"workdir": str(run.workdir), "step": run.step, "sections": [m.NAME for m in modules],
                             "options": options}
  for module in modules:
    results[module.NAME] = module.compute(run, **options)
    lines += module.render(run, results[module.NAME], out, title)
  (out / "report.md").write_text("\n".join(lines))
  (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
  return results


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a run of python -m train.main.", required=True)
flags.DEFINE_string("out", "", "Output folder (default WORKDIR/analysis).")
flags.DEFINE_list("sections", [], f"Some of {list(analyses.ANALYSES)} (default: those the run's layers call for).")
flags.DEFINE_integer("step", None, "Checkpoint step to analyse (default: the latest).")
flags.DEFINE_integer("prune_examples", 2000, "acb: test images per pruned evaluation (0: all).")
flags.DEFINE_integer("prune_seeds", 3, "acb: random masks per sparsity (0: no pruning curves).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    results = analyze(FLAGS.workdir, FLAGS.out or None, FLAGS.sections or None, FLAGS.step,
                      prune_examples=FLAGS.prune_examples, prune_seeds=FLAGS.prune_seeds)
  except (FileNotFoundError, ValueError, input_pipeline.DataError) as e:
    raise app.UsageError(str(e)) from e
  out = FLAGS.out or str(Path(FLAGS.workdir) / "analysis")
  print(f"sections {results['sections']}: wrote {out}/report.md")


if __name__ == "__main__":
  app.run(main)
