"""The AlexNets of the papers (224 px): the versatile paper's two-group original, its Versatile and
Versatile v2 variants (Table 4), and ACNet's single-tower network with BN (Tables 3-4)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import layer_options, max_pool, versatile_variant
from kshapes_jax.models.registry import ANY_KIND, KindsTaking, kind_for, register, register_row
from kshapes_jax.nn import Dense, VersatileConv, conv_bn, get_kind


def _pooled(side: int) -> int:
  return (side - 3) // 2 + 1  # a 3/2 max-pool without padding


def _final_side(name: str, image_size: int, conv1_padding: int) -> int:
  """The side of conv 5's pooled map for square images (6 for AlexNet at 224, 5 for ACNet's)."""
  side = lambda n: _pooled(_pooled(_pooled((n + 2 * conv1_padding - 11) // 4 + 1)))
  if side(image_size) < 1:
    least = next(n for n in range(11, 224) if side(n) >= 1)
    raise ValueError(
      f"{name} needs images of at least {least}x{least} pixels; got image_size={image_size}"
    )
  return side(image_size)


def _conv_stack(layers, rngs: nnx.Rngs) -> nnx.List:
  """conv + BN units from (kind, maps, kernel, stride, padding, groups, options), each reading the
  one before (from 3 channels)."""
  convs: nnx.List[nnx.Module] = nnx.List()
  cin = 3
  for kind, cout, k, stride, pad, groups, opts in layers:
    layer = conv_bn(
      kind, cin, cout, k, stride=stride, padding=pad, groups=groups, rngs=rngs, **opts
    )
    convs.append(layer)
    cin = layer.out_features
  return convs


def _features(convs: nnx.List, x: jax.Array) -> jax.Array:
  """The five convs with ReLU, 3/2 max-pools after conv 1, 2 and 5: both AlexNets' trunk."""
  for i, layer in enumerate(convs):
    x = jax.nn.relu(layer(x))
    if i in (0, 1, 4):
      x = max_pool(x, 3, 2)
  return x


