"""The datasets the configs name: their shapes, classes and sizes, where Debian puts
Fashion-MNIST, and which are streamed.

The trainer's input pipeline (train/data/) reads them from here, so a config
can count its steps without importing the trainer.
"""

# name -> (height, width, channels, classes)
DATASETS = {
  "mnist": (28, 28, 1, 10),
  "fashion_mnist": (28, 28, 1, 10),
  "cifar10": (32, 32, 3, 10),
  "cifar100": (32, 32, 3, 100),
  "svhn_cropped": (32, 32, 3, 10),
}
# name -> training examples of the full dataset
TRAIN_EXAMPLES = {
  "mnist": 60000,
  "fashion_mnist": 60000,
  "cifar10": 50000,
  "cifar100": 50000,
  "svhn_cropped": 73257,
  "imagenet2012": 1281167,
}
# where data.source reads from: tfds (tfds.data_source), idx / npz (a local directory), synthetic,
# arrayrecord (a folder written by python -m train.prepare)
SOURCES = ("tfds", "idx", "npz", "synthetic", "arrayrecord")
# the image side the streamed datasets are cropped to when data.image_size is 0
STREAM_IMAGE_SIZE = 224
# Debian's dataset-fashion-mnist installs the IDX files here
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def streamed(name: str, source: str) -> bool:
  """Whether a dataset is read example by example (decoded and cropped on the CPU workers) rather
  than held in memory: a prepared ArrayRecord folder, or a TFDS dataset other than the small ones
  in DATASETS (imagenet2012, ...)."""
  return source == "arrayrecord" or (source == "tfds" and name not in DATASETS)
