"""VGG-16 for CIFAR (ACNet's baseline): 13 3x3 conv-BN-ReLU layers, 5 max-pools."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import layer_options, max_pool
from kshapes_jax.models.registry import ANY_KIND, register
from kshapes_jax.nn import Dense, conv_bn

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nnx.Module):
  """VGG-16 with BN for 32x32 inputs; classifier 512 -> 512 -> classes."""

  def __init__(
    self,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    conv_options: dict[str, Any] | None = None,
    plan=VGG16,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    self.plan = tuple(plan)
    self.convs: nnx.List[nnx.Module] = nnx.List()
    c = 3
    for item in self.plan:
      if item != "M":
        layer = conv_bn(conv, c, item, 3, rngs=rngs, **options)
        self.convs.append(layer)
        c = layer.out_features
    self.fc1 = Dense(c, 512, rngs=rngs, **num)
    self.fc2 = Dense(512, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    layers = iter(self.convs)
    for item in self.plan:
      x = max_pool(x, 2, 2) if item == "M" else jax.nn.relu(next(layers)(x))
    x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.fc2(x)


@register("vgg16", kinds=ANY_KIND, input_shape=(32, 32, 3), paper="ACNet Table 1-2")
def vgg16(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return VGG(conv, num_classes, rngs=rngs, **kw)
