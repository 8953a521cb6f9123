"""Residual networks: CIFAR ResNets (He et al.), pre-activation ResNets (ACU paper), WRN."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import global_avg_pool, layer_options
from kshapes_jax.models.registry import ANY_KIND, register
from kshapes_jax.nn import Dense, PlainConv, batch_norm, conv_bn, make_conv


def _option_a(x: jax.Array, out_features: int, stride: int) -> jax.Array:
  """Parameter-free shortcut: subsample, then zero-pad the new channels (option A)."""
  # a strided slice, not x[:, ::s, ::s] (a gather once the batch is symbolic, for export)
  if stride > 1:
    x = jax.lax.slice(x, (0,) * x.ndim, x.shape, (1, stride, stride, 1))
  extra = out_features - x.shape[-1]
  if extra > 0:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class BasicBlock(nnx.Module):
  """conv-BN-ReLU-conv-BN + shortcut, ReLU (post-activation, CIFAR ResNet)."""

  def __init__(self, conv, cin: int, cout: int, stride: int, rngs: nnx.Rngs, options):
    self.conv1 = conv_bn(conv, cin, cout, 3, stride=stride, rngs=rngs, **options)
    self.conv2 = conv_bn(conv, self.conv1.out_features, cout, 3, rngs=rngs, **options)
    self.out_features, self.stride = self.conv2.out_features, stride

  def __call__(self, x: jax.Array):
    y = self.conv2(jax.nn.relu(self.conv1(x)))
    return jax.nn.relu(y + _option_a(x, self.out_features, self.stride))


class CifarResNet(nnx.Module):
  """ResNet-(6n+2) for CIFAR (He et al. 2016): 16/32/64 channels, option-A shortcuts.

  Every 3x3 conv, the first included, is of the chosen kind.
  """

  def __init__(
    self,
    depth: int,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    if (depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    options, num = layer_options(conv_options, precision, dtype)
    self.stem = conv_bn(conv, 3, 16, 3, rngs=rngs, **options)
    cin = self.stem.out_features
    self.blocks: nnx.List[nnx.Module] = nnx.List()
    for stage, width in enumerate((16, 32, 64)):
      for i in range(n):
        block = BasicBlock(conv, cin, width, 2 if (stage > 0 and i == 0) else 1, rngs, options)
        self.blocks.append(block)
        cin = block.out_features
    self.fc = Dense(cin, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = jax.nn.relu(self.stem(x))
    for block in self.blocks:
      x = block(x)
    return self.fc(global_avg_pool(x))


for _depth in (20, 32, 44, 56, 110):
  register(
    f"resnet{_depth}",
    kinds=ANY_KIND,
    input_shape=(32, 32, 3),
    paper="RotateConv Table I (20, 44); ACNet Table 1-2 (56)",
  )(
    lambda conv, num_classes, rngs, _d=_depth, **kw: CifarResNet(
      _d, conv, num_classes, rngs=rngs, **kw
    )
  )


def _preact_conv(conv, cin: int, cout: int, k, stride: int, rngs: nnx.Rngs, options, num):
  """A conv inside a pre-activation unit (no BN after it, except ACB's own); 1x1 convs stay
  plain."""
  if k == 1:
    return make_conv("plain", cin, cout, k, stride=stride, rngs=rngs, **num)
  return make_conv(conv, cin, cout, k, stride=stride, rngs=rngs, **options)


class PreActBlock(nnx.Module):
  """BN-ReLU-conv x2 (basic) or x3 with a 1x1-3x3-1x1 bottleneck; projection shortcut on change."""

  def __init__(
    self,
    conv,
    cin: int,
    width: int,
    stride: int,
    bottleneck,
    rngs: nnx.Rngs,
    options,
    num,
    expansion: int = 4,
    dropout=0.0,
  ):
    shapes = (
      [(1, width, 1), (3, width, stride), (1, width * expansion, 1)]
      if bottleneck
      else [(3, width, stride), (3, width, 1)]
    )
    self.bns: nnx.List[nnx.Module] = nnx.List()
    self.convs: nnx.List[nnx.Module] = nnx.List()
    c = cin
    for k, cout, s in shapes:
      self.bns.append(batch_norm(c, rngs, dtype=num["dtype"]))
      layer = _preact_conv(conv, c, cout, k, s, rngs, options, num)
      self.convs.append(layer)
      c = layer.out_features
    self.out_features = c
    changed = stride != 1 or cin != c
    self.shortcut = (
      PlainConv(cin, c, 1, stride=stride, padding=0, rngs=rngs, **num) if changed else None
    )

  def __call__(self, x: jax.Array):
    pre = jax.nn.relu(self.bns[0](x))
    shortcut = x if self.shortcut is None else self.shortcut(pre)
    y = self.convs[0](pre)
    for bn, layer in zip(list(self.bns)[1:], list(self.convs)[1:]):
      y = layer(jax.nn.relu(bn(y)))
    return y + shortcut


class PreActResNet(nnx.Module):
  """Pre-activation ResNet for CIFAR (He et al. 2016b), as in the ACU and WRN papers.

  A plain 3x3 stem to 16 channels, three stages of `blocks` units with
  `widths`, projection shortcuts where the shape changes, a final BN-ReLU,
  global average pooling and the classifier. The kind applies to the 3x3
  convs inside the units ("we changed all conv3 layers").
  """

  def __init__(
    self,
    blocks,
    widths,
    bottleneck,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    self.stem = PlainConv(3, 16, 3, rngs=rngs, **num)
    cin = 16
    self.blocks: nnx.List[nnx.Module] = nnx.List()
    for stage, width in enumerate(widths):
      for i in range(blocks):
        block = PreActBlock(
          conv, cin, width, 2 if (stage > 0 and i == 0) else 1, bottleneck, rngs, options, num
        )
        self.blocks.append(block)
        cin = block.out_features
    self.bn = batch_norm(cin, rngs, dtype=dtype)
    self.fc = Dense(cin, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.fc(global_avg_pool(jax.nn.relu(self.bn(x))))


@register("preact_resnet32", kinds=ANY_KIND, input_shape=(32, 32, 3), paper="ACU Table 3 (basic)")
def preact_resnet32(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return PreActResNet(5, (16, 32, 64), False, conv, num_classes, rngs=rngs, **kw)


@register(
  "preact_resnet47_bottleneck",
  kinds=ANY_KIND,
  input_shape=(32, 32, 3),
  paper="ACU Table 3 (bottleneck)",
)
def preact_resnet47(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return PreActResNet(5, (16, 32, 64), True, conv, num_classes, rngs=rngs, **kw)


@register("wrn16_8", kinds=ANY_KIND, input_shape=(32, 32, 3), paper="ACNet Table 1-2")
def wrn16_8(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  # WRN-d-k: (d - 4) / 6 pre-activation basic units per stage, widths 16k, 32k, 64k
  return PreActResNet(2, (128, 256, 512), False, conv, num_classes, rngs=rngs, **kw)
