"""The dataset a config's `data` block names, in memory or streamed."""

from __future__ import annotations

from configs import datasets
from configs.schema import DataSettings
from train.data import memory, streamed
from train.data.source import Dataset


def load(data: DataSettings, seed: int = 0) -> Dataset:
  """Loads the dataset a config's `data` block names; fails with a how-to message.

  The small datasets (mnist, fashion_mnist, cifar10, cifar100, svhn_cropped from TFDS, IDX, NPZ
  or synthetic) are held in memory (`train.data.memory`); a prepared ArrayRecord folder or any
  other TFDS dataset streams (`train.data.streamed`): `configs.datasets.streamed` says which.

  Args:
    data: the config's data settings.
    seed: synthetic data is drawn from it.

  Raises:
    DataError: for a dataset that is missing or cannot be read, saying how to get it.
  """
  if datasets.streamed(data.name, data.source):
    return streamed.load(data, seed)
  return memory.load(data, seed)
