"""The typed record of a finished run (summary.json): written by the trainer, kept by the ledger,
read by the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a finished run measured, and on what.

  Attributes:
    model, conv, dataset, source, seed: what was trained.
    steps, epochs: how long.
    devices, platform, device_kind: on what ('cpu', 'gpu', ...; the device's name).
    host_cores: the CPU cores the process could run on (None: a run from before it was recorded).
    precision, dtype, deterministic: the numerics.
    parameters, deployed_parameters: of the trained model and of deploy(model).
    test_accuracy, test_loss: the trained model on the test split.
    deployed_test_accuracy, deployed_test_loss: deploy(model) on it.
    test_top5_accuracy, deployed_test_top5_accuracy: the share of test examples whose label is
      among the 5 largest logits (None: a run from before it was recorded).
    deployed_prediction_agreement: the share of test predictions the two share.
    test_examples: the test examples evaluated.
    acu_radii: each ActiveConv's radius at the end (extent bucketing).
    final_train_loss: the last epoch's mean training loss (None: no epoch ended).
    seconds_total: wall time of the run: this command's, plus the time its commands before had
      spent up to the checkpoint it resumed from (only this command's where that checkpoint
      predates the record).
    workdir: where the run was.
  """

  model: str
  conv: str
  dataset: str
  source: str
  seed: int
  steps: int
  epochs: float
  devices: int
  platform: str
  device_kind: str | None
  host_cores: int | None
  precision: str
  dtype: str
  deterministic: bool
  parameters: int
  deployed_parameters: int
  test_accuracy: float
  test_loss: float
  deployed_test_accuracy: float
  deployed_test_loss: float
  deployed_prediction_agreement: float
  test_examples: int
  acu_radii: list[int]
  final_train_loss: float | None
  seconds_total: float
  workdir: str
  test_top5_accuracy: float | None = None
  deployed_test_top5_accuracy: float | None = None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> Summary:
    """A summary.json or a ledger record's summary. Runs from before a field was recorded lack it:
    device_kind, host_cores and the top-5 accuracies are then None.

    Raises:
      ValueError: naming the missing fields, for a record that is not a run's summary.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {
      "device_kind": None,
      "host_cores": None,
      **{k: v for k, v in d.items() if k in fields},
    }
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    missing = sorted(fields - values.keys() - optional)
    if missing:
      raise ValueError(f"not a run's summary: {missing} missing")
    return cls(**values)

  @property
  def hardware(self) -> str:
    """What the run trained on: 'NVIDIA H100 80GB HBM3', 'CPU, 2 cores', 'CPU (cores not
    recorded)'."""
    if self.platform == "cpu":
      cores = self.host_cores
      return (
        f"CPU, {cores} core{'s' if cores != 1 else ''}" if cores else "CPU (cores not recorded)"
      )
    return self.device_kind or self.platform
