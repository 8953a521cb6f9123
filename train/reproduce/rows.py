"""The reproduction suite's rows: each one's paper number, what it is compared with, what the report
reads.

What a row trains is its config, configs/repro_fmnist.py; this module holds
what the suite knows about it beyond that. The driver (driver.py) and the
report (report.py) read these records and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import ml_collections

from configs import repro_fmnist

METHODS = tuple(repro_fmnist.EPOCHS)
# a paper's claim without a number: the row beats its baseline, or is within noise of it or above
Direction = Literal["above", "not below"]
# The report's section title of each method's rows.
TITLES = {
  "rotate": "RotateConv, SN (Ma et al., Table I)",
  "versatile": "Versatile filters, LeNet (Wang et al., Tables 2-3)",
  "active": "Active Convolution Unit, plain network (Jeon and Kim, Table 2)",
  "acb": "ACNet, Cifar-quick (Ding et al., Tables 1 and 4)",
}


def parse_lengths(spec: str | None) -> dict[str, float]:
  """Epochs of each method from '10', 'rotate=20,acb=10' or '10,rotate=20' (unnamed: every method).

  Methods the spec does not name keep their repro_fmnist.EPOCHS.

  Raises:
    ValueError: for an unknown method or a length that is not a positive number.
  """
  lengths: dict[str, float] = dict(repro_fmnist.EPOCHS)
  for item in filter(None, (spec or "").replace(" ", "").split(",")):
    method, _, value = item.rpartition("=")
    if method and method not in METHODS:
      raise ValueError(
        f"epochs {item!r}: unknown method {method!r}; expected one of {list(METHODS)}"
      )
    try:
      epochs = float(value)
    except ValueError:
      epochs = float("nan")
    if not epochs > 0:
      raise ValueError(
        f"epochs {item!r}: expected a positive number of epochs, e.g. '10' or 'acb=10'"
      )
    lengths.update({method: epochs} if method else dict.fromkeys(METHODS, epochs))
  return lengths


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the suite.

  Attributes:
    name: the row's name (a row of configs/repro_fmnist.py, which says what it trains).
    paper: the paper's accuracy (%) for this row, None where the paper has none.
    setting: where the paper's number is (dataset, table).
    baseline: the row it is compared with (None: none).
    paper_difference: the paper's (row - baseline) in points, None where it gives none.
    direction: where the paper gives no number, the direction it claims: "above" (the row
      beats its baseline) or "not below" (within noise of it, or above); judged as
      `report.compare` says.
    comparison: the paper's setting of that difference.
    analyses: the analyses the report reads of each run: name -> options of `train.analyze`.
    figure: where not None, the report shows this run's figures under this label.
    paper_cost: versatile filters Tables 2-3: (weights, memory KB, FLOPs).
    paper_distorted: ACNet Table 4: (original, rotate 90, rotate 180, up-down flip).
  """

  name: str
  paper: float | None = None
  setting: str = "not in the paper"
  baseline: str | None = None
  paper_difference: float | None = None
  direction: Direction | None = None
  comparison: str = ""
  analyses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
  figure: str | None = None
  paper_cost: tuple[float, float, float] | None = None
  paper_distorted: tuple[float, float, float, float] | None = None

  @property
  def claim(self) -> float | Direction | None:
    """The paper's claim about (row - baseline): its difference in points, else its direction."""
    return self.direction if self.paper_difference is None else self.paper_difference

  @property
  def method(self) -> str:
    """rotate, versatile, active or acb."""
    return repro_fmnist.ROWS[self.name].method

  def config(self, seed: int = 0, epochs: float | None = None) -> ml_collections.ConfigDict:
    """The row's training config (configs/repro_fmnist.py)."""
    return repro_fmnist.row_config(self.name, seed, epochs)


