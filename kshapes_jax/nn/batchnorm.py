"""Batch normalization as every layer and model here uses it: PyTorch's defaults, its fused
parameters,
and several BNs trained in one pass over their stacked maps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from kshapes_jax import _validation
from kshapes_jax.kernels import BatchNormParams


def batch_norm(
  features: int,
  rngs: nnx.Rngs,
  scale_init: float = 1.0,
  dtype: DTypeLike | None = None,
  param_dtype: DTypeLike | None = None,
) -> nnx.BatchNorm:
  """BN with PyTorch's defaults (momentum 0.1, eps 1e-5), the official codes' setting.

  `dtype` is the compute dtype of its output, as the conv layers' `dtype`;
  `param_dtype` that of its scale and bias (float32 by default; the running
  statistics stay float32).
  """
  bn = nnx.BatchNorm(
    features,
    momentum=0.9,
    epsilon=1e-5,
    dtype=_validation.compute_dtype(dtype),
    param_dtype=_validation.param_dtype(param_dtype),
    rngs=rngs,
  )
  if scale_init != 1.0:  # set_value: see stacked_batch_norm
    scale = _scale_and_bias(bn)[0]
    scale.set_value(jnp.full((features,), scale_init, scale[...].dtype))
  return bn


def _scale_and_bias(bn: nnx.BatchNorm) -> tuple[nnx.Param, nnx.Param]:
  """The BN's scale and bias (ours always have both: batch_norm keeps use_scale and use_bias)."""
  if bn.scale is None or bn.bias is None:
    raise ValueError("a BN without scale or bias: build it with kshapes_jax.nn.batch_norm")
  return bn.scale, bn.bias


def bn_params(bn: nnx.BatchNorm) -> BatchNormParams:
  """A BN's scale, bias and running statistics, as `kernels.fuse_bn` takes them."""
  scale, bias = _scale_and_bias(bn)
  return BatchNormParams(scale[...], bias[...], bn.mean[...], bn.var[...])


def stacked_batch_norm(z: jax.Array, bns: list[nnx.BatchNorm]) -> jax.Array:
  """Trains the BNs `bns` at once on `z`, their output maps stacked on the last axis.

  BN statistics are per channel, so one BN over the stacked maps is the
  BNs one per group: the same outputs, gradients and running statistics as
  calling each BN on its slice (flax's nnx.BatchNorm arithmetic, fast
  variance, statistics in at least float32), in one pass over `z`. The
  running statistics of each BN are updated in place, as its own call would.
  """
  first = bns[0]
  scale = jnp.concatenate([_scale_and_bias(bn)[0][...] for bn in bns])
  bias = jnp.concatenate([_scale_and_bias(bn)[1][...] for bn in bns])
  z, scale, bias = first.promote_dtype((z, scale, bias), dtype=first.dtype)
  stats_dtype = jnp.promote_types(first.dtype or jnp.result_type(z), jnp.float32)
  axes = tuple(range(z.ndim - 1))
  zs = jnp.asarray(z, stats_dtype)
  mean = zs.mean(axes)
  var = jnp.maximum(0.0, jnp.mean(zs * zs, axes) - mean * mean)
  start = 0
  for bn in bns:
    n = bn.num_features
    # set_value, not `[...] =`: under a trace that probes `.sharding`, whose error
    # message walks the whole trace (jax-ml/jax#40041), quadratic in the model's depth
    bn.mean.set_value(
      jax.lax.stop_gradient(
        bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean[start : start + n]
      )
    )
    bn.var.set_value(
      jax.lax.stop_gradient(bn.momentum * bn.var[...] + (1 - bn.momentum) * var[start : start + n])
    )
    start += n
  mean, var = (jnp.asarray(a, jnp.result_type(z, a)) for a in (mean, var))
  mul = jax.lax.rsqrt(var + first.epsilon) * scale
  y = (z - mean) * mul + bias
  return jnp.asarray(y, first.dtype or jnp.result_type(z, scale, bias))


def set_affine(bn: nnx.BatchNorm, scale: float, bias: jax.Array | None = None) -> None:
  """Sets a BN's scale to `scale` on every channel and, where given, its shift to `bias`
  (convert's init="preserve": an eval-mode identity is scale sqrt(1 + eps) on a new BN)."""
  own_scale, own_bias = _scale_and_bias(bn)
  own_scale.set_value(jnp.full_like(own_scale[...], scale))
  if bias is not None:
    own_bias.set_value(jnp.asarray(bias, own_bias[...].dtype))
