"""Flax NNX layers: parameters held here, kernels built by kshapes_jax.kernels."""

from kshapes_jax.nn.acb import ACBlock
from kshapes_jax.nn.active import (
  ActiveConv,
  active_convs,
  active_radii,
  bucket_radius,
  bucketed_radii,
  check_bucketable,
  initial_positions,
  sgd_position_margin,
  with_radii,
)
from kshapes_jax.nn.base import ConvLayer, Dense, PlainConv, recording
from kshapes_jax.nn.batchnorm import batch_norm, bn_params, stacked_batch_norm
from kshapes_jax.nn.deformable import DeformableActiveConv
from kshapes_jax.nn.factory import CONV_KINDS, KINDS, ConvBN, conv_bn, make_conv
from kshapes_jax.nn.rotate import RotateConv
from kshapes_jax.nn.variables import Angle, Position
from kshapes_jax.nn.versatile import VersatileConv

__all__ = [
  "ACBlock",
  "ActiveConv",
  "Angle",
  "CONV_KINDS",
  "ConvBN",
  "KINDS",
  "ConvLayer",
  "DeformableActiveConv",
  "Dense",
  "PlainConv",
  "Position",
  "RotateConv",
  "VersatileConv",
  "batch_norm",
  "bn_params",
  "active_convs",
  "active_radii",
  "bucket_radius",
  "bucketed_radii",
  "check_bucketable",
  "conv_bn",
  "initial_positions",
  "make_conv",
  "recording",
  "sgd_position_margin",
  "stacked_batch_norm",
  "with_radii",
]
