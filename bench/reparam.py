"""Re-parameterized blocks in training: offline (a BN per branch) and online (branch scales, one
conv, one BN) against the plain network with BN, same process, same batch.

  python -m bench.reparam                  # ResNet-56 (32 px) and ResNet-18 (64 px), CPU
  python -m bench.reparam --quick          # 3 repetitions, ResNet-56 only

Per case: the median train step (the trainer's own jitted step: SGD with the papers' rules),
cases interleaved in a new order each round; and the compiled step's memory
(`jax.jit(...).lower(...).compile().memory_analysis()`: temporaries + arguments), each as a ratio
to the plain network's. Writes results/bench-reparam-<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

import kshapes_jax as K
from bench import results
from bench.models import _cases_for, _model
from bench.timing import compile_timed, run_interleaved, warm_machine

KINDS = ("acb", "dbb", "repvgg")
# (group, model, image size, batch)
GROUPS = (("resnet56", "resnet56", 32, 64), ("resnet18_64px", "resnet18", 64, 32))
# on CPU: online <= 1.15x the plain net's train step and <= 1.10x its memory; offline ACB <= 2.0x
TARGETS = {"online_time": 1.15, "online_memory": 1.10, "acb_time": 2.0}


def _cases() -> list[tuple[str, str, dict]]:
  out = [("plain", "plain", {})]
  for kind in KINDS:
    out.append((kind, kind, {}))
    out.append((f"{kind}_online", kind, {"conv_options": {"online": True}}))
  return out


def _memory(compiled) -> int:
  stats = compiled.memory_analysis()
  return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes)


def bench(groups, reps: int, log=print) -> list[dict]:
  rows = []
  rng = np.random.default_rng(0)
  for group, name, size, batch in groups:
    timed, meta = [], []
    for case, conv, kwargs in _cases():
      create = {"image_size": size} if K.models.spec(name).takes_image_size else {}
      model = _model(name, conv, {**kwargs, **create}, False, 10)
      (step, state, arrays), _ = _cases_for(model, batch, (size, size, 3), rng)
      t = compile_timed(case, step, (state, arrays), donate=True)
      timed.append(t)
      meta.append((conv, K.models.count_params(model), _memory(t.fn)))
    run_interleaved(timed, reps, warmup=1, carry=True)
    base_t, base_m = timed[0].median_ms, meta[0][2]
    for t, (conv, count, memory) in zip(timed, meta):
      row = {
        "group": group,
        "case": t.name,
        "model": name,
        "conv": conv,
        "image_size": size,
        "batch": batch,
        "parameters": count,
        "train_ms": t.median_ms,
        "train_ratio": t.median_ms / base_t,
        "memory_mb": memory / 2**20,
        "memory_ratio": memory / base_m,
        "compile_s": t.compile_s,
      }
      rows.append(row)
      log(
        f"  {group:<14} {t.name:<14} train {t.median_ms:8.1f} ms ({row['train_ratio']:5.2f}x)  "
        f"memory {row['memory_mb']:7.1f} MB ({row['memory_ratio']:5.2f}x)"
      )
    jax.clear_caches()
  return rows


def _verdict(row: dict) -> str:
  if row["case"].endswith("_online"):
    met = (
      row["train_ratio"] <= TARGETS["online_time"]
      and row["memory_ratio"] <= TARGETS["online_memory"]
    )
    return f"target <= {TARGETS['online_time']}x / {TARGETS['online_memory']}x: " + (
      "met" if met else "NOT met"
    )
  if row["case"] == "acb":
    met = row["train_ratio"] <= TARGETS["acb_time"]
    return f"target <= {TARGETS['acb_time']}x time: " + ("met" if met else "NOT met")
  return ""


def markdown(result: dict) -> str:
  lines = [
    f"# Re-parameterized blocks in training ({result['platform']})",
    "",
    f"{result['date']}, {result['machine']}, JAX {result['jax']}; medians of {result['reps']} "
    "interleaved train steps (the trainer's step: SGD, the papers' rules) after a warm-up; "
    "memory = the compiled step's temporaries + arguments (`memory_analysis()`). Ratios are to "
    "the plain network with BN in the same process. Offline: a BN per branch (the papers); "
    "online: branch scales, one conv, one BN (OREPA). Produced by `python -m bench.reparam`.",
    "",
    "| net | case | params | train ms | x plain | memory MB | x plain | target |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['group']} | {r['case']} | {r['parameters']:,} | {r['train_ms']:.1f} | "
      f"{r['train_ratio']:.2f} | {r['memory_mb']:.1f} | {r['memory_ratio']:.2f} | {_verdict(r)} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--quick", action="store_true", help="3 repetitions, ResNet-56 only")
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  groups = GROUPS[:1] if args.quick else GROUPS
  reps = 3 if args.quick else args.reps
  warm_machine()
  rows = bench(groups, reps)
  result = results.record(reps, TARGETS, rows)
  print(results.write(args.out, "bench-reparam", result, markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())
