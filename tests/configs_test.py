"""Every experiment config loads for every documented choice and passes the config checks."""

import importlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from kshapes_jax import models
from train import input_pipeline, train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def _choices(module):
  """All documented arguments of a config: the product of parse_arg's choices."""
  source = (CONFIG_DIR / f"{module.__name__.split('.')[-1]}.py").read_text()
  if "parse_arg" not in source:
    return [None]
  captured = {}
  from configs import common

  original = common.parse_arg

  def spy(arg, choices):
    captured.update(choices)
    return original(arg, choices)

  common.parse_arg = spy
  try:
    module.get_config(None)
  finally:
    common.parse_arg = original
  keys = sorted(captured)
  return [",".join(f"{k}={v}" for k, v in zip(keys, values))
          for values in itertools.product(*(captured[k] for k in keys))]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_loads_checks_and_documents_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"--config configs/{name}.py" in module.__doc__, "the docstring gives the command"
  for arg in _choices(module):
    config = module.get_config(arg)
    train.check_config(config)
    h, w, c, _ = input_pipeline.DATASETS[config.data.name]
    spec = models.spec(config.model)
    if spec.input_shape[:2] != (h, w):  # a model that adapts to the images (e.g. Cifar-quick on 28x28)
      split = input_pipeline.Split(np.zeros((2, h, w, c), np.uint8), np.zeros(2, np.int32))
      dataset = input_pipeline.Dataset(config.data.name, split, split, 10, (0.5,) * c, (0.25,) * c)
      model = nnx.eval_shape(lambda: train.build_model(config, dataset))  # raises ConfigError if it cannot
      assert model is not None, (name, arg)


def test_config_arguments_are_checked():
  from configs import acnet_cifar

  with pytest.raises(ValueError, match="expected one of"):
    acnet_cifar.get_config("model=resnet57")
  with pytest.raises(ValueError, match="expected key=value"):
    acnet_cifar.get_config("depth=56")


def test_paper_recipes():
  from configs import acu_cifar, quickstart

  acu = acu_cifar.get_config("model=acu_plain,data=cifar100,conv=active")
  assert acu.num_steps == 64000 and acu.optim.position_warmup_steps == 10000 and acu.optim.nesterov
  assert dict(acu.optim.lr_multipliers) == {"positions": 0.01}
  assert [round(b * (50000 // 64)) for b in acu.optim.boundaries] == [32000, 48000]
  from configs import repro_fmnist

  r = repro_fmnist.get_config("row=acu,seed=7,epochs=2")
  assert (r.seed, r.num_epochs, r.model_kwargs.width) == (7, 2.0, 0.25)
  assert r.optim.position_warmup_steps == (2 * 60000 // 64) * 10 // 64  # 10k of 64k iterations
  assert repro_fmnist.get_config("row=acu_no_warmup").optim.position_warmup_steps == 0
  assert repro_fmnist.get_config("row=acb_hor").conv_options.asymmetric == "hor"
  with pytest.raises(ValueError, match="must be a number"):
    repro_fmnist.get_config("row=acu,seed=x")
  q = quickstart.get_config()
  assert (q.model, q.conv, q.data.name, q.data.source) == ("sn", "rotate4", "fashion_mnist", "idx")


def test_repro_acu_rows_can_bucket_or_do_not_ask_to():
  from configs import repro_fmnist

  for row in ("acu", "acu_no_warmup", "acu_no_normgrad"):
    config = repro_fmnist.get_config(f"row={row}")
    model = models.create(config.model, conv=config.conv, in_channels=1, **config.model_kwargs,
                          conv_options=dict(config.conv_options))
    if config.acu_radius_every_steps:
      train.check_bucketing(train.active_layers(model))  # raises for ACUs it cannot bucket
    else:
      assert row == "acu_no_normgrad"
