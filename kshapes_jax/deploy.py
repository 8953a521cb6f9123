"""deploy(model): the same network made only of plain convolutions."""

from __future__ import annotations

from flax import nnx


def _deployed(node):
  if isinstance(node, nnx.Module) and callable(getattr(node, "deploy", None)):
    return node.deploy()
  if isinstance(node, nnx.Module):
    for name, child in list(vars(node).items()):
      if name.startswith("_"):
        continue
      new = _deployed(child)
      if new is not child:
        setattr(node, name, new)
    return node
  if isinstance(node, (list, nnx.List)):
    for i in range(len(node)):
      new = _deployed(node[i])
      if new is not node[i]:
        node[i] = new
  return node


def deploy(model: nnx.Module) -> nnx.Module:
  """Returns a copy of `model` in eval mode with every shaped conv made plain.

  RotateConv -> its 3x3 kernel; ACBlock -> one kxk conv with bias (BN per
  branch folded, eq. 6-7); ActiveConv -> the dense kernel of the smallest
  radius that holds its positions; VersatileConv -> the stacked kernel; a
  conv followed by its BN (`ConvBN`) -> one conv with the BN folded in. BNs
  that come before a conv (pre-activation) stay. The copy's eval outputs
  equal the model's eval outputs; the model itself is not changed.

  Raises:
    TypeError: for anything that is not an nnx.Module.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"deploy takes a flax nnx.Module, got {type(model).__name__}")
  copy = nnx.clone(model)
  copy = _deployed(copy)
  copy.eval()
  return copy
