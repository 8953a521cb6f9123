"""The fusion certificate: how far a deployed network is from the trained one, layer by layer.

Train/deploy mismatches are the most reported bug of reparameterized networks;
`certify` measures them on the model a user trained, so an export can record
and refuse them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kshapes_jax._modules import map_modules, path_str
from kshapes_jax.nn.base import Fusable, is_fused

# the relative error an export accepts by default, by the network's compute dtype: float32 convs
# of the fused kernel differ from the branches' by float rounding (1e-6 relative), TF32 by 1e-3
TOLERANCE = {"float32": 5e-3, "float64": 1e-8, "bfloat16": 5e-2, "float16": 2e-2}


@dataclasses.dataclass(frozen=True)
class LayerError:
  """One fused layer against the trained one it replaces, on the probe's activations."""

  path: str
  layer: str  # the trained layer's class
  max_abs: float
  relative: float  # max |deployed - trained| / max |trained|


@dataclasses.dataclass(frozen=True)
class Int8Report:
  """An INT8 file against the float32 one it was quantized from (`kshapes_jax.int8.measure`).

  Attributes:
    layers: each quantized layer (its path, its ONNX op): max |int8 - fp32| of its output, and
      that over max |fp32|, the error accumulated up to that layer.
    logits_max_abs, logits_relative: the same for the logits.
    agreement: the share of images whose arg-max the two files agree on.
    top1_fp32, top1_int8: their accuracy on the images (None without labels).
    images: how many images were measured; calibration: how many calibrated the ranges.
    scheme: how the file was quantized.
    top1_jax, agreement_jax: the other route, the same network quantized in JAX by Qwix
      (`kshapes_jax.int8.quantize_jax`, the same calibration images): its top-1 and its
      agreement with the float32 network's predictions; None where it was not measured.
    session_config: the onnxruntime session config entries ("key=value") the INT8 file's
      numbers above were measured under (`kshapes_jax.int8.SESSION_CONFIG`); empty: a default
      session, as in a report written before they were recorded.
    top1_int8_default, agreement_default: the INT8 file in a default onnxruntime session on the
      CPU that measured it, where that differs (x86 without VNNI: its u8s8 products saturate);
      None where not measured.
    scheme_jax: how the JAX route quantized (`kshapes_jax.int8.JAX_SCHEME`); empty where it
      was not measured, or in a report written before it was recorded (then Qwix's own
      activation ranges: each image's absmax, averaged over the calibration images).
  """

  layers: tuple[LayerError, ...]
  logits_max_abs: float
  logits_relative: float
  agreement: float
  top1_fp32: float | None
  top1_int8: float | None
  images: int
  calibration: int
  scheme: str
  top1_jax: float | None = None
  agreement_jax: float | None = None
  session_config: tuple[str, ...] = ()
  top1_int8_default: float | None = None
  agreement_default: float | None = None
  scheme_jax: str = ""

  @property
  def drop(self) -> float | None:
    """Top-1 points lost (fp32 - int8, in percentage points); None without labels."""
    if self.top1_fp32 is None or self.top1_int8 is None:
      return None
    return 100 * (self.top1_fp32 - self.top1_int8)

  @property
  def worst(self) -> LayerError | None:
    return max(self.layers, key=lambda e: e.relative, default=None)

  def check(self, max_drop: float) -> None:
    """Raises ValueError, naming the worst layer, if the INT8 file loses more than `max_drop`
    points of top-1 (without labels: if it disagrees with the float file on more than
    `max_drop` percent of the images), or computes a NaN or an infinity."""
    if not (math.isfinite(self.logits_relative) and math.isfinite(self.agreement)):
      raise ValueError("the INT8 file's logits are not finite (NaN or infinite) on the images")
    drop = self.drop
    lost, what = (
      (100 * (1 - self.agreement), "of its predictions differ from the float file's")
      if drop is None
      else (drop, "points of top-1 lost")
    )
    if lost > max_drop:
      worst = self.worst
      at = f"; its worst layer is {worst.path} ({worst.relative:.3g} relative)" if worst else ""
      raise ValueError(
        f"INT8 loses too much: {lost:.2f} {what}, above the tolerance {max_drop:g} "
        f"({self.images} images, calibrated on {self.calibration}){at}"
      )

  @classmethod
  def from_dict(cls, d: dict) -> Int8Report:
    return cls(
      **{
        **d,
        "layers": tuple(LayerError(**e) for e in d["layers"]),
        "session_config": tuple(d.get("session_config", ())),
      }
    )


