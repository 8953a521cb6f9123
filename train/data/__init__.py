"""The input pipeline: datasets in memory or streamed, behind one `Source` protocol, read on a
batch plan that is a pure function of (seed, step).

source      the Source protocol (a split, read by example index) and the Dataset of two
plan        BatchPlan: the examples of each step's global batch, and this process's share
batches     Batches: a run's train batches (a source on its plan)
memory      MemorySplit and its loaders (TFDS, IDX, NPZ, synthetic)
streamed    StreamSplit (a prepared ArrayRecord folder, a large TFDS dataset) and its loader
dataset     load(data): the dataset a config names
records     the prepared folder's format (written by python -m train.prepare)
images      JPEG decoding and the Inception and evaluation crops (CPU, uint8)
preprocess  normalisation and the CIFAR augmentation on the device
errors      DataError
"""

from train.data.batches import Batches
from train.data.dataset import load
from train.data.errors import DataError
from train.data.memory import MemorySplit, synthetic_splits
from train.data.plan import BatchPlan
from train.data.preprocess import DEVICE_AUGMENTS, preprocess
from train.data.source import Batch, Dataset, Held, Source, spread
from train.data.streamed import StreamSplit

__all__ = [
  "DEVICE_AUGMENTS",
  "Batch",
  "BatchPlan",
  "Batches",
  "DataError",
  "Dataset",
  "Held",
  "MemorySplit",
  "Source",
  "StreamSplit",
  "load",
  "preprocess",
  "spread",
  "synthetic_splits",
]
