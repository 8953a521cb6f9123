"""Every experiment config loads for every documented choice and passes the config checks."""

import functools
import importlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from configs import datasets
from configs.datasets import STREAM_IMAGE_SIZE
from kshapes_jax import models, nn
from train import data
from train.trainer import experiment, settings

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(
  p.stem
  for p in CONFIG_DIR.glob("*.py")
  if p.stem not in ("__init__", "common", "datasets", "schema")
)


def _choices(module):
  """All documented arguments of a config: the product of parse_arg's choices."""
  source = (CONFIG_DIR / f"{module.__name__.split('.')[-1]}.py").read_text()
  if "parse_arg" not in source:
    return [None]
  captured = {}
  from configs import common

  original = common.parse_arg

  def spy(arg, choices):
    if not captured:  # the config's own arguments, not those of a config it builds on
      captured.update(choices)
    return original(arg, choices)

  common.parse_arg = spy
  try:
    module.get_config(None)
  finally:
    common.parse_arg = original
  keys = sorted(captured)
  return [
    ",".join(f"{k}={v}" for k, v in zip(keys, values))
    for values in itertools.product(*(captured[k] for k in keys))
  ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_loads_checks_and_documents_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"--config configs/{name}.py" in module.__doc__, "the docstring gives the command"
  for arg in _choices(module):
    config = module.get_config(arg)
    checked = settings.read(config)
    if checked.data.streamed:
      h = w = checked.data.image_size or STREAM_IMAGE_SIZE
      c = 3
    else:
      h, w, c, _ = datasets.DATASETS[config.data.name]
    spec = models.spec(config.model)
    # a model that adapts to the images (e.g. Cifar-quick on 28x28)
    if spec.input_shape[:2] != (
      h,
      w,
    ):
      split = data.MemorySplit(np.zeros((2, h, w, c), np.uint8), np.zeros(2, np.int32))
      dataset = data.Dataset(config.data.name, split, split, 10, (0.5,) * c, (0.25,) * c)
      # raises ConfigError if it cannot
      model = nnx.eval_shape(functools.partial(experiment.build_model, checked, dataset))
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
  assert dict(acu.optim.lr_multipliers) == {
    "positions": 0.01,
    "dcls_positions": 5.0,
    "dcls_sigmas": 5.0,
  }
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
  from configs import acnet_imagenet, reparam_imagenet, versatile_imagenet

  r = reparam_imagenet.get_config("model=resnet18,conv=own_online")
  assert (r.model, r.conv, r.conv_options.online, r.num_epochs, r.optim.schedule) == (
    "resnet18",
    "dbb",
    True,
    120.0,
    "cosine",
  )
  r = reparam_imagenet.get_config("model=repvgg_b0")
  assert (r.model, r.conv, r.conv_options.online) == ("repvgg_b0", "repvgg", None)
  r = reparam_imagenet.get_config("model=repvgg_a0,conv=repvgg_qa")
  assert (r.conv, r.conv_options.bn, r.conv_options.online) == ("repvgg", "qa", None)
  settings.check_config(r)  # the kind takes the option

  a = acnet_imagenet.get_config("model=alexnet,conv=acb_ver")
  assert (a.model, a.conv, a.conv_options.asymmetric, a.num_epochs) == (
    "acnet_alexnet",
    "acb",
    "ver",
    150.0,
  )
  v = versatile_imagenet.get_config("row=versatile_v2_alexnet")
  assert (v.model, v.conv, v.optim.learning_rate, v.optim.weight_decay) == (
    "versatile_v2_alexnet",
    "versatile",
    0.01,
    5e-4,
  )
  assert tuple(v.optim.boundaries) == (20.0, 40.0, 60.0, 80.0) and v.num_epochs == 90.0
  r50 = versatile_imagenet.get_config("row=resnext50")
  assert (r50.model, r50.conv, tuple(r50.optim.boundaries)) == (
    "resnext50_32x4d",
    "plain",
    (30.0, 60.0),
  )


def test_repro_acu_rows_can_bucket_or_do_not_ask_to():
  from configs import repro_fmnist

  for row in ("acu", "acu_no_warmup", "acu_no_normgrad"):
    config = repro_fmnist.get_config(f"row={row}")
    model = models.create(
      config.model,
      conv=config.conv,
      in_channels=1,
      **config.model_kwargs,
      conv_options=dict(settings.read(config).conv_options),
    )
    if config.acu_radius_every_steps:
      nn.check_bucketable(model)  # raises for ACUs it cannot bucket
    else:
      assert row == "acu_no_normgrad"


def test_repro_rows_are_their_experiments_with_the_suites_data_and_length():
  from configs import repro_fmnist
  from train import analyze
  from train.reproduce import rows

  # every config row has its record, in the config's order
  assert list(rows.ROWS) == list(repro_fmnist.ROWS)
  for row in rows.ROWS.values():
    assert row.method in rows.METHODS and row.method in analyze.ANALYSES
    assert row.baseline is None or row.baseline in rows.ROWS
    assert all(analyze.get(name).NAME == name for name in row.analyses)
    module, _, arg = repro_fmnist.ROWS[row.name].experiment.partition(":")
    original = importlib.import_module(f"configs.{module}").get_config(arg)
    c = row.config(seed=3, epochs=4)
    assert (c.model, c.conv, c.seed, c.num_epochs, c.num_steps) == (
      original.model,
      original.conv,
      3,
      4.0,
      0,
    )
    assert (c.data.name, c.data.augment, c.batch_size) == (
      "fashion_mnist",
      "none",
      original.batch_size,
    )
    changed = {key.split(".")[-1] for key in repro_fmnist.ROWS[row.name].overrides}
    for key in (
      "learning_rate",
      "schedule",
      "momentum",
      "nesterov",
      "weight_decay",
      "warmup_epochs",
      "factor",
    ):
      assert key in changed or c.optim[key] == original.optim[key], (row.name, key)
    if row.method == "active" and "position_warmup_steps" not in changed:
      # the paper's milestones keep their fraction of the run: lr / 10 at 1/2 and 3/4, warm-up 10/64
      assert c.optim.boundaries == (2.0, 3.0)
      assert c.optim.position_warmup_steps == 4 * (60000 // 64) * 10 // 64
