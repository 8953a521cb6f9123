"""The shaped convs for Linen models (big_vision, Scenic and the like): `ShapedConv`, and `deploy`
for the variables of a network that holds them.

  class Net(linen.Module):
    kind: str = "acb"
    deployed: bool = False

    @linen.compact
    def __call__(self, x, train: bool):
      x = ShapedConv(32, 3, kind=self.kind, deployed=self.deployed)(x, train=train)
      ...

  variables = Net().init(key, x, train=False)            # "params" and "batch_stats"
  ... train on variables["params"], mutable=["batch_stats"] ...
  shipped = kshapes_jax.linen.deploy(Net(), variables, x, train=False)
  Net(deployed=True).apply(shipped, x, train=False)      # one plain conv per ShapedConv

A ShapedConv keeps the layer of its kind (`kshapes_jax.nn`) as NNX state in
Linen collections: every parameter (angles and positions too) under
"params", BN statistics under "batch_stats", so optax and Linen's transforms
see them as they see Linen's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen, nnx
from flax.core import FrozenDict, freeze, unfreeze

from kshapes_jax import conv as conv_lib
from kshapes_jax.nn import make_conv
from kshapes_jax.nn.base import symmetric_padding


class ShapedConv(linen.Module):
  """A conv of any kind (`kshapes_jax.nn.CONV_KINDS`) as a Linen module.

  Attributes:
    features: output maps (a versatile layer may round them up).
    kernel_size: k of the kxk kernel.
    kind: plain, rotate4, rotate2, acb, versatile or active.
    strides, padding (None: k // 2 per side), use_bias, feature_group_count,
      kernel_dilation, dtype, param_dtype, precision: as for the kind's layer.
    options: the kind's options, e.g. {"asymmetric": "hor"}.
    deployed: the module is the deployed conv: "params" holds `kernel` and
      `bias` (from `deploy`), no batch statistics.

  Call it as `layer(x, train=...)`: train=True uses (and, where the
  "batch_stats" collection is mutable, updates) batch statistics; False runs
  the eval mode (an ACB as its fused conv).
  """

  features: int
  kernel_size: int = 3
  kind: str = "plain"
  strides: int = 1
  padding: Any = None
  use_bias: bool = False
  feature_group_count: int = 1
  kernel_dilation: int = 1
  options: Mapping[str, Any] = FrozenDict()
  dtype: Any = None
  param_dtype: Any = None
  precision: Any = None
  deployed: bool = False

  def layer(self, in_features: int, rngs: nnx.Rngs) -> nnx.Module:
    """The NNX layer this module holds, freshly built."""
    return make_conv(
      self.kind,
      in_features,
      self.features,
      self.kernel_size,
      stride=self.strides,
      padding=self.padding,
      use_bias=self.use_bias,
      groups=self.feature_group_count,
      dilation=self.kernel_dilation,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      precision=self.precision,
      rngs=rngs,
      **dict(self.options),
    )

  def assemble(self, in_features: int, weights: Any, statistics: Any) -> nnx.Module:
    """The NNX layer holding `weights` (this module's "params"/"layer") and `statistics`
    ("batch_stats"/"layer"), built on shapes only."""
    abstract = nnx.eval_shape(lambda: self.layer(in_features, nnx.Rngs(0)))
    graphdef, params, stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)  # type: ignore[misc]
    nnx.replace_by_pure_dict(params, weights)
    nnx.replace_by_pure_dict(stats, statistics)
    return nnx.merge(graphdef, params, stats, rest)

  @linen.compact
  def __call__(self, x: jax.Array, *, train: bool = True) -> jax.Array:
    if self.deployed:
      return self._deployed(x)
    cin = x.shape[-1]
    stats_shapes = nnx.state(nnx.eval_shape(lambda: self.layer(cin, nnx.Rngs(0))), nnx.BatchStat)

    def initial(rng, kind):
      return nnx.to_pure_dict(nnx.state(self.layer(cin, nnx.Rngs(rng)), kind))

    weights = self.param("layer", initial, nnx.Param)
    statistics = None
    if nnx.to_pure_dict(stats_shapes):  # a kind with BNs (ACB)
      statistics = self.variable(
        "batch_stats", "layer", lambda: initial(self.make_rng("params"), nnx.BatchStat)
      )
    layer = self.assemble(cin, weights, {} if statistics is None else statistics.value)
    if train:
      layer.train()
    else:
      layer.eval()
    y = layer(x)
    if statistics is not None and train and self.is_mutable_collection("batch_stats"):
      statistics.value = nnx.to_pure_dict(nnx.state(layer, nnx.BatchStat))
    return y

  def _deployed(self, x: jax.Array) -> jax.Array:
    k, groups = self.kernel_size, self.feature_group_count
    # the deployed kernel's shape is that `deploy` wrote (an ACU's may exceed k, versatile maps
    # round up); only an init without it takes the nominal one
    shape = (k, k, x.shape[-1] // groups, self.features)
    if self.has_variable("params", "kernel"):
      shape = self.get_variable("params", "kernel").shape
    kernel = self.param("kernel", linen.initializers.zeros, shape)
    bias = self.param("bias", linen.initializers.zeros, (shape[-1],))
    padding = symmetric_padding(self.padding, k, dilation=self.kernel_dilation)
    if isinstance(padding, int):  # an ACU deploys to the kernel of its radius, centred
      padding += (kernel.shape[0] - k) // 2
    y = conv_lib.conv(
      x,
      kernel,
      stride=self.strides,
      padding=padding,
      groups=groups,
      dilation=self.kernel_dilation,
      precision=self.precision,
      dtype=self.dtype,
    )
    return y + bias.astype(y.dtype)


def deploy(model: linen.Module, variables: Mapping[str, Any], *args, **kwargs) -> FrozenDict | dict:
  """The variables of `model` with each ShapedConv's deployed conv (the model with
  `deployed=True` on its ShapedConvs takes them).

  Runs `model.apply(variables, *args, **kwargs)` once (give it eval-mode arguments, e.g.
  train=False) to find each ShapedConv and its input; each one's NNX layer is rebuilt from its
  variables and deployed (`kshapes_jax.deploy`: BN folded, one plain kernel and bias).

  Raises:
    ValueError: if no ShapedConv ran.
  """
  found: dict[tuple, tuple[jax.Array, jax.Array]] = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    module = context.module
    if not isinstance(module, ShapedConv) or context.method_name != "__call__":
      return next_fun(*call_args, **call_kwargs)
    if module.deployed:
      raise ValueError(f"{'/'.join(module.scope.path)} is deployed already")
    plain = module.assemble(
      call_args[0].shape[-1],
      module.variables["params"]["layer"],
      module.variables.get("batch_stats", {}).get("layer", {}),
    ).deploy()
    kernel = plain.kernel[...]
    bias = jnp.zeros(kernel.shape[-1], kernel.dtype) if plain.bias is None else plain.bias[...]
    found[tuple(module.scope.path)] = (kernel, bias)
    return next_fun(*call_args, **call_kwargs)

  with linen.intercept_methods(interceptor):
    model.apply(variables, *args, **kwargs)
  if not found:
    raise ValueError("no ShapedConv ran in the model's apply: nothing to deploy")
  out = unfreeze(freeze(variables))  # a fresh nested dict to edit
  for path, (kernel, bias) in found.items():
    node = out["params"]
    for name in path[:-1]:
      node = node[name]
    node[path[-1]] = {"kernel": kernel, "bias": bias}
    stats = out.get("batch_stats", {})
    trail = [stats]
    for name in path[:-1]:
      trail.append(trail[-1].get(name, {}))
    trail[-1].pop(path[-1], None)
  out = _pruned(out)
  return freeze(out) if isinstance(variables, FrozenDict) else out


def _pruned(tree: Any) -> Any:
  """Dicts without the empty dicts left where batch statistics were."""
  if not isinstance(tree, dict):
    return tree
  kept = {k: _pruned(v) for k, v in tree.items()}
  return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}
