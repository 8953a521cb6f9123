"""RepVGG-A/B (Ding et al., CVPR 2021): a VGG-style stack of 3x3 blocks with ReLU, trained as
RepVGGBlocks (conv="repvgg", or any kind) and deployed as plain 3x3 convs."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import global_avg_pool, layer_options
from kshapes_jax.models.registry import KindsTaking, register
from kshapes_jax.nn import Dense, conv_bn


class RepVGG(nnx.Module):
  """RepVGG: a 3x3 stride-2 stem of min(64, 64 a) maps, four stages of `blocks` 3x3 convs (the
  first of each at stride 2) of 64 a, 128 a, 256 a and 512 b maps, each followed by ReLU;
  global average pooling and the classifier. As the official `RepVGG` (repvgg.py) without
  grouped layers or SE.

  Args:
    blocks: the four stages' block counts.
    widths: the width multipliers (a, a, a, b).
    conv: the conv kind of every 3x3 layer; "repvgg" is the paper's block, "plain" its VGG.
  """

  def __init__(
    self,
    blocks: tuple[int, int, int, int],
    widths: tuple[float, float, float, float],
    conv: str = "repvgg",
    num_classes: int = 1000,
    *,
    rngs: nnx.Rngs,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    c = min(64, int(64 * widths[0]))
    self.layers: nnx.List[nnx.Module] = nnx.List(
      [conv_bn(conv, 3, c, 3, stride=2, padding=1, rngs=rngs, **options)]
    )
    for count, base, width in zip(blocks, (64, 128, 256, 512), widths):
      for i in range(count):
        layer = conv_bn(
          conv, c, int(base * width), 3, stride=2 if i == 0 else 1, padding=1, rngs=rngs, **options
        )
        self.layers.append(layer)
        c = layer.out_features
    self.fc = Dense(c, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return self.fc(global_avg_pool(x))


def _register(name: str, row: str, blocks, widths, top1: float) -> None:
  @register(
    name,
    kinds=KindsTaking((3,), default="repvgg"),
    input_shape=(224, 224, 3),
    paper=f"RepVGG Table 4 ({row}: {top1} top-1)",
    num_classes=1000,
  )
  def build(conv, num_classes: int, rngs: nnx.Rngs, **kw):
    return RepVGG(blocks, widths, conv, num_classes, rngs=rngs, **kw)


# the paper's Table 4 (120 epochs, simple augmentation)
_register("repvgg_a0", "RepVGG-A0", (2, 4, 14, 1), (0.75, 0.75, 0.75, 2.5), 72.41)
_register("repvgg_a1", "RepVGG-A1", (2, 4, 14, 1), (1.0, 1.0, 1.0, 2.5), 74.46)
_register("repvgg_b0", "RepVGG-B0", (4, 6, 16, 1), (1.0, 1.0, 1.0, 2.5), 75.14)
