"""`analyze(workdir)`: the papers' analyses of one trained run, as PNGs, report.md and
results.json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.analyze.sections import get, names_for
from train.trainer.trained_run import load_run


def analyze(
  workdir: str | Path,
  out: str | Path | None = None,
  sections: Sequence[str] | None = None,
  step: int | None = None,
  **options,
) -> dict[str, Any]:
  """Writes the analyses of a run to `out` (default workdir/analysis): PNGs, report.md,
  results.json.

  Args:
    workdir: the run's workdir.
    out: where to write.
    sections: names of train/analyze modules (default: those the run's layers call for).
    step: the checkpoint (default: the latest).
    **options: passed to every analysis' compute (e.g. acb's prune_examples, prune_seeds,
      sparsities).

  Returns:
    The numbers of the report (also in out/results.json).

  Raises:
    ValueError: for an unknown section or one the run's layers cannot give.
    FileNotFoundError: for a workdir that is not a run's, or a missing checkpoint.
  """
  modules = [get(name) for name in sections] if sections else None
  run = load_run(workdir, step)
  modules = modules or [get(name) for name in names_for(run)]
  out = Path(out) if out else run.rundir.analysis_dir
  out.mkdir(parents=True, exist_ok=True)
  title = f"{run.settings.model} / {run.settings.conv} on {run.dataset.name}, step {run.step}"
  lines = [
    f"# Analysis of {run.workdir}",
    "",
    f"{title}. Written by `python -m train.analyze`.",
    "",
  ]
  results: dict[str, Any] = {
    "workdir": str(run.workdir),
    "step": run.step,
    "sections": [m.NAME for m in modules],
    "options": options,
  }
  for module in modules:
    results[module.NAME] = module.compute(run, **options)
    lines += module.render(run, results[module.NAME], out, title)
  (out / "report.md").write_text("\n".join(lines))
  (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
  return results
