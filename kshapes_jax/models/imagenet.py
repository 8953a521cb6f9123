"""ImageNet networks (224 px): ResNet-18/50, ResNeXt-50 32x4d, AlexNet; configs/imagenet.py trains
them through the streamed pipeline."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import global_avg_pool, layer_options, max_pool
from kshapes_jax.models.registry import register
from kshapes_jax.nn import KINDS, Dense, conv_bn


class Bottleneck(nnx.Module):
  """1x1-3x3-1x1 residual unit (post-activation), projection shortcut on change.

  `groups` and `inner` (the 3x3's width) make it ResNeXt's unit: a grouped 3x3 of
  inner = width x base_width / 64 x groups channels (torchvision's definition).
  """

  def __init__(
    self,
    conv,
    cin: int,
    width: int,
    stride: int,
    expansion: int,
    rngs: nnx.Rngs,
    options,
    num,
    groups: int = 1,
    inner: int | None = None,
  ):
    if expansion == 1:  # basic unit: two 3x3
      self.convs = nnx.List([conv_bn(conv, cin, width, 3, stride=stride, rngs=rngs, **options)])
      self.convs.append(conv_bn(conv, self.convs[0].out_features, width, 3, rngs=rngs, **options))
    else:
      inner = inner or width
      first = conv_bn("plain", cin, inner, 1, padding=0, rngs=rngs, **num)
      mid = conv_bn(conv, inner, inner, 3, stride=stride, rngs=rngs, groups=groups, **options)
      last = conv_bn("plain", mid.out_features, width * expansion, 1, padding=0, rngs=rngs, **num)
      self.convs = nnx.List([first, mid, last])
    out = self.convs[-1].out_features
    changed = stride != 1 or cin != out
    self.shortcut = (
      conv_bn("plain", cin, out, 1, stride=stride, padding=0, rngs=rngs, **num) if changed else None
    )
    self.out_features = out

  def __call__(self, x: jax.Array):
    y = x
    for i, layer in enumerate(self.convs):
      y = layer(y)
      if i < len(self.convs) - 1:
        y = jax.nn.relu(y)
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return jax.nn.relu(y + shortcut)


class ImageNetResNet(nnx.Module):
  """ResNet-18 (basic units), ResNet-50 (bottlenecks) or ResNeXt-50 (grouped bottlenecks, `groups`
  x `base_width`) for 224x224 inputs."""

  def __init__(
    self,
    layers,
    expansion: int,
    conv: str = "plain",
    num_classes: int = 1000,
    *,
    rngs: nnx.Rngs,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
    groups: int = 1,
    base_width: int = 64,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    # a kind that is 3x3 only (RotateConv) leaves the 7x7 stem plain
    stem_kind = conv if conv in ("plain", "versatile", "acb", "active") else "plain"
    self.stem = conv_bn(
      stem_kind, 3, 64, 7, stride=2, rngs=rngs, **(options if stem_kind == conv else num)
    )
    c = self.stem.out_features
    self.blocks: nnx.List[nnx.Module] = nnx.List()
    for stage, (count, width) in enumerate(zip(layers, (64, 128, 256, 512))):
      for i in range(count):
        block = Bottleneck(
          conv,
          c,
          width,
          2 if (stage > 0 and i == 0) else 1,
          expansion,
          rngs,
          options,
          num,
          groups=groups,
          inner=width * base_width // 64 * groups,
        )
        self.blocks.append(block)
        c = block.out_features
    self.fc = Dense(c, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = max_pool(jax.nn.relu(self.stem(x)), 3, 2, ((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return self.fc(global_avg_pool(x))


@register(
  "resnet18",
  kinds=KINDS,
  input_shape=(224, 224, 3),
  paper="ACNet Table 3 (accounting)",
  num_classes=1000,
)
def resnet18(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return ImageNetResNet((2, 2, 2, 2), 1, conv, num_classes, rngs=rngs, **kw)


@register(
  "resnet50",
  kinds=KINDS,
  input_shape=(224, 224, 3),
  paper="Versatile Table 1/4 (accounting)",
  num_classes=1000,
)
def resnet50(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return ImageNetResNet((3, 4, 6, 3), 4, conv, num_classes, rngs=rngs, **kw)


# kinds whose layers take feature groups (ResNeXt's grouped 3x3; VersatileConv does not)
GROUPED_KINDS = ("plain", "rotate4", "rotate2", "acb", "active")


@register(
  "resnext50_32x4d",
  kinds=GROUPED_KINDS,
  input_shape=(224, 224, 3),
  paper="Versatile Table 4 (ResNeXt-50)",
  num_classes=1000,
)
def resnext50_32x4d(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  """ResNeXt-50 32x4d (Xie et al. 2017; torchvision's resnext50_32x4d: 25,028,904 parameters)."""
  return ImageNetResNet(
    (3, 4, 6, 3), 4, conv, num_classes, rngs=rngs, groups=32, base_width=4, **kw
  )


class AlexNet(nnx.Module):
  """AlexNet with BN after each conv (ACNet's) and the original two-group layers.

  11x11x3x96 /4, 5x5x48x256 (2 groups), 3x3x256x384, 3x3x192x384 (2 groups),
  3x3x192x256 (2 groups), max-pools 3/2 after conv 1, 2 and 5, then fc
  6x6x256 -> 4096 -> 4096 -> classes (the versatile paper's Table 1: 6.1e7
  weights). Kinds replace the ungrouped kxk convs.
  """

  def __init__(
    self,
    conv: str = "plain",
    num_classes: int = 1000,
    *,
    rngs: nnx.Rngs,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    grouped = lambda cin, cout, k: conv_bn("plain", cin, cout, k, rngs=rngs, groups=2, **num)
    self.convs = nnx.List(
      [
        conv_bn(
          conv if conv in ("plain", "versatile", "acb", "active") else "plain",
          3,
          96,
          11,
          stride=4,
          padding=2,
          rngs=rngs,
          **options,
        ),
        grouped(96, 256, 5),
        conv_bn(conv, 256, 384, 3, rngs=rngs, **options),
        grouped(384, 384, 3),
        grouped(384, 256, 3),
      ]
    )
    self.fc1 = Dense(6 * 6 * 256, 4096, rngs=rngs, **num)
    self.fc2 = Dense(4096, 4096, rngs=rngs, **num)
    self.fc3 = Dense(4096, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    for i, layer in enumerate(self.convs):
      x = jax.nn.relu(layer(x))
      if i in (0, 1, 4):
        x = max_pool(x, 3, 2)
    x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
    x = jax.nn.relu(self.fc2(x))
    return self.fc3(x)


@register(
  "alexnet",
  kinds=("plain", "acb", "versatile", "active"),
  input_shape=(224, 224, 3),
  paper="Versatile Table 1/4; ACNet Table 3 (accounting)",
  num_classes=1000,
)
def alexnet(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return AlexNet(conv, num_classes, rngs=rngs, **kw)
