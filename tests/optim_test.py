"""The optimizer rules: labels, angle projection (eq. 6), position lr, warm-up, decay mask."""

from collections import Counter

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import strategies as st

from kshapes_jax import kernels, optim
from kshapes_jax.nn import ActiveConv, Dense, RotateConv, conv_bn


class Mixed(nnx.Module):
  """One layer of each labelled kind."""

  def __init__(self, rngs):
    self.rot = RotateConv(2, 3, rngs=rngs, use_bias=True)
    self.acu = conv_bn("active", 3, 4, 3, rngs=rngs)
    self.fc = Dense(4, 2, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.acu(self.rot(x)))
    return self.fc(x.mean(axis=(1, 2)))


def _labelled(model):
  labels = optim.param_labels(model)
  params = nnx.state(model, nnx.Param)
  flat_p = dict(nnx.to_flat_state(params))
  flat_l = dict(nnx.to_flat_state(labels))
  return {path: (flat_p[path], flat_l[path].get_value()) for path in flat_p}


def test_param_labels_name_every_kind():
  model = Mixed(nnx.Rngs(0))
  got = {"/".join(map(str, path)): lab for path, (_, lab) in _labelled(model).items()}
  assert got == {
    "rot/weights": "weights",
    "rot/angles": "angles",
    "rot/bias": "bias",
    "acu/conv/weights": "weights",
    "acu/conv/positions": "positions",
    "acu/bn/scale": "bn",
    "acu/bn/bias": "bn",
    "fc/kernel": "weights",
    "fc/bias": "bias",
  }


def _ones_update(model, tx, steps=1):
  params = nnx.state(model, nnx.Param)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  out = []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    out.append(updates)
  return out


def _by_label(model, updates):
  labels = jax.tree.leaves(optim.param_labels(model))
  result = {}
  for u, lab in zip(jax.tree.leaves(updates), labels):
    result.setdefault(lab, []).append(np.asarray(u))
  return result


def test_position_learning_rate_is_a_hundredth_and_follows_the_schedule():
  model = Mixed(nnx.Rngs(0))
  labels = optim.param_labels(model)
  schedule = optim.make_schedule("staircase", 0.1, 10, boundaries=[2])
  tx = optim.sgd(labels, schedule, momentum=0.0, angle_eps=None)
  for step, updates in enumerate(_ones_update(model, tx, steps=3)):
    u = _by_label(model, updates)
    lr = 0.1 if step < 2 else 0.01
    np.testing.assert_allclose(u["weights"][0], -lr, rtol=1e-6)
    np.testing.assert_allclose(u["positions"][0], -lr * 0.01, rtol=1e-6)


def test_positions_are_frozen_during_warm_up_and_momentum_does_not_carry_it():
  model = Mixed(nnx.Rngs(0))
  tx = optim.sgd(
    optim.param_labels(model),
    1.0,
    momentum=0.9,
    nesterov=True,
    freeze_steps=3,
    lr_multipliers={},
    angle_eps=None,
  )
  ups = [_by_label(model, u) for u in _ones_update(model, tx, steps=5)]
  for step in range(3):
    assert np.all(ups[step]["positions"][0] == 0)
    assert np.all(ups[step]["weights"][0] != 0)
  # the first live step is momentum's first step: Nesterov gives g + 0.9 g
  np.testing.assert_allclose(ups[3]["positions"][0], -1.9, rtol=1e-6)
  # one step later: trace 0.9 + 1 = 1.9, Nesterov 1 + 0.9 * 1.9
  np.testing.assert_allclose(ups[4]["positions"][0], -2.71, rtol=1e-6)


def test_weight_decay_only_on_its_labels():
  model = Mixed(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = optim.sgd(optim.param_labels(model), 1.0, momentum=0.0, weight_decay=0.5, angle_eps=None)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for (p, lab), u in zip(_labelled(model).values(), jax.tree.leaves(updates)):
    expected = -0.5 * np.asarray(p[...]) if lab == "weights" else 0.0
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, atol=0)


def test_angle_projection_keeps_each_step_in_the_previous_sector_plus_eps(rng):
  model = Mixed(nnx.Rngs(0))
  labels = optim.param_labels(model)
  eps = 2.0
  tx = optim.sgd(labels, 1.0, momentum=0.0, angle_eps=eps)
  for grads, old_a, new_a in _angle_steps(model, tx, rng, steps=20, scale=40.0):
    raw = old_a - grads
    expected = np.asarray(kernels.project_angles(raw, old_a, eps))
    np.testing.assert_allclose(new_a, expected, atol=1e-4)
    _assert_within_sector(old_a, new_a, eps)


def _angle_steps(model, tx, rng, steps: int, scale: float):
  """Applies `steps` updates of random gradients (std `scale`); yields (angle grads, old angles, new
  angles)."""
  params = nnx.state(model, nnx.Param)
  state = tx.init(params)
  for _ in range(steps):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, scale, p.shape), p.dtype), params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    yield (
      np.asarray(grads["rot"]["angles"][...]),
      np.asarray(params["rot"]["angles"][...], np.float64),
      np.asarray(new["rot"]["angles"][...], np.float64),
    )
    params = new


