"""Flax NNX layers: parameters held here, kernels built by kshapes_jax.kernels."""

from kshapes_jax.nn.acb import ACBlock, batch_norm
from kshapes_jax.nn.active import ActiveConv, bucket_radius, initial_positions
from kshapes_jax.nn.base import ConvLayer, Dense, PlainConv, recording
from kshapes_jax.nn.deformable import DeformableActiveConv
from kshapes_jax.nn.factory import CONV_KINDS, ConvBN, conv_bn, make_conv
from kshapes_jax.nn.rotate import RotateConv
from kshapes_jax.nn.variables import Angle, Position
from kshapes_jax.nn.versatile import VersatileConv

__all__ = [
    "ACBlock",
    "ActiveConv",
    "Angle",
    "CONV_KINDS",
    "ConvBN",
    "ConvLayer",
    "DeformableActiveConv",
    "Dense",
    "PlainConv",
    "Position",
    "RotateConv",
    "VersatileConv",
    "batch_norm",
    "bucket_radius",
    "conv_bn",
    "initial_positions",
    "make_conv",
    "recording",
]
