"""Quantization-aware fine-tuning of a deployed network: its plain convs and dense layers compute
with fake INT8, as onnxruntime's static QDQ quantization (`kshapes_jax.int8.quantize_onnx`) will
compute them, so that training moves the weights to where the INT8 file loses least.

The scheme is `int8.SCHEME`'s: weights int8, symmetric, per output channel, their scale
max |w| / 127 (the grid onnxruntime computes from the same weights); inputs int8, asymmetric,
their range the min and max over calibration images with 0 inside it (onnxruntime's MinMax
calibration), fixed once calibrated. The rounding's gradient is the straight-through estimate:
1 inside the range, 0 where the input is clipped (Jacob et al., CVPR 2018, section 3).

In training mode a layer quantizes its weights and its input. In eval mode (`model.eval()`)
it quantizes only its weights: its output is then exactly its deployed conv's, whose kernel is
the quantized one, so the fusion certificate and the float32 export hold as for any network;
what the activations' quantization costs is the INT8 file's to measure (`int8.measure`).

    model = K.deploy(trained)                 # plain convs, BN folded
    qat = K.qat.prepare(model, calibration)   # normalized images, as the model takes them
    ... train qat (its `input_range`s are not parameters) ...
    shipped = K.deploy(qat)                   # plain convs, kernels on the int8 grid
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kshapes_jax._modules import map_modules, path_str
from kshapes_jax.nn.base import Dense, PlainConv, is_fused, record

__all__ = [
  "InputRange",
  "QatConv",
  "QatDense",
  "calibrate",
  "fake_quant_input",
  "fake_quant_weights",
  "prepare",
]

QMAX_WEIGHTS = 127  # symmetric int8 weights: [-127, 127] (onnxruntime's, symmetric)
QMIN, QMAX = -128, 127  # asymmetric int8 activations


def _straight_through(x: jax.Array, quantized: jax.Array) -> jax.Array:
  """quantized in value, x's gradient."""
  return x + jax.lax.stop_gradient(quantized - x)


