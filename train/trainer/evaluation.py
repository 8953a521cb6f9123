"""Evaluation: a model over a split, data parallel; the final evaluation of a run and of its
deployed twin."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import kshapes_jax as K
from train import data
from train.trainer.state import split_model
from train.trainer.step import shard


def make_eval_step(graphdef: nnx.GraphDef, *, mean: Sequence[float], std: Sequence[float]):
  """eval(params, rest, batch) -> (loss sum, correct, top-5 correct, count, argmax) over the
  unmasked rows (argmax -1 on the others; top-5: the label among the 5 largest logits, or among
  all of them for fewer classes)."""

  def evaluate(params, rest, batch):
    x = data.preprocess(batch["image"], None, mean=mean, std=std)
    logits = nnx.merge(graphdef, params, rest)(x).astype(jnp.float32)
    mask = batch["mask"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    pred = jnp.argmax(logits, -1)
    _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
    in_top5 = jnp.any(top == batch["label"][:, None], axis=-1)
    return (
      jnp.sum(jnp.where(mask, losses, 0.0)),
      jnp.sum(mask & (pred == batch["label"])),
      jnp.sum(mask & in_top5),
      jnp.sum(mask),
      jnp.where(mask, pred, -1),
    )

  return evaluate


@dataclasses.dataclass
class Evaluator:
  """Runs a model (graphdef + state, eval mode) over a split, data parallel."""

  graphdef: nnx.GraphDef
  dataset: data.Dataset
  batch_size: int
  mesh: jax.sharding.Mesh

  def __post_init__(self):
    rep = NamedSharding(self.mesh, P())
    self._data = NamedSharding(self.mesh, P("data"))
    self._fn = jax.jit(
      make_eval_step(self.graphdef, mean=self.dataset.mean, std=self.dataset.std), out_shardings=rep
    )

  def __call__(self, params, rest, split: data.Source) -> dict[str, Any]:
    """{"loss", "accuracy", "top5_accuracy", "count", "predictions"} (every process has all of
    them: the outputs are replicated)."""
    loss, correct, top5, count, preds = 0.0, 0, 0, 0, []
    for batch in split.eval_batches(
      self.batch_size, process_index=jax.process_index(), process_count=jax.process_count()
    ):
      batch_loss, c, c5, n, p = self._fn(params, rest, shard(batch, self._data))
      loss, correct, count = loss + float(batch_loss), correct + int(c), count + int(n)
      top5 += int(c5)
      p = np.asarray(p)  # the global batch's, in global order: the padding rows are -1
      preds.append(p[p >= 0])
    return {
      "loss": loss / count,
      "accuracy": correct / count,
      "top5_accuracy": top5 / count,
      "count": count,
      "predictions": np.concatenate(preds),
    }


_EVALUATORS: dict[tuple, Evaluator] = {}


def accuracy(
  model: nnx.Module,
  dataset: data.Dataset,
  split: data.Source,
  batch_size: int = 1000,
) -> float:
  """Accuracy of a model (eval mode) on a split, on one device, normalised as in training.

  The compiled evaluation is reused for models of one structure (e.g. the
  pruned copies of a net), so only their values change between calls; a
  split smaller than `batch_size` is one batch of its own size.
  """
  graphdef, params, rest = split_model(model)
  batch_size = min(batch_size, len(split))  # a split smaller than a batch: no padded rows to run
  key = (graphdef, dataset.name, dataset.mean, dataset.std, batch_size)
  if key not in _EVALUATORS:
    mesh = jax.make_mesh(
      (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
    )
    _EVALUATORS[key] = Evaluator(graphdef, dataset, batch_size, mesh)
  return _EVALUATORS[key](params, rest, split)["accuracy"]


def final_evaluation(
  graphdef: nnx.GraphDef,
  params: nnx.State,
  rest: nnx.State,
  dataset: data.Dataset,
  batch_size: int,
  mesh: jax.sharding.Mesh,
  evaluate: Evaluator | None = None,
) -> dict[str, Any]:
  """The trained model (eval graph) and `deploy` of it on the test split.

  Returns:
    test and deployed_test loss, accuracy and top-5 accuracy, the deployed parameter count,
    the share of test images on which both predict the same class and the
    number of test examples.
  """
  evaluate = evaluate or Evaluator(graphdef, dataset, batch_size, mesh)
  trained = evaluate(params, rest, dataset.test)
  shipped = K.deploy(nnx.merge(graphdef, params, rest))
  d_graphdef, d_params, d_rest = split_model(shipped)
  deployed = Evaluator(d_graphdef, dataset, batch_size, mesh)(d_params, d_rest, dataset.test)
  agree = float(np.mean(trained["predictions"] == deployed["predictions"]))
  return {
    "deployed_parameters": K.models.count_params(shipped),
    "test_accuracy": trained["accuracy"],
    "test_top5_accuracy": trained["top5_accuracy"],
    "test_loss": trained["loss"],
    "deployed_test_accuracy": deployed["accuracy"],
    "deployed_test_top5_accuracy": deployed["top5_accuracy"],
    "deployed_test_loss": deployed["loss"],
    "deployed_prediction_agreement": agree,
    "test_examples": trained["count"],
  }
