"""Weights from and to the papers' official PyTorch modules, as plain arrays keyed as they name
them.

  layer = kshapes_jax.nn.ACBlock(64, 64, 3, padding=1, rngs=nnx.Rngs(0))
  layer = load_acblock(layer, torch_state_dict)          # ACNet's acb.ACBlock (training form)
  state = acblock_state_dict(layer)                      # and back: {name: np.ndarray}

  layer = kshapes_jax.nn.VersatileConv(64, 128, 3, padding=1, bias="separate", channel_delta=1,
                                       rngs=...)
  layer = load_vconv2d(layer, torch_state_dict)          # Versatile-Filters' vcnn.VConv2d
  layer = load_dbb(layer, torch_state_dict)              # DiverseBranchBlock (training form)
  layer = load_repvgg(layer, torch_state_dict)           # RepVGG's RepVGGBlock (training form)
                                                         # or QARepVGG's block (bn="qa")
  layer = load_dcls(layer, torch_state_dict)             # DCLS's Dcls2d (v1 or gauss)

The functions take any mapping of names to arrays (a torch state_dict's
tensors are converted with numpy()), so they need no torch; they return a
new layer and leave the one given unchanged. Layouts: PyTorch convs are
(O, I, kh, kw), ours (kh, kw, I, O). BN statistics are copied as they are:
both frameworks normalize by the running variance in eval mode, so the
outputs agree (PyTorch accumulates the unbiased batch variance, Flax the
biased one; that changes only later updates, by a factor n / (n - 1) with n
the images x pixels of a batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kshapes_jax.nn.acb import ACBlock
from kshapes_jax.nn.dbb import DiverseBranchBlock
from kshapes_jax.nn.dcls import DclsConv
from kshapes_jax.nn.repvgg import RepVGGBlock
from kshapes_jax.nn.versatile import VersatileConv

__all__ = [
  "load_acblock",
  "acblock_state_dict",
  "load_vconv2d",
  "vconv2d_state_dict",
  "load_dbb",
  "dbb_state_dict",
  "load_repvgg",
  "repvgg_state_dict",
  "load_dcls",
  "dcls_state_dict",
]

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _array(state: Mapping[str, Any], key: str, shape: tuple[int, ...], what: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f"{what}: the state dict has no {key!r} (keys: {sorted(state)[:12]})")
  value = state[key]
  value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
  if value.shape != shape:
    raise ValueError(f"{what}: {key!r} has shape {value.shape}, expected {shape} for this layer")
  if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.number):
    raise ValueError(f"{what}: {key!r} holds {value.dtype} values, expected numbers")
  if not np.all(np.isfinite(value)):
    raise ValueError(f"{what}: {key!r} holds NaN or infinite values")
  return value


def _torch_kernel(kernel: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))  # HWIO -> OIHW


def _our_kernel(weight: np.ndarray) -> jnp.ndarray:
  return jnp.asarray(np.transpose(weight, (2, 3, 1, 0)))  # OIHW -> HWIO


def _set(param: nnx.Variable, value) -> None:
  param.set_value(jnp.asarray(value, param.get_value().dtype))


def _load_bn(bn: nnx.BatchNorm, state: Mapping[str, Any], name: str, what: str) -> None:
  """A BatchNorm2d's weight, bias, running_mean and running_var (keys `name`.*) into `bn`."""
  for torch_name, ours in _BN.items():
    _set(getattr(bn, ours), _array(state, f"{name}.{torch_name}", (bn.num_features,), what))


def _bn_state(bn: nnx.BatchNorm, name: str) -> dict[str, np.ndarray]:
  """`bn` as a BatchNorm2d's state dict entries under `name`."""
  out = {f"{name}.{t}": np.asarray(getattr(bn, ours).get_value()) for t, ours in _BN.items()}
  out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


