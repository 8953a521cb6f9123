"""Conv kinds by name: the one registry that make_conv, convert, the support matrix, the Linen
module, the trainer and the zoo read.

A kind is a `ConvLayer` subclass (its module holds everything particular to it: see the kind
protocol in `kshapes_jax.nn.base`) under a name, with the options the name fixes:

  register_kind("rotate4", RotateConv, version=4)

A new kind is its layer module plus one such line; `register_kind` from user code (or a test)
gives it make_conv, convert, deploy, certify, the exports, the trainer's `conv=` and every zoo
model that takes any kind.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, cast

from flax import nnx
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding
from kshapes_jax.nn.acb import ACBlock
from kshapes_jax.nn.active import ActiveConv
from kshapes_jax.nn.base import ConvGeometry, ConvLayer, PlainConv
from kshapes_jax.nn.dbb import DiverseBranchBlock
from kshapes_jax.nn.dcls import DclsConv
from kshapes_jax.nn.repvgg import RepVGGBlock
from kshapes_jax.nn.rotate import RotateConv
from kshapes_jax.nn.versatile import VersatileConv

# what every kind's constructor takes, as a plain conv does (ConvGeometry): not options
SHARED_ARGUMENTS = (
  "self",
  "in_features",
  "out_features",
  "kernel_size",
  "stride",
  "padding",
  "use_bias",
  "groups",
  "dilation",
  "precision",
  "dtype",
  "rngs",
)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _option_type(annotation: Any) -> type | None:
  """The config type of an option annotated `annotation` (bool, int, float or str; a Literal's
  values' type; a dtype is its name), None for anything a config cannot hold (arrays)."""
  if annotation in (bool, int, float, str):
    return annotation
  if annotation in (DTypeLike, DTypeLike | None):  # a dtype's name, in a config
    return str
  if typing.get_origin(annotation) is typing.Literal:
    types_ = {type(v) for v in typing.get_args(annotation)}
    return types_.pop() if len(types_) == 1 else None
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    kept = [a for a in typing.get_args(annotation) if a is not type(None)]
    found = {_option_type(a) for a in kept}
    return found.pop() if len(found) == 1 else None
  return None


@dataclasses.dataclass(frozen=True)
class Kind:
  """A conv kind: its name, its layer class and the options the name fixes.

  Calling it builds a layer: `kind(in_features, out_features, kernel_size, *, stride, padding,
  use_bias, groups, dilation, precision, dtype, rngs, **options)`.
  """

  name: str
  layer: type[ConvLayer]
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __call__(self, in_features: int, out_features: int, kernel_size: int = 3, **kwargs):
    clash = sorted(set(self.fixed) & set(kwargs))
    if clash:
      fixed = ", ".join(f"{k}={self.fixed[k]!r}" for k in clash)
      raise ValueError(f"conv kind {self.name!r} fixes {fixed}; leave it out of its options")
    build = cast(Callable[..., ConvLayer], self.layer)  # a subclass's own constructor
    return build(in_features, out_features, kernel_size, **self.fixed, **kwargs)

  @property
  def normalizes(self) -> bool:
    """The layer ends in its own BN (`ConvLayer.normalizes`)."""
    return self.layer.normalizes

  @property
  def preserves(self) -> str | None:
    """ "exact", "fit" or None (`ConvLayer.preserves`)."""
    return self.layer.preserves

  def takes_kernel_size(self, kernel_size: int) -> bool:
    return self.layer.takes_kernel_size(kernel_size)

  def from_geometry(self, geometry: ConvGeometry, *, rngs: nnx.Rngs, **options) -> ConvLayer:
    """A layer of this kind in place of a plain conv of `geometry` (options win over its
    numerics).

    Raises:
      ValueError: for a geometry or options the kind cannot take.
    """
    padding: Padding = geometry.padding
    if self.layer.int_padding:
      padding = geometry.int_padding(f"kind {self.name!r}")
    return self(
      geometry.in_features,
      geometry.out_features,
      geometry.kernel_size,
      stride=geometry.stride,
      padding=padding,
      use_bias=geometry.use_bias,
      groups=geometry.groups,
      dilation=geometry.dilation,
      rngs=rngs,
      **{**geometry.numerics, **options},
    )

  def options(self) -> dict[str, type]:
    """The options its layer takes beyond a plain conv's arguments, with their config types
    (bool, int, float, str), in the constructor's order; the fixed ones left out."""
    signature = inspect.signature(self.layer.__init__)
    module = vars(inspect.getmodule(self.layer) or typing)
    out = {}
    for name, parameter in signature.parameters.items():
      if name in SHARED_ARGUMENTS or name in self.fixed or parameter.kind is parameter.VAR_KEYWORD:
        continue
      annotation = parameter.annotation
      if isinstance(annotation, str):  # `from __future__ import annotations`: evaluated as
        try:  # typing.get_type_hints would, one at a time
          annotation = eval(annotation, module)
        except (NameError, AttributeError, TypeError):
          continue
      kind = _option_type(annotation)
      if kind is not None:
        out[name] = kind
    return out


# the registry, in the order tables list the kinds
CONV_KINDS: dict[str, Kind] = {}


def register_kind(name: str, layer: type[ConvLayer], **fixed: Any) -> Kind:
  """Registers `layer` (a ConvLayer subclass) as the conv kind `name`, with `fixed` options.

  Raises:
    ValueError: for a name that is taken or not lower_snake_case, a layer that is no ConvLayer,
      or an option whose type differs from another kind's option of that name (a config holds
      one type per option).
  """
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise ValueError(f"a conv kind's name is lower_snake_case, got {name!r}")
  if name in CONV_KINDS:
    raise ValueError(f"conv kind {name!r} is registered already ({CONV_KINDS[name].layer})")
  if not (isinstance(layer, type) and issubclass(layer, ConvLayer)):
    raise ValueError(f"a conv kind's layer is a kshapes_jax.nn.ConvLayer subclass, got {layer!r}")
  kind = Kind(name, layer, dict(fixed))
  known = conv_options()
  for option, kind_type in kind.options().items():
    if known.get(option, kind_type) is not kind_type:
      raise ValueError(
        f"conv kind {name!r}: option {option!r} is a {kind_type.__name__}, another kind's "
        f"{option!r} a {known[option].__name__}; give it another name"
      )
  CONV_KINDS[name] = kind
  return kind


def unregister_kind(name: str) -> None:
  """Removes a kind `register_kind` added (a test's, say)."""
  get_kind(name)
  del CONV_KINDS[name]


def get_kind(name: str) -> Kind:
  """The registered kind of that name.

  Raises:
    ValueError: for an unknown name, listing the kinds.
  """
  if not isinstance(name, str) or name not in CONV_KINDS:
    raise ValueError(f"unknown conv kind {name!r}; expected one of {list(CONV_KINDS)}")
  return CONV_KINDS[name]


def kind_names() -> tuple[str, ...]:
  """The registered kinds' names, in registration order (plain first)."""
  return tuple(CONV_KINDS)


def conv_options() -> dict[str, type]:
  """Every option some registered kind takes, with its config type."""
  out: dict[str, type] = {}
  for kind in CONV_KINDS.values():
    out.update(kind.options())
  return out


register_kind("plain", PlainConv)
register_kind("rotate4", RotateConv, version=4)
register_kind("rotate2", RotateConv, version=2)
register_kind("acb", ACBlock)
register_kind("versatile", VersatileConv)
register_kind("active", ActiveConv)
register_kind("dbb", DiverseBranchBlock)
register_kind("repvgg", RepVGGBlock)
register_kind("dcls", DclsConv)
