"""Per-layer cases at ResNet-20 shapes: every conv kind against a plain 3x3 conv.

A layer's train step is its forward and backward: the gradient with respect
to its parameters AND its input (as inside a network), for a fixed random
cotangent. Its eval step is the forward in eval mode.
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
      "acb": lambda: knn.ACBlock(c, c, 3, rngs=rngs()),
      "acb_deployed": deployed_acb,
      # 3x3: s = 2 nested filters, so c / 2 primary filters give c maps
      "versatile_spatial": lambda: knn.VersatileConv(c, c, 3, mode="spatial", rngs=rngs()),
      # c^ = c / 2, g = c / 2: n = 2 windows, c / 2 filters give c maps
      "versatile_channel": lambda: knn.VersatileConv(c, c, 3, mode="none", channel_delta=c // 2,
                                                     channel_stride=c // 2, rngs=rngs()),
      "acu_r1": lambda: knn.ActiveConv(c, c, 3, radius=1, rngs=rngs()),
      "acu_r2": lambda: knn.ActiveConv(c, c, 3, radius=2, rngs=rngs()),
      "acu_r3": lambda: knn.ActiveConv(c, c, 3, radius=3, rngs=rngs()),
      "acu_gather": lambda: knn.ActiveConv(c, c, 3, radius=2, impl="gather", rngs=rngs()),
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


def bench_layers(batch: int, reps: int, shapes=SHAPES, kinds: list[str] | None = None,
                 log=print) -> list[dict]:
  """Times every kind at every shape; ratios are against "plain" at the same shape."""
  rows = []
  rng = np.random.default_rng(0)
  for hw, c in shapes:
    x = jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, hw, hw, c)), jnp.float32)
    factories = layer_factories(c)
    names = kinds or list(factories)
    if "plain" not in names:
      names = ["plain", *names]
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
    base_t, base_e = train_cases[0].median_ms, eval_cases[0].median_ms
    for t, e in zip(train_cases, eval_cases):
      rows.append({"shape": f"{hw}x{hw}x{c}", "kind": t.name, "train_ms": t.median_ms, "eval_ms": e.median_ms,
                   "train_ratio": t.median_ms / base_t, "eval_ratio": e.median_ms / base_e,
                   "compile_train_s": t.compile_s})
      log(f"  layer {rows[-1]['shape']:>9} {t.name:<18} train {t.median_ms:8.2f} ms ({t.median_ms / base_t:5.2f}x)"
          f"  eval {e.median_ms:8.2f} ms ({e.median_ms / base_e:5.2f}x)")
  return rows
