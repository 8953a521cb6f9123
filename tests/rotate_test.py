"""RotateConv: inverse interpolation (eq. 3, 8), its gradients (eq. 5, 9), eq. 6."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kshapes_jax import reference
from kshapes_jax.conv import conv
from kshapes_jax.kernels import project_angles, rotate_kernel

LATTICE_ANGLES = np.array([[0.0, 45.0, 90.0], [135.0, 180.0, -45.0]])


def _line(w0, w1, w2, one, two):
  """A hand-written 3x3 line kernel: w1 at cell `one`, w2 at cell `two`."""
  k = np.zeros((3, 3))
  k[1, 1] = w0
  k[one] += w1
  k[two] += w2
  return k


@pytest.mark.parametrize(
  "angle, one, two",
  [
    (0.0, (1, 2), (1, 0)),  # horizontal, w1 right
    (45.0, (0, 2), (2, 0)),  # w1 up-right
    (90.0, (0, 1), (2, 1)),  # vertical, w1 up
    (135.0, (0, 0), (2, 2)),  # w1 up-left
    (180.0, (1, 2), (1, 0)),  # wraps to 0
    (-45.0, (0, 0), (2, 2)),  # == 135
  ],
)
def test_lattice_angles_give_hand_written_lines(angle, one, two):
  w = np.array([0.5, 2.0, -3.0], np.float32)
  k = rotate_kernel(w[:, None, None], np.full((1, 1), angle, np.float32))
  chex.assert_trees_all_close(k[..., 0, 0], _line(*w, one, two), atol=1e-6)
  k2 = rotate_kernel(np.full((1, 1), 1.5, np.float32), np.full((1, 1), angle, np.float32))
  chex.assert_trees_all_close(k2[..., 0, 0], _line(1.5, 1.5, 1.5, one, two), atol=1e-6)


def test_between_lattice_angles_split_linearly():
  # theta = 30: f = 2/3, w1 -> right (1/3) and up-right (2/3); w2 opposite.
  w = np.array([1.0, 3.0, 6.0], np.float32)
  k = np.asarray(rotate_kernel(w[:, None, None], np.full((1, 1), 30.0, np.float32)))[..., 0, 0]
  expected = np.zeros((3, 3))
  expected[1, 1] = 1.0
  expected[1, 2], expected[0, 2] = 3.0 / 3, 3.0 * 2 / 3
  expected[1, 0], expected[2, 0] = 6.0 / 3, 6.0 * 2 / 3
  np.testing.assert_allclose(k, expected, rtol=1e-6)


@pytest.mark.parametrize("version", ["v4", "v2"])
def test_value_matches_reference(version, rng):
  w = rng.normal(size=(3, 4, 5) if version == "v4" else (4, 5)).astype(np.float32)
  theta = rng.uniform(-200, 400, size=(4, 5)).astype(np.float32)
  np.testing.assert_allclose(
    rotate_kernel(w, theta), reference.rotate_kernel(w, theta), rtol=1e-5, atol=1e-5
  )


def _grads(w, theta, kernel_grad):
  loss = lambda w, t: jnp.sum(rotate_kernel(w, t) * kernel_grad)
  return jax.grad(loss, argnums=(0, 1))(w, theta)


@pytest.mark.parametrize("version", ["v4", "v2"])
@pytest.mark.parametrize("where", ["random", "lattice"])
def test_grad_matches_eq5_eq9(version, where, x64, rng):
  w = rng.normal(size=(3, 2, 3) if version == "v4" else (2, 3))
  theta = rng.uniform(0, 180, size=(2, 3)) if where == "random" else LATTICE_ANGLES
  g = rng.normal(size=(3, 3, 2, 3))
  dw, dt = _grads(w, theta, g)
  ref_dw, ref_dt = reference.rotate_kernel_grads(w, theta, g)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(dt, ref_dt, rtol=1e-10, atol=1e-12)


def test_lattice_derivative_is_the_small_side_one(x64):
  # At 45: d kernel / d theta moves w1 from up-right toward up (the next sector).
  w = np.array([0.0, 1.0, 0.0])[:, None, None]
  jac = jax.jacfwd(rotate_kernel, argnums=1)(w, np.full((1, 1), 45.0))[..., 0, 0, 0, 0]
  expected = np.zeros((3, 3))
  expected[0, 2], expected[0, 1] = -1 / 45, 1 / 45
  np.testing.assert_allclose(jac, expected, atol=1e-15)


def test_grad_through_conv_matches_eq5(x64, rng):
  # The chain the paper describes: conv gives dL/dK, eq. 5 gives dL/d(w, theta).
  x = rng.normal(size=(2, 6, 7, 2))
  w = rng.normal(size=(3, 2, 3))
  theta = rng.uniform(0, 180, size=(2, 3))
  g = rng.normal(size=(2, 3, 4, 3))
  loss_k = lambda k: jnp.sum(conv(x, k, stride=2) * g)
  kernel_grad = jax.grad(loss_k)(rotate_kernel(w, theta))
  dw, dt = jax.grad(lambda w, t: loss_k(rotate_kernel(w, t)), argnums=(0, 1))(w, theta)
  ref_dw, ref_dt = reference.rotate_kernel_grads(w, theta, kernel_grad)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(dt, ref_dt, rtol=1e-10, atol=1e-12)


def test_check_grads_away_from_lattice(x64, rng):
  w = rng.normal(size=(3, 2, 2))
  # keep every angle >= 5 degrees from a multiple of 45, so steps stay in a sector
  theta = 45 * rng.integers(0, 4, size=(2, 2)) + rng.uniform(5, 40, size=(2, 2))
  check_grads(rotate_kernel, (w, theta), order=2, modes=("fwd", "rev"), eps=1e-3)
  check_grads(rotate_kernel, (w[0], theta), order=2, modes=("fwd", "rev"), eps=1e-3)


def test_continuous_across_sector_boundaries():
  w = np.array([0.3, 1.0, -2.0], np.float32)[:, None, None]
  for boundary in (45.0, 90.0, 135.0):
    below = rotate_kernel(w, np.full((1, 1), boundary - 1e-3, np.float32))
    above = rotate_kernel(w, np.full((1, 1), boundary + 1e-3, np.float32))
    chex.assert_trees_all_close(below, above, atol=1e-4)


def test_jit_vmap_and_bf16(rng):
  w = rng.normal(size=(5, 3, 2, 4)).astype(np.float32)
  theta = rng.uniform(0, 180, size=(5, 2, 4)).astype(np.float32)
  batched = jax.jit(jax.vmap(rotate_kernel))(w, theta)
  chex.assert_shape(batched, (5, 3, 3, 2, 4))
  chex.assert_trees_all_close(batched[2], rotate_kernel(w[2], theta[2]), atol=1e-6)
  k16 = rotate_kernel(jnp.asarray(w[0], jnp.bfloat16), jnp.asarray(theta[0], jnp.bfloat16))
  assert k16.dtype == jnp.bfloat16
  # bf16 angles carry ~0.5 degree of rounding; compare at that tolerance
  chex.assert_trees_all_close(k16.astype(jnp.float32), rotate_kernel(w[0], theta[0]), atol=0.1)


@pytest.mark.parametrize(
  "w_shape, a_shape, match",
  [
    ((4, 2, 3), (2, 3), r"\(3, I, O\)"),
    ((3, 2, 3), (3, 2), r"angles must be \(I, O\)"),
    ((2, 3, 3, 1), (2, 3), r"rank 4"),
    ((2, 3), (2,), r"angles must be"),
  ],
)
def test_bad_shapes_raise(w_shape, a_shape, match):
  with pytest.raises(ValueError, match=match):
    rotate_kernel(np.zeros(w_shape), np.zeros(a_shape))


# --- eq. 6: angle projection -------------------------------------------------

angles = st.floats(min_value=-360, max_value=540, allow_nan=False, width=64)


@hypothesis.given(previous=angles, delta=st.floats(-90, 90), eps=st.floats(0, 20))
@hypothesis.settings(max_examples=200, deadline=None)
def test_projection_stays_within_eps_of_the_previous_sector(previous, delta, eps):
  with jax.enable_x64(True):
    new = float(project_angles(np.float64(previous + delta), np.float64(previous), eps))
  assert 0.0 <= new < 180.0
  prev = previous % 180.0
  low = prev - prev % 45.0
  # distance on the circle of period 180 from the band [low - eps, low + 45 + eps]
  centre, half = low + 22.5, 22.5 + eps
  gap = abs((new - centre + 90.0) % 180.0 - 90.0)
  assert gap <= half + 1e-9
  # inside the band the update is unchanged (mod 180)
  if low - eps <= prev + delta <= low + 45 + eps:
    assert abs(((new - (prev + delta)) + 90.0) % 180.0 - 90.0) < 1e-9


def test_projection_examples():
  prev = np.array([10.0, 50.0, 179.0, 10.0])
  upd = np.array([80.0, 20.0, 185.0, 12.0])
  out = np.asarray(project_angles(upd, prev, eps=2.0))
  # 185 leaves [135, 180] by more than eps: clipped to 182, wrapped to 2
  np.testing.assert_allclose(out, [47.0, 43.0, 2.0, 12.0])


def test_projection_rejects_negative_eps_and_shape_mismatch():
  with pytest.raises(ValueError, match="eps"):
    project_angles(np.zeros(2), np.zeros(2), eps=-1.0)
  with pytest.raises(ValueError, match="shape of `updated`"):
    project_angles(np.zeros(2), np.zeros(3), eps=1.0)
