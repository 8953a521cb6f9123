"""A jaxpr -> ONNX translator for the primitives deployed CNNs use (kshapes_jax.export.to_onnx).

JAX works in NHWC with HWIO kernels; ONNX's Conv and pools in NCHW with OIHW
kernels. Each conv and pool is wrapped in the two transposes that say so
(from the conv's own dimension numbers), which ONNX runtimes fold away.
The batch dimension is the one symbolic dimension: shapes that hold it read
it from the input at run time.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import onnx
from jax.extend import core as jax_core
from jax.typing import DTypeLike
from onnx import helper, numpy_helper

_ELEMENTWISE = {
  "add": "Add",
  "sub": "Sub",
  "mul": "Mul",
  "div": "Div",
  "max": "Max",
  "min": "Min",
  "pow": "Pow",
}
_UNARY = {
  "neg": "Neg",
  "exp": "Exp",
  "log": "Log",
  "tanh": "Tanh",
  "logistic": "Sigmoid",
  "abs": "Abs",
  "sqrt": "Sqrt",
  "floor": "Floor",
  "ceil": "Ceil",
}
_INLINED = {
  "jit": "jaxpr",
  "pjit": "jaxpr",
  "custom_jvp_call": "call_jaxpr",
  "custom_vjp_call": "call_jaxpr",
  "closed_call": "call_jaxpr",
  "remat": "jaxpr",
  "checkpoint": "jaxpr",
}
_INT64_MAX = np.iinfo(np.int64).max


class _Graph:
  """Nodes, initializers and fresh names of the graph being built."""

  def __init__(self, input_name: str, batch):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self.input_name, self.batch = input_name, batch
    self._count = 0
    self._batch_tensor: str | None = None
    # a windowed sum's output -> (its window's mean, the window's size): a division of the sum
    # by that size (an average pool) is the mean itself
    self.window_sums: dict[str, tuple[str, int]] = {}

  def fresh(self, hint: str) -> str:
    self._count += 1
    return f"{hint}_{self._count}"

  def const(self, value: Any, hint: str = "const") -> str:
    name = self.fresh(hint)
    self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
    return name

  def node(self, op: str, inputs: list[str], **attrs) -> str:
    out = self.fresh(op.lower())
    self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
    return out

  def batch_size(self) -> str:
    """An int64 [1] tensor: the input's batch size, at run time."""
    if self._batch_tensor is None:
      self._batch_tensor = self.node("Shape", [self.input_name], start=0, end=1)
    return self._batch_tensor

  def shape(self, dims) -> str:
    """An int64 shape tensor for dims that may hold the symbolic batch size."""
    if all(_static(d) for d in dims):
      return self.const(np.asarray([int(d) for d in dims], np.int64), "shape")
    for d in dims:
      if not _static(d) and not _is_batch(d, self.batch):
        raise ValueError(
          f"ONNX export: a shape dimension {d} other than the batch size is not supported"
        )
    pieces = [
      self.const(np.asarray([int(d)], np.int64), "dim") if _static(d) else self.batch_size()
      for d in dims
    ]
    return self.node("Concat", pieces, axis=0)


def _static(d) -> bool:
  return isinstance(d, (int, np.integer))


def _is_batch(d, batch) -> bool:
  try:
    return bool(d == batch)
  except Exception:  # a symbolic comparison JAX cannot decide
    return False


def _onnx_dtype(dtype: DTypeLike | None) -> int:
  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def from_jaxpr(
  closed: jax_core.ClosedJaxpr, spec: jax.ShapeDtypeStruct, *, opset: int, name: str
) -> onnx.ModelProto:
  """The ONNX model of a one-input jaxpr whose input is `spec` (batch dimension symbolic)."""
  batch = spec.shape[0]
  g = _Graph("images", batch)
  env: dict[Any, str] = {closed.jaxpr.invars[0]: "images"}
  for var, value in zip(closed.jaxpr.constvars, closed.consts):
    env[var] = g.const(np.asarray(value), "weight")
  _emit(g, closed.jaxpr, env)
  outputs = []
  for i, var in enumerate(closed.jaxpr.outvars):
    out_name = "logits" if i == 0 else f"output_{i}"
    g.nodes.append(helper.make_node("Identity", [_read(g, env, var)], [out_name]))
    outputs.append(
      helper.make_tensor_value_info(
        out_name,
        _onnx_dtype(var.aval.dtype),
        [d if _static(d) else "batch" for d in var.aval.shape],
      )
    )
  inputs = [
    helper.make_tensor_value_info("images", _onnx_dtype(spec.dtype), ["batch", *spec.shape[1:]])
  ]
  nodes = _live(g.nodes, {o.name for o in outputs})
  used = {name for node in nodes for name in node.input}  # a literal a node folded away is not
  initializers = [t for t in g.initializers if t.name in used]
  graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
  model = helper.make_model(
    graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kshapes_jax"
  )
  onnx.checker.check_model(model)
  return model


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
  """The nodes the outputs are computed from, in order (a windowed sum whose average pool was
  written as AveragePool alone leaves its Mul unread)."""
  needed, kept = set(outputs), []
  for node in reversed(nodes):
    if any(out in needed for out in node.output):
      kept.append(node)
      needed.update(node.input)
  return kept[::-1]


