"""Bad config values and keys: one ConfigError naming the key, before the data loads."""

import pytest
from runs import small_config

from kshapes_jax import nn as knn
from train import data as pipeline
from train import trainer

CONFIG_ERRORS = [
  (
    {"conv": "plain", "conv_options.radius": 3},
    r"conv_options.radius does not apply to conv 'plain'",
  ),
  (
    {"conv": "acb", "conv_options.normalize_grad": False},
    r"conv_options.normalize_grad does not apply to conv 'acb'; it takes \['asym_scale_init', "
    r"'asym_size', 'asymmetric'",
  ),
  ({"optim.momentum": 5.0}, r"optim.momentum: momentum must be in \[0, 1\), got 5.0"),
  (
    {"optim.weight_decay": -1.0},
    r"optim.weight_decay: weight_decay must be >= 0 and finite, got -1.0",
  ),
  (
    {"optim.learning_rate": float("nan")},
    r"optim.learning_rate: learning rate must be > 0 and finite, got nan",
  ),
  (
    {"optim.boundaries": (20, 10)},
    r"optim.boundaries \(epochs\): schedule boundaries must be positive and increasing",
  ),
  ({"data.train_size": 0}, r"data.train_size must be an int in \[1, inf\), got 0"),
  ({"seed": -1}, r"seed must be an int in \[0, 4294967295\], got -1"),
  ({"num_steps": -3}, r"num_steps must be an int in \[0, inf\), got -3"),
  ({"max_loss_factor": -1.0}, r"max_loss_factor must be a number in \[0, inf\)"),
]


@pytest.mark.parametrize(
  "overrides, message", CONFIG_ERRORS, ids=[str(c[0]) for c in CONFIG_ERRORS]
)
def test_bad_config_values_fail_before_the_data_loads(tmp_path, monkeypatch, overrides, message):
  monkeypatch.setattr(pipeline, "load", lambda *_: pytest.fail("the data was loaded"))
  with pytest.raises(trainer.ConfigError, match=message):
    trainer.train_and_evaluate(small_config(**overrides), tmp_path)


def test_unknown_config_keys_are_refused(tmp_path):
  config = small_config()
  with config.unlocked():
    config.lr = 0.1
    config.optim.lr_multipliers["angles"] = 2.0  # a free-form block: its keys are labels
  with pytest.raises(trainer.ConfigError, match=r"unknown config key\(s\) \['lr'\]"):
    trainer.train_and_evaluate(config, tmp_path)


def test_conv_options_are_declared_for_every_option_of_every_kind():
  from configs import default

  config = default.get_config()
  for name, kind_type in knn.conv_options().items():
    assert config.conv_options[name] is None
    assert kind_type in (int, str, bool, float)
  # every keyword a shaped layer takes beyond a plain conv's arguments is an option of its kind
  import inspect

  for kind in knn.CONV_KINDS.values():
    taken = set(inspect.signature(kind.layer.__init__).parameters)
    # arrays and variables a caller hands in, no config value: from_kernel's kernel and bias, the
    # position set a ConvNeXt-dcls stage shares
    objects = {knn.PlainConv: {"kernel", "bias"}, knn.DclsConv: {"shared_positions"}}
    arrays = objects.get(kind.layer, set())
    missing = taken - set(knn.kinds.SHARED_ARGUMENTS) - set(kind.options()) - set(kind.fixed)
    assert not missing - arrays, (kind.name, missing)
