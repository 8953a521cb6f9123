"""ACU: bilinear splat kernel == literal gather == NumPy eq. 5-14, value and gradient."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kshapes_jax import reference
from kshapes_jax.conv import active_conv_gather, conv
from kshapes_jax.kernels import (
  active_kernel,
  bilinear_cell,
  lattice_positions,
  radius_for_positions,
)


# jitted (radius, stride and padding static): one program a case, not its many ops one by one
@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def splat(x, w, p, radius, stride, padding):
  return conv(x, active_kernel(w, p, radius), stride=stride, padding=padding)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def gather(x, w, p, radius, stride, padding):
  return active_conv_gather(x, w, p, stride=stride, padding=padding, radius=radius)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _grads(fn, x, w, p, g, radius, stride, padding):
  loss = lambda x, w, p: jnp.sum(fn(x, w, p, radius, stride, padding) * g)
  return jax.grad(loss, argnums=(0, 1, 2))(x, w, p)


def _random_positions(rng, k, radius):
  # inside the radius and >= 0.05 px from any integer, so each cell is unambiguous
  p = rng.uniform(-radius + 0.05, radius - 0.05, size=(k, 2))
  near = np.abs(p - np.round(p)) < 0.05
  return np.where(near, p + 0.1, p)


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_splat_gather_and_reference_agree(radius, stride, padding, x64, rng):
  x = rng.normal(size=(2, 9, 8, 3))
  w = rng.normal(size=(5, 3, 4))
  p = _random_positions(rng, 5, radius)
  p[0] = 0.0  # synapse 0 at the origin, as in the layer
  y_ref = reference.active_conv(x, w, p, stride=stride, padding=padding, radius=radius)
  g = rng.normal(size=y_ref.shape)
  ref = reference.active_conv_grads(x, w, p, g, stride=stride, padding=padding, radius=radius)
  for fn in (splat, gather):
    np.testing.assert_allclose(fn(x, w, p, radius, stride, padding), y_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(_grads(fn, x, w, p, g, radius, stride, padding), ref):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("stride", [1, 2])
def test_lattice_points_one_sided_toward_centre(stride, x64, rng):
  # integers, half-integers and zeros: every cell-rule branch, on the edge of R = 2
  p = np.array([[0, 0], [2, -2], [-2, 1], [1, 0], [0.5, -1], [-1, -1.5], [2, 2]], float)
  x = rng.normal(size=(1, 7, 6, 2))
  w = rng.normal(size=(7, 2, 3))
  y_ref = reference.active_conv(x, w, p, stride=stride, radius=2)
  g = rng.normal(size=y_ref.shape)
  ref = reference.active_conv_grads(x, w, p, g, stride=stride, radius=2)
  for fn in (splat, gather):
    np.testing.assert_allclose(fn(x, w, p, 2, stride, "SAME"), y_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(_grads(fn, x, w, p, g, 2, stride, "SAME"), ref):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)


def test_cell_rule():
  v = np.array([-2.0, -1.5, -1.0, -0.25, 0.0, 0.25, 1.0, 1.5, 2.0])
  low, frac = bilinear_cell(v)
  np.testing.assert_array_equal(low, [-2, -2, -1, -1, 0, 0, 0, 1, 1])
  np.testing.assert_allclose(frac, [0, 0.5, 0, 0.75, 0, 0.25, 1, 0.5, 1])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_3x3_lattice_is_a_plain_3x3_conv(stride, padding, x64, rng):
  x = rng.normal(size=(2, 7, 8, 3))
  p = np.asarray(lattice_positions(3), np.float64)
  w = rng.normal(size=(9, 3, 4))
  # the plain kernel: synapse (dx, dy) sits at [1 + dy, 1 + dx]
  plain = np.zeros((3, 3, 3, 4))
  for k, (dx, dy) in enumerate(p.astype(int)):
    plain[1 + dy, 1 + dx] = w[k]
  y_plain = conv(x, plain, stride=stride, padding=padding)
  g = rng.normal(size=y_plain.shape)
  dx_plain, dk_plain = jax.grad(
    lambda x, k: jnp.sum(conv(x, k, stride=stride, padding=padding) * g), argnums=(0, 1)
  )(x, plain)
  dw_plain = np.stack([dk_plain[1 + dy, 1 + dx] for dx, dy in p.astype(int)])
  ref_dp = reference.active_conv_grads(x, w, p, g, stride=stride, padding=padding, radius=1)[2]
  for fn in (splat, gather):
    np.testing.assert_allclose(fn(x, w, p, 1, stride, padding), y_plain, rtol=1e-10, atol=1e-12)
    dx, dw, dp = _grads(fn, x, w, p, g, 1, stride, padding)
    np.testing.assert_allclose(dx, dx_plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, dw_plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dp, ref_dp, rtol=1e-10, atol=1e-11)
    assert np.all(np.isfinite(dp)) and np.any(dp != 0)


def test_lattice_scaled_by_two_is_a_dilated_conv(x64, rng):
  x = rng.normal(size=(2, 9, 9, 2))
  p = np.asarray(lattice_positions(3, dilation=2.0), np.float64)
  w = rng.normal(size=(9, 2, 3))
  plain = np.zeros((3, 3, 2, 3))
  for k, (dx, dy) in enumerate((p / 2).astype(int)):
    plain[1 + dy, 1 + dx] = w[k]
  y = conv(x, plain, dilation=2, padding="SAME")
  np.testing.assert_allclose(splat(x, w, p, 2, 1, "SAME"), y, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(gather(x, w, p, 2, 1, "SAME"), y, rtol=1e-10, atol=1e-12)


def test_per_group_positions(x64, rng):
  x = rng.normal(size=(2, 6, 7, 3))
  w = rng.normal(size=(4, 3, 6))
  p = np.stack([_random_positions(rng, 4, 2) for _ in range(3)])  # 3 groups of 2 outputs
  y = splat(x, w, p, 2, 1, "SAME")
  # each group equals the shared-position ACU restricted to its output channels
  for gi in range(3):
    part = reference.active_conv(x, w[..., 2 * gi : 2 * gi + 2], p[gi], radius=2)
    np.testing.assert_allclose(y[..., 2 * gi : 2 * gi + 2], part, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(gather(x, w, p, 2, 1, "SAME"), y, rtol=1e-10, atol=1e-12)
  g = rng.normal(size=y.shape)
  for a, b in zip(
    _grads(splat, x, w, p, g, 2, 1, "SAME"), _grads(gather, x, w, p, g, 2, 1, "SAME")
  ):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


def test_per_pixel_positions(x64, rng):
  x = rng.normal(size=(2, 6, 7, 3))
  w = rng.normal(size=(4, 3, 2))
  a, b = _random_positions(rng, 4, 2), 1.7 * _random_positions(rng, 4, 2)
  per_pixel = np.empty((2, 3, 4, 4, 2))  # stride 2: H' = 3, W' = 4
  per_pixel[:, 0::2], per_pixel[:, 1::2] = a, b
  y = active_conv_gather(x, w, per_pixel, stride=2, radius=2)
  ya = reference.active_conv(x, w, a, stride=2, radius=2)
  yb = reference.active_conv(x, w, b, stride=2, radius=2)
  np.testing.assert_allclose(y[:, 0::2], ya[:, 0::2], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(y[:, 1::2], yb[:, 1::2], rtol=1e-10, atol=1e-12)
  # gradient of each pixel's positions: a pixel's own share of eq. 12-13
  g = np.zeros(y.shape)
  g[1, 1, 2] = rng.normal(size=2)
  dp = jax.grad(lambda p: jnp.sum(active_conv_gather(x, w, p, stride=2, radius=2) * g))(per_pixel)
  ref_dp = reference.active_conv_grads(x, w, b, g, stride=2, radius=2)[2]
  np.testing.assert_allclose(dp[1, 1, 2], ref_dp, rtol=1e-10, atol=1e-12)
  assert np.count_nonzero(np.abs(dp).sum(axis=(-1, -2))) == 1


def test_check_grads_away_from_lattice(x64, rng):
  x = rng.normal(size=(1, 5, 5, 2))
  w = rng.normal(size=(3, 2, 2))
  p = _random_positions(rng, 3, 2)
  # jitted: the checks differentiate twice in both modes, a program each rather than op by op
  check_grads(
    jax.jit(lambda w, p: active_kernel(w, p, 2)), (w, p), order=2, modes=("fwd", "rev"), eps=1e-4
  )
  check_grads(
    jax.jit(lambda x, w, p: gather(x, w, p, 2, 1, "SAME")),
    (x, w, p),
    order=2,
    modes=("fwd", "rev"),
    eps=1e-4,
  )


def test_radius_helper():
  assert radius_for_positions(np.zeros((1, 2))) == 1
  assert radius_for_positions(lattice_positions(3)) == 1
  assert radius_for_positions(np.array([[0.0, 1.01]])) == 2
  assert radius_for_positions(np.array([[-3.0, 0.5]])) == 3
  with pytest.raises(ValueError, match="static radius"):
    jax.jit(radius_for_positions)(np.zeros((2, 2)))


def test_radius_too_small_raises_on_host_and_clips_in_jit(rng):
  w = rng.normal(size=(2, 1, 1)).astype(np.float32)
  p = np.array([[0.0, 0.0], [1.5, -0.5]], np.float32)
  with pytest.raises(ValueError, match="radius 1 is too small.*needs radius >= 2"):
    active_kernel(w, p, 1)
  with pytest.raises(ValueError, match="too small"):
    jax.grad(lambda w: active_kernel(w, p, 1).sum())(w)  # positions concrete: checked
  clipped = jax.jit(active_kernel, static_argnums=2)(w, p, 1)
  chex.assert_trees_all_close(
    clipped, active_kernel(w, np.array([[0, 0], [1, -0.5]], np.float32), 1)
  )


def test_splat_kernel_by_hand():
  # one synapse at (dx, dy) = (0.25, -0.5): columns 0 / +1 by 0.75 / 0.25, rows -1 / 0 by 0.5
  k = np.asarray(active_kernel(np.full((1, 1, 1), 2.0), np.array([[0.25, -0.5]]), 1))[..., 0, 0]
  expected = np.zeros((3, 3))
  expected[0, 1], expected[0, 2] = 2 * 0.5 * 0.75, 2 * 0.5 * 0.25
  expected[1, 1], expected[1, 2] = 2 * 0.5 * 0.75, 2 * 0.5 * 0.25
  np.testing.assert_allclose(k, expected, rtol=1e-6)


def test_jit_vmap_grad_and_bf16(rng):
  w = rng.normal(size=(4, 9, 2, 3)).astype(np.float32)
  p = np.stack([_random_positions(rng, 9, 1) for _ in range(4)]).astype(np.float32)
  build = jax.jit(jax.vmap(lambda w, p: active_kernel(w, p, 1)))
  k = build(w, p)
  chex.assert_shape(k, (4, 3, 3, 2, 3))
  chex.assert_trees_all_close(k[1], active_kernel(w[1], p[1], 1), atol=1e-6)
  x = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
  loss = jax.jit(jax.grad(lambda p: jnp.sum(gather(x, w[0], p, 1, 1, "SAME") ** 2)))
  chex.assert_tree_all_finite(loss(p[0]))
  x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w[0], jnp.bfloat16)
  y16 = splat(x16, w16, jnp.asarray(p[0], jnp.bfloat16), 1, 1, "SAME")
  g16 = gather(x16, w16, p[0], 1, 1, "SAME")
  assert y16.dtype == g16.dtype == jnp.bfloat16
  y32 = splat(x, w[0], p[0], 1, 1, "SAME")
  chex.assert_trees_all_close(y16.astype(jnp.float32), y32, atol=0.15, rtol=0.05)
  chex.assert_trees_all_close(g16.astype(jnp.float32), y32, atol=0.15, rtol=0.05)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: active_kernel(np.zeros((9, 2)), np.zeros((9, 2)), 1), r"weights must be \(K, I, O\)"),
    (lambda: active_kernel(np.zeros((9, 2, 3)), np.zeros((8, 2)), 1), "K = 9"),
    (lambda: active_kernel(np.zeros((9, 2, 3)), np.zeros((2, 9, 2)), 1), "do not divide"),
    (lambda: active_kernel(np.zeros((9, 2, 3)), np.zeros((9, 2)), 0), "radius must be"),
    (
      lambda: active_conv_gather(np.zeros((1, 4, 4, 2)), np.zeros((9, 3, 1)), np.zeros((9, 2))),
      "C = 2",
    ),
    (
      lambda: active_conv_gather(np.zeros((4, 4, 2)), np.zeros((9, 2, 1)), np.zeros((9, 2))),
      r"\(N, H, W, C\)",
    ),
    (
      lambda: active_conv_gather(
        np.zeros((1, 4, 4, 2)), np.zeros((9, 2, 1)), np.zeros((1, 3, 4, 9, 2))
      ),
      r"\(1, 4, 4, 9, 2\)",
    ),
    (
      lambda: active_conv_gather(
        np.zeros((1, 2, 2, 1)), np.zeros((1, 1, 1)), np.zeros((1, 2)), padding="VALID"
      ),
      "too small",
    ),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_gather_needs_a_radius_inside_jit(rng):
  x = rng.normal(size=(1, 4, 4, 1)).astype(np.float32)
  w = rng.normal(size=(2, 1, 1)).astype(np.float32)
  with pytest.raises(ValueError, match="static radius"):
    jax.jit(active_conv_gather)(x, w, np.zeros((2, 2), np.float32))