def _read(g: _Graph, env: dict, atom) -> str:
  if hasattr(atom, "val") and not hasattr(atom, "count"):  # a Literal
    return g.const(np.asarray(atom.val, atom.aval.dtype), "literal")
  return env[atom]


def _emit(g: _Graph, jaxpr, env: dict) -> None:
  for eqn in jaxpr.eqns:
    prim = eqn.primitive.name
    if prim == "platform_index":  # read only by the platform_dependent cond that follows
      env[eqn.outvars[0]] = ""
      continue
    inputs = [_read(g, env, v) for v in eqn.invars]
    platform_cond = prim == "cond" and eqn.params.get("branches_platforms")
    if prim in _INLINED or platform_cond:
      if platform_cond:
        # lax.platform_dependent (conv's CPU matmul form): the default branch, the
        # conv itself, for the runtime to run as it does best
        sub = eqn.params["branches"][list(eqn.params["branches_platforms"]).index(None)]
        inputs = inputs[1:]
      else:
        sub = eqn.params[_INLINED[prim]]
      inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
      consts = getattr(sub, "consts", [])
      sub_env = dict(zip(inner.invars, inputs))
      sub_env.update({v: g.const(np.asarray(c), "weight") for v, c in zip(inner.constvars, consts)})
      _emit(g, inner, sub_env)
      outs = [_read(g, sub_env, v) for v in inner.outvars]
    else:
      outs = [_translate(g, prim, eqn, inputs)]
    for var, name in zip(eqn.outvars, outs):
      env[var] = name


def _translate(g: _Graph, prim: str, eqn, inputs: list[str]) -> str:
  p, aval_in, aval_out = eqn.params, [v.aval for v in eqn.invars], eqn.outvars[0].aval
  if prim == "div" and inputs[0] in g.window_sums:
    mean, area = g.window_sums[inputs[0]]
    divisor = eqn.invars[1]
    if hasattr(divisor, "val") and np.ndim(divisor.val) == 0 and divisor.val == area:
      return mean  # an average pool: AveragePool alone, which INT8 runtimes quantize
  if prim == "max" and (x := _other_than_zero(eqn, inputs)) is not None:
    # jax.nn.relu is max(x, 0): as ONNX's Relu a runtime fuses it into the conv before it (and
    # an INT8 file keeps no quantize/dequantize pair between them)
    return g.node("Relu", [x])
  if prim in _ELEMENTWISE:
    return g.node(_ELEMENTWISE[prim], inputs)
  if prim in _UNARY:
    return g.node(_UNARY[prim], inputs)
  if prim == "rsqrt":
    return g.node("Reciprocal", [g.node("Sqrt", inputs)])
  if prim == "integer_pow":
    return g.node("Pow", [inputs[0], g.const(np.asarray(p["y"], aval_in[0].dtype))])
  if prim in ("copy", "copy_p", "optimization_barrier"):
    return g.node("Identity", inputs[:1])
  if prim == "convert_element_type":
    return g.node("Cast", inputs, to=_onnx_dtype(p["new_dtype"]))
  if prim == "reshape":
    if p.get("dimensions") is not None:
      raise ValueError("ONNX export: reshape with a transpose (dimensions=...) is not supported")
    return g.node("Reshape", [inputs[0], g.shape(p["new_sizes"])])
  if prim == "squeeze":
    return g.node("Reshape", [inputs[0], g.shape(aval_out.shape)])
  if prim == "broadcast_in_dim":
    return _broadcast(g, inputs[0], aval_in[0].shape, p["shape"], p["broadcast_dimensions"])
  if prim == "transpose":
    return g.node("Transpose", inputs, perm=list(p["permutation"]))
  if prim == "concatenate":
    return g.node("Concat", inputs, axis=int(p["dimension"]))
  if prim in ("reduce_sum", "reduce_max", "reduce_min"):
    op = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}[prim]
    axes = [int(a) for a in p["axes"]]
    if op == "ReduceSum":  # axes an input from opset 13, an attribute for the others until opset 18
      return g.node(op, [inputs[0], g.const(np.asarray(axes, np.int64), "axes")], keepdims=0)
    return g.node(op, inputs, axes=axes, keepdims=0)
  if prim == "pad":
    config = p["padding_config"]
    if any(interior != 0 or lo < 0 or hi < 0 for lo, hi, interior in config):
      raise ValueError("ONNX export: only non-negative, non-interior padding is supported")
    pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
    return g.node(
      "Pad", [inputs[0], g.const(np.asarray(pads, np.int64), "pads"), inputs[1]], mode="constant"
    )
  if prim == "slice":
    shape, starts, limits = aval_in[0].shape, p["start_indices"], p["limit_indices"]
    strides = p["strides"] or (1,) * len(starts)
    ends = [
      _INT64_MAX if not _static(lim) and not _static(d) and _is_batch(lim, g.batch) else lim
      for lim, d in zip(limits, shape)
    ]
    if not all(_static(e) for e in ends):
      raise ValueError("ONNX export: a slice ending inside the batch dimension is not supported")
    return g.node(
      "Slice",
      [
        inputs[0],
        g.const(np.asarray(starts, np.int64), "starts"),
        g.const(np.asarray(ends, np.int64), "ends"),
        g.const(np.arange(len(starts), dtype=np.int64), "axes"),
        g.const(np.asarray(strides, np.int64), "steps"),
      ],
    )
  if prim == "dot_general":
    return _matmul(g, inputs, aval_in, p["dimension_numbers"])
  if prim == "conv_general_dilated":
    return _conv(g, inputs, p)
  if prim in ("reduce_window_max", "reduce_window_sum"):
    return _pool(g, prim, inputs[0], p)
  raise ValueError(
    f"ONNX export: the primitive {prim!r} is not supported (a deployed CNN should not need it)"
  )


