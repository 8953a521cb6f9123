"""What every conv layer shares: geometry, the one conv call, the kind protocol, accounting.

A conv kind is one `ConvLayer` subclass: besides its parameters and forward (its
`effective_kernel`), the class answers everything the rest of the library asks of a kind
(the "kind protocol"):

- how it is built from a plain conv's geometry (`ConvGeometry`; the class attributes
  `int_padding`, `normalizes` and the classmethod `takes_kernel_size`);
- whether and how it holds a given kernel (`preserves`, `init_from_kernel`: convert's
  init="preserve");
- its forward as it trained (`trained_output`: what the fusion certificate measures the
  deployed conv against);
- its fusion to a plain conv (`deploy`, with `prepare_deploy` for what it needs static), which
  is what exports take.

`kshapes_jax.nn.kinds` maps kind names to these classes; make_conv, convert, certify, deploy,
the exports, the support matrix, the trainer and the zoo ask a kind through this protocol only.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal, Protocol, cast, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax import _validation
from kshapes_jax import conv as conv_lib
from kshapes_jax.conv import Padding

_RECORDS: contextvars.ContextVar[list | None] = contextvars.ContextVar(
  "kshapes_records", default=None
)


@contextlib.contextmanager
def recording() -> Iterator[list]:
  """Collects (layer, input shape, output shape) of every conv layer called inside."""
  records: list = []
  token = _RECORDS.set(records)
  try:
    yield records
  finally:
    _RECORDS.reset(token)


def record(layer: nnx.Module, x: jax.Array, y: jax.Array) -> None:
  records = _RECORDS.get()
  if records is not None:
    records.append((layer, tuple(x.shape), tuple(y.shape)))


def bucketed(
  sample, key: jax.Array, shape: Sequence[int], dtype: DTypeLike | None = jnp.float32
) -> jax.Array:
  """`sample(key, (m,), dtype)` for m the next power of two, cut to `shape`.

  XLA compiles the random-bit generator once per shape, so a model with many
  differently shaped layers would compile it once per layer; drawing in
  power-of-two sizes bounds that to a few compiles per process.
  """
  n = math.prod(shape)
  size = 1 << max(n - 1, 0).bit_length()
  return sample(key, (size,), dtype)[:n].reshape(tuple(shape))


def he_normal(
  key: jax.Array, shape: Sequence[int], fan_in: int, dtype: DTypeLike | None = jnp.float32
) -> jax.Array:
  """He (Kaiming) normal init for ReLU networks, fan-in of the effective kernel."""
  return bucketed(jax.random.normal, key, shape, dtype) * math.sqrt(2.0 / max(fan_in, 1))


def check_layer(
  layer: str,
  in_features,
  out_features,
  kernel_size,
  stride: int,
  groups: int = 1,
  rngs: nnx.Rngs | None = None,
  *,
  needs_rngs: bool = True,
  dilation: int = 1,
) -> None:
  """The arguments every conv layer shares, each a ValueError naming it when it cannot be meant."""
  _validation.positive_int(f"{layer} in_features", in_features)
  _validation.positive_int(f"{layer} out_features", out_features)
  _validation.positive_int(f"{layer} kernel_size", kernel_size)
  _validation.pair(f"{layer} stride", stride)
  _validation.positive_int(f"{layer} groups", groups)
  _validation.positive_int(f"{layer} dilation", dilation)
  if in_features % groups or out_features % groups:
    raise ValueError(
      f"{layer} groups={groups} must divide in_features={in_features} and "
      f"out_features={out_features}"
    )
  if needs_rngs:
    _validation.require_rngs(layer, rngs)


def symmetric_padding(
  padding: Padding | None, kernel_size: int, *, int_only_for: str | None = None, dilation: int = 1
):
  """None -> dilation * (k // 2) on every side (the papers' "same" for odd k, PyTorch-style at
  stride 2).

  Args:
    padding: None, an int, or anything `conv.conv` takes ("SAME", pairs).
    kernel_size: the layer's (nominal) kernel size.
    dilation: the kernel's dilation.
    int_only_for: the name of a layer that derives other convs' padding from
      this one (ACBlock's branches, ActiveConv's radius) and so takes an int only.

  Raises:
    ValueError: for a negative or malformed padding, or a non-int one where
      `int_only_for` is given.
  """
  padding = dilation * (kernel_size // 2) if padding is None else padding
  if int_only_for is not None and not _validation.is_int(padding):
    raise ValueError(
      f"{int_only_for} padding must be an int (of its nominal {kernel_size}x{kernel_size} conv), "
      f"got {padding!r}"
    )
  # >= 0, well formed
  conv_lib.resolve_padding(padding, (kernel_size, kernel_size), (kernel_size, kernel_size))
  return padding


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """A plain kxk conv's geometry and numerics: what a kind is built from in place of it.

  Attributes:
    in_features, out_features, kernel_size: as for a plain conv (square kernels).
    stride, dilation, groups: ints.
    padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)).
    use_bias: whether the conv adds a bias.
    precision, dtype, param_dtype: how it computes and stores (`ConvLayer.set_numerics`).
  """

  in_features: int
  out_features: int
  kernel_size: int
  stride: int = 1
  padding: Padding = 0
  dilation: int = 1
  groups: int = 1
  use_bias: bool = False
  precision: Any = None
  dtype: Any = None
  param_dtype: Any = None

  @property
  def numerics(self) -> dict[str, Any]:
    return {"precision": self.precision, "dtype": self.dtype, "param_dtype": self.param_dtype}

  def int_padding(self, layer: str) -> int:
    """The padding as one int per side, for a kind whose padding sets other convs' (ACB's
    branches, the ACU's radius): 'VALID' is 0, 'SAME' at stride 1 with an odd kernel its
    dilation * (k // 2).

    Raises:
      ValueError: for a padding that is no int on every side (pairs, or a 'SAME' that depends
        on the input size).
    """
    p = self.padding
    if isinstance(p, str) and p.upper() == "VALID":
      return 0
    if isinstance(p, str) and p.upper() == "SAME":
      if self.stride == 1 and self.kernel_size % 2:
        return self.dilation * (self.kernel_size // 2)
      raise ValueError(
        f"{layer} takes one int padding per side; 'SAME' here (stride {self.stride}, kernel "
        f"{self.kernel_size}) depends on the input size: give the conv an int padding"
      )
    if not _validation.is_int(p):
      raise ValueError(f"{layer} takes one int padding per side, got {p!r}")
    return int(cast(int, p))


@runtime_checkable
class Fusable(Protocol):
  """A module that `deploy` folds into one plain conv: a shaped conv, or a conv + BN unit."""

  def deploy(self) -> PlainConv: ...

  def trained_output(self, x: jax.Array) -> jax.Array: ...


def is_fused(module: Any) -> bool:
  """Whether `deploy` replaces the module (everything `Fusable` but the plain conv itself)."""
  return isinstance(module, Fusable) and type(module) is not PlainConv


class ConvLayer(nnx.Module):
  """A layer that builds an effective kernel and makes ONE conv call.

  Subclasses define `effective_kernel()` -> (kernel HWIO, bias or None), and
  may refine `conv_padding`, `multiplications` and `weight_count`; a conv
  kind also answers the kind protocol (the module docstring) where the
  defaults below do not fit it.

  Every layer takes `precision`, `dtype` and `param_dtype` (see
  `set_numerics`): the kernel is built exactly from the parameters, then the
  conv runs in `dtype` at `precision`; and, where its math allows,
  `groups` and `dilation` (the kernel's taps `dilation` pixels apart).
  """

  in_features: int
  out_features: int
  kernel_size: int
  stride: int
  padding: conv_lib.Padding
  groups: int = 1
  dilation: int = 1
  precision: lax.PrecisionLike = None
  dtype: np.dtype | None = None
  param_dtype: np.dtype = np.dtype(np.float32)

  # ---- the kind protocol: class attributes
  # the padding is one int per side, since it sets other convs' paddings (ConvGeometry.int_padding)
  int_padding: ClassVar[bool] = False
  # the layer ends in its own normalization (ACB's BNs): conv_bn takes it alone, and it needs no
  # bias where a network without BN would give a conv one
  normalizes: ClassVar[bool] = False
  # init_from_kernel holds a given kernel "exact"ly (the same eval function), "fit"s it (an
  # approximation), or None: it cannot (convert then needs init="fresh")
  preserves: ClassVar[Literal["exact", "fit"] | None] = None

  @classmethod
  def takes_kernel_size(cls, kernel_size: int) -> bool:
    """Whether the kind builds a kernel_size x kernel_size layer (RotateConv: 3 only)."""
    del kernel_size
    return True

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """Fills the layer so that its effective kernel is (or, for `preserves == "fit"`,
    approximates) `kernel` (HWIO, this layer's shape) with `bias`: convert's init="preserve".

    Raises:
      ValueError: saying why, for a kind that cannot hold a given kernel.
    """
    del kernel, bias
    raise ValueError(
      f"{type(self).__name__} builds its kernel from parameters of its own; use init='fresh'"
    )

  def trained_output(self, x: jax.Array) -> jax.Array:
    """The layer's output computed as it trained, not through the kernel deploy folds (the
    fusion certificate's reference): the layer's own call unless a kind trains otherwise."""
    return self(x)

  def prepare_deploy(self) -> None:
    """Fixes on the host, from concrete parameter values, what `deploy` needs as static values
    (the ACU's radius): `kshapes_jax.deploy` calls it on its copy before the jitted fusion.
    Nothing by default."""

  def set_numerics(
    self,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
  ) -> None:
    """Sets, at construction, how the conv computes.

    Args:
      precision: None / "default" (the backend's default: TF32 on a GPU, bf16
        passes on a TPU), "high", "highest" (exact float32), or a
        `lax.Precision` / `lax.DotAlgorithmPreset`.
      dtype: the compute dtype of the conv (e.g. "bfloat16" for mixed
        precision); None promotes input and kernel.
      param_dtype: the dtype the weights (and BN parameters) are stored in,
        float32 by default; the shape parameters (RotateConv angles, ACU
        positions) stay float32, where bf16 would round away their small steps.
    """
    self.precision = _validation.precision(precision)
    self.dtype = _validation.compute_dtype(dtype)
    self.param_dtype = _validation.param_dtype(param_dtype)

  def init_weight(self, rngs: nnx.Rngs, shape: Sequence[int], fan_in: int) -> nnx.Param:
    """A He-normal weight, drawn in float32 and stored in the layer's param_dtype."""
    return nnx.Param(he_normal(rngs.params(), shape, fan_in).astype(self.param_dtype))

  def init_bias(self, size: int) -> nnx.Param:
    return nnx.Param(jnp.zeros((size,), self.param_dtype))

  @property
  def numerics(self) -> dict:
    """{"precision": ..., "dtype": ...}, to build another layer that computes alike."""
    return {"precision": self.precision, "dtype": self.dtype}

  @property
  def conv_padding(self):
    return self.padding

  def effective_kernel(self) -> tuple[jax.Array, jax.Array | None]:
    raise NotImplementedError

  def conv(
    self, x: jax.Array, kernel: jax.Array, *, padding: Padding, bias: jax.Array | None = None
  ) -> jax.Array:
    """`conv_lib.conv` with this layer's stride, groups, dtype and precision.

    A padding derived from the layer's (checked, >= 0) one may be negative: an ACB
    branch, a versatile secondary filter or an ACU of a smaller radius crops its input.
    """
    return conv_lib.conv(
      x,
      kernel,
      stride=self.stride,
      padding=padding,
      bias=bias,
      groups=self.groups,
      dilation=self.dilation,
      dtype=self.dtype,
      precision=self.precision,
      allow_crop=True,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = self.effective_kernel()
    y = self.conv(x, kernel, padding=self.conv_padding, bias=bias)
    record(self, x, y)
    return y

  def deploy(self) -> PlainConv:
    """The same layer as a plain conv (kernel + bias), equal outputs."""
    kernel, bias = self.effective_kernel()
    return PlainConv.from_kernel(
      kernel,
      bias,
      stride=self.stride,
      padding=self.conv_padding,
      groups=self.groups,
      dilation=self.dilation,
      **self.numerics,
    )

  def weight_count(self) -> int:
    """Stored conv weights (the papers' "weights": no biases, no BN)."""
    raise NotImplementedError

  def multiplications(self, out_shape: Sequence[int]) -> int:
    """Multiplications per example for one forward (dense count by default)."""
    kernel, _ = jax.eval_shape(self.effective_kernel)
    kh, kw, cin, cout = kernel.shape  # cin is per group
    return int(out_shape[1] * out_shape[2] * kh * kw * cin * cout)


def set_value(variable: nnx.Variable, value: Any) -> None:
  """Sets an nnx.Variable to `value`, in the variable's dtype."""
  variable.set_value(jnp.asarray(value, variable[...].dtype))


def set_bias(layer: ConvLayer, bias: jax.Array | None) -> None:
  """Sets a layer's `bias` parameter (init_from_kernel); a bias for a layer without one (or the
  other way round) is a ValueError."""
  own = getattr(layer, "bias", None)
  if (bias is None) != (own is None):
    raise ValueError(
      f"{type(layer).__name__} was built {'without' if own is None else 'with'} a bias, "
      f"and the kernel comes {'with' if bias is not None else 'without'} one"
    )
  if own is not None:
    set_value(own, bias)


class PlainConv(ConvLayer):
  """An ordinary kxk convolution: the baseline kind and the target of deploy."""

  preserves = "exact"

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    use_bias: bool = False,
    groups: int = 1,
    dilation: int = 1,
    rngs: nnx.Rngs | None = None,
    kernel: jax.Array | None = None,
    bias: jax.Array | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
  ):
    check_layer(
      "PlainConv",
      in_features,
      out_features,
      kernel_size,
      stride,
      groups,
      rngs,
      needs_rngs=kernel is None,
      dilation=dilation,
    )
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups, self.dilation = (
      kernel_size,
      stride,
      groups,
      dilation,
    )
    self.padding = symmetric_padding(padding, kernel_size, dilation=dilation)
    self.set_numerics(precision, dtype, param_dtype)
    if kernel is None:
      if rngs is None:
        raise ValueError("PlainConv needs rngs= to draw its kernel (or kernel= to take one)")
      fan_in = kernel_size * kernel_size * in_features // groups
      shape = (kernel_size, kernel_size, in_features // groups, out_features)
      self.kernel = self.init_weight(rngs, shape, fan_in)
      self.bias = self.init_bias(out_features) if use_bias else None
    else:
      self.kernel = nnx.Param(jnp.asarray(kernel))
      self.bias = None if bias is None else nnx.Param(jnp.asarray(bias))

  @classmethod
  def from_kernel(
    cls,
    kernel,
    bias=None,
    *,
    stride: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ) -> PlainConv:
    """A plain conv holding a given HWIO kernel (and bias)."""
    kh, kw, cin, cout = kernel.shape
    layer = cls(
      cin * groups,
      cout,
      kh,
      stride=stride,
      padding=0,
      groups=groups,
      dilation=dilation,
      kernel=kernel,
      bias=bias,
      precision=precision,
      dtype=dtype,
    )
    layer.padding = padding  # may crop: a deployed ACU of a radius below its nominal k // 2
    return layer

  def effective_kernel(self):
    return self.kernel[...], None if self.bias is None else self.bias[...]

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """A copy of the kernel and bias."""
    set_value(self.kernel, kernel)
    set_bias(self, bias)

  def deploy(self) -> PlainConv:
    if type(self) is PlainConv:
      return self  # already plain: deploy copies the model first, so no sharing
    return super().deploy()  # a subclass with a kernel of its own

  def weight_count(self) -> int:
    return int(self.kernel[...].size)


class Dense(nnx.Linear):
  """nnx.Linear that reports itself to the cost accounting.

  Takes `precision` and `dtype` as the conv layers do (see
  `ConvLayer.set_numerics`); parameters stay float32.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    **kwargs,
  ):
    super().__init__(
      in_features,
      out_features,
      rngs=rngs,
      precision=cast(Any, _validation.precision(precision)),  # flax's PrecisionLike is narrower
      dtype=_validation.compute_dtype(dtype),
      **kwargs,
    )

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    if inputs.shape[-1] != self.in_features:
      raise ValueError(
        f"Dense({self.in_features} -> {self.out_features}) expects inputs of {self.in_features} "
        f"features on the last axis, got shape {tuple(inputs.shape)}: is the model fed images "
        "of another size than it was built for (its image_size)?"
      )
    y = super().__call__(inputs, out_sharding=out_sharding)
    record(self, inputs, y)
    return y

  def weight_count(self) -> int:
    return int(self.kernel[...].size)

  def multiplications(self, out_shape) -> int:
    return int(self.kernel[...].size)
