"""The reproduction suite on Fashion-MNIST (results/REPRODUCTION.md): one row of one paper's table per run.

  python -m train.main --config configs/repro_fmnist.py:row=sn_v4,seed=0 --workdir runs/repro/sn_v4/seed0
  python -m train.reproduce --runs runs/repro          # every row x seeds 0-2, then the report

Each row is one record (`Row`): the experiment config it is built from
(configs/<experiment>.py with its argument), what the row changes on top,
the paper's number and where it is, what the row is compared with, and
which analyses the report reads of it. The suite driver and the report read
these records and nothing else.

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
from train import input_pipeline

METHODS = ("rotate", "versatile", "active", "acb")
# The report's section title of each method's rows.
TITLES = {
    "rotate": "RotateConv, SN (Ma et al., Table I)",
    "versatile": "Versatile filters, LeNet (Wang et al., Tables 2-3)",
    "active": "Active Convolution Unit, plain network (Jeon and Kim, Table 2)",
    "acb": "ACNet, Cifar-quick (Ding et al., Tables 1 and 4)",
}
# Epochs of each method: the whole suite (20 rows x 3 seeds) takes about
# 2 hours on 2 cores (1 h 47 min wall here, two drivers, other work running).
EPOCHS = {"rotate": 2, "versatile": 1, "active": 1, "acb": 1}
DATA = "fashion_mnist"


def parse_lengths(spec: str | None) -> dict[str, float]:
  """Epochs of each method from '10', 'rotate=20,acb=10' or '10,rotate=20' (unnamed: every method).

  Methods the spec does not name keep their EPOCHS.

  Raises:
    ValueError: for an unknown method or a length that is not a positive number.
  """
  lengths = dict(EPOCHS)
  for item in filter(None, (spec or "").replace(" ", "").split(",")):
    method, _, value = item.rpartition("=")
    if method and method not in METHODS:
      raise ValueError(f"epochs {item!r}: unknown method {method!r}; expected one of {list(METHODS)}")
    try:
      epochs = float(value)
    except ValueError:
      epochs = float("nan")
    if not epochs > 0:
      raise ValueError(f"epochs {item!r}: expected a positive number of epochs, e.g. '10' or 'acb=10'")
    lengths.update({method: epochs} if method else dict.fromkeys(METHODS, epochs))
  return lengths


def length_dir(epochs: float) -> str:
  """The folder of a suite's runs at that length: 'e10', 'e2.5'."""
  return f"e{epochs:g}"


def dir_length(name: str) -> float | None:
  """The length of a folder that length_dir names ('e10' -> 10.0), None for any other name."""
  try:
    epochs = float(name[1:]) if name.startswith("e") else None
  except ValueError:
    return None
  return epochs if epochs is not None and 0 < epochs < math.inf else None


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the suite.

  Attributes:
    name: the row's name (its runs are RUNS/NAME/seedS).
    method: rotate, versatile, active or acb.
    experiment: the experiment config it is built from: 'module:argument' in configs/.
    overrides: flattened config keys the row sets on top (its ablation).
    paper: the paper's accuracy (%) for this row, None where the paper has none.
    setting: where the paper's number is (dataset, table).
    baseline: the row it is compared with (None: none).
    paper_difference: the paper's (row - baseline) in points, None where it gives none.
    comparison: the paper's setting of that difference.
    analyses: the analyses the report reads of each run: name -> options of `train.analyze`.
    figure: where not None, the report shows this run's figures under this label.
    paper_cost: versatile filters Tables 2-3: (weights, memory KB, FLOPs).
    paper_distorted: ACNet Table 4: (original, rotate 90, rotate 180, up-down flip).
  """

  name: str
  method: str
  experiment: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  paper: float | None = None
  setting: str = "not in the paper"
  baseline: str | None = None
  paper_difference: float | None = None
  comparison: str = ""
  analyses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  figure: str | None = None
  paper_cost: tuple[float, float, float] | None = None
  paper_distorted: tuple[float, float, float, float] | None = None

  def config(self, seed: int = 0, epochs: float | None = None) -> ml_collections.ConfigDict:
    """The experiment's config with the suite's data, length and checkpoints, then the row's overrides."""
    module, _, arg = self.experiment.partition(":")
    c = importlib.import_module(f"configs.{module}").get_config(arg)
    before = _length(c)
    common.mnist_data(c, DATA)
    c.data.augment = "none"
    c.seed = seed
    c.eval_batch_size = 1000
    c.log_every_steps = 50
    c.progress = False
    _shorten(c, float(epochs or EPOCHS[self.method]), before)
    c.update_from_flattened_dict(self.overrides)
    if c.conv_options.get("normalize_grad") is False:
      c.acu_radius_every_steps = 0  # bucketing bounds the move by the unit gradient; fixed 5x5 instead
    # Every checkpoint is kept: the ACU movement plot (Fig. 6) reads them.
    steps_per_epoch = input_pipeline.TRAIN_EXAMPLES[DATA] // c.batch_size
    c.checkpoint_every_steps = steps_per_epoch // 8 if self.method == "active" else steps_per_epoch
    c.keep_checkpoints = 1000
    return c