def _assert_within_sector(old_a, new_a, eps) -> float:
  """Eq. 6 as a bound: the (unwrapped) move stays within [low - eps, low + 45 + eps]; returns the
  largest move."""
  low = old_a - np.mod(old_a, 45.0)
  unwrapped = old_a + (np.mod(new_a - old_a + 90, 180) - 90)
  assert np.all(unwrapped >= low - eps - 1e-4) and np.all(unwrapped <= low + 45 + eps + 1e-4)
  assert np.all(new_a >= 0) and np.all(new_a < 180 + 1e-4)
  return float(np.max(np.abs(unwrapped - old_a)))


def test_small_angle_steps_are_plain_sgd():
  model = Mixed(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  angles = np.asarray(params["rot"]["angles"][...])
  # keep every angle 1 degree inside its sector so a 0.1 degree step is unconstrained
  params["rot"]["angles"][...] = jnp.asarray(np.floor(angles / 45) * 45 + 1 + np.mod(angles, 43))
  tx = optim.sgd(optim.param_labels(model), 0.1, momentum=0.0, angle_eps=0.0)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["rot"]["angles"][...]), -0.1, rtol=1e-4)


def test_schedules():
  stair = optim.make_schedule("staircase", 0.1, 100, boundaries=[50, 75])
  np.testing.assert_allclose(
    [float(stair(s)) for s in (0, 49, 50, 74, 75, 99)],
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
    rtol=1e-6,
  )
  cos = optim.make_schedule("cosine", 0.2, 100, warmup_steps=10)
  assert float(cos(0)) == 0.0
  np.testing.assert_allclose(float(cos(10)), 0.2, rtol=1e-6)
  np.testing.assert_allclose(float(cos(100)), 0.0, atol=1e-7)
  assert float(optim.make_schedule("constant", 0.3, 5)(4)) == pytest.approx(0.3)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
  st.integers(0, 40), st.lists(st.integers(1, 120), min_size=1, max_size=3, unique=True)
)
def test_a_warm_up_never_moves_the_staircase_drops(warmup, boundaries):
  # the drops stay at their steps from step 0 (optax.join_schedules restarts the count after
  # the ramp); a drop inside the ramp applies from its end
  boundaries = sorted(boundaries)
  stair = optim.make_schedule("staircase", 0.1, 200, boundaries=boundaries, warmup_steps=warmup)
  steps = np.arange(200)
  drops = (steps[:, None] >= np.asarray(boundaries)[None]).sum(1)
  want = np.where(steps < warmup, 0.1 * steps / max(warmup, 1), 0.1 * 0.1**drops)
  np.testing.assert_allclose(np.asarray(stair(jnp.asarray(steps))), want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: optim.make_schedule("linear", 0.1, 10), "schedule must be"),
    (lambda: optim.make_schedule("staircase", 0.1, 10, boundaries=[5, 3]), "increasing"),
    (lambda: optim.make_schedule("cosine", -1.0, 10), "learning rate"),
    (lambda: optim.freeze({}, ("angle",), 3), "unknown parameter label 'angle'"),
    (lambda: optim.scale_by_label({}, {"position": 0.01}), "unknown parameter label"),
    (lambda: optim.project_angle_updates({}, -1.0), "eps"),
    (lambda: optim.sgd({}, 0.1, momentum=1.5), "momentum"),
    (lambda: optim.sgd({}, 0.1, decay_labels=("kernel",)), "unknown parameter label 'kernel'"),
  ],
)
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_labels_work_with_optax_multi_transform():
  model = Mixed(nnx.Rngs(0))
  labels = optim.param_labels(model)
  tx = optax.multi_transform(
    {lab: optax.sgd(0.1) if lab != "positions" else optax.set_to_zero() for lab in optim.LABELS},
    labels,
  )
  params = nnx.state(model, nnx.Param)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  counts = Counter(
    (lab, bool(np.all(np.asarray(u) == 0)))
    for u, lab in zip(jax.tree.leaves(updates), jax.tree.leaves(labels))
  )
  assert counts[("positions", True)] == 1 and counts[("weights", False)] == 3


def test_synapse_zero_is_not_a_parameter():
  layer = ActiveConv(2, 3, rngs=nnx.Rngs(0))
  chex.assert_shape(layer.positions[...], (8, 2))
  layer.positions[...] = layer.positions[...] + 0.3
  np.testing.assert_array_equal(np.asarray(layer.all_positions())[0], [0.0, 0.0])


# ---------------------------------------------------------------- the rules around any optimizer


def _adam_like(labels, **rules):
  """optim.adamw with no decay and no bias correction quirks: a unit gradient gives a step of
  -lr."""
  return optim.adamw(labels, 0.1, weight_decay=0.0, **rules)


