"""Walking a model's modules and replacing some: the one walker convert and deploy share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx


def path_str(path: tuple) -> str:
  """A module's path as users read it: "blocks/0/conv"."""
  return "/".join(str(p) for p in path) or "(the model)"


def _replaced(
  node: Any, path: tuple, fn: Callable[[tuple, nnx.Module], nnx.Module | None], memo: dict
) -> Any:
  """`node` with every module `fn` replaces (it returns the new one, or None to look inside).

  A module reached again through another attribute (`self.b = self.a`) gets the same
  replacement, made once: the walk keeps a model's sharing.
  """
  if isinstance(node, nnx.Module):
    if id(node) in memo:
      return memo[id(node)][1]
    memo[id(node)] = (node, node)  # holds the node alive, so its id stays its own
    new = fn(path, node)
    if new is not None:
      memo[id(node)] = (node, new)
      return new
  if isinstance(node, (list, nnx.List)):
    for i in range(len(node)):
      swapped = _replaced(node[i], (*path, i), fn, memo)
      if swapped is not node[i]:
        node[i] = swapped
  elif isinstance(node, (dict, nnx.Dict)):
    for key in list(node.keys()):
      swapped = _replaced(node[key], (*path, key), fn, memo)
      if swapped is not node[key]:
        node[key] = swapped
  elif isinstance(node, nnx.Module):
    for name, child in list(vars(node).items()):
      if name.startswith("_"):
        continue
      swapped = _replaced(child, (*path, name), fn, memo)
      if swapped is not child:
        setattr(node, name, swapped)
  elif isinstance(node, tuple) and any(isinstance(x, nnx.Module) for x in node):
    swapped = tuple(_replaced(x, (*path, i), fn, memo) for i, x in enumerate(node))
    return swapped if any(a is not b for a, b in zip(swapped, node)) else node
  return node


def map_modules(model: Any, fn: Callable[[tuple, nnx.Module], nnx.Module | None]) -> Any:
  """Replaces, in place, every module `fn(path, module)` returns a new one for (None: descend);
  returns the model (a new object only when `fn` replaces the model itself). A module shared by
  several attributes is replaced once, by one new module shared as the old one was."""
  return _replaced(model, (), fn, {})