class AlexNet(nnx.Module):
  """AlexNet (Krizhevsky et al. 2012) with BN after each conv: the versatile paper's baseline.

  11x11x3x96 /4 (padding 2), 5x5x48x256 (2 groups), 3x3x256x384, 3x3x192x384
  (2 groups), 3x3x192x256 (2 groups), 3/2 max-pools after conv 1, 2 and 5,
  then fc 6x6x256 -> 4096 -> 4096 -> classes: 6.1e7 weights (the versatile
  paper's Table 1). A kind replaces all five convs, groups kept.
  `image_size` (square) sizes fc6 for other images: it reads conv 5's
  pooled map whole (6x6 at 224 px).

  conv="versatile" is Versatile-AlexNet (section 4.3): each conv keeps its
  maps with s = ceil(d / 2) times fewer filters (11x11x3x16, 5x5x48x86,
  3x3x258x192, 3x3x192x192, 3x3x192x128) and fc6 becomes a 6x6x256x1366
  versatile conv (1366 x 3 = 4098 maps, which fc7 reads). `variant="v2"`
  adds channel windows (c - c^ = 1, g = 1) to conv 2-5, fc6 and fc7 (a 1x1
  versatile conv), not to conv 1 or the classifier: Versatile v2-AlexNet.
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
    variant: str | None = None,
    image_size: int = 224,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    first, rest, v2 = versatile_variant(conv, variant, options)
    side = _final_side("AlexNet", image_size, conv1_padding=2)
    # (maps, kernel, stride, padding, groups)
    shapes: tuple[tuple[int, int, int, int, int], ...] = (
      (96, 11, 4, 2, 1),
      (256, 5, 1, 2, 2),
      (384, 3, 1, 1, 1),
      (384, 3, 1, 1, 2),
      (256, 3, 1, 1, 2),
    )
    kinds = [kind_for(conv, k) for _, k, *_ in shapes]
    self.convs = _conv_stack(
      [
        (kind_i, *shape, (first if i == 0 else rest) if kind_i == conv else num)
        for i, (kind_i, shape) in enumerate(zip(kinds, shapes))
      ],
      rngs,
    )
    cin = self.convs[-1].out_features
    self.fc1: nnx.Module
    self.fc2: nnx.Module
    if conv == "versatile":
      self.fc1 = VersatileConv(cin, 4096, side, padding=0, use_bias=True, rngs=rngs, **rest)
      fc1_out = self.fc1.out_features
      self.fc2 = (
        VersatileConv(fc1_out, 4096, 1, padding=0, use_bias=True, rngs=rngs, **rest)
        if v2
        else Dense(fc1_out, 4096, rngs=rngs, **num)
      )
    else:
      self.fc1 = Dense(side * side * cin, 4096, rngs=rngs, **num)
      self.fc2 = Dense(4096, 4096, rngs=rngs, **num)
    self.fc3 = Dense(self.fc2.out_features, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = _features(self.convs, x)
    if isinstance(self.fc1, Dense):
      x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(self.fc1(x))  # versatile: a (1, 1) map of 4098 channels
    if isinstance(self.fc2, Dense):
      x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(self.fc2(x))
    return self.fc3(x.reshape(x.shape[0], -1))


@register(
  "alexnet",
  kinds=KindsTaking((11, 5, 3)),
  input_shape=(224, 224, 3),
  paper="Versatile Table 1/4 (AlexNet)",
  num_classes=1000,
  takes_image_size=True,
)
def alexnet(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return AlexNet(conv, num_classes, rngs=rngs, **kw)


for _name, _variant, _row in (
  ("versatile_alexnet", "v1", "Versatile-AlexNet"),
  ("versatile_v2_alexnet", "v2", "Versatile v2-AlexNet"),
):
  register_row(
    _name, "alexnet", kinds=("versatile",), paper=f"Versatile Table 4 ({_row})", variant=_variant
  )


class ACNetAlexNet(nnx.Module):
  """ACNet's AlexNet (section 4.2): TF-slim's alexnet_v2 with BN on every conv.

  Five ungrouped convs, no LRN: 11x11x3x64 /4 (VALID), 5x5x64x192,
  3x3x192x384, 3x3x384x384, 3x3x384x256 (SAME), 3/2 max-pools (VALID) after
  conv 1, 2 and 5, then three fully connected layers 5x5x256 -> 4096 ->
  4096 -> classes (slim's fc6 is a 5x5 VALID conv on the 5x5 map, the same
  product). BN replaces the convs' biases. With conv="acb" every conv is an
  ACB; the 11x11 and 5x5 ones get 1x3 and 3x1 branches, as the paper says
  (`conv_options.asym_size` overrides that). slim's dropout (0.5 after fc6
  and fc7) is left out: the zoo's models hold no random state.
  `image_size` (square) sizes fc6 for other images (5x5x256 at 224 px).
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
    image_size: int = 224,
  ):
    options, num = layer_options(conv_options, precision, dtype)
    side = _final_side("ACNet's AlexNet", image_size, conv1_padding=0)
    # the paper's 1x3 / 3x1 branches in the large layers, for a kind with asymmetric branches
    short = "asym_size" in get_kind(conv).options()
    large = {**options, "asym_size": options.get("asym_size", 3)} if short else options
    shapes = ((64, 11, 4, 0), (192, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1))
    layers = []
    for cout, k, stride, pad in shapes:
      kind = kind_for(conv, k)
      opts = num if kind != conv else large if k > 3 else options
      layers.append((kind, cout, k, stride, pad, 1, opts))
    self.convs = _conv_stack(layers, rngs)
    cin = self.convs[-1].out_features
    self.fc1 = Dense(side * side * cin, 4096, rngs=rngs, **num)
    self.fc2 = Dense(4096, 4096, rngs=rngs, **num)
    self.fc3 = Dense(4096, num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array):
    x = _features(self.convs, x)
    x = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
    x = jax.nn.relu(self.fc2(x))
    return self.fc3(x)


@register(
  "acnet_alexnet",
  kinds=ANY_KIND,
  input_shape=(224, 224, 3),
  paper="ACNet Table 3/4 (AlexNet)",
  num_classes=1000,
  takes_image_size=True,
)
def acnet_alexnet(conv, num_classes: int, rngs: nnx.Rngs, **kw):
  return ACNetAlexNet(conv, num_classes, rngs=rngs, **kw)
