"""The typed state a training run carries through its jitted step and saves in its checkpoints."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np
import optax
from flax import nnx

# a device array, or a host one before the state is placed on the mesh
Array = jax.Array | np.ndarray


@flax.struct.dataclass
class EpochSums:
  """Running sums of the epoch's training loss (x examples), correct predictions and examples."""

  loss: Array
  correct: Array
  count: Array

  @classmethod
  def zeros(cls) -> EpochSums:
    # NumPy, not jnp: host values that any process can place on a global mesh
    return cls(
      loss=np.zeros([], np.float32), correct=np.zeros([], np.int32), count=np.zeros([], np.int32)
    )

  def add(self, loss: jax.Array, correct: jax.Array, count: int) -> EpochSums:
    return EpochSums(self.loss + loss * count, self.correct + correct, self.count + count)

  def means(self) -> tuple[float, float]:
    """(mean loss, accuracy) over the examples summed so far (0 for none)."""
    n = max(int(self.count), 1)
    return float(self.loss) / n, int(self.correct) / n


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; replicated over the device mesh.

  Attributes:
    params: the model's nnx.Param state.
    rest: the rest of the model's state (BN statistics, RNG counts).
    opt_state: the optax state.
    step: steps taken.
    bad_step: the first step whose loss or parameters were not finite (-1: none).
    sums: the running sums of the current epoch.
    radii: each ActiveConv's radius under extent bucketing (None without ACUs).
  """

  params: nnx.State
  rest: nnx.State
  opt_state: optax.OptState
  step: Array
  bad_step: Array
  sums: EpochSums
  radii: Array | None = None

  @classmethod
  def create(
    cls,
    tx: optax.GradientTransformation,
    params: nnx.State,
    rest: nnx.State,
    radii: list[int] | None = None,
  ) -> TrainState:
    """The state at step 0."""
    return cls(
      params=params,
      rest=rest,
      opt_state=tx.init(params),
      step=np.zeros([], np.int32),
      bad_step=np.full([], -1, np.int32),
      sums=EpochSums.zeros(),
      radii=np.asarray(radii, np.int32) if radii else None,
    )

  def to_tree(self) -> dict[str, Any]:
    """The checkpointed layout: a dict of pytrees (radii only when there are ACUs: orbax
    cannot save an empty array). Checkpoints written before TrainState existed have it."""
    tree = {
      "params": self.params,
      "rest": self.rest,
      "opt_state": self.opt_state,
      "step": self.step,
      "bad_step": self.bad_step,
      "sums": {"loss": self.sums.loss, "correct": self.sums.correct, "count": self.sums.count},
    }
    if self.radii is not None:
      tree["radii"] = self.radii
    return tree

  @classmethod
  def from_tree(cls, tree: dict[str, Any]) -> TrainState:
    return cls(
      params=tree["params"],
      rest=tree["rest"],
      opt_state=tree["opt_state"],
      step=tree["step"],
      bad_step=tree["bad_step"],
      sums=EpochSums(**tree["sums"]),
      radii=tree.get("radii"),
    )

  def radii_list(self) -> list[int]:
    return [] if self.radii is None else [int(r) for r in jax.device_get(self.radii)]


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graph, parameters, the rest: BN statistics, RNG counts) of a model, as a state holds them."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
  return graphdef, params, rest
