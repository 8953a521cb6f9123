"""The conv wrapper and the properties that hold for all inputs."""

import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kshapes_jax.conv import active_conv_gather, conv, output_geometry, resolve_padding
from kshapes_jax.kernels import BatchNormParams, active_kernel, fuse_acb


def _direct_conv(x, k, stride, pads):
  """A loop-free NumPy cross-correlation, NHWC / HWIO."""
  x = np.pad(x, ((0, 0), *pads, (0, 0)))
  kh, kw = k.shape[:2]
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = 0
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
      out = out + patch @ k[i, j]
  return out


@pytest.mark.parametrize(
  "padding, pads",
  [
    ("VALID", ((0, 0), (0, 0))),
    (1, ((1, 1), (1, 1))),
    (((2, 0), (0, 1)), ((2, 0), (0, 1))),
  ],
)
def test_conv_matches_a_direct_loop(padding, pads, x64, rng):
  x = rng.normal(size=(2, 7, 6, 3))
  k = rng.normal(size=(3, 3, 3, 4))
  for stride in (1, 2):
    np.testing.assert_allclose(
      conv(x, k, stride=stride, padding=padding),
      _direct_conv(x, k, stride, pads),
      rtol=1e-10,
      atol=1e-12,
    )


def test_same_padding_is_laxs(rng):
  assert resolve_padding("SAME", (8, 7), (3, 3), 2) == ((0, 1), (1, 1))
  assert resolve_padding("same", (8, 8), (5, 5), 1) == ((2, 2), (2, 2))
  assert output_geometry((8, 7), 1, 2, "SAME") == ((4, 4), (1, 0))
  assert output_geometry((8, 7), 2, 1, "VALID") == ((4, 3), (2, 2))


def test_groups_bias_and_dtype(rng):
  x = jnp.asarray(rng.normal(size=(1, 5, 5, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
  b = jnp.arange(6, dtype=jnp.float32)
  y = conv(x, k, groups=2, bias=b, precision=lax.Precision.HIGHEST)
  halves = [
    conv(x[..., :2], k[..., :3], precision="highest"),
    conv(x[..., 2:], k[..., 3:], precision="highest"),
  ]
  chex.assert_trees_all_close(y, jnp.concatenate(halves, -1) + b, rtol=1e-5, atol=1e-5)
  y16 = conv(x, k, groups=2, dtype=jnp.bfloat16)
  assert y16.dtype == jnp.bfloat16
  chex.assert_trees_all_close(y16.astype(jnp.float32), y - b, atol=0.3, rtol=0.05)
  # the backend's default: float32 on a CPU, TF32 (10-bit mantissa) on a GPU
  y_default = conv(x, k, groups=2)
  chex.assert_trees_all_close(y_default, y - b, rtol=2e-3, atol=2e-2)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: conv(np.zeros((5, 5, 4)), np.zeros((3, 3, 4, 1))), r"x must be \(N, H, W, C\)"),
    (
      lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 3, 1))),
      r"expected kernel shape \(3, 3, 4, O\)",
    ),
    (lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 2, 3)), groups=2), "groups = 2"),
    (
      lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 4, 2)), padding="FULL"),
      "padding must be",
    ),
    (lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 4, 2)), stride=0), "stride must be"),
    (
      lambda: conv(np.zeros((1, 5, 5, 4)), np.zeros((3, 3, 4, 2)), bias=np.zeros(3)),
      r"bias must be \(O,\)",
    ),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# --- laws that hold for all inputs ---------------------------------------------

_X = np.random.default_rng(1).normal(size=(1, 7, 6, 2)).astype(np.float32)
_W = np.random.default_rng(2).normal(size=(5, 2, 3)).astype(np.float32)


@jax.jit
def _splat_minus_gather(p):
  a = conv(_X, active_kernel(_W, p, 3), stride=2, precision="highest")
  b = active_conv_gather(_X, _W, p, stride=2, radius=3, precision="highest")
  return jnp.max(jnp.abs(a - b))


@hypothesis.given(hnp.arrays(np.float32, (5, 2), elements=st.floats(-3, 3, width=32)))
@hypothesis.settings(max_examples=60, deadline=None)
def test_splat_equals_gather_for_any_positions_within_the_radius(p):
  assert float(_splat_minus_gather(p)) < 1e-4


_K = np.random.default_rng(3).normal(size=(3, 3, 2, 3)).astype(np.float32)
_H = np.random.default_rng(4).normal(size=(1, 3, 2, 3)).astype(np.float32)
_V = np.random.default_rng(5).normal(size=(3, 1, 2, 3)).astype(np.float32)


@jax.jit
def _fusion_error(stats):
  bns = [BatchNormParams(s[0], s[1], s[2], jnp.abs(s[3]) + 0.1) for s in stats]
  kernel, bias = fuse_acb(_K, bns[0], _H, bns[1], _V, bns[2])
  exact = functools.partial(conv, precision="highest")
  fused = exact(_X, kernel, padding=1, bias=bias)
  bn = lambda y, b: (y - b.mean) * jax.lax.rsqrt(b.var + 1e-5) * b.scale + b.bias
  branches = (
    bn(exact(_X, _K, padding=1), bns[0])
    + bn(exact(_X, _H, padding=((0, 0), (1, 1))), bns[1])
    + bn(exact(_X, _V, padding=((1, 1), (0, 0))), bns[2])
  )
  return jnp.max(jnp.abs(fused - branches) / (1 + jnp.abs(branches)))


@hypothesis.given(hnp.arrays(np.float32, (3, 4, 3), elements=st.floats(-3, 3, width=32)))
@hypothesis.settings(max_examples=60, deadline=None)
def test_acb_fusion_is_exact_for_any_bn_statistics(stats):
  assert float(_fusion_error(stats)) < 1e-4