@dataclasses.dataclass(frozen=True)
class FusionCertificate:
  """The deployed network against the trained one (eval mode) on one probe batch.

  Attributes:
    layers: each fused layer, in the model's order.
    logits_max_abs: max |deployed - trained| over the probe's logits.
    logits_relative: that over max |trained logits|.
    agreement: the share of probe examples whose arg-max the two agree on.
    probe: what the probe was ("given, 64 examples" or "random normal, 8 examples").
    compute_dtypes: the trained network's compute dtypes, which set the default tolerance
      (empty: float32's, as for a certificate written before they were recorded).
    int8: an INT8 file's report against the float32 file of this network (the certificate an
      INT8 file carries), None otherwise.
  """

  layers: tuple[LayerError, ...]
  logits_max_abs: float
  logits_relative: float
  agreement: float
  probe: str
  compute_dtypes: tuple[str, ...] = ()
  int8: Int8Report | None = None

  @property
  def tolerance(self) -> float:
    """The default tolerance: that of the least precise dtype the networks computed in."""
    return tolerance_of(self.compute_dtypes)

  @property
  def worst(self) -> LayerError | None:
    return max(self.layers, key=lambda e: e.relative, default=None)

  def check(self, tolerance: float | None = None) -> None:
    """Raises ValueError, naming the worst layer, if any relative error exceeds `tolerance`
    (default: `self.tolerance`) or is not finite (a NaN or infinite output of either network is
    never within any tolerance).

    This is where a certificate is judged: the exports call it before they write anything.
    """
    tolerance = self.tolerance if tolerance is None else tolerance
    for e in self.layers:
      if not math.isfinite(e.relative):
        raise ValueError(
          f"the deployed or the trained network's output at {e.path} ({e.layer}) is not "
          "finite (NaN or infinite) on the probe: nothing can be certified"
        )
    if not (math.isfinite(self.logits_relative) and math.isfinite(self.agreement)):
      raise ValueError(
        "the deployed or the trained network's logits are not finite (NaN or infinite) on the "
        "probe: nothing can be certified"
      )
    worst = self.worst
    if worst is not None and worst.relative > tolerance:
      raise ValueError(
        f"the deployed network differs from the trained one by {worst.relative:.3g} (relative) "
        f"at {worst.path} ({worst.layer}), above the tolerance {tolerance:g}; logits differ by "
        f"{self.logits_relative:.3g}, predictions agree on {100 * self.agreement:.2f}% of the "
        "probe"
      )
    if self.logits_relative > tolerance:
      raise ValueError(
        f"the deployed network's logits differ from the trained one's by "
        f"{self.logits_relative:.3g} (relative), above the tolerance {tolerance:g}"
      )

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> FusionCertificate:
    d = json.loads(text)
    return cls(
      **{
        **d,
        "layers": tuple(LayerError(**e) for e in d["layers"]),
        "compute_dtypes": tuple(d.get("compute_dtypes", ())),
        "int8": Int8Report.from_dict(d["int8"]) if d.get("int8") else None,
      }
    )


def _at(model: Any, path: tuple) -> Any:
  node = model
  for key in path:
    node = (
      node[key]
      if isinstance(key, int) or isinstance(node, dict | nnx.Dict)
      else (getattr(node, key))
    )
  return node


class _Probe(nnx.Module):
  """A fused layer that hands its input to `sink` and computes as it trained (eager: the
  certificate's forward pass)."""

  def __init__(self, layer: Any, path: tuple, sink):
    self.layer, self.path, self.sink = layer, path, sink

  def __call__(self, x: jax.Array) -> jax.Array:
    self.sink(self.path, self.layer, x)
    return self.layer.trained_output(x)


