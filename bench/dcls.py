"""DCLS in training and evaluation: the layer against a plain conv of the same extent and the ACU
(same process, same batch), the kernel build's share of the layer's train step, and a small
network (the ACU's plain network) per kind.

  python -m bench.dcls                     # CPU: layers and the network
  python -m bench.dcls --quick             # 3 repetitions

Layer cases: value and gradient (input and parameters) of a sum of squares of the output (train)
and the output alone (eval), jitted; `build` is the kernel build alone (`effective_kernel`,
value and gradient), timed beside the layer's step. Network cases: the trainer's own jitted
step (SGD with the papers' rules, the DCLS clamp) and its eval step. Medians of interleaved
rounds. Writes results/bench-dcls-<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import kshapes_jax as K
from bench import results
from bench.models import _cases_for, _model
from bench.timing import compile_timed, run_interleaved, warm_machine

# (group, channels, groups, nominal k, extent, kernel_count, image size, batch)
LAYER_GROUPS = (
  # ConvNeXt-T-dcls's stage-1 depthwise layer (34 elements in 17 x 17), at 28 px
  ("depthwise_17", 96, 96, 7, 17, 34, 28, 8),
  # a dense 3x3 layer made DCLS in a 5 x 5 window, 9 elements (the repro rows' layers)
  ("dense_5", 64, 1, 3, 5, 9, 32, 16),
)
# the ACU's plain network at a quarter width, 32 px (the reproduction rows' network)
NETWORK = ("acu_plain", 32, 64, {"width": 0.25})
# on CPU: the build <= 10% of the DCLS layer's train step; depthwise DCLS <= 1.2x the plain
# depthwise conv of the same extent, in training
TARGETS = {"build_share": 0.10, "depthwise_time": 1.2}


def _layer(case: str, c: int, groups: int, k: int, extent: int, count: int) -> K.nn.ConvLayer:
  rngs = nnx.Rngs(0)
  if case == "plain":
    return K.nn.PlainConv(c, c, extent, groups=groups, rngs=rngs)
  if case == "active":  # one shared position set (a circle), in the same window
    return K.nn.ActiveConv(
      c, c, k, groups=groups, synapses=count, init="circle", radius=extent // 2, rngs=rngs
    )
  interpolation = "gauss" if case == "dcls_gauss" else "bilinear"
  return K.nn.DclsConv(
    c,
    c,
    k,
    kernel_count=count,
    extent=extent,
    groups=groups,
    interpolation=interpolation,
    rngs=rngs,
  )


def _layer_steps(layer: K.nn.ConvLayer):
  graphdef, params = nnx.split(layer, nnx.Param)

  def train(params, x):
    def loss(params, x):
      return jnp.sum(jnp.square(nnx.merge(graphdef, params)(x)))

    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

  def evaluate(params, x):
    return nnx.merge(graphdef, params)(x)

  def build(params):
    def total(params):
      kernel, _ = nnx.merge(graphdef, params).effective_kernel()
      return jnp.sum(jnp.square(kernel))

    return jax.value_and_grad(total)(params)

  return params, train, evaluate, build


def bench_layers(groups, reps: int, log=print) -> list[dict]:
  rows = []
  rng = np.random.default_rng(0)
  for group, c, g, k, extent, count, size, batch in groups:
    x = jnp.asarray(rng.normal(size=(batch, size, size, c)), jnp.float32)
    timed, builds = [], {}
    for case in ("plain", "active", "dcls", "dcls_gauss"):
      params, train, evaluate, build = _layer_steps(_layer(case, c, g, k, extent, count))
      timed.append(compile_timed(f"{case}/train", train, (params, x)))
      timed.append(compile_timed(f"{case}/eval", evaluate, (params, x)))
      if case.startswith("dcls"):
        builds[case] = compile_timed(f"{case}/build", build, (params,))
        timed.append(builds[case])
    run_interleaved(timed, reps, warmup=1)
    by_name = {t.name: t for t in timed}
    for mode in ("train", "eval"):
      base = by_name[f"plain/{mode}"].median_ms
      for case in ("plain", "active", "dcls", "dcls_gauss"):
        t = by_name[f"{case}/{mode}"]
        row = {
          "group": group,
          "case": case,
          "mode": mode,
          "ms": t.median_ms,
          "ratio": t.median_ms / base,
          "compile_s": t.compile_s,
        }
        if mode == "train" and case in builds:
          row["build_ms"] = builds[case].median_ms
          row["build_share"] = builds[case].median_ms / t.median_ms
        rows.append(row)
        share = f"  build {row['build_share']:5.1%}" if "build_share" in row else ""
        log(
          f"  {group:<14} {case:<11} {mode:<5} {t.median_ms:8.2f} ms ({row['ratio']:5.2f}x){share}"
        )
    jax.clear_caches()
  return rows


def bench_network(reps: int, log=print) -> list[dict]:
  name, size, batch, kwargs = NETWORK
  rng = np.random.default_rng(0)
  timed, counts = [], {}
  for case in ("plain", "active", "dcls", "dcls_gauss"):
    conv = "dcls" if case.startswith("dcls") else case
    options = {"conv_options": {"interpolation": "gauss"}} if case == "dcls_gauss" else {}
    model = _model(name, conv, {**kwargs, **options}, False, 10)
    counts[case] = K.models.count_params(model)
    (step, state, arrays), (evaluate, *eval_args) = _cases_for(model, batch, (size, size, 3), rng)
    timed.append(compile_timed(f"{case}/train", step, (state, arrays), donate=True))
    timed.append(compile_timed(f"{case}/eval", evaluate, tuple(eval_args)))
  train = [t for t in timed if t.name.endswith("/train")]
  run_interleaved(train, reps, warmup=1, carry=True)
  run_interleaved([t for t in timed if t.name.endswith("/eval")], reps, warmup=1)
  rows = []
  by_name = {t.name: t for t in timed}
  for mode in ("train", "eval"):
    base = by_name[f"plain/{mode}"].median_ms
    for case in ("plain", "active", "dcls", "dcls_gauss"):
      t = by_name[f"{case}/{mode}"]
      rows.append(
        {
          "group": f"{name}_x{kwargs['width']}_{size}px",
          "case": case,
          "mode": mode,
          "parameters": counts[case],
          "ms": t.median_ms,
          "ratio": t.median_ms / base,
          "compile_s": t.compile_s,
        }
      )
      log(f"  {name:<14} {case:<11} {mode:<5} {t.median_ms:8.2f} ms ({rows[-1]['ratio']:5.2f}x)")
  return rows


def _verdict(row: dict) -> str:
  if row["mode"] != "train" or not row["case"].startswith("dcls") or "parameters" in row:
    return ""
  out = []
  if "build_share" in row:
    met = row["build_share"] <= TARGETS["build_share"]
    out.append(f"build <= {TARGETS['build_share']:.0%}: " + ("met" if met else "NOT met"))
  if row["group"].startswith("depthwise"):
    met = row["ratio"] <= TARGETS["depthwise_time"]
    out.append(f"<= {TARGETS['depthwise_time']}x plain: " + ("met" if met else "NOT met"))
  return "; ".join(out)


def markdown(result: dict) -> str:
  lines = [
    f"# DCLS in training and evaluation ({result['platform']})",
    "",
    f"{result['date']}, {result['machine']}, JAX {result['jax']}; medians of {result['reps']} "
    "interleaved rounds after a warm-up, ratios to the plain conv (layers: of the DCLS window's "
    "extent) or the plain network in the same process. Layers: train = value and gradient of a "
    "sum of squares of the output, eval = the output; `build` = the kernel build's value and "
    "gradient alone, as a share of the layer's train step. The network (`acu_plain`, a quarter "
    "wide): the trainer's train and eval steps; its plain case runs the nominal 3x3 convs, the "
    "ACU and DCLS 5 x 5 windows (25 / 9 of the taps). Produced by `python -m bench.dcls`.",
    "",
    "| group | case | mode | ms | x plain | build ms | build share | target |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    build = (f"{r['build_ms']:.2f}", f"{r['build_share']:.1%}") if "build_ms" in r else ("", "")
    lines.append(
      f"| {r['group']} | {r['case']} | {r['mode']} | {r['ms']:.2f} | {r['ratio']:.2f} | "
      f"{build[0]} | {build[1]} | {_verdict(r)} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--quick", action="store_true", help="3 repetitions")
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  reps = 3 if args.quick else args.reps
  warm_machine()
  rows = bench_layers(LAYER_GROUPS, reps) + bench_network(reps)
  result = results.record(reps, TARGETS, rows)
  print(results.write(args.out, "bench-dcls", result, markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())
