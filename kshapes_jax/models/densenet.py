"""DenseNet-40 for CIFAR (Huang et al.), as the RotateConv and ACNet papers use it, and DenseNet-121
for ImageNet (ACNet Table 3)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import avg_pool, global_avg_pool, layer_options, max_pool
from kshapes_jax.models.registry import ANY_KIND, register
from kshapes_jax.nn import Dense, PlainConv, batch_norm, make_conv


class Transition(nnx.Module):
  """BN-ReLU-(1x1 conv)-2x2 average pool between dense blocks."""

  def __init__(self, bn, conv):
    self.bn, self.conv = bn, conv

  def __call__(self, x: jax.Array):
    x = jax.nn.relu(self.bn(x))
    if self.conv is not None:
      x = self.conv(x)
    return avg_pool(x, 2, 2)


class DenseNet(nnx.Module):
  """DenseNet (no bottleneck, no compression): 3 blocks of (depth - 4) / 3 layers.

  Each layer is BN-ReLU-3x3 conv producing `growth` maps concatenated to its
  input; transitions are BN-ReLU-1x1 conv-2x2 average pool (without the 1x1
  conv if `transition_conv=False`); the stem is a 3x3 conv to `stem` maps
  (16, Huang et al.'s choice for growth 12). The kind applies to the 3x3
  convs of the dense layers.

  Huang et al.'s DenseNet-40 (growth 12) has 1.02M parameters, not the 1.9M of
  RotateConv's Table I. The configuration that reproduces all three columns
  of that table within 2.3% is growth 17, stem 34 and transitions without
  the 1x1 conv: 1.86M / 0.85M / 0.44M (`DENSENET40_ROTATECONV`).
  """

  def __init__(
    self,
    depth: int = 40,
    growth: int = 12,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    stem=16,
    transition_conv=True,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    if (depth - 4) % 3:
      raise ValueError(f"DenseNet depth must be 3n + 4, got {depth}")
    options, num = layer_options(conv_options, precision, dtype)
    n = (depth - 4) // 3
    c = stem
    self.stem = PlainConv(3, c, 3, rngs=rngs, **num)
    self.bns: nnx.List[nnx.Module] = nnx.List()
    self.convs: nnx.List[nnx.Module] = nnx.List()
    self.transitions: nnx.List[nnx.Module] = nnx.List()
    for block in range(3):
      for _ in range(n):
        self.bns.append(batch_norm(c, rngs, dtype=dtype))
        layer = make_conv(conv, c, growth, 3, rngs=rngs, **options)
        self.convs.append(layer)
        c += layer.out_features
      if block < 2:
        t_conv = PlainConv(c, c, 1, padding=0, rngs=rngs, **num) if transition_conv else None
        self.transitions.append(Transition(batch_norm(c, rngs, dtype=dtype), t_conv))
    self.n = n
    self.bn = batch_norm(c, rngs, dtype=dtype)
    self.fc = Dense(c, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = self.stem(x)
    for i, (bn, layer) in enumerate(zip(self.bns, self.convs)):
      x = jnp.concatenate([x, layer(jax.nn.relu(bn(x)))], axis=-1)
      if (i + 1) % self.n == 0 and (i + 1) // self.n <= len(self.transitions):
        x = self.transitions[(i + 1) // self.n - 1](x)
    return self.fc(global_avg_pool(jax.nn.relu(self.bn(x))))


DENSENET40_ROTATECONV = dict(growth=17, stem=34, transition_conv=False)


@register(
  "densenet40", kinds=ANY_KIND, input_shape=(32, 32, 3), paper="RotateConv Table I; ACNet Table 1-2"
)
def densenet40(conv, num_classes: int, rngs: nnx.Rngs, growth: int = 12, **kw):
  """Huang et al.'s DenseNet-40; `**DENSENET40_ROTATECONV` for RotateConv's Table I counts."""
  return DenseNet(40, growth, conv, num_classes, rngs=rngs, **kw)


class DenseLayer(nnx.Module):
  """BN-ReLU-1x1 conv (bn_size x growth maps)-BN-ReLU-3x3 conv (growth maps): DenseNet-BC's layer.
  The kind applies to the 3x3 conv."""

  def __init__(self, conv, cin: int, growth: int, bn_size: int, rngs, options, num, dtype):
    self.bn1 = batch_norm(cin, rngs, dtype=dtype)
    self.conv1 = PlainConv(cin, bn_size * growth, 1, padding=0, rngs=rngs, **num)
    self.bn2 = batch_norm(bn_size * growth, rngs, dtype=dtype)
    self.conv2 = make_conv(conv, bn_size * growth, growth, 3, rngs=rngs, **options)
    self.out_features = self.conv2.out_features

  def __call__(self, x: jax.Array):
    y = self.conv1(jax.nn.relu(self.bn1(x)))
    return self.conv2(jax.nn.relu(self.bn2(y)))


class DenseNetBC(nnx.Module):
  """DenseNet-BC for 224x224 inputs (Huang et al. 2017; torchvision's densenet121 for blocks
  (6, 12, 24, 16), growth 32: 7,978,856 parameters).

  Stem 7x7/2 conv + BN-ReLU + 3x3/2 max-pool; dense blocks of DenseLayer; transitions
  BN-ReLU-1x1 conv (half the maps)-2x2 average pool; BN-ReLU, global pool, classifier.
  """

  def __init__(
    self,
    blocks=(6, 12, 24, 16),
    growth: int = 32,
    conv: str = "plain",
    num_classes: int = 1000,
    *,
    rngs: nnx.Rngs,
    stem: int = 64,
    bn_size: int = 4,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    self.stem = PlainConv(3, stem, 7, stride=2, padding=3, rngs=rngs, **num)
    self.stem_bn = batch_norm(stem, rngs, dtype=dtype)
    c = stem
    self.layers: nnx.List[nnx.Module] = nnx.List()
    self.transitions: nnx.List[nnx.Module] = nnx.List()
    ends = []
    for b, count in enumerate(blocks):
      for _ in range(count):
        layer = DenseLayer(conv, c, growth, bn_size, rngs, options, num, dtype)
        self.layers.append(layer)
        c += layer.out_features
      ends.append(len(self.layers))
      if b < len(blocks) - 1:
        t_conv = PlainConv(c, c // 2, 1, padding=0, rngs=rngs, **num)
        self.transitions.append(Transition(batch_norm(c, rngs, dtype=dtype), t_conv))
        c //= 2
    self.block_ends = tuple(ends)  # the layer count at the end of each block
    self.bn = batch_norm(c, rngs, dtype=dtype)
    self.fc = Dense(c, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = jax.nn.relu(self.stem_bn(self.stem(x)))
    x = max_pool(x, 3, 2, ((1, 1), (1, 1)))
    for i, layer in enumerate(self.layers):
      x = jnp.concatenate([x, layer(x)], axis=-1)
      if i + 1 in self.block_ends[:-1]:
        x = self.transitions[self.block_ends.index(i + 1)](x)
    return self.fc(global_avg_pool(jax.nn.relu(self.bn(x))))


@register(
  "densenet121",
  kinds=ANY_KIND,
  input_shape=(224, 224, 3),
  paper="ACNet Table 3 (DenseNet-121)",
  num_classes=1000,
)
def densenet121(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return DenseNetBC((6, 12, 24, 16), 32, conv, num_classes, rngs=rngs, **kw)
