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

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax import export as jax_export

from kshapes_jax.certificate import FusionCertificate, compute_dtypes
from kshapes_jax.nn.base import ConvLayer, PlainConv

__all__ = [
  "check_shippable",
  "compute_dtypes",
  "forward",
  "in_float32",
  "to_jax_export",
  "save_jax",
  "load_jax",
  "to_onnx",
  "save_onnx",
  "read_certificate",
  "write_certificate",
  "normalized",
  "ONNX_OPSET",
  "CERTIFICATE_KEY",
]

# where a file keeps its fusion certificate: an ONNX metadata property; next to a jax.export
# artifact (which has no metadata of its own), PATH + CERTIFICATE_SUFFIX
CERTIFICATE_KEY = "kshapes_jax.fusion_certificate"
CERTIFICATE_SUFFIX = ".certificate.json"

ONNX_OPSET = 17


def forward(
  model: nnx.Module, normalize: tuple[Sequence[float], Sequence[float]] | None = None
) -> Callable[[jax.Array], jax.Array]:
  """The model's eval forward pass as a pure function of a batch (its weights closed over).

  Args:
    model: a module in eval mode, usually `kshapes_jax.deploy(model)`.
    normalize: (mean, std) per channel: the function then takes uint8 images (0-255) and
      normalizes them as (x / 255 - mean) / std first.

  Raises:
    TypeError, ValueError: see `check_shippable`.
  """
  check_shippable(model, normalize=normalize)
  graphdef, state = nnx.split(model)

  def fn(x: jax.Array):
    if normalize is not None:
      x = normalized(x, normalize)
    return nnx.merge(graphdef, state)(x)

  return fn


