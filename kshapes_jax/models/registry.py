"""Model registry: create(name, conv=..., num_classes=..., rngs=...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import _validation


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model family member."""

  name: str
  build: Callable[..., nnx.Module]
  kinds: tuple[str, ...]  # conv kinds that apply
  input_shape: tuple[int, int, int]  # (H, W, C) of one example
  paper: str
  num_classes: int = 10  # the default: the paper's dataset
  takes_image_size: bool = False  # builder accepts image_size=H (a classifier sized by the image)


_MODELS: dict[str, ModelSpec] = {}


def register(
  name: str,
  *,
  kinds: tuple[str, ...],
  input_shape: tuple[int, int, int],
  paper: str,
  num_classes: int = 10,
  takes_image_size: bool = False,
):
  """Decorator adding a builder `fn(conv, num_classes, rngs, **kw)` under `name`."""

  def wrap(fn):
    _MODELS[name] = ModelSpec(name, fn, kinds, input_shape, paper, num_classes, takes_image_size)
    return fn

  return wrap


def register_row(name: str, of: str, *, kinds: tuple[str, ...], paper: str, **fixed) -> None:
  """Registers `name` as the model `of` built with the keyword arguments `fixed`: a paper's table
  row of it (e.g. variant="v2"), taking `kinds`."""
  base = spec(of)

  def build(conv, num_classes: int, rngs: nnx.Rngs, **kw):
    return base.build(conv=conv, num_classes=num_classes, rngs=rngs, **fixed, **kw)

  build.__doc__ = f"{paper}: {of} with " + ", ".join(f"{k}={v!r}" for k, v in fixed.items())
  _MODELS[name] = dataclasses.replace(base, name=name, build=build, kinds=kinds, paper=paper)


def spec(name: str) -> ModelSpec:
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(_MODELS)}")
  return _MODELS[name]


def list_models() -> list[str]:
  return sorted(_MODELS)


def create(
  name: str,
  *,
  conv: str | None = None,
  num_classes: int | None = None,
  rngs: nnx.Rngs | None = None,
  precision: lax.PrecisionLike = None,
  dtype: DTypeLike | None = None,
  **kwargs,
) -> nnx.Module:
  """Builds the named model with the named conv kind.

  Args:
    name: a registered model (see `list_models()`).
    conv: the conv kind of its kxk layers: plain, rotate4, rotate2, acb,
      versatile or active (each model lists those that apply); by default
      the first the model lists (plain, or versatile for the versatile
      paper's networks).
    num_classes: outputs of the classifier; by default the paper's (10, or
      1000 for the ImageNet networks).
    rngs: NNX random streams; nnx.Rngs(0) by default.
    precision: of every conv and dense layer: None / "default" (the
      backend's default: TF32 on a GPU, bf16 passes on a TPU), "high",
      "highest" (exact float32), or a `lax.Precision`. Kernel building is
      exact whatever this says.
    dtype: compute dtype of every conv, dense and BN layer, e.g. "bfloat16"
      for mixed precision; parameters and BN statistics stay float32. None:
      the dtype of the input and parameters.
    **kwargs: model or layer options (e.g. `conv_options={"radius": 1}`).

  Raises:
    ValueError: for an unknown model or a kind that does not apply to it, an
      unknown precision or dtype, or num_classes < 1.
  """
  s = spec(name)
  precision, dtype = _validation.precision(precision), _validation.compute_dtype(dtype)
  conv = s.kinds[0] if conv is None else conv
  if conv not in s.kinds:
    raise ValueError(f"conv kind {conv!r} does not apply to {name}; it takes {list(s.kinds)}")
  num_classes = (
    s.num_classes if num_classes is None else _validation.positive_int("num_classes", num_classes)
  )
  if rngs is not None:
    _validation.require_rngs(name, rngs)
  return s.build(
    conv=conv,
    num_classes=num_classes,
    rngs=rngs or nnx.Rngs(0),
    precision=precision,
    dtype=dtype,
    **kwargs,
  )


def count_params(model: nnx.Module) -> int:
  """Learned parameters: every nnx.Param (weights, biases, BN scale/shift, angles, positions)."""
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
