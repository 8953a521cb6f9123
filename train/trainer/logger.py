"""What a run tells its user while it trains: the progress bar, one line per epoch, metrics.jsonl
and the plot."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import jax

from train.trainer import plots
from train.trainer.rundir import RunDir
from train.trainer.state import EpochSums


class MetricsLogger:
  """Progress and metrics of one run; only process 0 prints and writes.

  Args:
    rundir: where metrics.jsonl and learning_curve.png go.
    title: the run's one-line description.
    history: the epochs logged before a resume (metrics.jsonl is rewritten from them, dropping
      epochs logged after the checkpoint the run resumed from).
    progress: show a tqdm bar, when standard error is a terminal (a job log or a file gets the
      epoch lines alone).
  """

  def __init__(self, rundir: RunDir, title: str, history: list[dict[str, Any]], progress: bool):
    self._rundir, self.title, self.history = rundir, title, list(history)
    self._writer = jax.process_index() == 0
    self._progress = progress and self._writer and sys.stderr.isatty()
    self._bar = None
    if self._writer:
      rundir.write_metrics(self.history)

  def say(self, message: str) -> None:
    if self._writer:
      (self._bar.write if self._bar is not None else lambda m: print(m, flush=True))(message)

  @contextlib.contextmanager
  def progress(self, total: int, initial: int):
    """The bar over the steps initial..total, while the loop runs."""
    if not self._progress:
      yield
      return
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(
      total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0
    ) as bar:
      self._bar = bar
      try:
        yield
      finally:
        self._bar = None

  def step(
    self, loss: jax.Array | None, sums: EpochSums | None, images_per_s: float, lr: float
  ) -> None:
    """Advances the bar; with a loss (every log_every_steps), shows the running numbers."""
    if self._bar is None:
      return
    if loss is not None:
      _, acc = jax.device_get(sums).means()
      self._bar.set_postfix(
        loss=f"{float(loss):.4f}",
        acc=f"{acc:.3f}",
        img_s=f"{images_per_s:.0f}",
        lr=f"{lr:.3g}",
        refresh=False,
      )
    self._bar.update(1)

  def epoch(self, record: dict[str, Any]) -> None:
    """Records an epoch: history, metrics.jsonl, the plot and a line for the user."""
    self.history.append(record)
    if not self._writer:
      return
    self._rundir.append_metrics(record)
    plots.learning_curve(self.history, self._rundir.learning_curve_path, self.title)
    test = (
      f", test loss {record['test_loss']:.4f} acc {100 * record['test_accuracy']:.2f}%"
      if "test_accuracy" in record
      else ""
    )
    self.say(  # with or without the bar: a job's log shows every epoch
      f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
      f"acc {100 * record['train_accuracy']:.2f}%{test}, {record['images_per_s']:.0f} images/s"
    )


class Throughput:
  """Images per second of the current epoch; the first step (compile) is left out."""

  def __init__(self):
    self._t0, self._images, self._first = time.perf_counter(), 0, True

  def add(self, images: int, first_result: jax.Array) -> None:
    if self._first:  # compile + first step: wait for it, start the clock after
      jax.block_until_ready(first_result)
      self._first = False
      self.reset()
    else:
      self._images += images

  def reset(self) -> None:
    self._t0, self._images = time.perf_counter(), 0

  def rate(self) -> float:
    return self._images / max(time.perf_counter() - self._t0, 1e-9)
