"""DeformableActiveConv: the ACU's shared synapse positions plus offsets predicted per pixel from
the input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.conv import Padding
from kshapes_jax.nn.active import ActiveConv, PositionInit
from kshapes_jax.nn.base import PlainConv, record


class DeformableActiveConv(nnx.Module):
  """An ACU whose synapses also move per output pixel (deformable conv, Dai et al. 2017).

      y[n, i, j, o] = sum_k m_k(n, i, j) sum_c w[k, c, o] x_c(centre(i, j) + p_k + d_k(n, i, j))

  p_k are the ACU's positions, shared by the layer and learned (`acu`, an
  `ActiveConv`: its weights, positions, normalized gradient, radius and
  output grid). The offsets d_k (and, with `modulation=True`, the factors
  m_k = 2 sigmoid(.), DCNv2, Zhu et al. 2019) come from ONE kxk conv on the
  input with the layer's stride and padding (`offsets`), zero at
  initialisation: the layer then IS its ACU (d = 0, m = 1), and learns to
  leave it. The samples are the literal bilinear gather
  (`ActiveConv.gather` with per-pixel offsets), so offsets may
  reach anywhere; there is no plain-conv form, and `deploy` keeps the layer.

  It takes the arguments of ActiveConv, and its own:

  Args:
    modulation: also predict a factor per synapse and pixel.
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
    synapses: int | None = None,
    init: PositionInit = "lattice",
    modulation: bool = False,
    normalize_grad: bool = True,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike | None = None,
    rngs: nnx.Rngs,
  ):
    self.acu = ActiveConv(
      in_features,
      out_features,
      kernel_size,
      stride=stride,
      padding=padding,
      use_bias=use_bias,
      synapses=synapses,
      init=init,
      impl="gather",
      normalize_grad=normalize_grad,
      precision=precision,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.modulation = kernel_size, stride, modulation
    k = self.acu.synapses
    maps = (3 if modulation else 2) * k
    self.offsets = PlainConv(
      in_features,
      maps,
      kernel_size,
      stride=stride,
      padding=self.acu.padding,
      use_bias=True,
      precision=precision,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.offsets.kernel.set_value(jnp.zeros_like(self.offsets.kernel.get_value()))

  def offsets_and_modulation(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """(N, H', W', K, 2) offsets (dx, dy) and the (N, H', W', K) factors (None without
    modulation)."""
    z = self.offsets(x)
    # positions at >= float32, as in the gather
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    k = self.acu.synapses
    offsets = z[..., : 2 * k].reshape(*z.shape[:3], k, 2)
    return offsets, (2 * jax.nn.sigmoid(z[..., 2 * k :]) if self.modulation else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.acu.gather(x, *self.offsets_and_modulation(x))
    record(self, x, y)
    return y

  def deploy(self) -> DeformableActiveConv:
    """Itself: the positions depend on the input, so no fixed kernel holds them."""
    return self

  def weight_count(self) -> int:
    return self.acu.weight_count() + int(self.offsets.kernel[...].size)

  def multiplications(self, out_shape) -> int:
    """The samples' weighted sum (K x C x O per pixel) plus the offset conv."""
    per_pixel = self.acu.synapses * self.in_features * self.out_features
    return int(out_shape[1] * out_shape[2] * per_pixel) + self.offsets.multiplications(
      (*out_shape[:3], self.offsets.out_features)
    )
