"""Versatile filters: masks (eq. 2), stacks (eq. 3, 8) and the naive sum (eq. 4-5)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kshapes_jax.conv import conv
from kshapes_jax.kernels import (
  channel_versatile_kernel,
  channel_windows,
  spatial_channel_versatile_kernel,
  spatial_versatile_kernel,
  summed_versatile_kernel,
  versatile_masks,
)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 7])
def test_masks_are_nested_rings_with_the_papers_counts(d):
  masks = np.asarray(versatile_masks(d))
  s = -(-d // 2)
  chex.assert_shape(masks, (s, d, d))
  for i in range(1, s + 1):  # eq. 2, 1-indexed
    assert masks[i - 1].sum() == (d - 2 * i + 2) ** 2
    inner = masks[i - 1][i - 1 : d + 1 - i, i - 1 : d + 1 - i]
    assert inner.size == (d - 2 * i + 2) ** 2 and inner.all()
    if i > 1:
      assert np.all(masks[i - 1] <= masks[i - 2])
  np.testing.assert_array_equal(versatile_masks(5)[2], np.pad(np.ones((1, 1)), 2))


def test_spatial_stack_equals_s_separate_cropped_convs(x64, rng):
  d, cin, cout = 5, 3, 4
  x = rng.normal(size=(2, 9, 8, cin))
  f = rng.normal(size=(d, d, cin, cout))
  for stride in (1, 2):
    y = conv(x, spatial_versatile_kernel(f), stride=stride, padding=2)
    # the official code's way: crop the filter to (d - 2i + 2)^2, pad less
    parts = [conv(x, f[i : d - i, i : d - i], stride=stride, padding=2 - i) for i in range(3)]
    np.testing.assert_allclose(y, np.concatenate(parts, axis=-1), rtol=1e-10, atol=1e-12)


def test_naive_sum_eq4_is_the_masked_kernel_eq5(x64, rng):
  x = rng.normal(size=(1, 7, 7, 2))
  f = rng.normal(size=(5, 5, 2, 3))
  masks = versatile_masks(5, jnp.float64)
  eq4 = sum(conv(x, masks[i][:, :, None, None] * f) for i in range(3))
  np.testing.assert_allclose(conv(x, summed_versatile_kernel(f)), eq4, rtol=1e-10, atol=1e-12)
  # and the mask sum weights the rings 1, 2, 3 from the outside in
  np.testing.assert_array_equal(np.asarray(masks.sum(0))[:, 2], [1, 2, 3, 2, 1])


@pytest.mark.parametrize("cin, window, stride", [(6, 5, 1), (8, 4, 2), (6, 2, 4)])
def test_channel_windows_equal_an_explicit_loop(cin, window, stride, x64, rng):
  x = rng.normal(size=(2, 6, 5, cin))
  f = rng.normal(size=(3, 3, window, 4))
  n = channel_windows(cin, window, stride)
  assert n == (cin - window) // stride + 1
  y = conv(x, channel_versatile_kernel(f, cin, stride), padding=1)
  loop = [conv(x[..., i * stride : i * stride + window], f, padding=1) for i in range(n)]
  np.testing.assert_allclose(y, np.concatenate(loop, axis=-1), rtol=1e-10, atol=1e-12)


def test_spatial_and_channel_order_is_scale_window_filter(x64, rng):
  x = rng.normal(size=(1, 6, 6, 5))
  f = rng.normal(size=(3, 3, 4, 2))
  y = conv(x, spatial_channel_versatile_kernel(f, 5, 1), padding=1)
  chex.assert_shape(y, (1, 6, 6, 2 * 2 * 2))
  expected = []
  for s in range(2):  # the official loop nest: scale, then window start
    for start in range(2):
      expected.append(conv(x[..., start : start + 4], f[s : 3 - s, s : 3 - s], padding=1 - s))
  np.testing.assert_allclose(y, np.concatenate(expected, axis=-1), rtol=1e-10, atol=1e-12)


def test_compose_with_jit_vmap_grad_and_bf16(rng):
  f = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 2)), jnp.float32)
  k = jax.jit(jax.vmap(spatial_versatile_kernel))(f)
  chex.assert_shape(k, (3, 3, 3, 3, 4))
  kc = jax.vmap(lambda f: channel_versatile_kernel(f, 5, 2))(f)
  chex.assert_shape(kc, (3, 3, 3, 5, 4))
  # the gradient of the summed kernel is the mask sum
  g = jax.grad(lambda f: summed_versatile_kernel(f).sum())(f[0])
  chex.assert_trees_all_close(
    g, jnp.broadcast_to(versatile_masks(3).sum(0)[:, :, None, None], g.shape)
  )
  g = jax.grad(lambda f: spatial_versatile_kernel(f).sum())(f[0])
  chex.assert_trees_all_close(
    g, jnp.broadcast_to(versatile_masks(3).sum(0)[:, :, None, None], g.shape)
  )
  assert spatial_versatile_kernel(f[0].astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: versatile_masks(0), "positive int"),
    (lambda: spatial_versatile_kernel(np.zeros((3, 5, 1, 1))), "square"),
    (lambda: spatial_versatile_kernel(np.zeros((3, 3, 1))), r"\(d, d, I, O\)"),
    (lambda: channel_versatile_kernel(np.zeros((3, 3, 4, 1)), 4, 1), r"c\^ < c"),
    (lambda: channel_versatile_kernel(np.zeros((3, 3, 5, 1)), 4, 1), r"c\^ < c"),
    (lambda: channel_versatile_kernel(np.zeros((3, 3, 4, 1)), 9, 2), "does not tile"),
    (lambda: channel_versatile_kernel(np.zeros((3, 3, 4, 1)), 8, 0), "stride must be a positive"),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()
