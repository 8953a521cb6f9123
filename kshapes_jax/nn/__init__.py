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
from kshapes_jax.nn.base import (
  ConvGeometry,
  ConvLayer,
  Dense,
  Fusable,
  PlainConv,
  is_fused,
  recording,
)
from kshapes_jax.nn.batchnorm import batch_norm, bn_params, stacked_batch_norm
from kshapes_jax.nn.dbb import DiverseBranchBlock
from kshapes_jax.nn.dcls import (
  DclsConv,
  DclsPosition,
  DclsSigma,
  dcls_position_sets,
  dcls_repulsion,
)
from kshapes_jax.nn.deformable import DeformableActiveConv
from kshapes_jax.nn.factory import ConvBN, conv_bn, make_conv
from kshapes_jax.nn.kinds import (
  CONV_KINDS,
  Kind,
  conv_options,
  get_kind,
  kind_names,
  register_kind,
  unregister_kind,
)
from kshapes_jax.nn.repvgg import RepVGGBlock
from kshapes_jax.nn.rotate import RotateConv
from kshapes_jax.nn.variables import Angle, BranchScale, Position, ShapeParam
from kshapes_jax.nn.versatile import VersatileConv

__all__ = [
  "ACBlock",
  "ActiveConv",
  "Angle",
  "BranchScale",
  "CONV_KINDS",
  "ConvBN",
  "ConvGeometry",
  "ConvLayer",
  "DclsConv",
  "DclsPosition",
  "DclsSigma",
  "DeformableActiveConv",
  "DiverseBranchBlock",
  "Dense",
  "Fusable",
  "Kind",
  "PlainConv",
  "Position",
  "RepVGGBlock",
  "RotateConv",
  "ShapeParam",
  "VersatileConv",
  "batch_norm",
  "bn_params",
  "active_convs",
  "active_radii",
  "bucket_radius",
  "bucketed_radii",
  "check_bucketable",
  "conv_bn",
  "conv_options",
  "dcls_position_sets",
  "dcls_repulsion",
  "get_kind",
  "initial_positions",
  "is_fused",
  "kind_names",
  "make_conv",
  "recording",
  "register_kind",
  "sgd_position_margin",
  "stacked_batch_norm",
  "unregister_kind",
  "with_radii",
]
