"""Every public function composes with jit, vmap and grad, and takes bf16 inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kshapes_jax import kernels
from kshapes_jax.conv import active_conv_gather, conv
from kshapes_jax.gradients import normalize_position_grad

_rng = np.random.default_rng(7)


def _f(*shape):
  return _rng.normal(size=shape).astype(np.float32)


def _bn(out):
  return (_f(out), _f(out), _f(out), np.abs(_f(out)) + 0.5)


_POS = (0.8 * np.asarray(kernels.lattice_positions(3)) + 0.1 * _f(9, 2)).astype(np.float32)
_ANGLES = _rng.uniform(5, 175, size=(2, 3)).astype(np.float32)

# name -> (function of float arrays only, its float arguments). The convs pin HIGHEST: jit,
# vmap and eager may pick different GPU algorithms, equal only to float32 rounding.
CASES = {
  "rotate_kernel v4": (kernels.rotate_kernel, (_f(3, 2, 3), _ANGLES)),
  "rotate_kernel v2": (kernels.rotate_kernel, (_f(2, 3), _ANGLES)),
  "project_angles": (lambda u, p: kernels.project_angles(u, p, 2.0), (_ANGLES + 30, _ANGLES)),
  "fuse_bn": (lambda k, *bn: kernels.fuse_bn(k, *bn), (_f(3, 3, 2, 3), *_bn(3))),
  "acb_kernel": (kernels.acb_kernel, (_f(3, 3, 2, 3), _f(1, 3, 2, 3), _f(3, 1, 2, 3))),
  "fuse_acb": (
    lambda s, h, v, *bn: kernels.fuse_acb(
      s,
      kernels.BatchNormParams(*bn[:4]),
      h,
      kernels.BatchNormParams(*bn[4:8]),
      v,
      kernels.BatchNormParams(*bn[8:]),
    ),
    (_f(3, 3, 2, 3), _f(1, 3, 2, 3), _f(3, 1, 2, 3), *_bn(3), *_bn(3), *_bn(3)),
  ),
  "spatial_versatile_kernel": (kernels.spatial_versatile_kernel, (_f(5, 5, 2, 3),)),
  "channel_versatile_kernel": (
    lambda f: kernels.channel_versatile_kernel(f, 6, 2),
    (_f(3, 3, 4, 3),),
  ),
  "spatial_channel_versatile_kernel": (
    lambda f: kernels.spatial_channel_versatile_kernel(f, 6, 2),
    (_f(3, 3, 4, 3),),
  ),
  "summed_versatile_kernel": (kernels.summed_versatile_kernel, (_f(3, 3, 2, 3),)),
  "active_kernel": (lambda w, p: kernels.active_kernel(w, p, 1), (_f(9, 2, 3), _POS)),
  "active_kernel grouped": (
    lambda w, p: kernels.active_kernel(w, p, 2),
    (_f(9, 2, 4), np.stack([_POS, 1.5 * _POS])),
  ),
  "clip_positions": (lambda p: kernels.clip_positions(p, 1), (2 * _POS,)),
  "normalize_position_grad": (normalize_position_grad, (_POS,)),
  "conv": (
    lambda x, k, b: conv(x, k, stride=2, bias=b, precision="highest"),
    (_f(2, 6, 5, 2), _f(3, 3, 2, 3), _f(3)),
  ),
  "conv groups": (
    lambda x, k: conv(x, k, groups=2, precision="highest"),
    (_f(2, 6, 5, 4), _f(3, 3, 2, 4)),
  ),
  "active_conv_gather": (
    lambda x, w, p: active_conv_gather(x, w, p, radius=1, stride=2, precision="highest"),
    (_f(2, 6, 5, 2), _f(9, 2, 3), _POS),
  ),
  "active_conv_gather per-pixel": (
    lambda x, w, p: active_conv_gather(x, w, p, radius=1, precision="highest"),
    (_f(1, 4, 3, 2), _f(9, 2, 3), np.broadcast_to(_POS, (1, 4, 3, 9, 2)).copy()),
  ),
}


def _sum(out):
  return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(out))


@pytest.mark.parametrize("name", list(CASES))
def test_jit_vmap_grad(name):
  fn, args = CASES[name]
  eager = fn(*args)
  chex.assert_trees_all_close(jax.jit(fn)(*args), eager, rtol=1e-5, atol=1e-5)
  batched = jax.vmap(fn)(*(np.stack([a, 0.5 * a]) for a in args))
  chex.assert_trees_all_close(jax.tree.map(lambda b: b[0], batched), eager, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(
    jax.tree.map(lambda b: b[1], batched), fn(*(0.5 * a for a in args)), rtol=1e-5, atol=1e-5
  )
  grads = jax.jit(jax.grad(lambda *a: _sum(fn(*a)), argnums=tuple(range(len(args)))))(*args)
  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_equal_shapes(grads, tuple(jnp.asarray(a) for a in args))


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_inputs(name):
  fn, args = CASES[name]
  out16 = fn(*(jnp.asarray(a, jnp.bfloat16) for a in args))
  out32 = fn(*args)
  for lo, hi in zip(jax.tree.leaves(out16), jax.tree.leaves(out32)):
    assert lo.dtype == jnp.bfloat16, name
    scale = 1.0 + float(jnp.max(jnp.abs(hi)))
    assert float(jnp.max(jnp.abs(lo.astype(jnp.float32) - hi))) <= 0.05 * scale, name


@pytest.mark.parametrize(
  "name",
  ["fuse_acb", "spatial_channel_versatile_kernel", "acb_kernel", "summed_versatile_kernel", "conv"],
)
def test_linear_builders_check_grads_float64(name, x64):
  fn, args = CASES[name]
  check_grads(fn, tuple(np.asarray(a, np.float64) for a in args), order=2, modes=("fwd", "rev"))
