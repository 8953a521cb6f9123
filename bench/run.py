"""Runs the speed benchmarks and writes results/bench-<platform>.json and .md.

  python -m bench.run                      # CPU, the full suite
  python -m bench.run --platform gpu       # on a machine with a GPU
  python -m bench.run --quick              # a smoke run: one shape, 3 repetitions

Every figure is a ratio against a plain network of the same shape measured
in the same process, cases interleaved in a shuffled order each round so
that a noisy machine slows them alike; medians of --reps runs after warm-up
(2 runs per layer case, each timed run after an untimed one; 1 per model).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform as platform_lib
import sys
import time
from pathlib import Path

TARGETS = (
  # (key, what, {platform: target, None where only reported}, why)
  (
    "rotate",
    "rotate4, rotate2 (ResNet-20 train step)",
    {"gpu": 1.03, "cpu": 1.03},
    "kernel building is O(params), the conv is the same",
  ),
  (
    "acb",
    "ACB, training (ResNet-56 train step)",
    {"gpu": 1.5, "cpu": 2.0},
    "15 taps vs 9 is 1.67 in FLOPs; PyTorch's official ACBlock: 2.77 on an H100",
  ),
  (
    "deployed",
    "any deployed model (ResNet-56 ACB deployed)",
    {"gpu": 1.01, "cpu": 1.01},
    "it is a plain network",
  ),
  (
    "acu_r1",
    "ACU splat, R = 1 (layers, geometric mean)",
    {"gpu": 1.10, "cpu": 1.10},
    "same conv; the paper's Caffe ACU was 1.6x slower",
  ),
  (
    "acu_r2",
    "ACU R = 2, plain network (train step)",
    {"gpu": 1.25, "cpu": 1.6},
    "a 5x5 conv: 25 taps vs 9",
  ),
  (
    "acu_network",
    "ACU plain network, whole training run (64k steps, bucketing: 3x3 for the 10k warm-up, "
    "then 5x5)",
    {"gpu": 1.30, "cpu": 1.30},
    "extent bucketing (see notes)",
  ),
  (
    "acu_gather",
    "ACU gather reference (layers, geometric mean)",
    {"gpu": 3.0, "cpu": 3.0},
    "a first prototype measured 5-8x on CPU",
  ),
  (
    "versatile_imagenet",
    "versatile, ResNet-50 224px (train step)",
    {"gpu": 0.90},
    "Proposition 1: fewer multiplications",
  ),
  (
    "versatile",
    "versatile Model 3 vs baseline LeNet (train step)",
    {"gpu": 1.0, "cpu": 0.8},
    "Proposition 1: the inner secondary filters are smaller",
  ),
  (
    "torch",
    "our plain ResNet-20 / PyTorch's (train step)",
    {"gpu": None, "cpu": 1.2},
    "the peer users compare with",
  ),
)


def _geomean(values):
  values = list(values)
  return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def bucketed_run_ratio(
  r1: float | None, r2: float | None, warmup: int = 10000, total: int = 64000
) -> float | None:
  """Whole-run cost of the ACU paper's schedule with extent bucketing (configs/acu_cifar.py).

  While the positions are frozen the ACUs run with R = 1 (a 3x3 conv); once
  they move, R = 2. The train loop switches at the end of the warm-up, so
  the run costs the step-weighted mean of the two measured step ratios.
  """
  if r1 is None or r2 is None:
    return None
  return (warmup * r1 + (total - warmup) * r2) / total


def evaluate_targets(
  layers: list[dict], models: list[dict], peers: list[dict] | None = None, platform: str = "cpu"
) -> list[dict]:
  """Each target of `platform`: its measured ratio (None when its cases were not run) and whether it
  is met."""

  def layer_ratio(kind):
    return (
      _geomean(r["train_ratio"] for r in layers if r["kind"] == kind)
      if any(r["kind"] == kind for r in layers)
      else None
    )

  def model_ratio(group, case):
    rows = [r for r in models if r["group"] == group and r["case"] == case]
    return rows[0]["train_ratio"] if rows else None

  peer = next((r for r in peers or () if r["model"] == "resnet20" and r["case"] == "plain"), None)
  measured = {
    "rotate": max(
      filter(None, (model_ratio("resnet20", "rotate4"), model_ratio("resnet20", "rotate2"))),
      default=None,
    ),
    "acb": model_ratio("resnet56", "acb"),
    "deployed": model_ratio("resnet56", "acb_deployed"),
    "acu_r1": layer_ratio("acu_r1"),
    "acu_r2": model_ratio("acu_plain", "active_r2"),
    "acu_network": bucketed_run_ratio(
      model_ratio("acu_plain", "active_r1"), model_ratio("acu_plain", "active_r2")
    ),
    "acu_gather": layer_ratio("acu_gather"),
    "versatile_imagenet": model_ratio("resnet50_224", "versatile"),  # impl "auto", what users get
    "versatile": model_ratio("lenet", "model3"),
    "torch": peer.get("ours_over_theirs_train") if peer else None,
  }
  rows = []
  for key, what, targets, why in TARGETS:
    if platform not in targets:
      continue
    target, value = targets[platform], measured[key]
    rows.append(
      {
        "key": key,
        "what": what,
        "target": target,
        "why": why,
        "measured": value,
        "met": None if value is None or target is None else value <= target,
      }
    )
  return rows


def markdown(result: dict) -> str:
  """The tables the Speed guide shows (docs/guides/speed.md includes results/bench-cpu.md)."""
  lines = [
    f"Platform: {result['device']} ({result['platform']}, {result['cpu_count']} cores), JAX "
    f"{result['jax_version']}, batch {result['batch']} per layer and {result['model_batch']} per "
    f"model, median of {result['reps']} runs, {result['date']}.",
    "",
    "| target | ratio to plain | measured | met |",
    "|---|---|---|---|",
  ]
  for t in result["targets"]:
    m = "-" if t["measured"] is None else f"{t['measured']:.2f}"
    met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
    goal = "report" if t["target"] is None else f"<= {t['target']:.2f}"
    lines.append(f"| {t['what']} | {goal} | {m} | {met} |")
  if result["layers"]:
    shapes = list(dict.fromkeys(r["shape"] for r in result["layers"]))
    lines += [
      "",
      "Per layer (3x3, c -> c, stride 1), train step (forward + backward) / eval, ratio to a plain "
      "conv (the ACB kinds: to a plain conv + BN, both of which an ACBlock replaces):",
      "",
      "| kind | " + " | ".join(shapes) + " |",
      "|---|" + "---|" * len(shapes),
    ]
    for kind in dict.fromkeys(r["kind"] for r in result["layers"]):
      cells = []
      for shape in shapes:
        row = next((r for r in result["layers"] if r["kind"] == kind and r["shape"] == shape), None)
        cells.append("-" if row is None else f"{row['train_ratio']:.2f} / {row['eval_ratio']:.2f}")
      lines.append(f"| {kind} | " + " | ".join(cells) + " |")
  if result["models"]:
    lines += [
      "",
      "Whole models, the training system's train step (SGD update included) and eval step "
      "(lenet: MNIST-size inputs; the others CIFAR-size):",
      "",
      "| model | case | parameters | train ms | ratio | eval ms | ratio | compile s | images/s |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
      lines.append(
        f"| {r['group']} | {r['case']} | {r['parameters']:,} | {r['train_ms']:.1f} | "
        f"{r['train_ratio']:.2f} | {r['eval_ms']:.1f} | {r['eval_ratio']:.2f} | "
        f"{r['compile_train_s']:.1f} | {r['images_per_s']:.0f} |"
      )
  peers = result.get("peers")
  if peers:
    first = peers[0]
    lines += [
      "",
      f"Peer: the same networks' train step written plainly in PyTorch {first['torch_version']} "
      f"({first['device']}, {first['threads']} threads; ACB: three conv + BN branches summed), "
      "same batch:",
      "",
      "| model | case | PyTorch train ms | its ratio to its plain | ours / PyTorch, train | "
      "PyTorch eval ms | ours / PyTorch, eval |",
      "|---|---|---|---|---|---|---|",
    ]
    for r in peers:
      ours_t, ours_e = (
        f"{r[k]:.2f}" if k in r else "-"
        for k in ("ours_over_theirs_train", "ours_over_theirs_eval")
      )
      lines.append(
        f"| {r['model']} | {r['case']} | {r['train_ms']:.1f} | {r['train_ratio']:.2f} | {ours_t} | "
        f"{r['eval_ms']:.1f} | {ours_e} |"
      )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--platform", default="cpu", choices=("cpu", "gpu", "tpu"))
  parser.add_argument("--batch", type=int, default=128, help="batch of the per-layer cases")
  parser.add_argument(
    "--model-batch",
    type=int,
    default=64,
    help="batch of the whole-model cases (64 keeps the suite under 15 min on 2 CPU cores)",
  )
  parser.add_argument(
    "--imagenet-batch", type=int, default=64, help="batch of the 224px nets (GPU only)"
  )
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument(
    "--only", default="layers,models,torch", help="comma list of layers, models, torch"
  )
  parser.add_argument(
    "--quick", action="store_true", help="one layer shape, models resnet20 and lenet, 3 runs"
  )
  parser.add_argument("--out", default="results")
  parser.add_argument(
    "--rewrite", metavar="JSON", help="recompute the targets and tables of a saved run"
  )
  args = parser.parse_args(argv)
  if args.rewrite:
    path = Path(args.rewrite)
    result = json.loads(path.read_text())
    # imports jax: only after JAX_PLATFORMS is set on the timing path
    from bench.layers import (
      set_ratios,
    )

    set_ratios(result["layers"])
    result["targets"] = evaluate_targets(
      result["layers"], result["models"], result.get("peers"), result["platform"]
    )
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0
  os.environ["JAX_PLATFORMS"] = args.platform if args.platform != "gpu" else "cuda"
  import jax

  from bench.layers import SHAPES, bench_layers
  from bench.models import bench_models
  from bench.timing import warm_machine
  from bench.torch_peer import bench_peers

  parts = set(args.only.split(","))
  reps = 3 if args.quick else args.reps
  start = time.perf_counter()
  device = jax.devices()[0]
  print(
    f"benchmarks on {device.device_kind} ({device.platform}), batch {args.batch} (layers) / "
    f"{args.model_batch} (models), {reps} runs",
    flush=True,
  )
  warm_machine()
  layers = (
    bench_layers(args.batch, reps, shapes=SHAPES[:1] if args.quick else SHAPES)
    if "layers" in parts
    else []
  )
  models = (
    bench_models(
      args.model_batch,
      reps,
      groups=["resnet20", "lenet"] if args.quick else None,
      imagenet_batch=args.imagenet_batch,
    )
    if "models" in parts
    else []
  )
  peers = None
  if "torch" in parts and args.platform != "tpu":
    peers = bench_peers(
      models, args.model_batch, reps, device="cuda" if args.platform == "gpu" else "cpu"
    )
    if peers is None:
      print(
        "  torch (or its CUDA build) not installed: pip install -e '.[bench]' for the peer "
        "comparison",
        flush=True,
      )
  result = {
    "platform": device.platform,
    "device": device.device_kind,
    "jax_version": jax.__version__,
    "python": platform_lib.python_version(),
    "cpu_count": os.cpu_count(),
    "batch": args.batch,
    "model_batch": args.model_batch,
    "reps": reps,
    "date": datetime.date.today().isoformat(),
    "quick": args.quick,
    "layers": layers,
    "models": models,
    "peers": peers,
    "targets": evaluate_targets(layers, models, peers, device.platform),
    "seconds": time.perf_counter() - start,
  }
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = f"bench-{device.platform}" + ("-quick" if args.quick else "")
  (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / f"{stem}.md").write_text(markdown(result))
  print(markdown(result))
  print(f"written {out / stem}.json and .md in {result['seconds']:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
