"""Parameter types, so optimizers can treat angles and positions apart."""

from flax import nnx


class Angle(nnx.Param):
  """RotateConv angles in degrees: projected after each update (eq. 6), no weight decay."""


class Position(nnx.Param):
  """ACU synapse positions in pixels: own learning rate, normalized gradient, warm-up."""
