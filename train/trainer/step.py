"""The jitted training step: one SGD step of the papers' optimizer on a sharded batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

import kshapes_jax as K
from train import data
from train.trainer.state import TrainState, split_model


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  *,
  mean: Sequence[float],
  std: Sequence[float],
  augment: str,
  seed: int,
  max_loss: float = float("inf"),
  repulsion_from_step: int | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, jax.Array]]:
  """step(state, batch) -> (state, loss).

  Args:
    graphdef: the model's graph in train mode.
    tx: the optimizer.
    mean, std: per-channel statistics the uint8 images are normalised with.
    augment: "none" or "cifar" (keyed by the step, so a resumed run sees the same crops).
    seed: the run's seed.
    max_loss: a step whose loss exceeds it is marked bad, as a NaN is (a run that
      diverges to finite garbage).
    repulsion_from_step: from this step on, the square of DCLS's repulsion
      (`kshapes_jax.nn.dcls_repulsion`) is added to the loss, as ConvNeXt-dcls does after
      epoch 20; None: never.
  """
  base_key = jax.random.key(seed)

  def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, jax.Array]:
    key = jax.random.fold_in(base_key, state.step)
    x = data.preprocess(batch["image"], key, mean=mean, std=std, augment=augment)
    y = batch["label"]

    def loss_fn(params):
      # fresh Variables for this trace level: BN updates its statistics in place
      rest = jax.tree.map(lambda v: v, state.rest)
      model = nnx.merge(graphdef, params, rest)
      logits = model(x).astype(jnp.float32)  # the loss in float32 also under mixed precision
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      if repulsion_from_step is not None:
        on = state.step >= repulsion_from_step
        loss = loss + jnp.where(on, jnp.square(K.nn.dcls_repulsion(model)), 0.0)
      return loss, (logits, split_model(model)[2])

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # a finite loss can still give non-finite params (a huge step): check both
    finite = jnp.isfinite(loss) & jnp.all(
      jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
    )
    bad = jnp.logical_and(state.bad_step < 0, ~(finite & (loss <= max_loss)))
    new_state = dataclasses.replace(
      state,
      params=params,
      rest=rest,
      opt_state=opt_state,
      step=state.step + 1,
      bad_step=jnp.where(bad, state.step, state.bad_step),
      sums=state.sums.add(loss, jnp.sum(jnp.argmax(logits, -1) == y), y.shape[0]),
    )
    return new_state, loss

  return step


def shard(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows -> a global array sharded along the batch."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
