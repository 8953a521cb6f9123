"""The papers' analyses of trained runs, one module per method, picked by name.

Each module has the same small interface:

  NAME                                  the method's name (the conv kind's)
  applies(run) -> bool                  whether a run's layers call for it
  compute(run, **options) -> dict       its numbers (JSON), from a TrainedRun
  render(run, results, out, title)      its figures (PNG, into out) and markdown lines
  summarise(suite, figures)             the reproduction report's section over the rows

`analyze(workdir)` (python -m train.analyze) runs them on one run; `train.reproduce.report` asks
each for its
section of the reproduction report.
"""

from train.analyze.run import analyze
from train.analyze.sections import ANALYSES, get, names_for

__all__ = ["ANALYSES", "analyze", "get", "names_for"]
