"""Compiled programs per ACU radius set, and the extent bucketing that picks the radii.

An ActiveConv's `radius` is static: it fixes the size of the conv the
synapses are splatted into. Extent bucketing (config.acu_radius_every_steps)
runs each ACU with the smallest radius that holds its positions, so the run
compiles one train step and one evaluator per radius set. `ProgramCache`
builds them from copies of the model with the radii set (`with_radii`); the
model it was given is never changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kshapes_jax as K
from train import input_pipeline
from train.evaluation import Evaluator
from train.step import make_train_step


class BucketingError(ValueError):
  """Extent bucketing asked of ACUs it cannot bound."""


def acu_convs(model: nnx.Module) -> list[tuple[tuple, K.nn.ActiveConv]]:
  """(path, layer) of every ActiveConv, in a fixed order."""
  return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, K.nn.ActiveConv)]


def with_radii(model: nnx.Module, radii: Sequence[int]) -> nnx.Module:
  """A copy of `model` whose ActiveConvs (in `acu_convs` order) have these radii."""
  copy = nnx.clone(model)
  layers = acu_convs(copy)
  if len(layers) != len(radii):
    raise ValueError(f"expected one radius per ActiveConv ({len(layers)}), got {len(radii)}")
  for (_, layer), r in zip(layers, radii):
    layer.radius = int(r)
  return copy


def check_bucketing(model: nnx.Module) -> None:
  """Raises BucketingError unless every ACU is a splat ACU with the normalized gradient."""
  for path, layer in acu_convs(model):
    if layer.impl != "splat" or not layer.normalize_grad:
      raise BucketingError(f"acu_radius_every_steps needs splat ACUs with the normalized gradient; "
                           f"{'/'.join(map(str, path))} has impl={layer.impl!r}, "
                           f"normalize_grad={layer.normalize_grad}")


def bucketed_radii(config, model: nnx.Module, params: nnx.State, step: int) -> list[int]:
  """Each ACU's radius for the steps from `step` to the next check (extent bucketing).

  The positions get the normalized gradient, a unit vector per synapse, so
  with momentum m one step moves a coordinate by at most
  lr * multiplier / (1 - m) (Nesterov included); while they are frozen
  (the warm-up) they do not move at all. The radius holds the positions plus
  that margin, capped at the layer's own radius, so no synapse is clipped
  that the fixed-radius run would not clip: the result is that run's, up to
  float rounding, while the conv is 3x3 until the synapses move out.
  """
  o, every = config.optim, config.acu_radius_every_steps
  warmup = o.position_warmup_steps
  next_check = (step // every + 1) * every
  if step < warmup:
    next_check = min(next_check, warmup)
  moving = max(0, next_check - max(step, warmup))
  margin = moving * o.learning_rate * dict(o.lr_multipliers).get("positions", 1.0) / (1 - o.momentum)
  radii = []
  for path, layer in acu_convs(model):
    node = params
    for key in path:
      node = node[key]
    radii.append(K.nn.bucket_radius(np.asarray(node["positions"].get_value()), margin, layer.max_radius))
  return radii


@dataclasses.dataclass(frozen=True)
class Programs:
  """What one radius set compiles to."""

  train_graphdef: nnx.GraphDef
  eval_graphdef: nnx.GraphDef
  train_step: Callable  # jitted, donates the state
  evaluate: Evaluator


class ProgramCache:
  """Programs for each radius set, compiled once.

  Args:
    model: the model (its values are not used: the state carries them).
    tx: the optimizer.
    dataset: for the normalisation statistics and the evaluation.
    augment, seed, max_loss: of the train step.
    eval_batch_size: of the evaluator.
    mesh: the 1-D data-parallel mesh.
  """

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, dataset: input_pipeline.Dataset, *,
               augment: str, seed: int, eval_batch_size: int, mesh: jax.sharding.Mesh,
               max_loss: float = float("inf")):
    self._model, self._tx, self._dataset, self._mesh = model, tx, dataset, mesh
    self._augment, self._seed, self._eval_batch_size = augment, seed, eval_batch_size
    self.max_loss = max_loss
    self._programs: dict[tuple[int, ...], Programs] = {}

  def __call__(self, radii: Sequence[int]) -> Programs:
    key = tuple(int(r) for r in radii)
    if key not in self._programs:
      self._programs[key] = self._compile(key)
    return self._programs[key]

  def _compile(self, radii: tuple[int, ...]) -> Programs:
    model = with_radii(self._model, radii)
    model.train()
    train_graphdef = nnx.split(model, nnx.Param, ...)[0]
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    replicated, data = NamedSharding(self._mesh, P()), NamedSharding(self._mesh, P("data"))
    step = jax.jit(make_train_step(train_graphdef, self._tx, mean=self._dataset.mean, std=self._dataset.std,
                                   augment=self._augment, seed=self._seed, max_loss=self.max_loss),
                   in_shardings=(replicated, data), out_shardings=(replicated, replicated), donate_argnums=0)
    return Programs(train_graphdef, eval_graphdef, step,
                    Evaluator(eval_graphdef, self._dataset, self._eval_batch_size, self._mesh))
