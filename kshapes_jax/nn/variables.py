"""Parameter types, so optimizers can treat a kernel's shape parameters apart."""

from typing import ClassVar

from flax import nnx


class ShapeParam(nnx.Param):
  """A parameter of a kernel's shape, not a weight: its class names its optimizer label
  (`kshapes_jax.optim.param_labels`), so a kind's own shape parameters get their own rules."""

  label: ClassVar[str]
  # the default learning-rate multiplier of the label (`kshapes_jax.optim.default_lr_multipliers`)
  lr_multiplier: ClassVar[float] = 1.0


class Angle(ShapeParam):
  """RotateConv angles in degrees: projected after each update (eq. 6), no weight decay."""

  label = "angles"


class Position(ShapeParam):
  """ACU synapse positions in pixels: own learning rate, normalized gradient, warm-up."""

  label = "positions"
  lr_multiplier = 0.01  # section 3.1


def labelled_shape_params() -> dict[str, type[ShapeParam]]:
  """Each label a ShapeParam class defines, with the first class (breadth first) that defines it:
  the built-in ones and those of kinds defined since (a kind's module defines its own)."""
  found: dict[str, type[ShapeParam]] = {}
  todo: list[type[ShapeParam]] = [ShapeParam]
  while todo:
    cls = todo.pop(0)
    label = cls.__dict__.get("label")
    if label is not None and label not in found:
      found[label] = cls
    todo.extend(cls.__subclasses__())
  return found


def shape_labels() -> tuple[str, ...]:
  """The labels of every ShapeParam class defined (a kind's module defines its own)."""
  return tuple(labelled_shape_params())


class BranchScale(ShapeParam):
  """The online form's per-branch, per-channel scales (OREPA), in place of the branch BNs: they
  set how the branch kernels are summed into one, and are not decayed by default."""

  label = "scales"
