"""Model registry: create(name, conv=..., num_classes=..., rngs=...)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import _validation
from kshapes_jax.nn.kinds import CONV_KINDS, get_kind


@dataclasses.dataclass(frozen=True)
class KindsTaking:
  """The registered conv kinds that build layers of every one of `kernel_sizes`, asked when a
  model is built (so a kind registered later applies to the model too), `default` first."""

  kernel_sizes: tuple[int, ...] = ()
  default: str | None = None  # the model's default kind, listed first (a paper's own block)

  def __call__(self) -> tuple[str, ...]:
    names = [
      name
      for name, kind in CONV_KINDS.items()
      if all(kind.takes_kernel_size(k) for k in self.kernel_sizes)
    ]
    first = [name for name in names if name == self.default]
    return tuple(first + [name for name in names if name not in first])


# every registered kind: a model whose kind replaces only the layers it can (its 3x3 convs,
# or every conv of a size the kind takes, `kind_for`)
ANY_KIND = KindsTaking()


def kind_for(conv: str, kernel_size: int) -> str:
  """The kind a model gives a kxk layer: `conv` where it takes that size, else plain (a
  RotateConv net's 7x7 stem)."""
  return conv if get_kind(conv).takes_kernel_size(kernel_size) else "plain"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model family member."""

  name: str
  build: Callable[..., nnx.Module]
  applies: tuple[str, ...] | KindsTaking  # the conv kinds that apply (a tuple, or asked)
  input_shape: tuple[int, int, int]  # (H, W, C) of one example
  paper: str
  num_classes: int = 10  # the default: the paper's dataset
  takes_image_size: bool = False  # builder accepts image_size=H (a classifier sized by the image)

  @property
  def kinds(self) -> tuple[str, ...]:
    """The conv kinds that apply, the default first."""
    return self.applies() if isinstance(self.applies, KindsTaking) else self.applies


_MODELS: dict[str, ModelSpec] = {}


def register(
  name: str,
  *,
  kinds: tuple[str, ...] | KindsTaking,
  input_shape: tuple[int, int, int],
  paper: str,
  num_classes: int = 10,
  takes_image_size: bool = False,
):
  """Decorator adding a builder `fn(conv, num_classes, rngs, **kw)` under `name`.

  `kinds`: the conv kinds that apply, named, or `KindsTaking(kernel sizes)` (`ANY_KIND`: all).
  """

  def wrap(fn):
    _MODELS[name] = ModelSpec(name, fn, kinds, input_shape, paper, num_classes, takes_image_size)
    return fn

  return wrap


def register_row(
  name: str, of: str, *, kinds: tuple[str, ...] | KindsTaking, paper: str, **fixed
) -> None:
  """Registers `name` as the model `of` built with the keyword arguments `fixed`: a paper's table
  row of it (e.g. variant="v2"), taking `kinds`."""
  base = spec(of)

  def build(conv, num_classes: int, rngs: nnx.Rngs, **kw):
    return base.build(conv=conv, num_classes=num_classes, rngs=rngs, **fixed, **kw)

  build.__doc__ = f"{paper}: {of} with " + ", ".join(f"{k}={v!r}" for k, v in fixed.items())
  _MODELS[name] = dataclasses.replace(base, name=name, build=build, applies=kinds, paper=paper)


def spec(name: str) -> ModelSpec:
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(_MODELS)}")
  return _MODELS[name]


def list_models() -> list[str]:
  return sorted(_MODELS)


def check_kind(name: str, conv: str | None) -> str:
  """The conv kind model `name` is built with: `conv`, or the model's default for None.

  Raises:
    ValueError: for an unknown model, or a kind that does not apply to it.
  """
  kinds = spec(name).kinds
  conv = kinds[0] if conv is None else conv
  if conv not in kinds:
    raise ValueError(f"conv kind {conv!r} does not apply to {name}; it takes {list(kinds)}")
  return conv


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
      versatile, active or a registered one (each model says which apply);
      by default the first that applies (plain, or versatile for the
      versatile paper's networks).
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
  conv = check_kind(name, conv)
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


def abstract(name: str, **kwargs) -> nnx.Module:
  """`create(name, **kwargs)` built from shapes only (`nnx.eval_shape`): its parameters are
  `jax.ShapeDtypeStruct` values, for counting and inspecting a model without computing it."""
  with _short_tracer_sharding_errors():
    return nnx.eval_shape(lambda: create(name, **kwargs))


@contextlib.contextmanager
def _short_tracer_sharding_errors() -> Iterator[None]:
  """While open, a tracer's missing `.sharding` raises an AttributeError with a short message.

  NNX reads `getattr(value, "sharding", None)` on every variable update (each RNG draw of a
  layer's init), and JAX 0.10's message for a tracer walks the whole trace to say where the
  value came from: building a model under tracing is then quadratic in its size (3-8 s for
  RepVGG-A0 or ResNet-110, 0.5-1 s without it, on this project's 2-core machine). Nothing reads
  that message here.
  """
  from jax._src import core  # noqa: PLC0415 (the private class the message comes from)

  original = core.Tracer.__dict__.get("sharding")
  if not isinstance(original, property):  # another JAX: leave it as it is
    yield
    return

  def sharding(self):
    raise AttributeError("The 'sharding' attribute is not available on a tracer.")

  core.Tracer.sharding = property(sharding)  # type: ignore[method-assign,assignment]
  try:
    yield
  finally:
    core.Tracer.sharding = original  # type: ignore[method-assign,assignment]
