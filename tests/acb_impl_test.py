"""ACBlock's training implementations ("branches", "stacked") are the same block: value, gradient,
statistics."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import strategies as st

import kshapes_jax as K
from kshapes_jax.nn import ACBlock
from kshapes_jax.nn.acb import resolve_impl


def _train_step(block: ACBlock, x: jax.Array):
  """(loss, gradient w.r.t. parameters and input, updated BN statistics) of one training call, in
  float64."""
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)
  params, rest = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, rest))

  def loss(params, x):
    module = nnx.merge(graphdef, params, jax.tree.map(lambda v: v, rest))
    y = module(x)
    return jnp.sum(y * jnp.cos(y)), (y, nnx.state(module, nnx.BatchStat))

  # one program (op by op, each example's many small float64 ops compiled one by one)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (value, (y, stats)), grads = step(params, x)
  return value, y, grads, stats


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(
  asymmetric=st.sampled_from(["both", "hor", "ver"]),
  border=st.booleans(),
  bn=st.sampled_from(["branch", "sum"]),
  k=st.sampled_from([3, 5]),
  stride=st.sampled_from([1, 2]),
  pad_shift=st.sampled_from([0, -1]),
  size=st.tuples(st.integers(5, 9), st.integers(5, 9)),
  seed=st.integers(0, 2**16),
)
def test_stacked_equals_branches(asymmetric, border, bn, k, stride, pad_shift, size, seed):
  """For every option: the same outputs, gradients (parameters and input) and running statistics."""
  with jax.enable_x64(True):
    _check_stacked_equals_branches(asymmetric, border, bn, k, stride, pad_shift, size, seed)


def _check_stacked_equals_branches(asymmetric, border, bn, k, stride, pad_shift, size, seed):
  # also a cropping padding, where the branches' own paddings go negative
  padding = k // 2 + pad_shift
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, *size, 3)))
  runs = []
  for impl in ("branches", "stacked"):
    block = ACBlock(
      3,
      4,
      k,
      stride=stride,
      padding=padding,
      asymmetric=asymmetric,
      border=border,
      bn=bn,
      asym_scale_init=0.7,
      impl=impl,
      rngs=nnx.Rngs(seed),
    )
    runs.append(_train_step(block, x))
  (v1, y1, g1, s1), (v2, y2, g2, s2) = runs
  chex.assert_trees_all_close(y1, y2, rtol=1e-11, atol=1e-11)
  chex.assert_trees_all_close(v1, v2, rtol=1e-11, atol=1e-11)
  chex.assert_trees_all_close(g1, g2, rtol=1e-10, atol=1e-10)
  chex.assert_trees_all_close(s1, s2, rtol=1e-12, atol=1e-12)
  assert any(float(jnp.abs(s - 1).max()) > 1e-3 for s in jax.tree.leaves(s1)), (
    "statistics were not updated"
  )


def test_stacked_equals_branches_in_bfloat16_compute(rng):
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 8)), jnp.float32)
  outs = []
  for impl in ("branches", "stacked"):
    block = ACBlock(8, 8, impl=impl, dtype="bfloat16", rngs=nnx.Rngs(0))
    y = block(x)
    assert y.dtype == jnp.bfloat16
    outs.append((y, nnx.state(block, nnx.BatchStat)))
  # bfloat16 sums in another order: a few units in its last place (1/128 relative)
  chex.assert_trees_all_close(
    outs[0][0].astype(jnp.float32), outs[1][0].astype(jnp.float32), rtol=0.05, atol=0.05
  )
  chex.assert_trees_all_close(outs[0][1], outs[1][1], rtol=1e-2, atol=1e-2)


def test_impl_does_not_change_parameters_or_checkpoints():
  trees = [
    nnx.state(
      K.models.create("cifar_quick", conv="acb", conv_options={"impl": impl}, rngs=nnx.Rngs(0))
    )
    for impl in ("auto", "branches", "stacked")
  ]
  for tree in trees[1:]:
    chex.assert_trees_all_equal(tree, trees[0])


def test_auto_is_branches_on_cpu_stacked_elsewhere_and_unknown_impls_are_refused():
  assert resolve_impl("auto", "cpu") == "branches"
  assert resolve_impl("auto", "gpu") == resolve_impl("auto", "tpu") == "stacked"
  assert resolve_impl("branches", "gpu") == "branches"
  assert resolve_impl("stacked", "cpu") == "stacked"
  with pytest.raises(ValueError, match="impl must be 'auto', 'branches' or 'stacked', got 'fused'"):
    ACBlock(2, 2, impl="fused", rngs=nnx.Rngs(0))


def test_a_partly_frozen_block_runs_its_branches(rng):
  """One BN on running statistics (a user freezing it): stacked cannot share statistics, so it falls
  back."""
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
  outs = []
  for impl in ("branches", "stacked"):
    block = ACBlock(3, 4, impl=impl, precision="highest", rngs=nnx.Rngs(0))
    block.hor_bn.use_running_average = True
    outs.append((block(x), nnx.state(block, nnx.BatchStat)))
  chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_equal(
    outs[1][1]["hor_bn"], nnx.state(ACBlock(3, 4, rngs=nnx.Rngs(0)), nnx.BatchStat)["hor_bn"]
  )


def test_tracing_a_stacked_training_step_never_builds_a_tracer_origin_message(monkeypatch):
  """The running statistics are stored without probing the traced value's `.sharding`.

  Such a probe raises, and the message it builds walks every equation traced so
  far (jax-ml/jax#40041): once per statistic, tracing a deep ACB net was quadratic
  (a ResNet-110 ACB train step took 59 s to trace instead of 5).
  """
  from jax._src.interpreters import partial_eval

  if not hasattr(partial_eval.DynamicJaxprTracer, "_origin_msg"):
    pytest.skip("this JAX builds no origin messages (private API gone)")
  built = []
  original = partial_eval.DynamicJaxprTracer._origin_msg
  monkeypatch.setattr(
    partial_eval.DynamicJaxprTracer, "_origin_msg", lambda self: built.append(1) or original(self)
  )
  block = ACBlock(4, 6, 3, impl="stacked", rngs=nnx.Rngs(0))
  with jax.enable_x64(True):
    *_, stats = jax.jit(lambda x: _train_step(block, x))(jnp.ones((2, 7, 7, 4)))
  assert not built
  chex.assert_trees_all_equal_structs(stats, nnx.state(block, nnx.BatchStat))
  # the statistics were updated (from zero means)
  assert np.abs(stats["square_bn"]["mean"][...]).max() > 0


@pytest.mark.parametrize("options", [{"online": True}, {"bn": "sum"}])
def test_auto_with_one_bn_trains_one_conv_of_the_summed_kernel(options, rng):
  """With one BN after the sum the branches are linear up to it: "auto" runs ONE conv on every
  platform (a conv per branch would cost the offline block's convs for nothing)."""
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
  block = ACBlock(3, 4, rngs=nnx.Rngs(0), **options)

  @nnx.jit
  def forward(block, x):
    return block(x)

  graphdef, state = nnx.split(block)
  hlo = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).as_text()
  assert hlo.count("stablehlo.convolution") + hlo.count("dot_general") == 1, hlo
  branches = ACBlock(3, 4, impl="branches", precision="highest", rngs=nnx.Rngs(0), **options)
  ours = ACBlock(3, 4, precision="highest", rngs=nnx.Rngs(0), **options)
  chex.assert_trees_all_close(forward(ours, x), forward(branches, x), rtol=1e-5, atol=1e-5)
