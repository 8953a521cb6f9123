"""Learned shapes are found: a student trained through the project's optimizer recovers a teacher's
angles.

Each test trains the shape parameters themselves (with the weights) through
`optim.sgd(optim.param_labels(student), ...)`, the defaults a user gets, on
the teacher's outputs. A conv with iid inputs makes the loss the squared
distance between the two kernels, so the only way to reach it is to find
the teacher's shape.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kshapes_jax import kernels, nn, optim


def _fit(
  student: nnx.Module,
  teacher: nnx.Module,
  tx: optax.GradientTransformation,
  steps: int,
  rng,
  batch: int = 32,
) -> nnx.State:
  """Trains the student's parameters on the teacher's outputs (mean squared error); its final
  params."""
  x = jnp.asarray(rng.normal(size=(batch, 12, 12, student.in_features)), jnp.float32)
  y = teacher(x)
  graphdef, params = nnx.split(student, nnx.Param)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


def _distill(
  student: nn.RotateConv, teacher: nn.RotateConv, rng, steps: int = 400, lr: float = 0.05
):
  tx = optim.sgd(optim.param_labels(student), lr, momentum=0.9)
  return np.asarray(_fit(student, teacher, tx, steps, rng)["angles"].get_value())


def _student_of(version: int, seed: int, normalize_grad: bool = True):
  """A teacher with angles in [15, 165) and a student with its weights and angles moved by up to
  +-12 deg.

  The angles stay away from 0/180: there eq. 3's theta mod 180 hands w1's
  side to w2 (v4's kernel jumps), so no gradient leads across.
  """
  rng = np.random.default_rng(seed)
  teacher = nn.RotateConv(8, 8, version=version, rngs=nnx.Rngs(seed))
  target = rng.uniform(15, 165, (8, 8))
  teacher.angles[...] = jnp.asarray(target, jnp.float32)
  student = nn.RotateConv(8, 8, version=version, normalize_grad=normalize_grad, rngs=nnx.Rngs(seed))
  start = target + rng.uniform(-12, 12, target.shape)
  student.angles[...] = jnp.asarray(start, jnp.float32)
  crossing = np.floor(start / 45) != np.floor(target / 45)
  return student, teacher, target, crossing, rng


def _error(angles, target):
  return np.abs(np.mod(angles - target + 90, 180) - 90)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotate4_student_finds_the_teachers_angles_across_sectors(seed):
  student, teacher, target, crossing, rng = _student_of(4, seed)
  error = _error(_distill(student, teacher, rng), target)
  assert crossing.sum() >= 4  # the test has angles that must change sector
  assert np.mean(error < 1.0) >= 0.9, np.sort(error)[-8:]
  assert np.mean(error[crossing] < 1.0) >= 0.7, error[crossing]


def test_rotate2_student_finds_the_teachers_angles_within_their_sectors():
  student, teacher, target, crossing, rng = _student_of(2, 0)
  error = _error(_distill(student, teacher, rng), target)
  assert np.mean(error[~crossing] < 1.0) >= 0.95, np.sort(error[~crossing])[-5:]
  assert np.mean(error < 1.0) >= 0.9


def test_without_the_normalized_gradient_the_angles_do_not_move():
  student, teacher, target, _, rng = _student_of(4, 0, normalize_grad=False)
  start = np.asarray(student.angles[...])
  angles = _distill(student, teacher, rng)
  # what the issue measured: the default left them in place
  assert np.max(np.abs(angles - start)) < 0.5
  assert np.mean(_error(angles, target) < 1.0) < 0.2


def test_rotate2_sector_boundary_repels_a_line_from_the_neighbour_sector():
  """Why v2 angles do not cross sectors: eq. 3 makes the boundary a ridge.

  One v2 kernel (weight w on the centre and, shared, on both taps of the
  line), teacher at fraction f_t of sector 0, student in sector 1 at
  fraction f: the squared kernel distance is
  w^2 [(1 - f_t)^2 + (f_t - 1 + f)^2 + f^2] (x 2 for the opposite taps),
  least at f* = (1 - f_t) / 2 > 0, so descent from sector 1 stops at
  45 + 45 f* degrees and never reaches the teacher.
  """
  w = jnp.ones((1, 1), jnp.float32)
  f_t = 34.7 / 45
  teacher = kernels.rotate_kernel(w, jnp.full((1, 1), 45 * f_t))
  distance = lambda theta: jnp.sum((kernels.rotate_kernel(w, theta[None, None]) - teacher) ** 2)
  f_star = (1 - f_t) / 2
  thetas = jnp.linspace(45.05, 89.95, 899)
  best = float(thetas[jnp.argmin(jax.vmap(distance)(thetas))])
  assert abs(best - 45 * (1 + f_star)) < 0.06
  # at the boundary, descent moves away from it
  assert float(jax.grad(distance)(jnp.float32(45.5))) < 0


@pytest.mark.parametrize("target", ["dilated by 0.6", "one synapse moved"])
def test_acu_student_on_the_lattice_finds_the_teachers_positions(target):
  """The paper's rules: normalized gradient, positions at 0.01 x lr, here under a cosine schedule.

  The weights are held at the teacher's (lr multiplier 0): with them free,
  at the paper's 100x slower position rate the weights absorb the
  difference first and the positions stop 0.25-0.4 px short (measured).
  The targets lie toward the centre: at an integer coordinate the position
  derivative is one-sided toward the centre (the lattice rule in DESIGN),
  so from the exact lattice an outward target is not seen.
  """
  lattice = np.asarray(nn.initial_positions(9, "lattice"))[1:]
  goal = (
    0.6 * lattice if target == "dilated by 0.6" else lattice + np.array([[0.5, 0.2]] + [[0, 0]] * 7)
  )
  rng = np.random.default_rng(0)
  teacher = nn.ActiveConv(6, 6, radius=2, rngs=nnx.Rngs(0))
  teacher.positions[...] = jnp.asarray(goal, jnp.float32)
  student = nn.ActiveConv(6, 6, radius=2, rngs=nnx.Rngs(0))  # on the lattice, the teacher's weights
  steps = 300
  tx = optim.sgd(
    optim.param_labels(student),
    optim.make_schedule("cosine", 1.0, steps),
    momentum=0.9,
    lr_multipliers={"positions": 0.01, "weights": 0.0},
  )
  params = _fit(student, teacher, tx, steps, rng, batch=16)
  found = np.asarray(params["positions"].get_value())
  # 1e-3 px: the normalized step ends at ~lr(t) x 0.01 with the cosine at 0; bilinear weights then
  # differ from the teacher's by < 0.1%
  np.testing.assert_allclose(found, goal, atol=1e-3)
