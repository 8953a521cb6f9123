"""ImageNet residual networks (224 px): ResNet-18/50, ResNeXt-50 32x4d and the versatile paper's
variants of them; the AlexNets are in alexnet.py."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import global_avg_pool, layer_options, max_pool, versatile_variant
from kshapes_jax.models.registry import ANY_KIND, kind_for, register, register_row
from kshapes_jax.nn import ConvBN, Dense, VersatileConv, conv_bn


def pointwise_bn(cin: int, cout: int, stride: int, rngs: nnx.Rngs, num: dict, channel: dict | None):
  """1x1 conv + BN: plain, or versatile v2's channel windows (`channel`: the layer's options)."""
  if channel is None:
    return conv_bn("plain", cin, cout, 1, stride=stride, padding=0, rngs=rngs, **num)
  layer = VersatileConv(
    cin, cout, 1, stride=stride, padding=0, use_bias=False, rngs=rngs, **channel
  )
  return ConvBN(layer, rngs)


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
    pointwise: dict | None = None,
  ):
    if expansion == 1:  # basic unit: two 3x3
      self.convs = nnx.List([conv_bn(conv, cin, width, 3, stride=stride, rngs=rngs, **options)])
      self.convs.append(conv_bn(conv, self.convs[0].out_features, width, 3, rngs=rngs, **options))
    else:
      inner = inner or width
      first = pointwise_bn(cin, inner, 1, rngs, num, pointwise)
      mid = conv_bn(
        conv, first.out_features, inner, 3, stride=stride, rngs=rngs, groups=groups, **options
      )
      last = pointwise_bn(mid.out_features, width * expansion, 1, rngs, num, pointwise)
      self.convs = nnx.List([first, mid, last])
    out = self.convs[-1].out_features
    changed = stride != 1 or cin != out
    self.shortcut = pointwise_bn(cin, out, stride, rngs, num, pointwise) if changed else None
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
  x `base_width`) for 224x224 inputs.

  With conv="versatile", `variant` "v1" (the default) makes the stem and
  every 3x3 conv spatial versatile filters, s = ceil(d / 2) fewer filters
  for the same maps (Versatile-ResNet-50); "v2" gives every conv but the
  stem channel windows too, the 1x1 ones included (Versatile v2-ResNet-50
  and v2-ResNeXt-50, Table 4 of the versatile paper).
  """

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
    variant: str | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    first, options, v2 = versatile_variant(conv, variant, options)
    # a kind that is 3x3 only (RotateConv) leaves the 7x7 stem plain
    stem_kind = kind_for(conv, 7)
    self.stem = conv_bn(
      stem_kind, 3, 64, 7, stride=2, rngs=rngs, **(first if stem_kind == conv else num)
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
          pointwise=options if v2 else None,
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
  kinds=ANY_KIND,
  input_shape=(224, 224, 3),
  paper="ACNet Table 3 (accounting)",
  num_classes=1000,
)
def resnet18(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return ImageNetResNet((2, 2, 2, 2), 1, conv, num_classes, rngs=rngs, **kw)


@register(
  "resnet50",
  kinds=ANY_KIND,
  input_shape=(224, 224, 3),
  paper="Versatile Table 1/4 (accounting)",
  num_classes=1000,
)
def resnet50(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return ImageNetResNet((3, 4, 6, 3), 4, conv, num_classes, rngs=rngs, **kw)


@register(
  "resnext50_32x4d",
  kinds=ANY_KIND,
  input_shape=(224, 224, 3),
  paper="Versatile Table 4 (ResNeXt-50)",
  num_classes=1000,
)
def resnext50_32x4d(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  """ResNeXt-50 32x4d (Xie et al. 2017; torchvision's resnext50_32x4d: 25,028,904 parameters)."""
  return ImageNetResNet(
    (3, 4, 6, 3), 4, conv, num_classes, rngs=rngs, groups=32, base_width=4, **kw
  )


# the versatile paper's Table 4 rows of them
for _name, _of, _variant, _row in (
  ("versatile_resnet50", "resnet50", "v1", "Versatile-ResNet-50"),
  ("versatile_v2_resnet50", "resnet50", "v2", "Versatile v2-ResNet-50"),
  ("versatile_v2_resnext50", "resnext50_32x4d", "v2", "Versatile v2-ResNeXt-50"),
):
  register_row(
    _name, _of, kinds=("versatile",), paper=f"Versatile Table 4 ({_row})", variant=_variant
  )
