"""The papers' small networks: SN (RotateConv), LeNet (versatile), Cifar-quick (ACNet), ACU
plain."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import avg_pool, global_avg_pool, layer_options, max_pool
from kshapes_jax.models.registry import ANY_KIND, KindsTaking, register
from kshapes_jax.nn import Dense, PlainConv, conv_bn, get_kind, make_conv


def _conv(kind, cin: int, cout: int, k, rngs: nnx.Rngs, options, **kw):
  """A conv with bias for networks without BN (a kind that ends in its own BN, as ACB's, needs
  none)."""
  bias = not get_kind(kind).normalizes
  return make_conv(kind, cin, cout, k, use_bias=bias, rngs=rngs, **kw, **options)


class SimpleNet(nnx.Module):
  """SN of the RotateConv paper (MNIST): convs of 20, 50, 50, 50 channels.

  The first three 3x3 convs (padding 1) are each followed by ReLU and a
  2x2 / 2 max-pool (28 -> 14 -> 7 -> 3); the last 3x3 conv is VALID
  (3 -> 1), then ReLU and the inner-product classifier. 55k / 25k / 13k
  parameters for versions 9 / 4 / 2 (Table I).
  """

  def __init__(
    self,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    in_channels: int = 1,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    self.convs: nnx.List[nnx.Module] = nnx.List()
    cin = in_channels
    for i, cout in enumerate((20, 50, 50, 50)):
      layer = _conv(conv, cin, cout, 3, rngs, options, padding=0 if i == 3 else 1)
      self.convs.append(layer)
      cin = layer.out_features
    self.fc = Dense(cin, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    for i, layer in enumerate(self.convs):
      x = jax.nn.relu(layer(x))
      if i < 3:
        x = max_pool(x, 2, 2)
    return self.fc(x.reshape(x.shape[0], -1))


@register("sn", kinds=ANY_KIND, input_shape=(28, 28, 1), paper="RotateConv Table I")
def sn(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return SimpleNet(conv, num_classes, rngs=rngs, **kw)


# The versatile paper's LeNet variants: (mode, bias, c - c^, g) per swapped layer.
LENET_VARIANTS: dict[str, dict[str, Any] | None] = {
  "baseline": None,
  "model1": dict(mode="sum"),  # eq. 4
  "model2": dict(mode="spatial", bias="separate"),  # eq. 3, b_1..b_s
  "model3": dict(mode="spatial", bias="shared"),  # eq. 3, shared bias
  "v2_model1": dict(mode="spatial", bias="shared", channel_delta=1, channel_stride=1),
  "v2_model3": dict(mode="spatial", bias="shared", channel_delta=2, channel_stride=1),
}


class LeNet(nnx.Module):
  """LeNet of the versatile paper (MNIST, MatConvNet): 5x5x1x20, 5x5x20x50, 4x4x50x500, 1x1x500x10.

  VALID convs with 2x2 max-pools after the first two and a ReLU after the
  third. With `conv="versatile"`, `variant` picks the paper's Model 1/2/3 or
  v2 Model 1/3; channel windows are not used in the first and last layer,
  as in the paper. (v2 Model 2, c - c^ = 1 with g = 2, does not tile the
  channels and is not representable by eq. 8.)
  """

  def __init__(
    self,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    in_channels: int = 1,
    variant=None,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    if conv == "versatile":
      variant = variant or "model3"
      swapped = LENET_VARIANTS.get(variant)
      if swapped is None:
        raise ValueError(
          f"versatile LeNet variant must be one of {sorted(LENET_VARIANTS)[1:]}, got {variant!r}"
        )
      options = {**swapped, **options}
    channel = {k: options.pop(k) for k in ("channel_delta", "channel_stride") if k in options}
    self.convs: nnx.List[nnx.Module] = nnx.List()
    cin = in_channels
    for i, (cout, k) in enumerate(((20, 5), (50, 5), (500, 4))):
      extra = channel if (conv == "versatile" and i > 0) else {}
      layer = _conv(conv, cin, cout, k, rngs, {**options, **extra}, padding=0)
      self.convs.append(layer)
      cin = layer.out_features
    self.classifier = PlainConv(cin, num_classes, 1, padding=0, use_bias=True, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = max_pool(self.convs[0](x), 2, 2)
    x = max_pool(self.convs[1](x), 2, 2)
    x = jax.nn.relu(self.convs[2](x))
    return self.classifier(x).reshape(x.shape[0], -1)


@register(
  "lenet",
  kinds=("plain", "versatile"),
  input_shape=(28, 28, 1),
  paper="Versatile filters Table 2/3",
)
def lenet(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return LeNet(conv, num_classes, rngs=rngs, **kw)


class CifarQuick(nnx.Module):
  """Caffe's cifar10_quick as ACNet uses it: three 5x5 conv + BN layers (32, 32, 64).

  conv-BN-max-pool(3/2)-ReLU, conv-BN-ReLU-avg-pool(3/2), conv-BN-ReLU-avg-pool(3/2),
  then fc 64 and the classifier. Pools round up like Caffe's (32 -> 16 -> 8 -> 4).
  `in_channels` and `image_size` (square) adapt it to other images, e.g.
  28x28x1 Fashion-MNIST (28 -> 14 -> 7 -> 3).
  """

  def __init__(
    self,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    in_channels: int = 3,
    image_size=32,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    self.convs: nnx.List[nnx.Module] = nnx.List()
    cin = in_channels
    for cout in (32, 32, 64):
      layer = conv_bn(conv, cin, cout, 5, rngs=rngs, **options)
      self.convs.append(layer)
      cin = layer.out_features
    side = image_size
    for _ in range(3):  # Caffe's 3/2 pools round up
      side = -(-(side - 3) // 2) + 1
    if side < 1:
      raise ValueError(
        f"Cifar-quick needs images of at least 3x3 pixels; got image_size={image_size}"
      )
    self.fc1 = Dense(cin * side * side, 64, rngs=rngs, **num)
    self.fc2 = Dense(64, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    ceil = ((0, 1), (0, 1))
    x = jax.nn.relu(max_pool(self.convs[0](x), 3, 2, ceil))
    x = avg_pool(jax.nn.relu(self.convs[1](x)), 3, 2, ceil)
    x = avg_pool(jax.nn.relu(self.convs[2](x)), 3, 2, ceil)
    x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.fc2(x)


@register(
  "cifar_quick",
  kinds=KindsTaking((5,)),
  input_shape=(32, 32, 3),
  paper="ACNet Table 1/2",
  takes_image_size=True,
)
def cifar_quick(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return CifarQuick(conv, num_classes, rngs=rngs, **kw)


class ACUPlainNet(nnx.Module):
  """The plain network of the ACU paper's Table 1 (its official prototxt).

  conv0 1x1 16; two 3x3 convs of 48; 3x3/2 + 3x3 of 96; 3x3/2 + 3x3 of 192;
  fc1 as a 1x1 conv of 1000; every conv followed by BN and ReLU, no biases;
  global average pooling; a 1x1 conv with bias to the classes. The six 3x3
  convs are the ones a kind replaces (ACU: 6 x 8 x 2 = 96 extra parameters).
  `width` scales every layer's channels (0.5: 8, 24, 48, 96, 500), for
  runs that must fit a small machine; the net takes any image size.
  """

  def __init__(
    self,
    conv: str = "plain",
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs,
    in_channels: int = 3,
    width: float = 1.0,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    if width <= 0:
      raise ValueError(f"width must be positive, got {width}")

    def ch(n):
      return max(1, round(n * width))

    self.conv0 = conv_bn("plain", in_channels, ch(16), 1, rngs=rngs, **num)
    self.convs: nnx.List[nnx.Module] = nnx.List()
    cin = ch(16)
    for cout, stride in ((48, 1), (48, 1), (96, 2), (96, 1), (192, 2), (192, 1)):
      layer = conv_bn(conv, cin, ch(cout), 3, stride=stride, rngs=rngs, **options)
      self.convs.append(layer)
      cin = layer.out_features
    self.fc1 = conv_bn("plain", cin, ch(1000), 1, rngs=rngs, **num)
    self.score = Dense(ch(1000), num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = jax.nn.relu(self.conv0(x))
    for layer in self.convs:
      x = jax.nn.relu(layer(x))
    x = jax.nn.relu(self.fc1(x))
    return self.score(global_avg_pool(x))


@register("acu_plain", kinds=ANY_KIND, input_shape=(32, 32, 3), paper="ACU Table 1-2")
def acu_plain(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return ACUPlainNet(conv, num_classes, rngs=rngs, **kw)
