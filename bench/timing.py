"""Timing helpers: compile time, and interleaved medians so that machine noise hits every case
alike."""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Sequence

import jax


@dataclasses.dataclass
class Timed:
  """A jitted function with its arguments, ready to time."""

  name: str
  fn: Callable
  args: Sequence
  compile_s: float = 0.0
  times: list[float] = dataclasses.field(default_factory=list)

  @property
  def median_ms(self) -> float:
    return 1e3 * statistics.median(self.times)


def compile_timed(name: str, fn: Callable, args: Sequence, donate: bool = False) -> Timed:
  """Lowers and compiles fn for args (the compile time is recorded), returns it ready to run."""
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0 if donate else ()).lower(*args).compile()
  return Timed(name, compiled, list(args), compile_s=time.perf_counter() - start)


def run_interleaved(
  cases: Sequence[Timed], reps: int, warmup: int = 2, carry: bool = False, rewarm: bool = False
) -> None:
  """Runs every case `warmup` times, then `reps` rounds of one call each, in a shuffled order.

  Interleaving spreads slow phases of a noisy machine over all cases instead
  of over whichever ran then, and a new order each round spreads the cost of
  following a heavy case (measured on CPU: a plain conv timed right after
  the gather ACU took 3x its usual time), so the medians are fair. With
  `carry=True` a case's first output replaces its first argument (a train
  step fed its own new state, so donated buffers stay valid). With
  `rewarm=True` each timed call follows an untimed call of the same case
  (for short cases, where refilling the caches after another case is a large
  part of one call).
  """

  def call(case: Timed):
    out = case.fn(*case.args)
    jax.block_until_ready(out)
    if carry:
      case.args[0] = out[0]
    return out

  for case in cases:
    for _ in range(warmup):
      call(case)
  order = random.Random(0)
  for _ in range(reps):
    for case in order.sample(list(cases), len(cases)):
      if rewarm:
        call(case)
      start = time.perf_counter()
      call(case)
      case.times.append(time.perf_counter() - start)


def warm_machine(seconds: float = 5.0) -> None:
  """Keeps the cores busy with conv train steps for a while before any timing.

  On the 2-core CI-like machines the first cases of a run were 20-30%
  slower than the same cases later (clock and thread-pool ramp-up).
  """
  import jax.numpy as jnp

  x = jnp.ones((64, 32, 32, 16))
  k = jnp.ones((3, 3, 16, 16)) * 0.01
  step = jax.jit(
    jax.grad(
      lambda k, x: jnp.sum(
        jax.lax.conv_general_dilated(
          x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        ** 2
      )
    )
  )
  end = time.perf_counter() + seconds
  while time.perf_counter() < end:
    jax.block_until_ready(step(k, x))
