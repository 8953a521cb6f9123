"""XLA's CPU kernel gradient of a convolution, against the same gradient as matmuls.

  python -m bench.kernel_grad            # the grid, results/bench-kernel-grad.{json,md}
  python -m bench.kernel_grad --quick    # ResNet-56's three stages only

A train step differentiates every conv in its input and its kernel. XLA's CPU
convolution computes the kernel gradient as a convolution of the input with
the output's cotangent, which is several times slower than the forward conv
on common shapes; the same sum is one matmul per tap, view^T @ dy.
`kshapes_jax.conv.conv` takes that form on CPU for every conv it does not
lower as im2col (`conv.conv_with_matmul_kernel_grad`: XLA's value and input
gradient, the matmuls' kernel gradient, one tap per step of a scan). Per
shape, two forms, interleaved medians in one process (bench.timing): "xla"
(`lax.conv_general_dilated` differentiated by JAX) and "ours"
(`conv_with_matmul_kernel_grad`), each for the gradient in the kernel alone
and in both the input and the kernel, for a fixed cotangent.
"""

from __future__ import annotations

import argparse
import sys

# (name, batch, H = W, (kh, kw), stride, dilation, channels in, channels out, groups)
GRID = (
  ("resnet56 stage 1", 64, 32, (3, 3), 1, 1, 16, 16, 1),
  ("resnet56 stage 2", 64, 16, (3, 3), 1, 1, 32, 32, 1),
  ("resnet56 stage 3", 64, 8, (3, 3), 1, 1, 64, 64, 1),
  ("resnet56 down", 64, 32, (3, 3), 2, 1, 16, 32, 1),
  ("resnet56 stage 1, 3 maps", 64, 32, (3, 3), 1, 1, 16, 48, 1),
  ("resnet56 stage 2, 3 maps", 64, 16, (3, 3), 1, 1, 32, 96, 1),
  ("resnet56 stage 3, 3 maps", 64, 8, (3, 3), 1, 1, 64, 192, 1),
  ("3x3 16->32", 64, 32, (3, 3), 1, 1, 16, 32, 1),
  ("3x3 32->16", 64, 32, (3, 3), 1, 1, 32, 16, 1),
  ("acb 1x3", 64, 32, (1, 3), 1, 1, 16, 16, 1),
  ("acb 3x1", 64, 32, (3, 1), 1, 1, 16, 16, 1),
  ("acb 3x1 stage 3", 64, 8, (3, 1), 1, 1, 64, 64, 1),
  ("resnet18 stem 64px", 32, 64, (7, 7), 2, 1, 3, 64, 1),
  ("resnet18 stage 1 64px", 32, 16, (3, 3), 1, 1, 64, 64, 1),
  ("resnet18 stage 2 64px", 32, 8, (3, 3), 1, 1, 128, 128, 1),
  ("resnet18 stage 3 64px", 32, 4, (3, 3), 1, 1, 256, 256, 1),
  ("5x5", 32, 16, (5, 5), 1, 1, 64, 64, 1),
  ("dilated 3x3", 32, 16, (3, 3), 1, 2, 64, 64, 1),
  ("grouped 3x3", 32, 16, (3, 3), 1, 1, 64, 64, 4),
  ("depthwise 3x3", 32, 16, (3, 3), 1, 1, 128, 128, 128),
  ("depthwise 7x7", 32, 16, (7, 7), 1, 1, 128, 128, 128),
)
QUICK = GRID[:3]


