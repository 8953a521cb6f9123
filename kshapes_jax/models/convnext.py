"""ConvNeXt (Liu et al., CVPR 2022) with its depthwise 7x7 convs plain or DCLS, as in
ConvNeXt-dcls (Khalfaoui-Hassani et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.typing import DTypeLike

from kshapes_jax.models.layers import global_avg_pool, layer_options
from kshapes_jax.models.registry import register
from kshapes_jax.nn import Dense, PlainConv, make_conv

# ConvNeXt-dcls's depthwise DCLS: kernel_count per model, a 17 x 17 window (convnext_dcls.py)
DCLS_EXTENT = 17


class ConvNeXtBlock(nnx.Module):
  """dwconv 7x7 (the kind) -> LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale ->
  drop path, added to the input (ConvNeXt's Block, channels-last)."""

  def __init__(
    self,
    conv: str,
    dim: int,
    drop_path: float,
    layer_scale: float,
    rngs: nnx.Rngs,
    options: dict[str, Any],
    num: dict[str, Any],
  ):
    self.dwconv = make_conv(conv, dim, dim, 7, groups=dim, use_bias=True, rngs=rngs, **options)
    self.norm = nnx.LayerNorm(dim, epsilon=1e-6, dtype=num["dtype"], rngs=rngs)
    self.pwconv1 = Dense(dim, 4 * dim, rngs=rngs, **num)
    self.pwconv2 = Dense(4 * dim, dim, rngs=rngs, **num)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32)) if layer_scale > 0 else None
    # timm's DropPath: a whole residual branch dropped per example, the rest scaled by 1 / keep
    self.drop_path = (
      nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs) if drop_path > 0 else None
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.pwconv2(jax.nn.gelu(self.pwconv1(self.norm(self.dwconv(x))), approximate=False))
    if self.gamma is not None:
      y = y * self.gamma[...].astype(y.dtype)
    if self.drop_path is not None:
      y = self.drop_path(y)
    return x + y


class ConvNeXt(nnx.Module):
  """ConvNeXt: a 4x4 stride-4 stem + LayerNorm, four stages of `depths` blocks of `dims` maps
  with LayerNorm + 2x2 stride-2 convs between them, global average pooling, LayerNorm and the
  classifier (the official `ConvNeXt`, channels-last).

  Args:
    depths, dims: the stages' block counts and widths.
    conv: the kind of the depthwise 7x7 convs: "plain" (ConvNeXt) or "dcls" (ConvNeXt-dcls:
      `dcls_kernel_count` elements in a 17 x 17 window, conv_options override).
    drop_path_rate: stochastic depth, rising linearly from 0 to it over the blocks.
    layer_scale: the layer scale's initial value (0: none).
    dcls_kernel_count: the DCLS elements per channel (34 for -T, 40 for -S and -B).
    share_positions: one DCLS position set per stage, shared by its blocks, as ConvNeXt-dcls.

  The convs, classifier and layer scales use the library's initializations (He-normal convs,
  nnx.Linear's default), not ConvNeXt's truncated normal(0.02); the parameters are the
  official models'.
  """

  def __init__(
    self,
    depths: tuple[int, ...] = (3, 3, 9, 3),
    dims: tuple[int, ...] = (96, 192, 384, 768),
    conv: str = "plain",
    num_classes: int = 1000,
    *,
    rngs: nnx.Rngs,
    drop_path_rate: float = 0.0,
    layer_scale: float = 1e-6,
    dcls_kernel_count: int = 34,
    share_positions: bool = True,
    conv_options: dict[str, Any] | None = None,
    precision: lax.PrecisionLike = None,
    dtype: DTypeLike | None = None,
  ):
    if not 0 <= drop_path_rate < 1:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if len(depths) != len(dims):
      raise ValueError(f"one depth per stage width, got depths={depths} and dims={dims}")
    if conv == "dcls":
      conv_options = {
        "kernel_count": dcls_kernel_count,
        "extent": DCLS_EXTENT,
        **(conv_options or {}),
      }
    options, num = layer_options(conv_options, precision, dtype)
    norm = {"epsilon": 1e-6, "dtype": num["dtype"], "rngs": rngs}
    self.stem = PlainConv(3, dims[0], 4, stride=4, padding=0, use_bias=True, rngs=rngs, **num)
    self.stem_norm = nnx.LayerNorm(dims[0], **norm)
    self.downsample_norms = nnx.List([nnx.LayerNorm(dims[i], **norm) for i in range(len(dims) - 1)])
    self.downsamples = nnx.List(
      [
        PlainConv(dims[i], dims[i + 1], 2, stride=2, padding=0, use_bias=True, rngs=rngs, **num)
        for i in range(len(dims) - 1)
      ]
    )
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    self.stages: nnx.List[nnx.List[ConvNeXtBlock]] = nnx.List()
    index = 0
    for depth, dim in zip(depths, dims):
      blocks: list[ConvNeXtBlock] = []
      for _ in range(depth):
        shared = {}
        if share_positions and conv == "dcls" and blocks:  # the stage's first block's set
          shared = {"shared_positions": cast(Any, blocks[0].dwconv).positions}
        block = ConvNeXtBlock(
          conv, dim, rates[index], layer_scale, rngs, {**options, **shared}, num
        )
        index += 1
        blocks.append(block)
      self.stages.append(nnx.List(blocks))
    self.norm = nnx.LayerNorm(dims[-1], **norm)
    self.head = Dense(dims[-1], num_classes, rngs=rngs, **num)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.stem_norm(self.stem(x))
    for s, stage in enumerate(self.stages):
      if s:
        x = self.downsamples[s - 1](self.downsample_norms[s - 1](x))
      for block in stage:
        x = block(x)
    return self.head(self.norm(global_avg_pool(x)))


def _register(name: str, row: str, depths, dims, count: int, top1: str) -> None:
  @register(
    name,
    kinds=("plain", "dcls"),
    input_shape=(224, 224, 3),
    paper=f"ConvNeXt-dcls README ({row}: {top1} ImageNet-1k top-1, plain / dcls)",
    num_classes=1000,
  )
  def build(conv, num_classes: int, rngs: nnx.Rngs, **kw):
    kw.setdefault("dcls_kernel_count", count)
    return ConvNeXt(depths, dims, conv, num_classes, rngs=rngs, **kw)


# convnext_dcls.py: -T kernel_count 34, -S and -B 40; top-1 from the ConvNeXt-dcls README
_register("convnext_t", "ConvNeXt-T", (3, 3, 9, 3), (96, 192, 384, 768), 34, "82.1 / 82.5")
_register("convnext_s", "ConvNeXt-S", (3, 3, 27, 3), (96, 192, 384, 768), 40, "83.1 / 83.7")
_register("convnext_b", "ConvNeXt-B", (3, 3, 27, 3), (128, 256, 512, 1024), 40, "83.8 / 84.1")
