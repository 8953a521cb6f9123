"""INT8 against float32 in onnxruntime on the CPU: the reproduction suite's networks, deployed,
written as ONNX and quantized (`kshapes_jax.int8`), timed at batch 1 and 64.

  python -m bench.int8              # every network and kind of the suite's rows
  python -m bench.int8 --quick      # 5 repetitions

A deployed network is plain convolutions whatever kind trained it, so its speed is its
architecture's: the rows are the suite's networks with the kinds they train with (the ACU's and
DCLS's deploy to wider kernels than the plain network's). The weights are untrained (speed does
not depend on them); the calibration images are Fashion-MNIST's first 96 test images. Medians of
interleaved rounds, each round 20 calls at batch 1 or 2 at batch 64, one session per file with
onnxruntime's default threads and `kshapes_jax.int8.SESSION_CONFIG` (how an INT8 file is run).
Writes results/bench-int8-<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from flax import nnx

import kshapes_jax as K
from bench import results
from bench.timing import Timed, run_interleaved

REPO = Path(__file__).resolve().parents[1]
# (network, kind, model kwargs): the suite's rows' networks at 28 x 28 x 1
NETWORKS = (
  ("sn", "rotate4", {}),
  ("lenet", "plain", {}),
  ("lenet", "versatile", {}),
  ("acu_plain", "plain", {"width": 0.25, "in_channels": 1}),
  ("acu_plain", "active", {"width": 0.25, "in_channels": 1}),
  ("acu_plain", "dcls", {"width": 0.25, "in_channels": 1}),
  ("cifar_quick", "plain", {"in_channels": 1, "image_size": 28}),
  ("cifar_quick", "acb", {"in_channels": 1, "image_size": 28}),
)
BATCHES = {1: 20, 64: 2}  # batch -> calls per timed round
NORMALIZE = ((0.286,), (0.353,))
TARGETS = {"int8_faster": "INT8 faster than float32 at batch 1 and 64"}


def _files(name: str, conv: str, kwargs: dict, folder: Path, calibration: np.ndarray):
  model = K.models.create(name, conv=conv, num_classes=10, rngs=nnx.Rngs(0), **kwargs)
  model.eval()
  shipped = K.deploy(model)
  fp32 = K.export.save_onnx(
    shipped, (28, 28, 1), folder / f"{name}-{conv}.onnx", normalize=NORMALIZE
  )
  int8 = K.int8.quantize_onnx(fp32, folder / f"{name}-{conv}.int8.onnx", calibration)
  return fp32, int8, K.models.count_params(shipped)


def _timed(label: str, path: Path, x: np.ndarray, calls: int) -> Timed:
  session = K.int8.session(path)  # both files as shipped to run: with K.int8.SESSION_CONFIG

  def run(x):
    for _ in range(calls):
      out = session.run(None, {"images": x})
    return out

  return Timed(label, run, [x])


def bench(reps: int, networks=NETWORKS, log=print) -> list[dict]:
  data = np.load(REPO / "tests" / "data" / "fashion_mnist_test96.npz")["images"]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, conv, kwargs in networks:
      fp32, int8, params = _files(name, conv, kwargs, Path(tmp), data)
      for batch, calls in BATCHES.items():
        x = np.resize(data, (batch, 28, 28, 1))
        cases = [_timed(f, p, x, calls) for f, p in (("float32", fp32), ("int8", int8))]
        run_interleaved(cases, reps, warmup=2, rewarm=True)
        a, b = (c.median_ms / calls for c in cases)
        rows.append(
          {
            "network": name,
            "kind": conv,
            "parameters": params,
            "batch": batch,
            "fp32_ms": a,
            "int8_ms": b,
            "speedup": a / b,
            "fp32_bytes": fp32.stat().st_size,
            "int8_bytes": int8.stat().st_size,
          }
        )
        log(
          f"  {name:<12} {conv:<10} batch {batch:>2}: {a:8.3f} ms fp32, {b:8.3f} ms int8 "
          f"({a / b:4.2f}x)"
        )
  return rows


def markdown(result: dict) -> str:
  lines = [
    f"# INT8 against float32 in onnxruntime ({result['platform']})",
    "",
    f"{result['date']}, {result['machine']}, JAX {result['jax']}; onnxruntime's CPU provider, "
    f"default threads, session config {K.int8.SESSION_CONFIG}; medians of {result['reps']} "
    "interleaved rounds, per call. The reproduction "
    "suite's networks at 28 x 28 x 1, deployed (plain convolutions, BN folded), written by "
    "`kshapes_jax.export.save_onnx` and quantized by `kshapes_jax.int8.quantize_onnx` (static, "
    "int8 weights per channel and activations, QDQ). Produced by `python -m bench.int8`.",
    "",
    "| network | kind | parameters (deployed) | batch | float32 ms | INT8 ms | speed-up | file "
    "bytes fp32 / int8 | INT8 faster |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
      f"| {r['network']} | {r['kind']} | {r['parameters']:,} | {r['batch']} | {r['fp32_ms']:.3f} | "
      f"{r['int8_ms']:.3f} | {r['speedup']:.2f}x | {r['fp32_bytes']:,} / {r['int8_bytes']:,} | "
      + ("yes" if r["speedup"] > 1 else "**no**")
      + " |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--quick", action="store_true", help="5 repetitions")
  parser.add_argument("--out", default="results")
  args = parser.parse_args(argv)
  reps = 5 if args.quick else args.reps
  rows = bench(reps)
  result = results.record(reps, TARGETS, rows)
  print(results.write(args.out, "bench-int8", result, markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())
