"""kshapes_jax.linen: every kind inside a Linen model, under jit, grad and vmap with the batch_stats
collection, trained a few steps and deployed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import runs
from flax import linen

import kshapes_jax as K
from kshapes_jax.linen import ShapedConv

HIGHEST = "highest"  # float32 convs compared exactly


class LinenNet(linen.Module):
  """A user's Linen CNN: their BN and 1x1 conv, our kind for the 3x3 ones (one of them
  depthwise)."""

  kind: str
  deployed: bool = False

  @linen.compact
  def __call__(self, x, train: bool):
    shaped = dict(kind=self.kind, deployed=self.deployed, precision=HIGHEST)
    x = ShapedConv(8, 3, use_bias=True, **shaped)(x, train=train)
    x = jax.nn.relu(linen.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    groups = 1 if self.kind == "versatile" else 8  # versatile's 8 maps would need 2 per group
    x = jax.nn.relu(
      ShapedConv(8, 3, strides=2, feature_group_count=groups, **shaped)(x, train=train)
    )
    x = linen.Conv(16, (1, 1), precision=jax.lax.Precision.HIGHEST)(x)
    return linen.Dense(10, precision=jax.lax.Precision.HIGHEST)(x.mean(axis=(1, 2)))


X = jax.random.normal(jax.random.key(0), (6, 12, 12, 3))
LABELS = jnp.arange(6) % 10


# dbb with -m slow: a block of BN'd branches in Linen's batch_stats is acb's and repvgg's path too
@pytest.mark.parametrize("kind", runs.kinds(slow=("rotate2", "dbb")))
def test_every_kind_trains_in_a_linen_model_and_deploys(kind):
  model = LinenNet(kind)
  variables = model.init(jax.random.key(1), X, train=False)
  assert "layer" in variables["params"]["ShapedConv_0"]  # angles and positions are params too
  if kind == "acb":
    assert "layer" in variables["batch_stats"]["ShapedConv_0"]
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.sgd(0.05, momentum=0.9)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    def loss_fn(params):
      logits, updated = model.apply(
        {"params": params, "batch_stats": stats}, X, train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean(), updated

    (loss, updated), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), updated["batch_stats"], opt, loss

  losses = []
  for _ in range(4):
    params, new_stats, opt, loss = step(params, stats, opt)
    losses.append(float(loss))
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    stats = new_stats
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  trained = {"params": params, "batch_stats": stats}
  want = model.apply(trained, X, train=False)
  # vmap over a leading axis of batches: the same as each batch alone
  twice = jnp.stack([X, X[::-1]])
  mapped = jax.vmap(lambda x: model.apply(trained, x, train=False))(twice)
  alone = model.apply(trained, X[::-1], train=False)
  np.testing.assert_allclose(mapped[1], alone, rtol=1e-5, atol=1e-6)
  shipped = K.linen.deploy(model, trained, X, train=False)
  assert set(shipped["params"]["ShapedConv_1"]) == {"kernel", "bias"}
  assert "ShapedConv_0" not in shipped.get("batch_stats", {})
  got = LinenNet(kind, deployed=True).apply(shipped, X, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_deploy_needs_a_shaped_conv_to_run():
  plain = linen.Dense(3)
  variables = plain.init(jax.random.key(0), jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="no ShapedConv ran"):
    K.linen.deploy(plain, variables, jnp.ones((1, 2)))
