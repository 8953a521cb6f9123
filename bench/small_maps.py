"""XLA's CPU convolution on maps smaller than the kernel, against the same conv as a matmul.

  python -m bench.small_maps             # the grid, results/bench-small-maps.{json,md}
  python -m bench.small_maps --quick     # ResNet-18's last stage at 64 px only

Each case is one conv (NHWC, HWIO, float32) three ways: `lax.conv_general_dilated`
as XLA runs it, `kshapes_jax.conv.conv_as_matmul` (im2col + one matmul), and
`kshapes_jax.conv.conv` (the wrapper every kind calls, which takes the matmul
form on CPU when `conv.cpu_prefers_matmul` says so). Forward, and the train step's
backward: the gradient with respect to the input AND the kernel for a fixed
cotangent. And ResNet's max pool, as `nnx.max_pool` and as `models.layers.max_pool`.
Interleaved medians in one process (bench.timing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

# (H = W, kernel, stride, padding, channels in, channels out, groups)
GRID = tuple(
  (size, 3, stride, 1, c, c, 1)
  for c in (64, 512)
  for stride in (1, 2)
  for size in (1, 2, 3, 4, 5, 6, 8)
  if not (stride == 2 and size == 1)
) + (
  # depthwise, a 5x5 and a 7x7 kernel, 1x1 kernels (ResNet-50's, a strided shortcut)
  (2, 3, 1, 1, 256, 256, 256),
  (4, 3, 1, 1, 256, 256, 256),
  (3, 5, 1, 2, 128, 128, 1),
  (6, 5, 1, 2, 128, 128, 1),
  (4, 7, 1, 3, 64, 64, 1),
  (8, 7, 1, 3, 64, 64, 1),
  (2, 1, 1, 0, 512, 2048, 1),
  (4, 1, 2, 0, 256, 512, 1),
)
QUICK = ((2, 3, 1, 1, 512, 512, 1), (1, 3, 1, 1, 512, 512, 1), (4, 3, 2, 1, 256, 512, 1))


def _cases(shape, batch: int):
  import jax
  from jax import lax

  from bench.timing import compile_timed
  from kshapes_jax import conv as conv_lib

  size, k, stride, pad, cin, cout, groups = shape
  kx, kk, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, size, size, cin))
  kernel = jax.random.normal(kk, (k, k, cin // groups, cout)) * 0.05
  pads = ((pad, pad), (pad, pad))
  forms = {
    "xla": lambda x, w: lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    ),
    "matmul": lambda x, w: conv_lib.conv_as_matmul(
      x, w, (stride, stride), pads, (1, 1), groups, None
    ),
    "conv": lambda x, w: conv_lib.conv(x, w, stride=stride, padding=pad, groups=groups),
  }
  y = forms["xla"](x, kernel)
  cot = jax.random.normal(kc, y.shape)
  cases = {}
  for name, f in forms.items():
    cases[("forward", name)] = compile_timed(f"{name} forward", f, (x, kernel))

    def backward(x, w, cot, f=f):
      return jax.vjp(f, x, w)[1](cot)

    cases[("backward", name)] = compile_timed(f"{name} backward", backward, (x, kernel, cot))
  routed = conv_lib.cpu_prefers_matmul((size, size), (k, k), (stride, stride), pads, (1, 1))
  return cases, routed, y.shape


def bench(shapes, batch: int, reps: int, log=print) -> list[dict]:
  """One row per shape: milliseconds of each form, forward and backward."""
  from bench.timing import run_interleaved

  rows = []
  for shape in shapes:
    cases, routed, out_shape = _cases(shape, batch)
    run_interleaved(list(cases.values()), reps, rewarm=True)
    size, k, stride, pad, cin, cout, groups = shape
    row = {
      "map": size,
      "kernel": k,
      "stride": stride,
      "padding": pad,
      "channels": [cin, cout],
      "groups": groups,
      "batch": batch,
      "output_map": out_shape[1],
      "routed_to_matmul": routed,
    }
    for (phase, form), case in cases.items():
      row[f"{phase}_{form}_ms"] = case.median_ms
    for phase in ("forward", "backward"):
      row[f"{phase}_xla_over_matmul"] = row[f"{phase}_xla_ms"] / row[f"{phase}_matmul_ms"]
      row[f"{phase}_conv_over_best"] = row[f"{phase}_conv_ms"] / min(
        row[f"{phase}_xla_ms"], row[f"{phase}_matmul_ms"]
      )
    log(
      f"  {size}x{size} k{k} s{stride} {cin}->{cout} g{groups} -> {out_shape[1]}: "
      + "  ".join(
        f"{phase} xla {row[f'{phase}_xla_ms']:.2f} matmul {row[f'{phase}_matmul_ms']:.2f} "
        f"conv {row[f'{phase}_conv_ms']:.2f} ms"
        for phase in ("forward", "backward")
      )
      + ("  (routed)" if routed else ""),
      flush=True,
    )
    rows.append(row)
  return rows


POOLS = ((32, 32, 64), (32, 64, 64), (16, 112, 64))  # (batch, H = W, channels): 3x3/2 max pools


def bench_pools(shapes, reps: int, log=print) -> list[dict]:
  """3x3 stride-2 max pools (ResNet's, after the stem): `nnx.max_pool` (reduce_window, whose
  gradient is a select-and-scatter) against `models.layers.max_pool`, forward and gradient."""
  import jax
  from flax import nnx

  from bench.timing import compile_timed, run_interleaved
  from kshapes_jax.models.layers import max_pool

  forms = {
    "reduce_window": lambda x: nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))),
    "ours": lambda x: max_pool(x, 3, 2, ((1, 1), (1, 1))),
  }
  rows = []
  for n, size, c in shapes:
    x = jax.random.normal(jax.random.key(0), (n, size, size, c))
    cot = jax.random.normal(jax.random.key(1), forms["ours"](x).shape)
    cases = {}
    for name, f in forms.items():
      cases[("forward", name)] = compile_timed(f"{name} forward", f, (x,))
      cases[("backward", name)] = compile_timed(
        f"{name} backward", lambda x, cot, f=f: jax.vjp(f, x)[1](cot)[0], (x, cot)
      )
    run_interleaved(list(cases.values()), reps, rewarm=True)
    row = {"batch": n, "map": size, "channels": c}
    row.update({f"{phase}_{form}_ms": case.median_ms for (phase, form), case in cases.items()})
    rows.append(row)
    log(
      f"  max pool {n}x{size}x{size}x{c}: "
      + "  ".join(
        f"{phase} reduce_window {row[f'{phase}_reduce_window_ms']:.1f} ours "
        f"{row[f'{phase}_ours_ms']:.1f} ms"
        for phase in ("forward", "backward")
      ),
      flush=True,
    )
  return rows


def markdown(result: dict) -> str:
  lines = [
    f"{result['device']} ({result['cpu_count']} cores), JAX {result['jax_version']}, batch "
    f"{result['batch']}, float32, median of {result['reps']} runs, {result['date']}. "
    "xla: `lax.conv_general_dilated`; matmul: `conv_as_matmul` (im2col); conv: "
    "`kshapes_jax.conv.conv`, which routes the rows marked * to the matmul. Backward: the "
    "gradient in the input and the kernel.",
    "",
    "| map | kernel | stride | channels | groups | out | forward ms xla / matmul / conv | "
    "xla / matmul | backward ms xla / matmul / conv | xla / matmul | conv / best of the two |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    worst = max(r["forward_conv_over_best"], r["backward_conv_over_best"])
    lines.append(
      f"| {r['map']}x{r['map']}{' *' if r['routed_to_matmul'] else ''} | {r['kernel']}x"
      f"{r['kernel']} | {r['stride']} | {r['channels'][0]}->{r['channels'][1]} | {r['groups']} | "
      f"{r['output_map']} | {r['forward_xla_ms']:.2f} / {r['forward_matmul_ms']:.2f} / "
      f"{r['forward_conv_ms']:.2f} | {r['forward_xla_over_matmul']:.2f} | "
      f"{r['backward_xla_ms']:.2f} / {r['backward_matmul_ms']:.2f} / {r['backward_conv_ms']:.2f} | "
      f"{r['backward_xla_over_matmul']:.2f} | {worst:.2f} |"
    )
  if result.get("pools"):
    lines += [
      "",
      "3x3 stride-2 max pools, padding 1: `nnx.max_pool` (reduce_window; its gradient a "
      "select-and-scatter) against `models.layers.max_pool` (the same value; on CPU its gradient "
      "tap by tap):",
      "",
      "| input | forward ms reduce_window / ours | backward ms reduce_window / ours | "
      "backward ratio |",
      "|---|---|---|---|",
    ]
    for r in result["pools"]:
      lines.append(
        f"| {r['batch']}x{r['map']}x{r['map']}x{r['channels']} | "
        f"{r['forward_reduce_window_ms']:.1f} / {r['forward_ours_ms']:.1f} | "
        f"{r['backward_reduce_window_ms']:.1f} / {r['backward_ours_ms']:.1f} | "
        f"{r['backward_reduce_window_ms'] / r['backward_ours_ms']:.2f} |"
      )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  from bench.timing import warm_machine

  start = time.perf_counter()
  warm_machine()
  rows = bench(QUICK if args.quick else GRID, args.batch, args.reps)
  pools = bench_pools(POOLS[:1] if args.quick else POOLS, args.reps)
  device = jax.devices()[0]
  result = {
    "device": device.device_kind,
    "cpu_count": os.cpu_count(),
    "jax_version": jax.__version__,
    "batch": args.batch,
    "reps": args.reps,
    "date": datetime.date.today().isoformat(),
    "rows": rows,
    "pools": pools,
    "seconds": time.perf_counter() - start,
  }
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = "bench-small-maps" + ("-quick" if args.quick else "")
  (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / f"{stem}.md").write_text(markdown(result))
  print(markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