def load_acblock(layer: ACBlock, state: Mapping[str, Any], prefix: str = "") -> ACBlock:
  """A copy of `layer` holding an official ACNet ACBlock's weights (its training form).

  Keys (after `prefix`): square_conv.weight (O, I, k, k), hor_conv.weight (O, I, 1, k),
  ver_conv.weight (O, I, k, 1) and square_bn / hor_bn / ver_bn .weight, .bias,
  .running_mean, .running_var (num_batches_tracked is ignored).

  Args:
    layer: an ACBlock with per-branch BN (bn="branch"), the kernels at the centre
      (border=False) and the official block's in/out channels, kernel, stride and padding.
    state: the arrays, e.g. `{k: v.numpy() for k, v in module.state_dict().items()}`.
    prefix: the block's name in a whole net's state dict ("layer1.0.conv1.").

  Raises:
    ValueError: for a missing key, a shape that does not fit the layer, or a layer
      configured unlike the official block.
  """
  if layer.bn_mode != "branch" or layer.border or layer.online:
    raise ValueError(
      "the official ACBlock has a BN per branch and its asymmetric kernels at the centre: "
      f"expected bn='branch', border=False, online=False, got bn={layer.bn_mode!r}, "
      f"border={layer.border}, online={layer.online}"
    )
  copy = nnx.clone(layer)
  k, i, o, m = layer.kernel_size, layer.in_features, layer.out_features, layer.asym_size
  what = f"ACBlock({i}, {o}, {k})"
  for name, shape in (("square", (o, i, k, k)), ("hor", (o, i, 1, m)), ("ver", (o, i, m, 1))):
    param = getattr(copy, name)
    if param is None:
      if f"{prefix}{name}_conv.weight" in state:
        raise ValueError(
          f"{what}: the state dict has a {name} branch; the layer has none (asymmetric=...)"
        )
      continue
    _set(param, _our_kernel(_array(state, f"{prefix}{name}_conv.weight", shape, what)))
    _load_bn(getattr(copy, f"{name}_bn"), state, f"{prefix}{name}_bn", what)
  return copy


def acblock_state_dict(layer: ACBlock, prefix: str = "") -> dict[str, np.ndarray]:
  """The official ACBlock's state dict of an ACBlock (bn='branch'): float32 arrays, OIHW kernels."""
  if layer.bn_mode != "branch" or layer.border or layer.online:
    raise ValueError(
      "only an ACBlock with bn='branch', border=False and online=False has an official counterpart"
    )
  out: dict[str, np.ndarray] = {}
  for name in ("square", "hor", "ver"):
    param = getattr(layer, name)
    if param is None:
      continue
    out[f"{prefix}{name}_conv.weight"] = _torch_kernel(param.get_value())
    out.update(_bn_state(getattr(layer, f"{name}_bn"), f"{prefix}{name}_bn"))
  return out


def _check_vconv(layer: VersatileConv) -> None:
  if (layer.mode, layer.bias_mode, layer.channel_delta, layer.channel_stride) != (
    "spatial",
    "separate",
    1,
    1,
  ) or layer.bias is None:
    raise ValueError(
      "the official VConv2d is spatial and channel versatile with c - c^ = 1, g = 1 and a bias "
      "per output map: expected mode='spatial', bias='separate', channel_delta=1, "
      f"channel_stride=1, use_bias=True; got mode={layer.mode!r}, bias={layer.bias_mode!r}, "
      f"channel_delta={layer.channel_delta}, channel_stride={layer.channel_stride}, "
      f"use_bias={layer.bias is not None}"
    )


def load_vconv2d(layer: VersatileConv, state: Mapping[str, Any], prefix: str = "") -> VersatileConv:
  """A copy of `layer` holding an official Versatile-Filters VConv2d's weights.

  VConv2d stores F = O / (2 s) primary filters over all c input channels, (F, c, k, k),
  and reads only the first c^ = c - 1 of them (eq. 8 with c - c^ = 1, g = 1); its output
  map (scale i, window j, filter o) is at (2 i + j) F + o, as ours. `weight[:, c - 1]`
  never reaches the output and is dropped; a bias per map is kept.

  Args:
    layer: VersatileConv(c, O, k, mode="spatial", bias="separate", channel_delta=1,
      channel_stride=1) with the official module's stride and padding.
    state: the arrays (weight (F, c, k, k), bias (O,)).
    prefix: the module's name in a whole net's state dict.

  Raises:
    ValueError: for a missing key, a shape that does not fit or a layer unlike VConv2d.
  """
  _check_vconv(layer)
  copy = nnx.clone(layer)
  k, c, f = layer.kernel_size, layer.in_features, layer.filters
  what = f"VConv2d({c}, {layer.out_features}, {k})"
  weight = _array(state, f"{prefix}weight", (f, c, k, k), what)
  _set(copy.f, _our_kernel(weight[:, : layer.window]))
  if copy.bias is not None:  # _check_vconv: a VConv2d has its bias
    _set(copy.bias, _array(state, f"{prefix}bias", (layer.out_features,), what))
  return copy


