"""RotateConv layer: line-segment kernels with learnable angles (Ma et al. 2018)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding
from kshapes_jax.gradients import normalize_angle_grad
from kshapes_jax.kernels import rotate_kernel
from kshapes_jax.nn.base import (
  ConvLayer,
  bucketed,
  check_layer,
  he_normal,
  set_bias,
  set_value,
  symmetric_padding,
)
from kshapes_jax.nn.variables import Angle

# the 1-degree grid of angles init_from_kernel fits a given 3x3 kernel on
_FIT_ANGLES = np.arange(180.0)


@functools.cache
def _line_bases(taps: int) -> np.ndarray:
  """(angles, 9, taps): the RotateConv kernel of each weight alone at each grid angle (the kernel
  is linear in its weights at a fixed angle); one rotate_kernel call, once per version."""
  n = len(_FIT_ANGLES)
  if taps == 3:  # output o = (angle, tap): weight tap of that output 1, the others 0
    weights = np.tile(np.eye(3), (1, n)).reshape(3, 1, 3 * n)
  else:
    weights = np.ones((1, n))
  angles = np.repeat(_FIT_ANGLES, taps)[None, :]
  kernel = np.asarray(rotate_kernel(weights, angles), np.float64)  # (3, 3, 1, n * taps)
  return kernel.reshape(9, n, taps).transpose(1, 0, 2)


class RotateConv(ConvLayer):
  """3x3 RotateConv, version 4 (3 weights + angle) or 2 (1 weight + angle).

  The effective kernel is `kernels.rotate_kernel` (eq. 3 / 8), so the layer is
  one 3x3 conv. Angles are `Angle` parameters, initialised uniform in
  [0, 180); the optimizer projects them after each update (eq. 6). With
  `normalize_grad` (default) their gradient is scaled to unit RMS over the
  layer (`gradients.normalize_angle_grad`), so they learn at the shared
  learning rate; False gives the raw gradient (angles then barely move).
  """

  preserves = "fit"  # a line kernel only approximates a given 3x3 one

  @classmethod
  def takes_kernel_size(cls, kernel_size: int) -> bool:
    return kernel_size == 3

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    use_bias: bool = False,
    version: int = 4,
    normalize_grad: bool = True,
    groups: int = 1,
    dilation: int = 1,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    check_layer(
      "RotateConv", in_features, out_features, kernel_size, stride, groups, rngs, dilation=dilation
    )
    if kernel_size != 3:
      raise ValueError(f"RotateConv is a 3x3 kernel, got kernel_size = {kernel_size}")
    if version not in (2, 4):
      raise ValueError(f"RotateConv version must be 4 or 2, got {version!r}")
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.groups, self.dilation = 3, stride, groups, dilation
    self.padding = symmetric_padding(padding, 3, dilation=dilation)
    self.version = version
    self.normalize_grad = normalize_grad
    self.set_numerics(precision, dtype, param_dtype)
    taps = 3 if version == 4 else 1
    cin = in_features // groups
    # fan-in: every tap sees the group's inputs, 3 taps per line
    shape = (3, cin, out_features) if version == 4 else (cin, out_features)
    weights = he_normal(rngs.params(), shape, 3 * cin)
    if taps == 1:  # one shared weight feeds all three taps
      weights = weights / math.sqrt(3.0)
    self.weights = nnx.Param(weights.astype(self.param_dtype))
    uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, maxval=180.0)
    self.angles = Angle(bucketed(uniform, rngs.params(), (cin, out_features)))
    self.bias = self.init_bias(out_features) if use_bias else None

  def init_from_line_kernel(self, kernel: jax.Array) -> None:
    """Initialises from a pretrained 1x3 or 3x1 kernel (the paper's section III.A.5).

    A 1x3 kernel [left, centre, right] becomes angle 0 with w1 = right and
    w2 = left; a 3x1 kernel [top, centre, bottom] becomes angle 90 with
    w1 = top and w2 = bottom. For version 2 the shared weight is their mean.
    """
    shape = tuple(kernel.shape)
    io = (self.in_features // self.groups, self.out_features)
    if shape == (1, 3, *io):
      line, angle = kernel[0], 0.0
      w0, w1, w2 = line[1], line[2], line[0]
    elif shape == (3, 1, *io):
      line, angle = kernel[:, 0], 90.0
      w0, w1, w2 = line[1], line[0], line[2]
    else:
      raise ValueError(
        f"expected a (1, 3, {io[0]}, {io[1]}) or (3, 1, {io[0]}, {io[1]}) kernel, got {shape}"
      )
    weights = jnp.stack([w0, w1, w2]) if self.version == 4 else (w0 + w1 + w2) / 3
    self.weights[...] = weights.astype(self.weights[...].dtype)
    self.angles[...] = jnp.full(io, angle, self.angles[...].dtype)

  def init_from_kernel(self, kernel: jax.Array, bias: jax.Array | None) -> None:
    """The least-squares line kernel of a given 3x3 kernel, per (input, output) pair, on a
    1-degree grid of angles (convert's init="preserve": an approximation, whose error convert
    reports)."""
    target = np.asarray(kernel, np.float64).reshape(9, -1)  # (9, I * O)
    taps = 3 if self.version == 4 else 1
    best_err = np.full(target.shape[1], np.inf)
    best_w = np.zeros((taps, target.shape[1]))
    best_angle = np.zeros(target.shape[1])
    for angle, a in zip(_FIT_ANGLES, _line_bases(taps)):
      w, *_ = np.linalg.lstsq(a, target, rcond=None)
      err = np.sum((a @ w - target) ** 2, axis=0)
      better = err < best_err
      best_err, best_angle = np.where(better, err, best_err), np.where(better, angle, best_angle)
      best_w[:, better] = w[:, better]
    shape = self.weights[...].shape
    set_value(self.weights, best_w.reshape(shape) if taps == 3 else best_w[0].reshape(shape))
    set_value(self.angles, best_angle.reshape(self.angles[...].shape))
    set_bias(self, bias)

  def effective_kernel(self):
    angles = self.angles[...]
    if self.normalize_grad:
      angles = normalize_angle_grad(angles)
    kernel = rotate_kernel(self.weights[...], angles)
    return kernel, None if self.bias is None else self.bias[...]

  def weight_count(self) -> int:
    return int(self.weights[...].size + self.angles[...].size)
