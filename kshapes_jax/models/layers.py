"""Small functional pieces the model files share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding, resolve_padding


def layer_options(
  conv_options: dict | None, precision: lax.PrecisionLike, dtype: DTypeLike | None
) -> tuple[dict, dict]:
  """(options of the shaped convs, numerics of every other layer) of a model.

  The shaped convs get the user's `conv_options` and the numerics; plain
  stems, shortcuts, 1x1 convs and classifiers get `precision` and `dtype`
  only; BNs take `numerics["dtype"]`.
  """
  numerics = {"precision": precision, "dtype": dtype}
  return {**(conv_options or {}), **numerics}, numerics


def max_pool(
  x: jax.Array, window: int, stride: int, padding: Padding | None = ((0, 0), (0, 0))
) -> jax.Array:
  """Max pooling of an NHWC map, padded with -inf; the gradient goes to each window's first max.

  On CPU its derivative is taken tap by tap (`_max_pool_tapwise_jvp`): XLA's
  CPU gradient of `reduce_window` (a select-and-scatter) is many times slower
  than the pool itself (bench.small_maps). The value is `nnx.max_pool`'s on
  every backend.
  """
  args = (window, window), (stride, stride), padding
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return nnx.max_pool(x, *args)
  pads = resolve_padding(
    "VALID" if padding is None else padding, x.shape[1:3], (window, window), stride
  )

  @jax.custom_jvp
  def tapwise(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, *args)

  @tapwise.defjvp
  def _(primals, tangents):
    return _max_pool_tapwise_jvp(primals[0], tangents[0], tapwise(primals[0]), window, stride, pads)

  return lax.platform_dependent(x, cpu=tapwise, default=lambda x: nnx.max_pool(x, *args))


def _window_taps(x: jax.Array, fill: jax.Array, window: int, stride: int, pads) -> list[jax.Array]:
  """The strided view of the padded map under each window position, in row-major order."""
  n, h, w, c = x.shape
  (top, bottom), (left, right) = pads
  out_h = (h + top + bottom - window) // stride + 1
  out_w = (w + left + right - window) // stride + 1
  xp = lax.pad(x, fill, ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  return [
    lax.slice(
      xp,
      (0, a, b, 0),
      (n, a + (out_h - 1) * stride + 1, b + (out_w - 1) * stride + 1, c),
      (1, stride, stride, 1),
    )
    for a in range(window)
    for b in range(window)
  ]


def _max_pool_tapwise_jvp(
  x: jax.Array, tangent: jax.Array, y: jax.Array, window: int, stride: int, pads
) -> tuple[jax.Array, jax.Array]:
  """(y, its tangent): each output's tangent is that of the first tap, in row-major window order,
  that holds the max, as `reduce_window`'s derivative takes it.

  A chain of selects, linear in the tangent, so its transpose (the gradient)
  is pads of the cotangent instead of a select-and-scatter.
  """
  taps = _window_taps(x, jnp.array(-jnp.inf, x.dtype), window, stride, pads)
  tangent_taps = _window_taps(tangent, jnp.zeros((), tangent.dtype), window, stride, pads)
  out = jnp.zeros_like(y)
  for tap, tangent_tap in zip(reversed(taps), reversed(tangent_taps)):
    out = jnp.where(tap == y, tangent_tap, out)
  return y, out


def avg_pool(
  x: jax.Array, window: int, stride: int, padding: Padding | None = ((0, 0), (0, 0))
) -> jax.Array:
  # count_include_pad as in Caffe and PyTorch's defaults
  return nnx.avg_pool(x, (window, window), (stride, stride), padding, count_include_pad=True)


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


# The versatile paper's ImageNet networks (section 4.3): "v1" replaces every kxk conv by spatial
# versatile filters; "v2" adds channel windows (eq. 8, c - c^ = 1, g = 1 unless conv_options say
# otherwise) to every conv, 1x1 included, but the first and the classifier.
VERSATILE_VARIANTS = ("v1", "v2")


def versatile_variant(conv: str, variant: str | None, options: dict) -> tuple[dict, dict, bool]:
  """(options of the first conv, options of the other convs, whether 1x1 convs are versatile).

  Raises:
    ValueError: for a variant with a kind other than versatile, an unknown
      variant, or channel options without variant "v2".
  """
  channel_keys = ("channel_delta", "channel_stride")
  if conv != "versatile":
    if variant is not None:
      raise ValueError(f"variant={variant!r} is for conv='versatile', got conv={conv!r}")
    return options, options, False
  variant = variant or "v1"
  if variant not in VERSATILE_VARIANTS:
    raise ValueError(
      f"versatile variant must be one of {list(VERSATILE_VARIANTS)}, got {variant!r}"
    )
  first = {k: v for k, v in options.items() if k not in channel_keys}
  if variant == "v1":
    if len(first) != len(options):
      raise ValueError(
        "channel_delta / channel_stride make versatile v2 filters: pass variant='v2' "
        "(channel windows on every conv but the first and the classifier)"
      )
    return first, first, False
  channel = {"channel_delta": options.get("channel_delta", 1)}
  channel["channel_stride"] = options.get("channel_stride", 1)
  return first, {**first, **channel}, True