def _length(c: ml_collections.ConfigDict) -> tuple[float, int]:
  """(epochs, steps) of a config's run on its own dataset, counted as the trainer counts them."""
  steps_per_epoch = input_pipeline.TRAIN_EXAMPLES[c.data.name] // c.batch_size
  if c.num_steps > 0:
    return c.num_steps / steps_per_epoch, c.num_steps
  return c.num_epochs, math.ceil(c.num_epochs * steps_per_epoch)


def _shorten(c: ml_collections.ConfigDict, epochs: float, before: tuple[float, int]) -> None:
  """Sets the run to `epochs`; the lr boundaries and the position warm-up keep their fraction of it."""
  old_epochs, old_steps = before
  c.num_steps, c.num_epochs = 0, epochs
  # 6 digits: 32000 / 781 of 64000 / 781 epochs is a half, not 0.49999999999999994
  c.optim.boundaries = tuple(epochs * round(b / old_epochs, 6) for b in c.optim.boundaries)
  c.optim.position_warmup_steps = _length(c)[1] * c.optim.position_warmup_steps // old_steps


_SN = "rotateconv_sn_mnist:version="
_LENET = "versatile_lenet_mnist:variant="
_ACU = "acu_cifar:model=acu_plain,conv="
_ACB = "acnet_cifar:model=cifar_quick,conv="
_QUARTER = {"model_kwargs.width": 0.25}
_FROZEN = {"optim.lr_multipliers": {"positions": 0.01, "angles": 0.0}}
_RAW_GRAD = {"conv_options.normalize_grad": False}
_RESNET18 = "ImageNet ResNet-18, Table 4 (base 70.36)"

