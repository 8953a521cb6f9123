"""The ImageNet-family zoo against torchvision's same networks, train and eval step, in one process.

  python -m bench.imagenet_peer                        # resnet18 and resnet50, 64 / 128 / 224 px
  python -m bench.imagenet_peer --models resnet18 --sizes 64

Ours: `kshapes_jax.models.create(name)` (plain convs, 1000 classes) in the
training system's jitted train step (SGD, Nesterov momentum, weight decay,
cross-entropy; uint8 images normalised inside the step) and eval step; and
"before": the same steps traced with XLA's forms only (`_xla_forms_only`).
Theirs: `torchvision.models.<name>(weights=None)` with `torch.optim.SGD` of the
same settings, float32 NCHW, `torch.set_num_threads(os.cpu_count())`. Same
batch, same process; each round times one call of every case in a new order,
each timed call right after an untimed call of the same case; medians of
--reps rounds. Needs the bench extra (torch, torchvision).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

# the targets, ours / torchvision's train step on the 2-core CPU
TARGETS = {("resnet18", 64): 1.3, ("resnet18", 128): 1.3}


@contextlib.contextmanager
def _xla_forms_only():
  """Traces as the library did before its CPU routes: every conv through XLA's convolution and
  the max pools' gradient through reduce_window's (the "before" column)."""
  from flax import nnx

  from kshapes_jax import conv as conv_lib
  from kshapes_jax.models import imagenet

  saved = conv_lib.cpu_prefers_matmul, imagenet.max_pool

  def reduce_window_max_pool(x, window, stride, padding=((0, 0), (0, 0))):
    return nnx.max_pool(x, (window, window), (stride, stride), padding)

  conv_lib.cpu_prefers_matmul = lambda *args: False
  imagenet.max_pool = reduce_window_max_pool
  try:
    yield
  finally:
    conv_lib.cpu_prefers_matmul, imagenet.max_pool = saved


def _ours(name: str, size: int, batch: int, xla_only: bool = False):
  """Our train and eval step as closures over their state (the train state carried)."""
  import jax
  import numpy as np
  from flax import nnx

  import kshapes_jax as K
  from bench.models import _cases_for

  model = K.models.create(name, num_classes=1000, rngs=nnx.Rngs(0))
  model.train()
  (step, state, batch_arrays), (ev, p, r, eval_batch) = _cases_for(
    model, batch, (size, size, 3), np.random.default_rng(0)
  )
  with _xla_forms_only() if xla_only else contextlib.nullcontext():
    train = jax.jit(step, donate_argnums=0).lower(state, batch_arrays).compile()
    evaluate = jax.jit(ev).lower(p, r, eval_batch).compile()
  box = [state]

  def train_step():
    box[0], metrics = train(box[0], batch_arrays)
    jax.block_until_ready(metrics)

  def eval_step():
    jax.block_until_ready(evaluate(p, r, eval_batch))

  return train_step, eval_step, K.models.count_params(model)


def _theirs(name: str, size: int, batch: int):
  import torch
  import torchvision

  torch.manual_seed(0)
  net = getattr(torchvision.models, name)(weights=None)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
  x = torch.randn(batch, 3, size, size)
  y = torch.randint(0, 1000, (batch,))

  def train_step():
    net.train()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()

  def eval_step():
    net.eval()
    with torch.no_grad():
      net(x).argmax(-1)

  return train_step, eval_step, sum(p.numel() for p in net.parameters())


def _time(calls: dict, reps: int) -> dict:
  """Median seconds of each call: every round in a new order, each timed call after an untimed
  one of the same case."""
  for fn in calls.values():
    fn()
  times: dict = {k: [] for k in calls}
  order = random.Random(0)
  for _ in range(reps):
    for key in order.sample(list(calls), len(calls)):
      calls[key]()
      start = time.perf_counter()
      calls[key]()
      times[key].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def bench(models, sizes, batch: int, reps: int, log=print) -> list[dict]:
  import torch

  rows = []
  for name in models:
    for size in sizes:
      ours_train, ours_eval, ours_params = _ours(name, size, batch)
      before_train, before_eval, _ = _ours(name, size, batch, xla_only=True)
      their_train, their_eval, their_params = _theirs(name, size, batch)
      t = _time(
        {
          "ours_train": ours_train,
          "before_train": before_train,
          "theirs_train": their_train,
          "ours_eval": ours_eval,
          "before_eval": before_eval,
          "theirs_eval": their_eval,
        },
        reps,
      )
      row = {
        "model": name,
        "size": size,
        "batch": batch,
        "parameters": ours_params,
        "torchvision_parameters": their_params,
        **{f"{k}_ms": 1e3 * v for k, v in t.items()},
        "train_ratio": t["ours_train"] / t["theirs_train"],
        "eval_ratio": t["ours_eval"] / t["theirs_eval"],
        "before_train_ratio": t["before_train"] / t["theirs_train"],
        "before_eval_ratio": t["before_eval"] / t["theirs_eval"],
        "target": TARGETS.get((name, size)),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
      }
      row["met"] = None if row["target"] is None else row["train_ratio"] <= row["target"]
      rows.append(row)
      log(
        f"  {name} {size}px: train ours {row['ours_train_ms']:.0f} ms (XLA's forms "
        f"{row['before_train_ms']:.0f}), torchvision {row['theirs_train_ms']:.0f} ms "
        f"({row['train_ratio']:.2f}x, before {row['before_train_ratio']:.2f}x); eval "
        f"{row['ours_eval_ms']:.0f} ({row['before_eval_ms']:.0f}) / {row['theirs_eval_ms']:.0f} ms "
        f"({row['eval_ratio']:.2f}x, before {row['before_eval_ratio']:.2f}x)",
        flush=True,
      )
  return rows


def markdown(result: dict) -> str:
  rows = result["rows"]
  lines = [
    f"{result['device']} ({result['cpu_count']} cores), JAX {result['jax_version']}, PyTorch "
    f"{rows[0]['torch_version']} with torchvision {result['torchvision_version']} "
    f"({rows[0]['torch_threads']} threads), batch {result['batch']}, float32, median of "
    f"{result['reps']} rounds, {result['date']}.",
    "",
    "Ours: the library as it is; before: the same step traced with XLA's convolution for every "
    "conv and reduce_window's max-pool gradient (the library before its CPU routes).",
    "",
    "| model | image | parameters (ours = torchvision's) | train ms ours / before / torchvision | "
    "ratio (before) | target | eval ms ours / before / torchvision | ratio (before) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    same = "yes" if r["parameters"] == r["torchvision_parameters"] else "**no**"
    target = (
      "-" if r["target"] is None else f"<= {r['target']} ({'met' if r['met'] else '**not met**'})"
    )
    lines.append(
      f"| {r['model']} | {r['size']} px | {r['parameters']:,} ({same}) | "
      f"{r['ours_train_ms']:.0f} / {r['before_train_ms']:.0f} / {r['theirs_train_ms']:.0f} | "
      f"{r['train_ratio']:.2f} ({r['before_train_ratio']:.2f}) | {target} | "
      f"{r['ours_eval_ms']:.0f} / {r['before_eval_ms']:.0f} / {r['theirs_eval_ms']:.0f} | "
      f"{r['eval_ratio']:.2f} ({r['before_eval_ratio']:.2f}) |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--models", default="resnet18,resnet50")
  parser.add_argument("--sizes", default="64,128,224")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  os.environ["JAX_PLATFORMS"] = "cpu"
  try:
    import torch
    import torchvision
  except ImportError:
    print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
    return 2
  import jax

  from bench.timing import warm_machine

  torch.set_num_threads(os.cpu_count() or 1)
  start = time.perf_counter()
  warm_machine()
  rows = bench(
    args.models.split(","), [int(s) for s in args.sizes.split(",")], args.batch, args.reps
  )
  result = {
    "device": jax.devices()[0].device_kind,
    "cpu_count": os.cpu_count(),
    "jax_version": jax.__version__,
    "torchvision_version": torchvision.__version__,
    "batch": args.batch,
    "reps": args.reps,
    "date": datetime.date.today().isoformat(),
    "rows": rows,
    "seconds": time.perf_counter() - start,
  }
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "bench-imagenet-peer.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / "bench-imagenet-peer.md").write_text(markdown(result))
  print(markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