def vconv2d_state_dict(layer: VersatileConv, prefix: str = "") -> dict[str, np.ndarray]:
  """The official VConv2d's state dict of a VersatileConv like it (the unread last channel zero)."""
  _check_vconv(layer)
  weight = _torch_kernel(layer.f.get_value())  # (F, c^, k, k)
  weight = np.concatenate([weight, np.zeros_like(weight[:, :1])], axis=1)
  bias = np.zeros(layer.out_features) if layer.bias is None else np.asarray(layer.bias.get_value())
  return {f"{prefix}weight": weight, f"{prefix}bias": bias}


def _offline(layer: DiverseBranchBlock | RepVGGBlock, official: str) -> None:
  if layer.online:
    raise ValueError(
      f"the official {official} trains a BN per branch; this layer trains online (online=True, "
      "branch scales and one BN) and has no official counterpart"
    )


def _dbb_parts(layer: DiverseBranchBlock) -> list[tuple[str, str, tuple[int, ...]]]:
  """(official key, our kernel, official shape) per conv of a DBB."""
  i, o, k, g = layer.in_features, layer.out_features, layer.kernel_size, layer.groups
  t = layer.internal_channels
  parts: list[tuple[str, str, tuple[int, ...]]] = [
    ("dbb_origin.conv.weight", "origin", (o, i // g, k, k))
  ]
  if not layer.depthwise:
    parts.append(("dbb_1x1.conv.weight", "one", (o, i // g, 1, 1)))
    parts.append(("dbb_avg.conv.weight", "avg_conv", (o, i // g, 1, 1)))
  first = "dbb_1x1_kxk.idconv1.weight" if layer.identity_based else "dbb_1x1_kxk.conv1.weight"
  parts.append((first, "first", (t, i // g, 1, 1)))
  parts.append(("dbb_1x1_kxk.conv2.weight", "second", (o, t // g, k, k)))
  return parts


_DBB_BNS = {
  "dbb_origin.bn": "origin_bn",
  "dbb_1x1.bn": "one_bn",
  "dbb_avg.bn.bn": "avg_pad_bn",
  "dbb_avg.avgbn": "avg_bn",
  "dbb_1x1_kxk.bn1.bn": "first_bn",
  "dbb_1x1_kxk.bn2": "second_bn",
}


def load_dbb(
  layer: DiverseBranchBlock, state: Mapping[str, Any], prefix: str = ""
) -> DiverseBranchBlock:
  """A copy of `layer` holding an official DiverseBranchBlock's weights (its training form).

  Keys (after `prefix`): dbb_origin.conv.weight, dbb_1x1.conv.weight, dbb_avg.conv.weight,
  dbb_1x1_kxk.idconv1.weight (conv1.weight where internal_channels != in), and
  dbb_1x1_kxk.conv2.weight; the BNs dbb_origin.bn, dbb_1x1.bn, dbb_avg.bn.bn (BNAndPadLayer),
  dbb_avg.avgbn, dbb_1x1_kxk.bn1.bn and dbb_1x1_kxk.bn2 (.weight, .bias, .running_mean,
  .running_var; num_batches_tracked is ignored). A depthwise block has no dbb_1x1 and no
  dbb_avg.conv. The idconv1 weight is, as ours, the difference from the identity.

  Args:
    layer: a DiverseBranchBlock (online=False) with the official block's in/out channels,
      kernel, stride, groups and internal_channels_1x1_3x3.
    state: the arrays, e.g. `{k: v.numpy() for k, v in module.state_dict().items()}`.
    prefix: the block's name in a whole net's state dict.

  Raises:
    ValueError: for a missing key, a shape that does not fit the layer, or an online layer.
  """
  _offline(layer, "DiverseBranchBlock")
  copy = nnx.clone(layer)
  what = f"DiverseBranchBlock({layer.in_features}, {layer.out_features}, {layer.kernel_size})"
  for key, ours, shape in _dbb_parts(layer):
    _set(getattr(copy, ours), _our_kernel(_array(state, prefix + key, shape, what)))
  if layer.depthwise and f"{prefix}dbb_1x1.conv.weight" in state:
    raise ValueError(f"{what}: the state dict has a dbb_1x1 branch; a depthwise block has none")
  for key, ours in _DBB_BNS.items():
    if getattr(copy, ours) is not None:
      _load_bn(getattr(copy, ours), state, prefix + key, what)
  return copy


def dbb_state_dict(layer: DiverseBranchBlock, prefix: str = "") -> dict[str, np.ndarray]:
  """The official DiverseBranchBlock's state dict of a DiverseBranchBlock (online=False)."""
  _offline(layer, "DiverseBranchBlock")
  out: dict[str, np.ndarray] = {}
  for key, ours, _ in _dbb_parts(layer):
    out[prefix + key] = _torch_kernel(getattr(layer, ours).get_value())
  for key, ours in _DBB_BNS.items():
    if getattr(layer, ours) is not None:
      out.update(_bn_state(getattr(layer, ours), prefix + key))
  return out


# (official kernel key, our kernel, official BN, our BN): None where the branch has no such part
_Part = tuple[str | None, str | None, str | None, str | None]


def _repvgg_parts(layer: RepVGGBlock) -> list[_Part]:
  """(official kernel key, our kernel, official BN, our BN) per branch of a RepVGGBlock: the
  official RepVGGBlock's, or QARepVGGBlockV2's for bn="qa" (a plain 1x1, one BN after the sum)."""
  dense: _Part = ("rbr_dense.conv.weight", "dense", "rbr_dense.bn", "dense_bn")
  if layer.bn_mode == "qa":
    return [dense, ("rbr_1x1.weight", "one", None, None), (None, None, "bn", "bn")]
  parts = [dense, ("rbr_1x1.conv.weight", "one", "rbr_1x1.bn", "one_bn")]
  if layer.has_identity:
    parts.append((None, None, "rbr_identity", "identity_bn"))
  return parts


def load_repvgg(layer: RepVGGBlock, state: Mapping[str, Any], prefix: str = "") -> RepVGGBlock:
  """A copy of `layer` holding an official RepVGGBlock's weights (its training form).

  Keys (after `prefix`): rbr_dense.conv.weight (O, I, k, k), rbr_1x1.conv.weight (O, I, 1, 1),
  the BNs rbr_dense.bn, rbr_1x1.bn and, where in == out and stride 1, rbr_identity (.weight,
  .bias, .running_mean, .running_var; num_batches_tracked is ignored). For a layer with
  bn="qa", the official QARepVGGBlockV2's (cxxgtxy/QARepVGG): rbr_dense.conv.weight, the BN
  rbr_dense.bn, rbr_1x1.weight (a plain conv) and the BN after the sum, bn; its identity has
  no weights.

  Args:
    layer: a RepVGGBlock (online=False) with the official block's in/out channels, stride and
      groups (the official one: kernel 3, padding 1).
    state: the arrays, e.g. `{k: v.numpy() for k, v in module.state_dict().items()}`.
    prefix: the block's name in a whole net's state dict ("stage1.0.").

  Raises:
    ValueError: for a missing key, a shape that does not fit the layer, an identity branch in
      the state dict the layer has not (or the other way round), or an online layer.
  """
  _offline(layer, "RepVGGBlock")
  copy = nnx.clone(layer)
  i, o, k, g = layer.in_features, layer.out_features, layer.kernel_size, layer.groups
  what = f"RepVGGBlock({i}, {o}, {k}, stride={layer.stride})"
  if layer.bn_mode == "branch" and (f"{prefix}rbr_identity.weight" in state) != layer.has_identity:
    raise ValueError(
      f"{what}: the state dict {'has' if not layer.has_identity else 'has no'} an identity "
      f"branch (rbr_identity), the layer {'has' if layer.has_identity else 'has none'}: the "
      "official block has one exactly where in == out and stride 1"
    )
  shapes = {"dense": (o, i // g, k, k), "one": (o, i // g, 1, 1)}
  for key, ours, bn_key, bn_name in _repvgg_parts(layer):
    if key is not None and ours is not None:
      _set(getattr(copy, ours), _our_kernel(_array(state, prefix + key, shapes[ours], what)))
    if bn_key is not None and bn_name is not None:
      _load_bn(getattr(copy, bn_name), state, prefix + bn_key, what)
  return copy


def repvgg_state_dict(layer: RepVGGBlock, prefix: str = "") -> dict[str, np.ndarray]:
  """The official RepVGGBlock's state dict of a RepVGGBlock (online=False); QARepVGGBlockV2's
  for bn="qa"."""
  _offline(layer, "RepVGGBlock")
  out: dict[str, np.ndarray] = {}
  for key, ours, bn_key, bn_name in _repvgg_parts(layer):
    if key is not None and ours is not None:
      out[prefix + key] = _torch_kernel(getattr(layer, ours).get_value())
    if bn_key is not None and bn_name is not None:
      out.update(_bn_state(getattr(layer, bn_name), prefix + bn_key))
  return out


def load_dcls(layer: DclsConv, state: Mapping[str, Any], prefix: str = "") -> DclsConv:
  """A copy of `layer` holding an official `Dcls2d`'s weights.

  Keys (after `prefix`): weight (O, I / groups, K), P (2, O, I / groups, K) with P[0] the column
  (x) and P[1] the row (y) offset, SIG (2, O, I / groups, K) for version="gauss", and bias (O)
  where the layer has one. The official `Dcls2d(I, O, kernel_count=K, dilated_kernel_size=E,
  padding=p, groups=g, version=...)` is `DclsConv(I, O, k, kernel_count=K, extent=E, groups=g,
  padding=p - (E // 2 - k // 2), interpolation=...)` for any nominal k (so that
  `conv_padding == p`), with version "v1" -> "bilinear", "gauss" -> "gauss" (square E only:
  the official layer centres and clamps P[0], the column offset, with E[0] // 2, the height's,
  and P[1], the row offset, with E[1] // 2, which for E[0] != E[1] puts its elements' origin off
  the window's centre; our windows are square, and `kernels.dcls_kernel` centres each axis on
  its own half).

  Args:
    layer: a DclsConv whose kernel_count, channels, groups and interpolation are the module's.
    state: the arrays, e.g. `{k: v.numpy() for k, v in module.state_dict().items()}`.
    prefix: the layer's name in a whole net's state dict ("stages.0.0.dwconv.").

  Raises:
    ValueError: for a missing key, a shape that does not fit the layer, a SIG for a bilinear
      layer (or none for a Gaussian one), or a bias that only one side has.
  """
  copy = nnx.clone(layer)
  kc, o, cin = layer.kernel_count, layer.out_features, layer.in_features // layer.groups
  what = f"DclsConv({layer.in_features}, {o}, kernel_count={kc}, {layer.interpolation})"
  if (prefix + "SIG" in state) != (layer.interpolation == "gauss"):
    raise ValueError(
      f"{what}: the state dict {'has' if prefix + 'SIG' in state else 'has no'} SIG "
      "(version='gauss' has one, 'v1' none): build the layer with the module's interpolation"
    )
  if (prefix + "bias" in state) != (layer.bias is not None):
    raise ValueError(
      f"{what}: the state dict {'has' if prefix + 'bias' in state else 'has no'} bias, the layer "
      f"{'has' if layer.bias is not None else 'has none'}: build it with use_bias="
      f"{prefix + 'bias' in state}"
    )
  weight = _array(state, prefix + "weight", (o, cin, kc), what)
  _set(copy.weights, np.transpose(weight, (2, 1, 0)))
  positions = _array(state, prefix + "P", (2, o, cin, kc), what)
  _set(copy.positions, np.transpose(positions, (3, 2, 1, 0)))
  if copy.sigmas is not None:
    _set(
      copy.sigmas, np.transpose(_array(state, prefix + "SIG", (2, o, cin, kc), what), (3, 2, 1, 0))
    )
  if copy.bias is not None:
    _set(copy.bias, _array(state, prefix + "bias", (o,), what))
  return copy


def dcls_state_dict(layer: DclsConv, prefix: str = "") -> dict[str, np.ndarray]:
  """The official Dcls2d's state dict of a DclsConv (`load_dcls`'s layouts)."""
  out = {
    prefix + "weight": np.transpose(np.asarray(layer.weights.get_value()), (2, 1, 0)),
    prefix + "P": np.transpose(np.asarray(layer.positions.get_value()), (3, 2, 1, 0)),
  }
  if layer.sigmas is not None:
    out[prefix + "SIG"] = np.transpose(np.asarray(layer.sigmas.get_value()), (3, 2, 1, 0))
  if layer.bias is not None:
    out[prefix + "bias"] = np.asarray(layer.bias.get_value())
  return out
