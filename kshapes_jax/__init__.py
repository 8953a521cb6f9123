"""kshapes-jax: convolutions whose kernel shape is learned or structured.

Every method is "parameters -> effective kernel -> one lax convolution":
`kshapes_jax.kernels` builds the kernels, `kshapes_jax.conv` runs them.
"""

from kshapes_jax import (
  analysis,
  certificate,
  conv,
  export,
  gradients,
  int8,
  interop,
  kernels,
  linen,
  models,
  nn,
  qat,
  reference,
)
from kshapes_jax.certificate import FusionCertificate, LayerError, certify
from kshapes_jax.conv import active_conv_gather
from kshapes_jax.convert import ConvertedLayer, convert
from kshapes_jax.deploy import deploy
from kshapes_jax.gradients import normalize_angle_grad, normalize_position_grad

__version__ = "0.1.0"

__all__ = [
  "ConvertedLayer",
  "FusionCertificate",
  "LayerError",
  "active_conv_gather",
  "analysis",
  "certificate",
  "certify",
  "conv",
  "convert",
  "deploy",
  "export",
  "gradients",
  "int8",
  "interop",
  "kernels",
  "linen",
  "models",
  "nn",
  "normalize_angle_grad",
  "normalize_position_grad",
  "qat",
  "reference",
]
