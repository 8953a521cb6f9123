"""Pure functions: method parameters -> effective kernel (HWIO). No Flax."""

from kshapes_jax.kernels.acb import acb_kernel, fuse_acb
from kshapes_jax.kernels.active import (
  active_kernel,
  bilinear_cell,
  check_positions_within,
  check_radius,
  clip_positions,
  lattice_offsets,
  lattice_positions,
  radius_for_positions,
  with_origin,
)
from kshapes_jax.kernels.dcls import dcls_kernel, dcls_lattice
from kshapes_jax.kernels.reparam import (
  BatchNormParams,
  add_branches,
  avg_pool_kernel,
  concat_depth,
  fuse_1x1_avg,
  fuse_1x1_kxk,
  fuse_bn,
  identity_kernel,
  pad_kernel,
  scale_output,
)
from kshapes_jax.kernels.rotate import project_angles, rotate_kernel, wrap_angles
from kshapes_jax.kernels.versatile import (
  channel_versatile_kernel,
  channel_windows,
  spatial_channel_versatile_kernel,
  spatial_versatile_kernel,
  summed_versatile_kernel,
  versatile_masks,
)

__all__ = [
  "BatchNormParams",
  "acb_kernel",
  "active_kernel",
  "add_branches",
  "avg_pool_kernel",
  "bilinear_cell",
  "channel_versatile_kernel",
  "channel_windows",
  "check_positions_within",
  "check_radius",
  "clip_positions",
  "concat_depth",
  "dcls_kernel",
  "dcls_lattice",
  "fuse_1x1_avg",
  "fuse_1x1_kxk",
  "fuse_acb",
  "fuse_bn",
  "identity_kernel",
  "lattice_offsets",
  "lattice_positions",
  "pad_kernel",
  "project_angles",
  "radius_for_positions",
  "rotate_kernel",
  "scale_output",
  "spatial_channel_versatile_kernel",
  "spatial_versatile_kernel",
  "summed_versatile_kernel",
  "versatile_masks",
  "with_origin",
  "wrap_angles",
]
