"""Per-layer cases at ResNet-20 shapes: every conv kind against a plain 3x3 conv.

A layer's train step is its forward and backward: the gradient with respect
to its parameters AND its input (as inside a network), for a fixed random
cotangent. Its eval step is the forward in eval mode.

An ACBlock replaces a conv AND the BN after it, so the ACB kinds are
measured against "conv_bn" (a plain conv + BN), the others against "plain".
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.timing import compile_timed, run_interleaved
from kshapes_jax import nn as knn

SHAPES = ((32, 16), (16, 32), (8, 64))  # (H = W, channels) of ResNet-20's three stages
# acb_deployed is a plain conv
BASE = {
  "acb": "conv_bn",
  "acb_branches": "conv_bn",
  "acb_stacked": "conv_bn",
}


def set_ratios(rows: list[dict]) -> list[dict]:
  """Sets each row's base, train_ratio and eval_ratio from the times of its base kind at the same
  shape."""
  times = {(r["shape"], r["kind"]): r for r in rows}
  for r in rows:
    r["base"] = BASE.get(r["kind"], "plain")
    base = times[(r["shape"], r["base"])]
    r["train_ratio"], r["eval_ratio"] = (
      r["train_ms"] / base["train_ms"],
      r["eval_ms"] / base["eval_ms"],
    )
  return rows


def layer_factories(c: int) -> dict[str, Callable[[], nnx.Module]]:
  """Every kind as a c -> c 3x3 layer (same output count as the plain conv)."""

  def rngs():
    return nnx.Rngs(0)

  def deployed_acb():
    block = knn.ACBlock(c, c, 3, rngs=rngs())
    block.eval()
    return block.deploy()

  return {
    "plain": lambda: knn.PlainConv(c, c, 3, rngs=rngs()),
    "rotate4": lambda: knn.RotateConv(c, c, version=4, rngs=rngs()),
    "rotate2": lambda: knn.RotateConv(c, c, version=2, rngs=rngs()),
    "conv_bn": lambda: knn.conv_bn("plain", c, c, 3, rngs=rngs()),
    "acb": lambda: knn.ACBlock(c, c, 3, rngs=rngs()),  # impl "auto"
    "acb_branches": lambda: knn.ACBlock(c, c, 3, impl="branches", rngs=rngs()),
    "acb_stacked": lambda: knn.ACBlock(c, c, 3, impl="stacked", rngs=rngs()),
    "acb_deployed": deployed_acb,
    # 3x3: s = 2 nested filters, so c / 2 primary filters give c maps
    "versatile_spatial": lambda: knn.VersatileConv(c, c, 3, mode="spatial", rngs=rngs()),
    # c^ = c / 2, g = c / 2: n = 2 windows, c / 2 filters give c maps
    "versatile_channel": lambda: knn.VersatileConv(
      c, c, 3, mode="none", channel_delta=c // 2, channel_stride=c // 2, rngs=rngs()
    ),
    "acu_r1": lambda: knn.ActiveConv(c, c, 3, radius=1, rngs=rngs()),
    "acu_r2": lambda: knn.ActiveConv(c, c, 3, radius=2, rngs=rngs()),
    "acu_r3": lambda: knn.ActiveConv(c, c, 3, radius=3, rngs=rngs()),
    "acu_gather": lambda: knn.ActiveConv(c, c, 3, radius=2, impl="gather", rngs=rngs()),
    # the ACU plus per-pixel offsets from a 3x3 conv (and DCNv2 factors): the gather, per pixel
    "deformable": lambda: knn.DeformableActiveConv(c, c, 3, rngs=rngs()),
    "deformable_mod": lambda: knn.DeformableActiveConv(c, c, 3, modulation=True, rngs=rngs()),
  }


def _steps(layer: nnx.Module):
  """(train_fn, eval_fn, params, rest) for a layer."""
  layer.train()
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
  layer.eval()
  eval_graphdef = nnx.split(layer, nnx.Param, ...)[0]

  def train_fn(params, rest, x, cotangent):
    def loss(params, x):
      y = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))(x)
      return jnp.sum(y * cotangent)

    return jax.grad(loss, argnums=(0, 1))(params, x)

  def eval_fn(params, rest, x):
    return nnx.merge(eval_graphdef, params, rest)(x)

  return train_fn, eval_fn, params, rest


def bench_layers(
  batch: int, reps: int, shapes=SHAPES, kinds: list[str] | None = None, log=print
) -> list[dict]:
  """Times every kind at every shape; ratios are against its base kind (`BASE`, else "plain") at the
  same shape."""
  rows = []
  rng = np.random.default_rng(0)
  for hw, c in shapes:
    x = jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32)
    factories = layer_factories(c)
    names = list(kinds or factories)
    for base in ("conv_bn", "plain"):
      if base not in names and any(BASE.get(n, "plain") == base for n in names):
        names = [base, *names]
    train_cases, eval_cases = [], []
    for name in names:
      layer = factories[name]()
      if layer.out_features != c:
        raise ValueError(f"{name} gives {layer.out_features} maps, not {c}")
      train_fn, eval_fn, params, rest = _steps(layer)
      train_cases.append(compile_timed(name, train_fn, (params, rest, x, g)))
      eval_cases.append(compile_timed(name, eval_fn, (params, rest, x)))
    run_interleaved(train_cases, reps, rewarm=True)
    run_interleaved(eval_cases, reps, rewarm=True)
    shape_rows = set_ratios(
      [
        {
          "shape": f"{hw}x{hw}x{c}",
          "kind": t.name,
          "train_ms": t.median_ms,
          "eval_ms": e.median_ms,
          "compile_train_s": t.compile_s,
        }
        for t, e in zip(train_cases, eval_cases)
      ]
    )
    for r in shape_rows:
      log(
        f"  layer {r['shape']:>9} {r['kind']:<18} train {r['train_ms']:8.2f} ms "
        f"({r['train_ratio']:5.2f}x "
        f"{r['base']})  eval {r['eval_ms']:8.2f} ms ({r['eval_ratio']:5.2f}x)"
      )
    rows += shape_rows
  return rows
