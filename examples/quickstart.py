import jax.numpy as jnp
import numpy as np

from kshapes_jax import kernels
from kshapes_jax.conv import active_conv_gather, conv

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(8, 32, 32, 16)), jnp.float32)  # NHWC

# RotateConv v4: 3 weights + 1 angle per (in, out) pair -> one 3x3 kernel.
w = jnp.asarray(rng.normal(size=(3, 16, 32)) * 0.1, jnp.float32)
theta = jnp.asarray(rng.uniform(0, 180, size=(16, 32)), jnp.float32)  # degrees
y_rot = conv(x, kernels.rotate_kernel(w, theta), stride=2)  # (8, 16, 16, 32)

# ACU: 9 synapses at learnable positions (dx, dy), shared by every pixel.
positions = kernels.lattice_positions(3) * 1.3  # a 1.3-dilated 3x3
radius = kernels.radius_for_positions(positions)  # 2, so a 5x5 kernel
wa = jnp.asarray(rng.normal(size=(9, 16, 32)) * 0.1, jnp.float32)
# "highest": exact float32 on every backend (the default, the backend's, is TF32 on a GPU).
y_acu = conv(x, kernels.active_kernel(wa, positions, radius), precision="highest")  # ONE conv
y_ref = active_conv_gather(x, wa, positions, radius=radius, precision="highest")  # eq. 5-9
print(y_rot.shape, y_acu.shape, "max |splat - gather| =", float(jnp.max(jnp.abs(y_acu - y_ref))))
