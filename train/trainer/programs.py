"""Compiled programs per ACU radius set.

An ActiveConv's `radius` is static: it fixes the size of the conv the
synapses are splatted into. Extent bucketing (acu_radius_every_steps, the
radii from `kshapes_jax.nn.bucketed_radii`) runs each ACU with the smallest
radius that holds its positions, so the run compiles one train step and one
evaluator per radius set. `ProgramCache` builds them from copies of the
model with the radii set (`kshapes_jax.nn.with_radii`); the model it was
given is never changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kshapes_jax as K
from train import data
from train.trainer.evaluation import Evaluator
from train.trainer.state import split_model
from train.trainer.step import make_train_step


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
    augment, seed, max_loss, repulsion_from_step: of the train step.
    eval_batch_size: of the evaluator.
    mesh: the 1-D data-parallel mesh.
  """

  def __init__(
    self,
    model: nnx.Module,
    tx: optax.GradientTransformation,
    dataset: data.Dataset,
    *,
    augment: str,
    seed: int,
    eval_batch_size: int,
    mesh: jax.sharding.Mesh,
    max_loss: float = float("inf"),
    repulsion_from_step: int | None = None,
  ):
    self._model, self._tx, self._dataset, self._mesh = model, tx, dataset, mesh
    self._augment, self._seed, self._eval_batch_size = augment, seed, eval_batch_size
    self.max_loss = max_loss
    self._repulsion_from_step = repulsion_from_step
    self._programs: dict[tuple[int, ...], Programs] = {}

  def __call__(self, radii: Sequence[int]) -> Programs:
    key = tuple(int(r) for r in radii)
    if key not in self._programs:
      self._programs[key] = self._compile(key)
    return self._programs[key]

  def _compile(self, radii: tuple[int, ...]) -> Programs:
    model = K.nn.with_radii(self._model, radii)
    model.train()
    train_graphdef = split_model(model)[0]
    model.eval()
    eval_graphdef = split_model(model)[0]
    replicated, data = NamedSharding(self._mesh, P()), NamedSharding(self._mesh, P("data"))
    step = jax.jit(
      make_train_step(
        train_graphdef,
        self._tx,
        mean=self._dataset.mean,
        std=self._dataset.std,
        augment=self._augment,
        seed=self._seed,
        max_loss=self.max_loss,
        repulsion_from_step=self._repulsion_from_step,
      ),
      in_shardings=(replicated, data),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
    )
    return Programs(
      train_graphdef,
      eval_graphdef,
      step,
      Evaluator(eval_graphdef, self._dataset, self._eval_batch_size, self._mesh),
    )
