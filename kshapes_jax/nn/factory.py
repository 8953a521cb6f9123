"""A conv of a kind by name, and the conv + BN unit that models are built from."""

from __future__ import annotations

import jax
from flax import nnx

from kshapes_jax.conv import Padding
from kshapes_jax.kernels import fuse_bn
from kshapes_jax.nn.base import ConvLayer, PlainConv
from kshapes_jax.nn.batchnorm import batch_norm, bn_params
from kshapes_jax.nn.kinds import get_kind


def make_conv(
  kind: str,
  in_features: int,
  out_features: int,
  kernel_size: int = 3,
  *,
  stride: int = 1,
  padding: Padding | None = None,
  use_bias: bool = False,
  rngs: nnx.Rngs,
  **options,
) -> ConvLayer:
  """A conv layer of the named kind; every kind takes the same arguments.

  Args:
    kind: a registered kind (`CONV_KINDS`): plain, rotate4, rotate2, acb, versatile, active,
      or one of `register_kind`.
    in_features, out_features, kernel_size, stride, padding, use_bias: as for
      a plain conv (padding None = k // 2 on every side).
    rngs: the NNX random streams.
    **options: kind-specific options (see each layer's docstring).

  Returns:
    The layer; read its `out_features` (versatile layers may round it up).

  Raises:
    ValueError: for an unknown kind.
  """
  return get_kind(kind)(
    in_features,
    out_features,
    kernel_size,
    stride=stride,
    padding=padding,
    use_bias=use_bias,
    rngs=rngs,
    **options,
  )


class ConvBN(nnx.Module):
  """conv -> BN, the unit a kind swaps in; deploy folds the BN into the conv."""

  def __init__(self, conv: ConvLayer, rngs: nnx.Rngs):
    self.conv = conv
    self.out_features = conv.out_features
    # computes as its conv does, its scale and bias stored as the conv's weights
    self.bn = batch_norm(conv.out_features, rngs, dtype=conv.dtype, param_dtype=conv.param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))

  def trained_output(self, x: jax.Array) -> jax.Array:
    """The conv as it trained (`ConvLayer.trained_output`), then the BN."""
    return self.bn(self.conv.trained_output(x))

  def deploy(self) -> PlainConv:
    plain = self.conv.deploy()
    bn = bn_params(self.bn)
    if plain.bias is not None:  # BN(conv + b) is BN with its mean moved by b
      bn = bn._replace(mean=bn.mean - plain.bias[...])
    kernel, bias = fuse_bn(plain.kernel[...], *bn, eps=self.bn.epsilon)
    return PlainConv.from_kernel(
      kernel,
      bias,
      stride=plain.stride,
      padding=plain.padding,
      groups=plain.groups,
      dilation=plain.dilation,
      **plain.numerics,
    )


def conv_bn(
  kind: str,
  in_features: int,
  out_features: int,
  kernel_size: int = 3,
  *,
  stride: int = 1,
  padding: Padding | None = None,
  rngs: nnx.Rngs,
  **options,
) -> ConvLayer | ConvBN:
  """conv + BN of the named kind; a kind that ends in its own BN (`normalizes`: the ACBlock)
  alone.

  1x1 convs are always plain: no kind changes a 1x1 kernel.
  """
  if kernel_size == 1:
    kind = "plain"
  conv = make_conv(
    kind,
    in_features,
    out_features,
    kernel_size,
    stride=stride,
    padding=padding,
    rngs=rngs,
    **options,
  )
  return conv if conv.normalizes else ConvBN(conv, rngs)