def fake_quant_weights(kernel: jax.Array) -> jax.Array:
  """The kernel on the symmetric int8 grid of each output channel (its last axis), dequantized:
  scale_c = max |w_c| / 127, w -> round(w / scale_c) * scale_c (round half to even, as
  onnxruntime's QuantizeLinear). Gradient: the identity (straight-through; no weight is ever
  clipped, the scale is the channel's own maximum).

  Raises:
    ValueError: for a kernel with fewer than 2 axes.
  """
  if kernel.ndim < 2:
    raise ValueError(f"a kernel has an input and an output axis at least, got {kernel.shape}")
  absmax = jnp.max(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
  scale = jnp.where(absmax > 0, absmax / QMAX_WEIGHTS, 1.0)
  return _straight_through(kernel, jnp.round(kernel / scale) * scale)


def input_scale(low: jax.Array, high: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(scale, zero point) of the asymmetric int8 grid of [low, high] widened to hold 0, as
  onnxruntime computes them from a calibrated range."""
  low, high = jnp.minimum(low, 0.0), jnp.maximum(high, 0.0)
  scale = jnp.where(high > low, (high - low) / (QMAX - QMIN), 1.0)
  zero = jnp.clip(jnp.round(QMIN - low / scale), QMIN, QMAX)
  return scale, zero


def fake_quant_input(x: jax.Array, input_range: jax.Array) -> jax.Array:
  """x on the asymmetric int8 grid of its calibrated range `input_range` = (low, high),
  dequantized: q = clip(round(x / scale) + zero, -128, 127), x -> (q - zero) * scale. Gradient:
  1 where x lies in the grid's range, 0 where it is clipped (straight-through).

  Raises:
    ValueError: for a range that is not (low, high).
  """
  if input_range.shape != (2,):
    raise ValueError(f"an input range is (low, high), got shape {input_range.shape}")
  scale, zero = input_scale(input_range[0], input_range[1])
  scale, zero = scale.astype(x.dtype), zero.astype(x.dtype)
  lowest, highest = (QMIN - zero) * scale, (QMAX - zero) * scale
  clipped = jnp.clip(x, lowest, highest)
  q = jnp.clip(jnp.round(clipped / scale) + zero, QMIN, QMAX)
  return _straight_through(clipped, (q - zero) * scale)


class InputRange(nnx.Variable):
  """A layer's calibrated input range (low, high): state, not a parameter (not trained)."""


class _Quantized:
  """What a QAT layer adds to its float layer: an input range, training mode, calibration."""

  input_range: InputRange
  deterministic: bool  # eval mode (`model.eval()`): the input is not quantized
  calibrating: bool

  def _start(self) -> None:
    self.input_range = InputRange(jnp.array([np.inf, -np.inf], jnp.float32))
    self.deterministic = False
    self.calibrating = False

  def _input(self, x: jax.Array) -> jax.Array:
    if self.calibrating:  # eagerly, on calibration images: widen the range to hold them
      low, high = self.input_range[...]
      self.input_range[...] = jnp.stack([jnp.minimum(low, x.min()), jnp.maximum(high, x.max())])
      return x
    if self.deterministic:
      return x
    return fake_quant_input(x, self.input_range[...])


class QatConv(_Quantized, PlainConv):
  """A plain conv with fake INT8 weights (always) and input (in training mode)."""

  def __init__(self, conv: PlainConv):
    kernel, bias = conv.effective_kernel()
    kh, _, cin, cout = kernel.shape
    super().__init__(
      cin * conv.groups,
      cout,
      kh,
      stride=conv.stride,
      padding=0,
      groups=conv.groups,
      dilation=conv.dilation,
      kernel=kernel,
      bias=bias,
      precision=conv.precision,
      dtype=conv.dtype,
    )
    self.padding = conv.padding
    self._start()

  def effective_kernel(self):
    kernel, bias = super().effective_kernel()
    return fake_quant_weights(kernel), bias

  def __call__(self, x: jax.Array) -> jax.Array:
    return super().__call__(self._input(x))

  def trained_output(self, x: jax.Array) -> jax.Array:
    # what deploy folds: the quantized kernel on the float input (the input's quantization is
    # the INT8 file's, measured by its report, not the fusion's)
    return PlainConv.__call__(self, x)


class QatDense(_Quantized, Dense):
  """A dense layer with fake INT8 weights (always) and input (in training mode)."""

  def __init__(self, dense: nnx.Linear):
    super().__init__(
      dense.in_features,
      dense.out_features,
      use_bias=dense.bias is not None,
      precision=dense.precision,
      dtype=dense.dtype,
      rngs=nnx.Rngs(0),  # replaced below by the layer's own weights
    )
    self.kernel = nnx.Param(dense.kernel[...])
    self.bias = None if dense.bias is None else nnx.Param(dense.bias[...])
    self._start()

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    x = self._input(inputs)
    kernel = fake_quant_weights(self.kernel[...])
    y = jnp.dot(x, kernel.astype(self.dtype or x.dtype), precision=self.precision)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    record(self, inputs, y)
    return y

  def deploy(self) -> Dense:
    """The dense layer with the quantized kernel: what the INT8 file's weights will be."""
    dense = Dense(
      self.in_features,
      self.out_features,
      use_bias=self.bias is not None,
      precision=self.precision,
      dtype=self.dtype,
      rngs=nnx.Rngs(0),
    )
    dense.kernel = nnx.Param(fake_quant_weights(self.kernel[...]))
    if self.bias is not None:
      dense.bias = nnx.Param(self.bias[...])
    return dense

  def trained_output(self, x: jax.Array) -> jax.Array:
    return self.deploy()(x)


def prepare(deployed: nnx.Module, calibration: Any, batch: int = 256) -> nnx.Module:
  """A copy of a deployed network whose plain convs and dense layers train with fake INT8,
  their input ranges calibrated on `calibration`; in training mode.

  Args:
    deployed: `kshapes_jax.deploy(model)` (plain convs; every other layer is kept as it is).
    calibration: a batch of inputs, normalized as the model takes them.
    batch: inputs per calibration call.

  Raises:
    ValueError: for a network with nothing to quantize, or an empty or non-finite calibration.
  """
  fused = [
    (p, m) for p, m in nnx.iter_modules(deployed) if is_fused(m) and not isinstance(m, _Quantized)
  ]
  if fused:
    path, module = fused[0]
    raise ValueError(
      f"prepare takes a deployed network (kshapes_jax.deploy(model)); {path_str(path)} is a "
      f"{type(module).__name__}"
    )
  replaced: list[nnx.Module] = []

  def quantized(path: tuple, module: nnx.Module) -> nnx.Module | None:
    del path
    if type(module) is PlainConv:
      replaced.append(module)
      return QatConv(module)
    if isinstance(module, nnx.Linear) and not isinstance(module, QatDense):
      replaced.append(module)
      return QatDense(module)
    return None

  model = map_modules(nnx.clone(deployed), quantized)
  if not replaced:
    raise ValueError("prepare takes a deployed network: it has no plain conv or dense layer")
  calibrate(model, calibration, batch)
  model.train()
  return model


def calibrate(model: nnx.Module, calibration: Any, batch: int = 256) -> None:
  """Sets every QAT layer's input range to the min and max of its inputs over `calibration`
  (the model in eval mode, eagerly); the model is left in eval mode.

  Raises:
    ValueError: for an empty or non-finite calibration batch.
  """
  x = np.asarray(calibration)
  if x.ndim == 0 or len(x) == 0:
    raise ValueError("the calibration batch is empty")
  if not np.all(np.isfinite(x)):
    raise ValueError("the calibration batch holds NaN or infinite values")
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, _Quantized)]
  model.eval()
  for layer in layers:
    layer.input_range[...] = jnp.array([np.inf, -np.inf], jnp.float32)
    layer.calibrating = True
  try:
    for start in range(0, len(x), batch):
      model(jnp.asarray(x[start : start + batch]))
  finally:
    for layer in layers:
      layer.calibrating = False
  missed = [
    type(layer).__name__ for layer in layers if not np.isfinite(layer.input_range[...]).all()
  ]
  if missed:
    raise ValueError(f"{len(missed)} quantized layers got no input from the model's call")
