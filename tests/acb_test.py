"""ACB: BN fusion (eq. 6-7) and branch fusion equal the three BN'd branches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kshapes_jax.conv import conv
from kshapes_jax.kernels import BatchNormParams, acb_kernel, fuse_acb, fuse_bn

EPS = 1e-3


def _bn(rng, out):
  return BatchNormParams(
    scale=rng.normal(size=out),
    bias=rng.normal(size=out),
    mean=rng.normal(size=out),
    var=rng.uniform(0.2, 2.0, size=out),
  )


def _bn_eval(y, bn):
  return (y - bn.mean) / np.sqrt(bn.var + EPS) * bn.scale + bn.bias


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_fused_block_equals_three_bn_branches(k, stride, groups, size, x64, rng):
  cin, cout = 4, 6
  x = rng.normal(size=(2, *size, cin))
  square = rng.normal(size=(k, k, cin // groups, cout))
  hor = rng.normal(size=(1, k, cin // groups, cout))
  ver = rng.normal(size=(k, 1, cin // groups, cout))
  bns = [_bn(rng, cout) for _ in range(3)]
  p = k // 2
  # Each branch as the official code runs it: the asymmetric convs are padded
  # only along their long axis, so all three share the square conv's centres.
  branch = lambda kern, pad: conv(x, kern, stride=stride, padding=pad, groups=groups)
  expected = (
    _bn_eval(branch(square, ((p, p), (p, p))), bns[0])
    + _bn_eval(branch(hor, ((0, 0), (p, p))), bns[1])
    + _bn_eval(branch(ver, ((p, p), (0, 0))), bns[2])
  )
  kernel, bias = fuse_acb(square, bns[0], hor, bns[1], ver, bns[2], eps=EPS)
  chex.assert_shape(kernel, (k, k, cin // groups, cout))
  fused = conv(x, kernel, stride=stride, padding=((p, p), (p, p)), groups=groups, bias=bias)
  np.testing.assert_allclose(fused, expected, rtol=1e-10, atol=1e-10)


def test_fuse_bn_matches_bn_after_conv(x64, rng):
  x = rng.normal(size=(2, 5, 5, 3))
  kern = rng.normal(size=(3, 3, 3, 4))
  bn = _bn(rng, 4)
  k2, b2 = fuse_bn(kern, *bn, eps=EPS)
  np.testing.assert_allclose(
    conv(x, k2, bias=b2), _bn_eval(conv(x, kern), bn), rtol=1e-10, atol=1e-10
  )


def test_skeleton_and_border_placement():
  square = np.zeros((3, 3, 1, 1))
  hor = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
  ver = np.array([10.0, 20.0, 30.0]).reshape(3, 1, 1, 1)
  skeleton = np.asarray(acb_kernel(square, hor, ver))[..., 0, 0]
  np.testing.assert_array_equal(skeleton, [[0, 10, 0], [1, 22, 3], [0, 30, 0]])
  border = np.asarray(acb_kernel(square, hor, ver, hor_row=2, ver_col=2))[..., 0, 0]
  np.testing.assert_array_equal(border, [[0, 0, 10], [0, 0, 20], [1, 2, 33]])
  hor_only = np.asarray(acb_kernel(square, hor, None))[..., 0, 0]
  np.testing.assert_array_equal(hor_only, [[0, 0, 0], [1, 2, 3], [0, 0, 0]])


def test_bn_after_sum_ablation_is_acb_then_fuse_bn(x64, rng):
  x = rng.normal(size=(1, 6, 6, 2))
  square, hor, ver = (rng.normal(size=s) for s in ((3, 3, 2, 3), (1, 3, 2, 3), (3, 1, 2, 3)))
  bn = _bn(rng, 3)
  summed = (
    conv(x, square, padding=1)
    + conv(x, hor, padding=((0, 0), (1, 1)))
    + conv(x, ver, padding=((1, 1), (0, 0)))
  )
  kern, bias = fuse_bn(acb_kernel(square, hor, ver), *bn, eps=EPS)
  np.testing.assert_allclose(
    conv(x, kern, padding=1, bias=bias), _bn_eval(summed, bn), rtol=1e-10, atol=1e-10
  )


def test_gradients_flow_through_fusion(rng):
  square, hor, ver = (
    jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((3, 3, 2, 3), (1, 3, 2, 3), (3, 1, 2, 3))
  )
  bns = [BatchNormParams(*(jnp.asarray(a, jnp.float32) for a in _bn(rng, 3))) for _ in range(3)]
  fused = jax.jit(lambda s, h, v: fuse_acb(s, bns[0], h, bns[1], v, bns[2])[0].sum())
  gs, gh, gv = jax.grad(fused, argnums=(0, 1, 2))(square, hor, ver)
  # d sum / d hor[0, j] = gamma / sigma of the hor branch, whatever j
  factor = bns[1].scale / jnp.sqrt(bns[1].var + 1e-5)
  chex.assert_trees_all_close(gh, jnp.broadcast_to(factor, gh.shape), rtol=1e-5)
  chex.assert_shape([gs, gv], [square.shape, ver.shape])
  batched = jax.vmap(lambda s: acb_kernel(s, hor, ver))(jnp.stack([square, 2 * square]))
  chex.assert_shape(batched, (2, 3, 3, 2, 3))
  k16 = acb_kernel(square.astype(jnp.bfloat16), hor.astype(jnp.bfloat16), ver.astype(jnp.bfloat16))
  assert k16.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: acb_kernel(np.zeros((4, 4, 1, 1))), "odd kernel size"),
    (lambda: acb_kernel(np.zeros((3, 5, 1, 1))), r"\(k, k, I, O\)"),
    (
      lambda: acb_kernel(np.zeros((3, 3, 1, 1)), np.zeros((3, 1, 1, 1))),
      r"hor must be \(1, m, I, O\) with m odd <= k = 3",
    ),
    (lambda: acb_kernel(np.zeros((3, 3, 1, 2)), None, np.zeros((3, 1, 1, 1))), r"ver must be"),
    (lambda: acb_kernel(np.zeros((3, 3, 1, 1)), hor_row=3), r"hor_row must be in \[0, 3\)"),
    (
      lambda: fuse_bn(np.zeros((3, 3, 1, 2)), np.ones(3), np.ones(2), np.ones(2), np.ones(2)),
      r"scale must be \(O,\)",
    ),
    (
      lambda: fuse_acb(
        np.zeros((3, 3, 1, 1)), BatchNormParams(*np.ones((4, 1))), np.zeros((1, 3, 1, 1))
      ),
      "without hor_bn",
    ),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()
