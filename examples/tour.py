"""A tour of the four methods: parameters -> effective kernel -> one conv.

For one layer of ResNet-20's first stage (32x32x16 -> 16 channels) it builds
each method's effective kernel, counts the learned parameters, times the
jitted forward against a plain 3x3 conv in the same process, and checks the
fast ACU (splat + one conv) against the literal bilinear gather.

  python examples/tour.py [--batch 32] [--reps 10]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from kshapes_jax import kernels
from kshapes_jax.conv import active_conv_gather, conv


def _time(fn, *args, reps):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  c = 16
  f32 = lambda *s: jnp.asarray(rng.normal(size=s) * 0.1, jnp.float32)
  x = jnp.asarray(rng.normal(size=(args.batch, 32, 32, c)), jnp.float32)

  plain = f32(3, 3, c, c)
  bn = lambda: kernels.BatchNormParams(
    *(
      jnp.asarray(a, jnp.float32)
      for a in (
        rng.normal(size=c),
        rng.normal(size=c),
        rng.normal(size=c),
        rng.uniform(0.5, 2, size=c),
      )
    )
  )
  acb = dict(
    square=f32(3, 3, c, c),
    square_bn=bn(),
    hor=f32(1, 3, c, c),
    hor_bn=bn(),
    ver=f32(3, 1, c, c),
    ver_bn=bn(),
  )
  # a 3x3 lattice whose synapses have moved inward a little: radius 1 holds them
  positions = 0.8 * kernels.lattice_positions(3) + jnp.asarray(
    rng.uniform(-0.2, 0.2, (9, 2)), jnp.float32
  )
  positions = positions.at[0].set(0.0)
  acu_w = f32(9, c, c)

  # name: (learned parameters, forward fn, its args)
  rows = {
    "plain 3x3": (plain.size, lambda x, k: conv(x, k), (x, plain)),
    "rotate4": (
      3 * c * c + c * c,
      lambda x, w, t: conv(x, kernels.rotate_kernel(w, t)),
      (x, f32(3, c, c), jnp.asarray(rng.uniform(0, 180, (c, c)), jnp.float32)),
    ),
    "rotate2": (
      c * c + c * c,
      lambda x, w, t: conv(x, kernels.rotate_kernel(w, t)),
      (x, f32(c, c), jnp.asarray(rng.uniform(0, 180, (c, c)), jnp.float32)),
    ),
    "ACB deployed": (
      9 * c * c + c,
      lambda x, k, b: conv(x, k, bias=b),
      (x, *kernels.fuse_acb(**acb)),
    ),
    "versatile spatial (8 filters -> 16 maps)": (
      9 * c * 8,
      lambda x, f: conv(x, kernels.spatial_versatile_kernel(f)),
      (x, f32(3, 3, c, 8)),
    ),
    "versatile channel (c^=15, g=1, 8 -> 16)": (
      9 * 15 * 8,
      lambda x, f: conv(x, kernels.channel_versatile_kernel(f, c, 1)),
      (x, f32(3, 3, 15, 8)),
    ),
    "ACU splat, R=1": (
      9 * c * c + 16,
      lambda x, w, p: conv(x, kernels.active_kernel(w, p, 1)),
      (x, acu_w, positions),
    ),
    "ACU gather (reference)": (
      9 * c * c + 16,
      lambda x, w, p: active_conv_gather(x, w, p, radius=1),
      (x, acu_w, positions),
    ),
  }
  gap = float(
    jnp.max(
      jnp.abs(
        conv(x, kernels.active_kernel(acu_w, positions, 1), precision="highest")
        - active_conv_gather(x, acu_w, positions, radius=1, precision="highest")
      )
    )
  )
  base = None
  print(
    f"layer 32x32x{c} -> {c}, batch {args.batch}, device {jax.devices()[0].platform}, "
    f"median of {args.reps} jitted forwards (indicative only on a CPU)"
  )
  print(f"{'method':44s} {'params':>8s} {'ms':>8s} {'vs plain':>9s}")
  for name, (params, fn, fn_args) in rows.items():
    ms = 1e3 * _time(jax.jit(fn), *fn_args, reps=args.reps)
    base = base or ms
    print(f"{name:44s} {params:8d} {ms:8.2f} {ms / base:8.2f}x")
  print(f"check: max |ACU splat - ACU gather| = {gap:.2e}")


if __name__ == "__main__":
  main()