def _cases(shape):
  import jax
  from jax import lax

  from bench.timing import compile_timed
  from kshapes_jax import conv as conv_lib

  _, batch, size, (kh, kw), stride, dilation, cin, cout, groups = shape
  kx, kk, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, size, size, cin))
  kernel = jax.random.normal(kk, (kh, kw, cin // groups, cout)) * 0.05
  pads = tuple((dilation * (k // 2),) * 2 for k in (kh, kw))
  geometry = ((stride, stride), pads, (dilation, dilation), groups, None)
  forms = {
    "xla": lambda x, w: lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      pads,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    ),
    "ours": lambda x, w: conv_lib.conv_with_matmul_kernel_grad(x, w, *geometry),
  }
  cot = jax.random.normal(kc, forms["xla"](x, kernel).shape)
  cases = {}
  for name, f in forms.items():

    def kernel_grad(x, w, cot, f=f):
      return jax.vjp(lambda w: f(x, w), w)[1](cot)

    def both_grads(x, w, cot, f=f):
      return jax.vjp(f, x, w)[1](cot)

    cases[("kernel", name)] = compile_timed(f"{name} kernel", kernel_grad, (x, kernel, cot))
    cases[("both", name)] = compile_timed(f"{name} both", both_grads, (x, kernel, cot))
  return cases


def bench(shapes, reps: int, log=print) -> list[dict]:
  """One row per shape: milliseconds of each form's gradients."""
  from bench.timing import run_interleaved

  rows = []
  for shape in shapes:
    cases = _cases(shape)
    run_interleaved(list(cases.values()), reps, rewarm=True)
    name, batch, size, (kh, kw), stride, dilation, cin, cout, groups = shape
    row = {
      "case": name,
      "batch": batch,
      "map": size,
      "kernel": [kh, kw],
      "stride": stride,
      "dilation": dilation,
      "channels": [cin, cout],
      "groups": groups,
    }
    for (grads, form), case in cases.items():
      row[f"{grads}_{form}_ms"] = case.median_ms
    for grads in ("kernel", "both"):
      row[f"{grads}_xla_over_ours"] = row[f"{grads}_xla_ms"] / row[f"{grads}_ours_ms"]
    log(
      f"  {name:<24} kernel xla {row['kernel_xla_ms']:7.2f} ours {row['kernel_ours_ms']:7.2f} "
      f"({row['kernel_xla_over_ours']:.2f}x)  both xla {row['both_xla_ms']:7.2f} "
      f"ours {row['both_ours_ms']:7.2f} ({row['both_xla_over_ours']:.2f}x)"
    )
    rows.append(row)
  return rows


def markdown(result: dict) -> str:
  lines = [
    f"# The kernel gradient of a convolution on {result['platform']}",
    "",
    f"{result['date']}, {result['machine']}, JAX {result['jax']}, float32; medians of "
    f"{result['reps']} interleaved runs. xla: `lax.conv_general_dilated` differentiated by "
    "JAX; ours: `conv.conv_with_matmul_kernel_grad` (the kernel gradient as one matmul per "
    "tap), which `conv.conv` takes on CPU. Milliseconds of the vjp for one cotangent: "
    "in the kernel alone, and in the input and the kernel (a train step's). Produced by "
    "`python -m bench.kernel_grad`.",
    "",
    "| case | batch | map | kernel | stride | dilation | channels | groups "
    "| kernel grad ms xla / ours | xla / ours | both grads ms xla / ours | xla / ours |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    kh, kw = r["kernel"]
    lines.append(
      f"| {r['case']} | {r['batch']} | {r['map']}x{r['map']} | {kh}x{kw} | {r['stride']} | "
      f"{r['dilation']} | {r['channels'][0]}->{r['channels'][1]} | {r['groups']} | "
      f"{r['kernel_xla_ms']:.2f} / {r['kernel_ours_ms']:.2f} | {r['kernel_xla_over_ours']:.2f} | "
      f"{r['both_xla_ms']:.2f} / {r['both_ours_ms']:.2f} | {r['both_xla_over_ours']:.2f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  from bench import results
  from bench.timing import warm_machine

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--quick", action="store_true", help="ResNet-56's stages only")
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  warm_machine()
  rows = bench(QUICK if args.quick else GRID, args.reps)
  result = results.record(args.reps, {}, rows)
  print(results.write(args.out, "bench-kernel-grad", result, markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())