ROWS: dict[str, Row] = {row.name: row for row in (
    Row("sn_v9", "rotate", _SN + "9", paper=98.95, setting="MNIST, Table I"),
    Row("sn_v4", "rotate", _SN + "4", paper=98.65, setting="MNIST, Table I", baseline="sn_v9",
        paper_difference=98.65 - 98.95, comparison="Table I, MNIST", analyses={"rotate": {}}, figure="sn_v4"),
    Row("sn_v2", "rotate", _SN + "2", paper=97.41, setting="MNIST, Table I", baseline="sn_v9",
        paper_difference=97.41 - 98.95, comparison="Table I, MNIST", analyses={"rotate": {}}, figure="sn_v2"),
    # ours: the angles not trained (a fixed random line per kernel), and the raw angle gradient
    # (the default before normalize_angle_grad: at the shared lr the angles move ~0.001 deg in a run)
    Row("sn_v4_frozen", "rotate", _SN + "4", _FROZEN, baseline="sn_v4", comparison="ours: frozen - learned angles",
        analyses={"rotate": {}}),
    Row("sn_v2_frozen", "rotate", _SN + "2", _FROZEN, baseline="sn_v2", comparison="ours: frozen - learned angles",
        analyses={"rotate": {}}),
    Row("sn_v4_raw_grad", "rotate", _SN + "4", _RAW_GRAD, baseline="sn_v4",
        comparison="ours: raw - normalized angle gradient", analyses={"rotate": {}}),
    Row("sn_v2_raw_grad", "rotate", _SN + "2", _RAW_GRAD, baseline="sn_v2",
        comparison="ours: raw - normalized angle gradient", analyses={"rotate": {}}),
    Row("lenet_baseline", "versatile", _LENET + "baseline", paper=99.20, setting="MNIST, Table 2",
        figure="baseline", paper_cost=(4.3e5, 1681.6, 22.93e5)),
    Row("lenet_model1", "versatile", _LENET + "model1", paper=99.20, setting="MNIST, Table 2",
        baseline="lenet_baseline", paper_difference=0.0, comparison="Table 2, MNIST",
        paper_cost=(4.3e5, 1681.6, 22.93e5)),
    Row("lenet_model2", "versatile", _LENET + "model2", paper=99.15, setting="MNIST, Table 2",
        baseline="lenet_baseline", paper_difference=-0.05, comparison="Table 2, MNIST",
        paper_cost=(2.2e5, 852.0, 12.00e5)),
    Row("lenet_model3", "versatile", _LENET + "model3", paper=99.22, setting="MNIST, Table 2",
        baseline="lenet_baseline", paper_difference=0.02, comparison="Table 2, MNIST", figure="Model 3",
        paper_cost=(2.2e5, 852.0, 12.00e5)),
    Row("lenet_v2_model1", "versatile", _LENET + "v2_model1", paper=99.18, setting="MNIST, Table 3",
        baseline="lenet_baseline", paper_difference=-0.02, comparison="Table 3, MNIST",
        paper_cost=(1.18e5, 460.5, 12.17e5)),
    Row("lenet_v2_model3", "versatile", _LENET + "v2_model3", paper=99.07, setting="MNIST, Table 3",
        baseline="lenet_baseline", paper_difference=-0.13, comparison="Table 3, MNIST",
        paper_cost=(0.79e5, 309.1, 12.12e5)),
    Row("acu_baseline", "active", _ACU + "plain", _QUARTER, paper=91.99, setting="CIFAR-10, Table 2 (error 8.01)"),
    Row("acu", "active", _ACU + "active", _QUARTER, paper=92.67, setting="CIFAR-10, Table 2 (error 7.33)",
        baseline="acu_baseline", paper_difference=0.68, comparison="Table 2, CIFAR-10",
        analyses={"active": {}}, figure="acu"),
    Row("acu_no_warmup", "active", _ACU + "active", {**_QUARTER, "optim.position_warmup_steps": 0},
        setting="section 2.4: warm-up worth 0.1-0.2 points", baseline="acu", paper_difference=-0.15,
        comparison="section 2.4: 0.1-0.2", analyses={"active": {}}),
    Row("acu_no_normgrad", "active", _ACU + "active", {**_QUARTER, "conv_options.normalize_grad": False},
        setting="section 2.3: no number given", baseline="acu", comparison="section 2.3, no number",
        analyses={"active": {}}),
    Row("acb_baseline", "acb", _ACB + "plain", paper=83.13, setting="CIFAR-10, Table 1",
        analyses={"acb": {}}, figure="acb_baseline", paper_distorted=(70.36, 41.00, 41.95, 41.86)),
    Row("acb", "acb", _ACB + "acb", paper=84.24, setting="CIFAR-10, Table 1", baseline="acb_baseline",
        paper_difference=1.11, comparison="Table 1, Cifar-quick CIFAR-10", analyses={"acb": {}}, figure="acb",
        paper_distorted=(71.14, 42.20, 42.89, 43.10)),
    Row("acb_hor", "acb", _ACB + "acb", {"conv_options.asymmetric": "hor"}, paper=70.70, setting=_RESNET18,
        baseline="acb", paper_difference=70.70 - 71.14, comparison="Table 4, ResNet-18 ImageNet",
        analyses={"acb": {"prune_seeds": 0}}, paper_distorted=(70.70, 42.06, 43.22, 43.05)),
    Row("acb_ver", "acb", _ACB + "acb", {"conv_options.asymmetric": "ver"}, paper=70.78, setting=_RESNET18,
        baseline="acb", paper_difference=70.78 - 71.14, comparison="Table 4, ResNet-18 ImageNet",
        analyses={"acb": {"prune_seeds": 0}}, paper_distorted=(70.78, 41.61, 42.47, 42.66)),
    Row("acb_bn_sum", "acb", _ACB + "acb", {"conv_options.bn": "sum"}, paper=70.82, setting=_RESNET18,
        baseline="acb", paper_difference=70.82 - 71.14, comparison="Table 4, ResNet-18 ImageNet",
        analyses={"acb": {"prune_seeds": 0}}, paper_distorted=(70.82, 41.70, 42.92, 42.90)),
)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'row=NAME[,seed=S][,epochs=E]' -> that row's config."""
  numbers, kept = {"seed": 0, "epochs": None}, []
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
  return ROWS[a["row"]].config(numbers["seed"], numbers["epochs"])