def _max_abs(a: jax.Array) -> float:
  """max |a|, NaN if any entry is NaN or infinite (so that no comparison passes it)."""
  a = jnp.asarray(a, jnp.float32)
  return float(jnp.where(jnp.all(jnp.isfinite(a)), jnp.max(jnp.abs(a)), jnp.nan))


def certify(
  model: nnx.Module,
  deployed: nnx.Module,
  probe: jax.Array | None = None,
  *,
  input_shape: Sequence[int] | None = None,
  batch: int = 8,
  seed: int = 0,
) -> FusionCertificate:
  """Measures `deployed` (from `kshapes_jax.deploy`, either target) against `model` in eval mode.

  Each fused layer (a shaped conv, or a conv with the BN folded into it:
  `kshapes_jax.nn.is_fused`) is run on the activation the trained network
  feeds it on the probe, as it trained (its `trained_output`: an ACB's three
  branches and BNs, an ACU's bilinear gather, a conv then its BN) and
  deployed; the whole networks are compared on their logits.

  Args:
    model: the trained network (not changed; compared in eval mode).
    deployed: its deployed copy.
    probe: a batch of model inputs (normalized as the model takes them);
      None: `batch` standard normal examples of `input_shape`.
    input_shape: one example's shape, for a random probe.
    batch: the random probe's size.
    seed: the random probe's seed.

  Raises:
    ValueError: without a probe or an input shape, or if the deployed
      network lacks a layer at a fused layer's path.
  """
  if probe is None:
    if input_shape is None:
      raise ValueError("certify needs a probe batch or the input_shape of a random one")
    probe = jax.random.normal(jax.random.key(seed), (batch, *input_shape))
    what = f"random normal, {batch} examples"
  else:
    what = f"given, {len(probe)} examples"
  seen: dict[tuple, tuple[Fusable, jax.Array]] = {}
  sink = lambda path, layer, x: seen.setdefault(path, (layer, x))  # first call: its input
  trained = nnx.clone(model)
  trained.eval()
  probed = map_modules(
    nnx.clone(trained), lambda path, m: _Probe(m, path, sink) if is_fused(m) else None
  )
  want = probed(probe)
  layers = []
  for path, (layer, x) in seen.items():
    try:
      counterpart = _at(deployed, path)
    except (AttributeError, KeyError, IndexError) as e:
      raise ValueError(f"the deployed network has no layer at {path_str(path)}") from e
    a, b = layer.trained_output(x), counterpart(x)
    diff = _max_abs(jnp.asarray(b, jnp.float32) - jnp.asarray(a, jnp.float32))
    layers.append(LayerError(path_str(path), type(layer).__name__, diff, _relative(diff, a)))
  got = deployed(probe)
  diff = _max_abs(jnp.asarray(got, jnp.float32) - jnp.asarray(want, jnp.float32))
  agreement = float(np.mean(np.asarray(jnp.argmax(got, -1) == jnp.argmax(want, -1))))
  finite = bool(jnp.all(jnp.isfinite(got)) & jnp.all(jnp.isfinite(want)))
  return FusionCertificate(
    tuple(layers),
    diff,
    _relative(diff, want),
    agreement if finite else math.nan,
    what,
    tuple(sorted(compute_dtypes(model) | compute_dtypes(deployed))),
  )


def _relative(diff: float, reference: jax.Array) -> float:
  """diff / max |reference|; NaN where either is not finite."""
  scale = _max_abs(reference)
  return diff / max(scale, 1e-30) if math.isfinite(scale) else math.nan


def compute_dtypes(model: nnx.Module) -> set[str]:
  """The compute dtypes the model's layers set (convs, dense layers, BN); empty: all promote."""
  dtypes = (getattr(m, "dtype", None) for _, m in nnx.iter_modules(model))
  return {jnp.dtype(d).name for d in dtypes if d is not None}


def tolerance_of(dtypes: Sequence[str]) -> float:
  """The tolerance of networks computing in `dtypes`: the least precise one's (none: float32)."""
  return max(TOLERANCE.get(d, 5e-2) for d in (dtypes or ("float32",)))