_RESNET18 = "ImageNet ResNet-18, Table 4 (base 70.36)"
_PAPER = (
  Row("sn_v9", paper=98.95, setting="MNIST, Table I"),
  Row(
    "sn_v4",
    paper=98.65,
    setting="MNIST, Table I",
    baseline="sn_v9",
    paper_difference=98.65 - 98.95,
    comparison="Table I, MNIST",
    analyses={"rotate": {}},
    figure="sn_v4",
  ),
  Row(
    "sn_v2",
    paper=97.41,
    setting="MNIST, Table I",
    baseline="sn_v9",
    paper_difference=97.41 - 98.95,
    comparison="Table I, MNIST",
    analyses={"rotate": {}},
    figure="sn_v2",
  ),
  Row(
    "sn_v4_frozen",
    baseline="sn_v4",
    comparison="ours: frozen - learned angles",
    analyses={"rotate": {}},
  ),
  Row(
    "sn_v2_frozen",
    baseline="sn_v2",
    comparison="ours: frozen - learned angles",
    analyses={"rotate": {}},
  ),
  Row(
    "sn_v4_raw_grad",
    baseline="sn_v4",
    comparison="ours: raw - normalized angle gradient",
    analyses={"rotate": {}},
  ),
  Row(
    "sn_v2_raw_grad",
    baseline="sn_v2",
    comparison="ours: raw - normalized angle gradient",
    analyses={"rotate": {}},
  ),
  Row(
    "lenet_baseline",
    paper=99.20,
    setting="MNIST, Table 2",
    figure="baseline",
    paper_cost=(4.3e5, 1681.6, 22.93e5),
  ),
  Row(
    "lenet_model1",
    paper=99.20,
    setting="MNIST, Table 2",
    baseline="lenet_baseline",
    paper_difference=0.0,
    comparison="Table 2, MNIST",
    paper_cost=(4.3e5, 1681.6, 22.93e5),
  ),
  Row(
    "lenet_model2",
    paper=99.15,
    setting="MNIST, Table 2",
    baseline="lenet_baseline",
    paper_difference=-0.05,
    comparison="Table 2, MNIST",
    paper_cost=(2.2e5, 852.0, 12.00e5),
  ),
  Row(
    "lenet_model3",
    paper=99.22,
    setting="MNIST, Table 2",
    baseline="lenet_baseline",
    paper_difference=0.02,
    comparison="Table 2, MNIST",
    figure="Model 3",
    paper_cost=(2.2e5, 852.0, 12.00e5),
  ),
  Row(
    "lenet_v2_model1",
    paper=99.18,
    setting="MNIST, Table 3",
    baseline="lenet_baseline",
    paper_difference=-0.02,
    comparison="Table 3, MNIST",
    paper_cost=(1.18e5, 460.5, 12.17e5),
  ),
  Row(
    "lenet_v2_model3",
    paper=99.07,
    setting="MNIST, Table 3",
    baseline="lenet_baseline",
    paper_difference=-0.13,
    comparison="Table 3, MNIST",
    paper_cost=(0.79e5, 309.1, 12.12e5),
  ),
  Row("acu_baseline", paper=91.99, setting="CIFAR-10, Table 2 (error 8.01)"),
  Row(
    "acu",
    paper=92.67,
    setting="CIFAR-10, Table 2 (error 7.33)",
    baseline="acu_baseline",
    paper_difference=0.68,
    comparison="Table 2, CIFAR-10",
    analyses={"active": {}},
    figure="acu",
  ),
  Row(
    "acu_no_warmup",
    setting="section 2.4: warm-up worth 0.1-0.2 points",
    baseline="acu",
    paper_difference=-0.15,
    comparison="section 2.4: 0.1-0.2",
    analyses={"active": {}},
  ),
  Row(
    "acu_no_normgrad",
    setting="section 2.3: no number given",
    baseline="acu",
    comparison="section 2.3, no number",
    analyses={"active": {}},
  ),
  *(
    Row(
      name,
      setting="the ACU's plain network and recipe (no paper number)",
      baseline="acu_baseline",
      direction="above",
      comparison="DCLS (Khalfaoui-Hassani et al. 2023): above the base net; compare with `acu`",
      analyses={"dcls": {}},
      figure=name,
    )
    for name in ("dcls", "dcls_gauss")
  ),
  Row(
    "acb_baseline",
    paper=83.13,
    setting="CIFAR-10, Table 1",
    analyses={"acb": {}},
    figure="acb_baseline",
    paper_distorted=(70.36, 41.00, 41.95, 41.86),
  ),
  Row(
    "acb",
    paper=84.24,
    setting="CIFAR-10, Table 1",
    baseline="acb_baseline",
    paper_difference=1.11,
    comparison="Table 1, Cifar-quick CIFAR-10",
    analyses={"acb": {}},
    figure="acb",
    paper_distorted=(71.14, 42.20, 42.89, 43.10),
  ),
  Row(
    "acb_hor",
    paper=70.70,
    setting=_RESNET18,
    baseline="acb",
    paper_difference=70.70 - 71.14,
    comparison="Table 4, ResNet-18 ImageNet",
    analyses={"acb": {"prune_seeds": 0}},
    paper_distorted=(70.70, 42.06, 43.22, 43.05),
  ),
  Row(
    "acb_ver",
    paper=70.78,
    setting=_RESNET18,
    baseline="acb",
    paper_difference=70.78 - 71.14,
    comparison="Table 4, ResNet-18 ImageNet",
    analyses={"acb": {"prune_seeds": 0}},
    paper_distorted=(70.78, 41.61, 42.47, 42.66),
  ),
  Row(
    "acb_bn_sum",
    paper=70.82,
    setting=_RESNET18,
    baseline="acb",
    paper_difference=70.82 - 71.14,
    comparison="Table 4, ResNet-18 ImageNet",
    analyses={"acb": {"prune_seeds": 0}},
    paper_distorted=(70.82, 41.70, 42.92, 42.90),
  ),
  *(
    Row(
      name,
      setting="Cifar-quick at ACNet's recipe (no paper number)",
      baseline=baseline,
      direction="above" if baseline == "acb_baseline" else "not below",
      comparison=comparison,
    )
    for name, baseline, comparison in (
      ("dbb", "acb_baseline", "DBB (Ding et al. 2021): above the base net, no Cifar-quick number"),
      ("repvgg", "acb_baseline", "RepVGG (Ding et al. 2021): above the base net, no number here"),
      ("acb_online", "acb", "OREPA (Hu et al. 2022): online within noise of, or above, offline"),
      ("dbb_online", "dbb", "OREPA (Hu et al. 2022): online within noise of, or above, offline"),
      (
        "repvgg_online",
        "repvgg",
        "OREPA (Hu et al. 2022): online within noise of, or above, offline",
      ),
      (
        "repvgg_qa",
        "repvgg",
        "QARepVGG (Chu et al. 2023): float32 within noise of RepVGG's; INT8 drop in results/int8",
      ),
    )
  ),
)
# Every row of the configs, in their order (a row the paper has no number for is a bare Row).
ROWS: dict[str, Row] = {name: Row(name) for name in repro_fmnist.ROWS} | {r.name: r for r in _PAPER}
