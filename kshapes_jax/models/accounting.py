"""Weights, memory and multiplications of a model, as the versatile paper counts them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from kshapes_jax.nn.base import recording


@dataclasses.dataclass(frozen=True)
class LayerCost:
  name: str
  weights: int
  multiplications: int


@dataclasses.dataclass(frozen=True)
class ModelCost:
  layers: tuple[LayerCost, ...]

  @property
  def weights(self) -> int:
    """Conv/linear weights, no biases or BN (the versatile paper's "Weights")."""
    return sum(layer.weights for layer in self.layers)

  @property
  def memory_bytes(self) -> int:
    """Weights stored as 32-bit floats (the paper's "Memory")."""
    return 4 * self.weights

  @property
  def multiplications(self) -> int:
    """Multiplications per example in one forward (the paper's "FLOPs", Proposition 1)."""
    return sum(layer.multiplications for layer in self.layers)


def conv_records(model: nnx.Module, input_shape: tuple[int, int, int]) -> list:
  """(layer, input shape, output shape) of every conv layer in call order, traced on shapes only.

  The layers belong to an eval-mode clone of `model` (no batch-statistics
  updates while tracing); their values are the model's.
  """
  view = nnx.clone(model)
  view.eval()
  with recording() as records:
    jax.eval_shape(lambda x: view(x), jnp.zeros((1, *input_shape)))
  return records


def model_cost(model: nnx.Module, input_shape: tuple[int, int, int]) -> ModelCost:
  """Traces one example through `model` (shapes only, no compute) and adds up its layers.

  Every conv layer and `nn.Dense` reports its stored weights and its
  multiplications (Proposition 1 for versatile layers, dense otherwise).
  """
  return ModelCost(
    tuple(
      LayerCost(type(layer).__name__, layer.weight_count(), layer.multiplications(out_shape))
      for layer, _, out_shape in conv_records(model, input_shape)
    )
  )
