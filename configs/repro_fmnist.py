"""The reproduction suite on Fashion-MNIST (results/REPRODUCTION.md): one row of one paper's table
per run.

  python -m train.main --config configs/repro_fmnist.py:row=sn_v4,seed=0,epochs=10 \
      --workdir runs/repro/e10/sn_v4/seed0
  python -m train.reproduce --runs runs/repro          # every row x seeds 0-2, then the report

Each row's config is the experiment config it is built from
(configs/<experiment>.py with its argument) and what the row changes on top
(`RowConfig`). The suite's data model (the paper's number of each row, what
it is compared with, the analyses the report reads) is train/reproduce/rows.py.

Every row trains on REAL data that installs offline (Debian's
dataset-fashion-mnist, 60k/10k 28x28 grey images), with short schedules
that fit a 2-core CPU: the point is to compare a method with its baseline
under the SAME recipe, not to reach the papers' absolute numbers (those are
on MNIST / CIFAR, with far longer schedules). The suite changes three things
in each experiment's config: the data (Fashion-MNIST, no augmentation), the
length (EPOCHS per method; `epochs=N` in the argument overrides it; the
learning-rate boundaries and the ACU position warm-up keep their fraction of
the run, the learning-rate warm-up its length in epochs) and the
checkpoints (every epoch, 8 per epoch for the ACU movement plot, all kept).
The ACU plain network runs at quarter width (4/12/24/48 channels, fc 250).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import ml_collections

from configs import common
from configs.datasets import TRAIN_EXAMPLES

# Epochs of each method (the methods: rotate, versatile, active, acb).
EPOCHS: dict[str, float] = {"rotate": 2, "versatile": 1, "active": 1, "acb": 1}
DATA = "fashion_mnist"


@dataclasses.dataclass(frozen=True)
class RowConfig:
  """What one row trains.

  Attributes:
    method: rotate, versatile, active or acb (its length is EPOCHS[method]).
    experiment: the experiment config it is built from: 'module:argument' in configs/.
    overrides: flattened config keys the row sets on top (its ablation).
  """

  method: str
  experiment: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


_SN = "rotateconv_sn_mnist:version="
_LENET = "versatile_lenet_mnist:variant="
_ACU = "acu_cifar:model=acu_plain,conv="
_ACB = "acnet_cifar:model=cifar_quick,conv="
_QUARTER = {"model_kwargs.width": 0.25}
_FROZEN = {"optim.lr_multipliers": {"positions": 0.01, "angles": 0.0}}
_RAW_GRAD = {"conv_options.normalize_grad": False}

# The suite's rows, in its order.
ROWS: dict[str, RowConfig] = {
  "sn_v9": RowConfig("rotate", _SN + "9"),
  "sn_v4": RowConfig("rotate", _SN + "4"),
  "sn_v2": RowConfig("rotate", _SN + "2"),
  # ours: the angles not trained (a fixed random line per kernel), and the raw angle gradient
  # (at the shared lr the angles then move ~0.001 deg in a run)
  "sn_v4_frozen": RowConfig("rotate", _SN + "4", _FROZEN),
  "sn_v2_frozen": RowConfig("rotate", _SN + "2", _FROZEN),
  "sn_v4_raw_grad": RowConfig("rotate", _SN + "4", _RAW_GRAD),
  "sn_v2_raw_grad": RowConfig("rotate", _SN + "2", _RAW_GRAD),
  "lenet_baseline": RowConfig("versatile", _LENET + "baseline"),
  "lenet_model1": RowConfig("versatile", _LENET + "model1"),
  "lenet_model2": RowConfig("versatile", _LENET + "model2"),
  "lenet_model3": RowConfig("versatile", _LENET + "model3"),
  "lenet_v2_model1": RowConfig("versatile", _LENET + "v2_model1"),
  "lenet_v2_model3": RowConfig("versatile", _LENET + "v2_model3"),
  "acu_baseline": RowConfig("active", _ACU + "plain", _QUARTER),
  "acu": RowConfig("active", _ACU + "active", _QUARTER),
  "acu_no_warmup": RowConfig(
    "active", _ACU + "active", {**_QUARTER, "optim.position_warmup_steps": 0}
  ),
  "acu_no_normgrad": RowConfig(
    "active", _ACU + "active", {**_QUARTER, "conv_options.normalize_grad": False}
  ),
  # the ACU's successor at the ACU's recipe: DCLS, bilinear and Gaussian
  "dcls": RowConfig("active", _ACU + "dcls", _QUARTER),
  "dcls_gauss": RowConfig(
    "active", _ACU + "dcls", {**_QUARTER, "conv_options.interpolation": "gauss"}
  ),
  "acb_baseline": RowConfig("acb", _ACB + "plain"),
  "acb": RowConfig("acb", _ACB + "acb"),
  "acb_hor": RowConfig("acb", _ACB + "acb", {"conv_options.asymmetric": "hor"}),
  "acb_ver": RowConfig("acb", _ACB + "acb", {"conv_options.asymmetric": "ver"}),
  "acb_bn_sum": RowConfig("acb", _ACB + "acb", {"conv_options.bn": "sum"}),
  # ACNet's successors at the same recipe: DBB, RepVGG's block, and every block online (OREPA)
  "acb_online": RowConfig("acb", _ACB + "acb", {"conv_options.online": True}),
  "dbb": RowConfig("acb", _ACB + "dbb"),
  "dbb_online": RowConfig("acb", _ACB + "dbb", {"conv_options.online": True}),
  "repvgg": RowConfig("acb", _ACB + "repvgg"),
  "repvgg_online": RowConfig("acb", _ACB + "repvgg", {"conv_options.online": True}),
  # QARepVGG's quantization-friendly block (a BN on the kxk only, one after the sum): INT8
  "repvgg_qa": RowConfig("acb", _ACB + "repvgg", {"conv_options.bn": "qa"}),
}


def row_config(row: str, seed: int = 0, epochs: float | None = None) -> ml_collections.ConfigDict:
  """A row's experiment config with the suite's data, length and checkpoints, then the row's
  overrides."""
  r = ROWS[row]
  module, _, arg = r.experiment.partition(":")
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  before = _length(c)
  common.mnist_data(c, DATA)
  c.data.augment = "none"
  c.seed = seed
  c.eval_batch_size = 1000
  c.log_every_steps = 50
  c.progress = False
  _shorten(c, float(epochs or EPOCHS[r.method]), before)
  c.update_from_flattened_dict(r.overrides)
  if c.conv_options.get("normalize_grad") is False:
    c.acu_radius_every_steps = (
      0  # bucketing bounds the move by the unit gradient; fixed 5x5 instead
    )
  # Every checkpoint is kept: the ACU movement plot (Fig. 6) reads them.
  steps_per_epoch = TRAIN_EXAMPLES[DATA] // c.batch_size
  c.checkpoint_every_steps = steps_per_epoch // 8 if r.method == "active" else steps_per_epoch
  c.keep_checkpoints = 1000
  return c


def _length(c: ml_collections.ConfigDict) -> tuple[float, int]:
  """(epochs, steps) of a config's run on its own dataset, counted as the trainer counts them."""
  steps_per_epoch = TRAIN_EXAMPLES[c.data.name] // c.batch_size
  if c.num_steps > 0:
    return c.num_steps / steps_per_epoch, c.num_steps
  return c.num_epochs, math.ceil(c.num_epochs * steps_per_epoch)


def _shorten(c: ml_collections.ConfigDict, epochs: float, before: tuple[float, int]) -> None:
  """Sets the run to `epochs`; the lr boundaries and the position warm-up keep their fraction of
  it."""
  old_epochs, old_steps = before
  c.num_steps, c.num_epochs = 0, epochs
  # 6 digits: 32000 / 781 of 64000 / 781 epochs is a half, not 0.49999999999999994
  c.optim.boundaries = tuple(epochs * round(b / old_epochs, 6) for b in c.optim.boundaries)
  c.optim.position_warmup_steps = _length(c)[1] * c.optim.position_warmup_steps // old_steps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'row=NAME[,seed=S][,epochs=E]' -> that row's config."""
  numbers: dict[str, Any] = {"seed": 0, "epochs": None}
  kept = []
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key in numbers:  # any number, so not a choice of parse_arg
      try:
        numbers[key] = int(value) if key == "seed" else float(value)
      except ValueError as e:
        raise ValueError(f"config argument {item!r}: {key} must be a number") from e
    else:
      kept.append(item)
  a = common.parse_arg(",".join(kept), {"row": tuple(ROWS)})
  return row_config(a["row"], numbers["seed"], numbers["epochs"])