def test_sgd_is_with_shape_rules_around_momentum_sgd_with_the_same_state_layout():
  model = Mixed(nnx.Rngs(0))
  labels = optim.param_labels(model)
  params = nnx.state(model, nnx.Param)
  kw = dict(weight_decay=1e-4, freeze_steps=2, angle_eps=1.0)
  ours = optim.sgd(labels, 0.1, momentum=0.9, nesterov=True, **kw)
  hand = optim.with_shape_rules(
    [optax.trace(0.9, nesterov=True), optax.scale_by_learning_rate(0.1)], labels, **kw
  )
  # one flat chain: checkpoints saved before with_shape_rules existed keep restoring
  assert len(ours.init(params)) == 6
  chex.assert_trees_all_equal_structs(ours.init(params), hand.init(params))
  grads = jax.tree.map(jnp.ones_like, params)
  a, _ = ours.update(grads, ours.init(params), params)
  b, _ = hand.update(grads, hand.init(params), params)
  chex.assert_trees_all_close(a, b)


def test_position_multiplier_under_adamw():
  model = Mixed(nnx.Rngs(0))
  tx = _adam_like(optim.param_labels(model), angle_eps=None)
  for updates in _ones_update(model, tx, steps=3):
    u = _by_label(model, updates)
    # Adam's step for a constant gradient is lr; positions take 0.01 of it
    np.testing.assert_allclose(u["weights"][0], -0.1, rtol=1e-4)
    np.testing.assert_allclose(u["positions"][0], -0.1 * 0.01, rtol=1e-4)


def test_positions_frozen_under_adamw_and_its_moments_start_after_the_warm_up():
  model = Mixed(nnx.Rngs(0))
  tx = _adam_like(optim.param_labels(model), freeze_steps=3, lr_multipliers={}, angle_eps=None)
  ups = [_by_label(model, u) for u in _ones_update(model, tx, steps=5)]
  for step in range(3):
    assert np.all(ups[step]["positions"][0] == 0) and np.all(ups[step]["weights"][0] != 0)
  # Adam saw zeros for 3 steps: m = (1 - 0.9) g, bias-corrected over 4 steps, v likewise
  m = (1 - 0.9) / (1 - 0.9**4)
  v = (1 - 0.999) / (1 - 0.999**4)
  np.testing.assert_allclose(ups[3]["positions"][0], -0.1 * m / (np.sqrt(v) + 1e-8), rtol=1e-4)


def test_adamw_decays_only_its_labels():
  model = Mixed(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  tx = optim.adamw(optim.param_labels(model), 1.0, weight_decay=0.5, angle_eps=None)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for (p, lab), u in zip(_labelled(model).values(), jax.tree.leaves(updates)):
    expected = -0.5 * np.asarray(p[...]) if lab == "weights" else 0.0
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("base", ["adamw", "lamb"])
def test_angle_projection_holds_around_any_optimizer(rng, base):
  model = Mixed(nnx.Rngs(0))
  labels = optim.param_labels(model)
  eps = 2.0
  inner = optax.adamw(30.0, weight_decay=0.0) if base == "adamw" else optax.lamb(30.0)
  tx = optim.with_shape_rules(inner, labels, angle_eps=eps)
  moved = max(
    _assert_within_sector(old_a, new_a, eps)
    for _, old_a, new_a in _angle_steps(model, tx, rng, steps=10, scale=1.0)
  )
  assert moved > eps  # the base's steps were large: the projection did the bounding


@pytest.mark.parametrize(("model", "conv"), [("sn", "rotate4"), ("sn", "active"), ("sn", "dcls")])
def test_the_rules_train_alike_through_nnx_optimizer_and_a_state_of_params(model, conv):
  """nnx.Optimizer hands optax bare arrays where nnx.state(model, nnx.Param) holds Params: every
  rule (the freeze, decay, multipliers, eq. 6's projection, DCLS's clamp) reads labels and
  bounds leaf by leaf, so both give the same parameters (nnx.Optimizer used to fail with
  'unhashable type: Param')."""
  from kshapes_jax import models

  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  y = jnp.array([0, 1, 2, 3])

  def loss(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

  def rules(m):
    return optim.sgd(
      optim.param_labels(m),
      0.5,
      weight_decay=1e-3,
      freeze_steps=1,
      bounds=optim.param_bounds(m),
    )

  first = models.create(model, conv=conv, rngs=nnx.Rngs(0))
  second = nnx.clone(first)
  optimizer = nnx.Optimizer(first, rules(first), wrt=nnx.Param)
  tx = rules(second)
  params = nnx.state(second, nnx.Param)
  state = tx.init(params)
  for _ in range(3):
    optimizer.update(first, nnx.grad(loss)(first))
    grads = nnx.state(nnx.grad(loss)(second), nnx.Param)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    nnx.update(second, params)
  for a, b in zip(
    jax.tree.leaves(nnx.state(first, nnx.Param)), jax.tree.leaves(params), strict=True
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="hold 1 parameters"):
    optim.scale_by_label({"a": "weights"}, {}).update(nnx.state(first, nnx.Param), None)