def _other_than_zero(eqn, inputs: list[str]) -> str | None:
  """max(x, 0)'s x (as written in the graph) when one operand is a literal scalar zero and the
  other has the output's shape; else None."""
  out = eqn.outvars[0].aval
  for i, atom in enumerate(eqn.invars):
    literal = hasattr(atom, "val") and not hasattr(atom, "count")
    other = eqn.invars[1 - i]
    if literal and np.ndim(atom.val) == 0 and atom.val == 0 and other.aval.shape == out.shape:
      return inputs[1 - i]
  return None


def _broadcast(g: _Graph, x: str, in_shape, out_shape, dims) -> str:
  """broadcast_in_dim: a reshape to the output's rank, then an Expand where a dimension grows."""
  ranked = [1] * len(out_shape)
  for src, dst in enumerate(dims):
    ranked[dst] = in_shape[src]
  y = x if tuple(ranked) == tuple(in_shape) else g.node("Reshape", [x, g.shape(ranked)])
  if all(
    _static(a) and _static(b) and a == b or (not _static(a) and not _static(b))
    for a, b in zip(ranked, out_shape)
  ):
    return y
  return g.node("Expand", [y, g.shape(out_shape)])


def _matmul(g: _Graph, inputs: list[str], avals, dimension_numbers) -> str:
  (lc, rc), (lb, rb) = dimension_numbers
  lhs, rhs = avals
  if lb or rb or len(rhs.shape) != 2 or tuple(lc) != (len(lhs.shape) - 1,):
    raise ValueError(
      f"ONNX export: dot_general {dimension_numbers} on {lhs.shape} x {rhs.shape} is not a "
      "matmul of the last axis with a matrix"
    )
  right = inputs[1] if tuple(rc) == (0,) else g.node("Transpose", [inputs[1]], perm=[1, 0])
  return g.node("MatMul", [inputs[0], right])


def _conv(g: _Graph, inputs: list[str], p) -> str:
  dn = p["dimension_numbers"]
  if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
    raise ValueError(
      "ONNX export: transposed (lhs-dilated) or batch-grouped convolutions are not supported"
    )
  x = g.node("Transpose", [inputs[0]], perm=list(dn.lhs_spec))  # -> N, C, spatial
  w = g.node("Transpose", [inputs[1]], perm=list(dn.rhs_spec))  # -> O, I, spatial
  pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
  y = g.node(
    "Conv",
    [x, w],
    strides=list(p["window_strides"]),
    pads=pads,
    dilations=list(p["rhs_dilation"]),
    group=int(p["feature_group_count"]),
  )
  back = [0] * len(dn.out_spec)
  for k, dim in enumerate(dn.out_spec):
    back[dim] = k
  return g.node("Transpose", [y], perm=back)


def _pool(g: _Graph, prim: str, x: str, p) -> str:
  window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
  rank = len(window)
  if (
    (window[0], window[-1], strides[0], strides[-1]) != (1, 1, 1, 1)
    or padding[0] != (0, 0)
    or padding[-1] != (0, 0)
    or any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"]))
  ):
    raise ValueError(
      "ONNX export: only pools over the spatial axes of NHWC, undilated, are supported"
    )
  nchw = g.node("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)])
  kernel, step = list(window[1:-1]), list(strides[1:-1])
  pads = [lo for lo, _ in padding[1:-1]] + [hi for _, hi in padding[1:-1]]
  back = [0, *range(2, rank), 1]
  if prim == "reduce_window_max":
    y = g.node("MaxPool", [nchw], kernel_shape=kernel, strides=step, pads=pads)
    return g.node("Transpose", [y], perm=back)
  # a windowed sum: the mean over the window with the zero padding counted, times its size
  mean = g.node(
    "AveragePool", [nchw], kernel_shape=kernel, strides=step, pads=pads, count_include_pad=1
  )
  mean = g.node("Transpose", [mean], perm=back)
  area = int(np.prod(kernel))
  total = g.node("Mul", [mean, g.const(np.asarray(area, np.float32), "area")])
  g.window_sums[total] = (mean, area)
  return total


__all__ = ["from_jaxpr"]
