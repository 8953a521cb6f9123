"""RotateConv layer: line-segment kernels with learnable angles (Ma et al. 2018)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding
from kshapes_jax.gradients import normalize_angle_grad
from kshapes_jax.kernels import rotate_kernel
from kshapes_jax.nn.base import ConvLayer, bucketed, check_layer, he_normal, symmetric_padding
from kshapes_jax.nn.variables import Angle


class RotateConv(ConvLayer):
  """3x3 RotateConv, version 4 (3 weights + angle) or 2 (1 weight + angle).

  The effective kernel is `kernels.rotate_kernel` (eq. 3 / 8), so the layer is
  one 3x3 conv. Angles are `Angle` parameters, initialised uniform in
  [0, 180); the optimizer projects them after each update (eq. 6). With
  `normalize_grad` (default) their gradient is scaled to unit RMS over the
  layer (`gradients.normalize_angle_grad`), so they learn at the shared
  learning rate; False gives the raw gradient (angles then barely move).
  """

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

  def effective_kernel(self):
    angles = self.angles[...]
    if self.normalize_grad:
      angles = normalize_angle_grad(angles)
    kernel = rotate_kernel(self.weights[...], angles)
    return kernel, None if self.bias is None else self.bias[...]

  def weight_count(self) -> int:
    return int(self.weights[...].size + self.angles[...].size)
