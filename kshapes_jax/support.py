"""What each kind supports: a conv of each geometry converted, trained a step, deployed and
exported, for real (`python -m kshapes_jax.support` prints the matrix of the guide
docs/guides/own-model.md; a test keeps the guide equal to it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kshapes_jax.convert import convert
from kshapes_jax.deploy import deploy
from kshapes_jax.export import to_jax_export
from kshapes_jax.nn.kinds import CONV_KINDS, get_kind


@dataclasses.dataclass(frozen=True)
class Geometry:
  """One `flax.nnx.Conv`'s geometry (4 -> 4 channels)."""

  label: str
  kernel_size: int = 3
  strides: int = 1
  padding: Any = "SAME"
  kernel_dilation: int = 1
  feature_group_count: int = 1

  def conv(self, seed: int = 0) -> nnx.Conv:
    """The conv, its kernel drawn with NumPy (flax's initializer compiles per shape)."""
    k = self.kernel_size
    conv = nnx.eval_shape(
      lambda: nnx.Conv(
        4,
        4,
        (k, k),
        strides=self.strides,
        padding=self.padding,
        kernel_dilation=self.kernel_dilation,
        feature_group_count=self.feature_group_count,
        precision=jax.lax.Precision.HIGHEST,
        rngs=nnx.Rngs(0),
      )
    )
    shape = (k, k, 4 // self.feature_group_count, 4)
    kernel = np.random.default_rng(seed).normal(size=shape) / np.sqrt(np.prod(shape[:3]))
    conv.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
    conv.bias = nnx.Param(jnp.zeros((4,), jnp.float32))
    return conv


# the matrix's columns
GEOMETRIES = (
  Geometry("3x3"),
  Geometry("5x5", kernel_size=5),
  Geometry("7x7", kernel_size=7),
  Geometry("2x2 (even)", kernel_size=2, padding="VALID"),
  Geometry("stride 2, int padding", strides=2, padding=1),
  Geometry("stride 2, 'SAME'", strides=2),
  Geometry("'VALID'", padding="VALID"),
  Geometry("pairs ((0, 1), (1, 2))", padding=((0, 1), (1, 2))),
  Geometry("dilation 2", kernel_dilation=2, padding=2),
  Geometry("groups 2", feature_group_count=2),
  Geometry("depthwise", feature_group_count=4),
)
_X = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype(np.float32)


def check(kind: str, geometry: Geometry) -> str | None:
  """None if a conv of `geometry` converts to `kind`, trains (a finite gradient), deploys (the
  same eval outputs) and exports (jax.export); else why not, in one line."""
  net = nnx.Sequential(geometry.conv())
  # a kind that cannot hold a given kernel starts fresh
  preserves = get_kind(kind).preserves
  init: Literal["preserve", "fresh"] = "fresh" if preserves is None else "preserve"
  try:
    model = convert(net, kind, init=init)
  except ValueError as e:  # "PATH: [cannot become KIND: ]REASON[; more]": the reason
    why = str(e).split(": ", 1)[-1].removeprefix(f"cannot become {kind!r}: ")
    for end in (", got ", "; ", " (", ": "):
      why = why.split(end)[0]
    return why
  x = jnp.asarray(_X)
  # every forward and the gradient jitted: one program each, not their ops one by one
  apply = nnx.jit(lambda m, x: m(x))
  if preserves == "exact":  # a "fit" (RotateConv's) approximates the kernel
    view = nnx.clone(model)
    view.eval()
    if not np.allclose(apply(view, x), apply(net, x), rtol=1e-4, atol=1e-4):
      return "init='preserve' changed its function"
  grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(x) ** 2)))(model)  # a training step's gradient
  if not all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)):
    return "its gradient is not finite"
  model.eval()
  deployed = deploy(model, to="flax")
  if not np.allclose(apply(deployed, x), apply(model, x), rtol=1e-5, atol=1e-5):
    return "its deployed conv differs"
  to_jax_export(deployed, x.shape[1:])
  return None


def header() -> str:
  return "\n".join(
    [
      "| kind | " + " | ".join(g.label for g in GEOMETRIES) + " |",
      "|---" * (len(GEOMETRIES) + 1) + "|",
    ]
  )


def row(kind: str) -> str:
  """One kind's row: "yes", or "no: " and why, per geometry."""
  cells = []
  for g in GEOMETRIES:
    why = check(kind, g)
    cells.append("yes" if why is None else f"no: {why}")
  return f"| {kind} | " + " | ".join(cells) + " |"


def support_matrix() -> str:
  """The markdown matrix: one row per kind, one column per geometry."""
  return "\n".join([header(), *(row(kind) for kind in CONV_KINDS)])


if __name__ == "__main__":
  print(support_matrix())
