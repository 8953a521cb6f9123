"""Ship a deployed model out of Python training code: a serialized `jax.export` artifact or an ONNX
file.

  shipped = kshapes_jax.deploy(model)                       # plain convs, BN folded, eval mode
  kshapes_jax.export.save_jax(shipped, (28, 28, 1), "sn.jaxexport")
  kshapes_jax.export.save_onnx(shipped, (28, 28, 1), "sn.onnx")
  predict = kshapes_jax.export.load_jax("sn.jaxexport")     # a function of a batch, any batch size

Both take a batch of any size (the batch dimension is symbolic) and hold the
weights inside the file. With `normalize=(mean, std)` the file takes the
images as stored (uint8 NHWC, 0-255) and normalizes them itself, as the
trainer does, so a user feeds raw pixels.

The ONNX file is written from the model's jaxpr by a small translator of
the primitives a deployed network uses (convolutions, matmuls, pooling,
elementwise ops, reshapes, pads, slices, concatenation) with the `onnx`
package; a primitive outside that set raises ValueError naming it. (The
converter on PyPI, jax2onnx, pins orbax-checkpoint < 0.11.37, which would
downgrade the checkpointing the trainer relies on.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax import export as jax_export

__all__ = ["forward", "to_jax_export", "save_jax", "load_jax", "to_onnx", "save_onnx", "ONNX_OPSET"]

ONNX_OPSET = 17


def forward(
  model: nnx.Module, normalize: tuple[Sequence[float], Sequence[float]] | None = None
) -> Callable[[jax.Array], jax.Array]:
  """The model's eval forward pass as a pure function of a batch (its weights closed over).

  Args:
    model: a module in eval mode, usually `kshapes_jax.deploy(model)`.
    normalize: (mean, std) per channel: the function then takes uint8 images (0-255) and
      normalizes them as (x / 255 - mean) / std first.
  """
  graphdef, state = nnx.split(model)

  def fn(x: jax.Array):
    if normalize is not None:
      mean, std = (jnp.asarray(v, jnp.float32) for v in normalize)
      x = (x.astype(jnp.float32) / 255.0 - mean) / std
    return nnx.merge(graphdef, state)(x)

  return fn


def _batch_spec(input_shape: Sequence[int], normalize) -> jax.ShapeDtypeStruct:
  """A batch of any size of those images: uint8 pixels with `normalize`, else normalized floats."""
  if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
    raise ValueError(
      f"input_shape must be (height, width, channels) of one image, got {tuple(input_shape)}"
    )
  (batch,) = jax_export.symbolic_shape("batch")
  return jax.ShapeDtypeStruct(
    (batch, *input_shape), jnp.uint8 if normalize is not None else jnp.float32
  )


def to_jax_export(
  model: nnx.Module,
  input_shape: Sequence[int],
  *,
  normalize: tuple[Sequence[float], Sequence[float]] | None = None,
  platforms: Sequence[str] = ("cpu", "cuda"),
) -> jax_export.Exported:
  """`jax.export` of the model's forward pass for a batch of any size of (H, W, C) images.

  Args:
    model: a module in eval mode (usually deployed).
    input_shape: (height, width, channels) of one image.
    normalize: see `forward`.
    platforms: the backends the artifact can run on.
  """
  spec = _batch_spec(input_shape, normalize)
  return jax_export.export(jax.jit(forward(model, normalize)), platforms=tuple(platforms))(spec)


def save_jax(model: nnx.Module, input_shape: Sequence[int], path: str | Path, **kwargs) -> Path:
  """Writes `to_jax_export(model, input_shape, **kwargs).serialize()` to path; returns the path."""
  path = Path(path)
  path.write_bytes(to_jax_export(model, input_shape, **kwargs).serialize())
  return path


def load_jax(path: str | Path) -> Callable[[jax.typing.ArrayLike], jax.Array]:
  """The function a `save_jax` file holds: batch -> logits (no kshapes_jax or Flax needed to run
  it)."""
  return jax_export.deserialize(bytearray(Path(path).read_bytes())).call


def to_onnx(
  model: nnx.Module,
  input_shape: Sequence[int],
  *,
  normalize: tuple[Sequence[float], Sequence[float]] | None = None,
  opset: int = ONNX_OPSET,
  name: str = "kshapes_jax",
):
  """The model's forward pass as an ONNX ModelProto with a symbolic batch dimension.

  Args:
    model: a module in eval mode (usually deployed).
    input_shape: (height, width, channels) of one image; the input is NHWC as in JAX.
    normalize: see `forward`.
    opset: the ONNX opset.
    name: the graph's name.

  Raises:
    ValueError: for a primitive the translator does not cover.
    ImportError: without the `onnx` package (`pip install kshapes-jax[onnx]`).
  """
  from kshapes_jax import _onnx  # here: `onnx` is an optional dependency

  spec = _batch_spec(input_shape, normalize)
  closed = jax.make_jaxpr(forward(model, normalize))(spec)
  return _onnx.from_jaxpr(closed, spec, opset=opset, name=name)


def save_onnx(model: nnx.Module, input_shape: Sequence[int], path: str | Path, **kwargs) -> Path:
  """Writes `to_onnx(model, input_shape, **kwargs)` to path; returns the path."""
  path = Path(path)
  path.write_bytes(to_onnx(model, input_shape, **kwargs).SerializeToString())
  return path