def check_shippable(
  model: nnx.Module,
  input_shape: Sequence[int] | None = None,
  *,
  normalize: tuple[Sequence[float], Sequence[float]] | None = None,
  deployed: bool = False,
) -> None:
  """Fails, saying what to do, for a model that an export would fail on or get wrong.

  Raises:
    TypeError: for anything that is not an nnx.Module.
    ValueError: for a model in train mode (BN on batch statistics, dropout on), a conv layer
      of a kind other than plain (deploy makes it one) or a bfloat16 layer where `deployed` is
      asked for (ONNX: plain float32 convs), or `normalize` values that are not one per channel
      of `input_shape`.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"export takes a flax nnx.Module, got {type(model).__name__}")
  for path, m in nnx.iter_modules(model):
    where = "/".join(map(str, path)) or type(model).__name__
    if isinstance(m, nnx.BatchNorm) and not m.use_running_average:
      raise ValueError(
        f"the model is in train mode ({where}: BatchNorm on batch statistics): export "
        "kshapes_jax.deploy(model), or call model.eval() first"
      )
    if isinstance(m, nnx.Dropout) and not m.deterministic:
      raise ValueError(f"the model is in train mode ({where}: dropout on): call model.eval() first")
    if deployed and isinstance(m, ConvLayer) and type(m) is not PlainConv:
      raise ValueError(
        f"ONNX export takes the deployed network, and {where} is a {type(m).__name__}: export "
        "kshapes_jax.deploy(model)"
      )
    dtype = getattr(m, "dtype", None)
    if deployed and dtype is not None and jnp.dtype(dtype) == jnp.bfloat16:
      raise ValueError(
        f"{where} computes in bfloat16, which ONNX runtimes lack on the CPU: export "
        "kshapes_jax.export.in_float32(model)"
      )
  if normalize is not None:
    if len(normalize) != 2:
      raise ValueError(f"normalize must be (mean, std), got {len(normalize)} values")
    channels = None if input_shape is None else input_shape[-1]
    for name, values in zip(("mean", "std"), normalize):
      n = len(values)
      if channels is not None and n != channels:
        raise ValueError(
          f"normalize's {name} has {n} values; the images have {channels} channels (one each)"
        )
    if any(float(v) <= 0 for v in normalize[1]):
      raise ValueError(f"normalize's std must be > 0, got {tuple(normalize[1])}")


def normalized(images: jax.typing.ArrayLike, normalize) -> jax.Array:
  """uint8 images (0-255) as the model takes them, (x / 255 - mean) / std: what `forward` does."""
  mean, std = (jnp.asarray(v, jnp.float32) for v in normalize)
  return (jnp.asarray(images).astype(jnp.float32) / 255.0 - mean) / std


def _checked(certificate: FusionCertificate | None, tolerance: float | None) -> None:
  """Refuses a certificate above the tolerance (by default its own: that of the compute dtype of
  the networks it measured, not of this copy of them, which may be a float32 one) or not finite."""
  if certificate is not None:
    certificate.check(tolerance)


def write_certificate(path: str | Path, certificate: FusionCertificate) -> Path:
  """Writes the certificate next to a file without metadata of its own (a jax.export artifact):
  PATH.certificate.json; returns that path."""
  path = Path(path)
  sidecar = path.with_name(path.name + CERTIFICATE_SUFFIX)
  sidecar.write_text(certificate.to_json())
  return sidecar


def read_certificate(path: str | Path) -> FusionCertificate | None:
  """The fusion certificate written with a file by `save_onnx` or `save_jax`, None if none was.

  Raises:
    ValueError: naming the file, when it or its certificate is damaged or of another kind.
  """
  path = Path(path)
  sidecar = path.with_name(path.name + CERTIFICATE_SUFFIX)
  if sidecar.exists():
    with _reading(sidecar, "a fusion certificate"):
      return FusionCertificate.from_json(sidecar.read_text())
  if path.suffix == ".onnx":
    import onnx

    with _reading(path, "an ONNX model"):
      proto = onnx.load(str(path))
      if not proto.graph.node:  # protobuf reads an empty or cut file as an empty message
        raise ValueError("it holds no graph")
      props = {p.key: p.value for p in proto.metadata_props}
    if CERTIFICATE_KEY in props:
      with _reading(path, "an ONNX model with a fusion certificate"):
        return FusionCertificate.from_json(props[CERTIFICATE_KEY])
  return None


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
  """A file of ours that cannot be read as what it should be: one ValueError naming it (a
  missing or unreadable one stays the OSError that names it)."""
  try:
    yield
  except OSError:
    raise
  except Exception as e:  # struct, protobuf, JSON, UTF-8 and field errors alike
    lines = str(e).strip().splitlines()
    raise ValueError(
      f"{path} is not {what} (damaged, or another kind of file): {type(e).__name__}"
      + (f": {lines[0][:200]}" if lines else "")
    ) from e


def in_float32(model: nnx.Module) -> nnx.Module:
  """A copy of the model that computes and stores its parameters in float32 (a bfloat16 run
  made shippable where a runtime has no bf16 kernels, as ONNX runtimes on the CPU)."""
  copy = nnx.clone(model)
  for _, m in nnx.iter_modules(copy):
    for attribute in ("dtype", "param_dtype"):  # a layer's compute and storage dtypes
      if getattr(m, attribute, None) is not None:
        setattr(m, attribute, jnp.float32)
  graphdef, state = nnx.split(copy)
  state = jax.tree.map(
    lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
  )
  return nnx.merge(graphdef, state)


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
  check_shippable(model, input_shape, normalize=normalize)
  return jax_export.export(jax.jit(forward(model, normalize)), platforms=tuple(platforms))(spec)


def save_jax(
  model: nnx.Module,
  input_shape: Sequence[int],
  path: str | Path,
  *,
  certificate: FusionCertificate | None = None,
  tolerance: float | None = None,
  **kwargs,
) -> Path:
  """Writes `to_jax_export(model, input_shape, **kwargs).serialize()` to path; returns the path.

  With a `certificate` (`kshapes_jax.certify`), refuses (ValueError naming the worst layer) one
  above `tolerance` (default: the certificate's own, `FusionCertificate.tolerance`) or not finite,
  and writes it next to the file, as PATH.certificate.json (`read_certificate`).
  """
  _checked(certificate, tolerance)
  path = Path(path)
  path.write_bytes(to_jax_export(model, input_shape, **kwargs).serialize())
  if certificate is not None:
    write_certificate(path, certificate)
  return path


def load_jax(path: str | Path) -> Callable[[jax.typing.ArrayLike], jax.Array]:
  """The function a `save_jax` file holds: batch -> logits (no kshapes_jax or Flax needed to run
  it).

  Raises:
    ValueError: naming the file, when it is damaged or of another kind.
  """
  path = Path(path)
  with _reading(path, "a jax.export file of save_jax"):
    return jax_export.deserialize(bytearray(path.read_bytes())).call


def to_onnx(
  model: nnx.Module,
  input_shape: Sequence[int],
  *,
  normalize: tuple[Sequence[float], Sequence[float]] | None = None,
  opset: int = ONNX_OPSET,
  name: str = "kshapes_jax",
  certificate: FusionCertificate | None = None,
  tolerance: float | None = None,
):
  """The model's forward pass as an ONNX ModelProto with a symbolic batch dimension.

  Args:
    model: a module in eval mode (usually deployed).
    input_shape: (height, width, channels) of one image; the input is NHWC as in JAX.
    normalize: see `forward`.
    opset: the ONNX opset.
    name: the graph's name.
    certificate: a `kshapes_jax.certify` result, written into the file's metadata
      (`CERTIFICATE_KEY`); one above `tolerance` is refused.
    tolerance: the largest relative error accepted; by default the certificate's own
      (`FusionCertificate.tolerance`: its networks' compute dtype, so a bfloat16 network's
      float32 copy ships under bfloat16's tolerance).

  Raises:
    ValueError: for a primitive the translator does not cover, a model in train mode or not
      deployed (`check_shippable`), or a certificate above the tolerance.
    ImportError: without the `onnx` package (`pip install kshapes-jax[onnx]`).
  """
  try:
    from kshapes_jax import _onnx  # here: `onnx` is an optional dependency
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
      f"writing ONNX needs the onnx package, missing here ({e}): "
      "pip install 'kshapes-jax[onnx]' (from a checkout: pip install -e \".[onnx]\")",
      name=e.name,
    ) from e

  _checked(certificate, tolerance)
  spec = _batch_spec(input_shape, normalize)
  check_shippable(model, input_shape, normalize=normalize, deployed=True)
  closed = jax.make_jaxpr(forward(model, normalize))(spec)
  proto = _onnx.from_jaxpr(closed, spec, opset=opset, name=name)
  if certificate is not None:
    proto.metadata_props.add(key=CERTIFICATE_KEY, value=certificate.to_json())
  return proto


def save_onnx(model: nnx.Module, input_shape: Sequence[int], path: str | Path, **kwargs) -> Path:
  """Writes `to_onnx(model, input_shape, **kwargs)` to path; returns the path."""
  path = Path(path)
  path.write_bytes(to_onnx(model, input_shape, **kwargs).SerializeToString())
  return path
