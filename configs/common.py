"""Helpers shared by the experiment configs: the `:key=value,...` argument and CIFAR recipes."""

from __future__ import annotations

from configs.datasets import DEBIAN_FASHION_MNIST


def parse_arg(arg: str | None, choices: dict[str, tuple[str, ...]]) -> dict[str, str]:
  """Parses 'key=value,key=value' against allowed values; the first choice is the default.

  `--config configs/acnet_cifar.py:model=vgg16,data=cifar100` passes
  'model=vgg16,data=cifar100' to get_config.

  Raises:
    ValueError: for an unknown key or value, listing the valid ones.
  """
  out = {key: values[0] for key, values in choices.items()}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in choices:
      raise ValueError(
        f"config argument {item!r}: expected key=value with key in {sorted(choices)}"
      )
    if value not in choices[key]:
      raise ValueError(f"config argument {key}={value!r}: expected one of {list(choices[key])}")
    out[key] = value
  return out


def cifar_data(config, name: str) -> None:
  """A 32x32 dataset through TFDS; CIFAR gets pad-4 crop + flip augmentation, SVHN none."""
  config.data.update(
    name=name, source="tfds", data_dir="", augment="none" if name == "svhn_cropped" else "cifar"
  )
  config.eval_batch_size = 500


def mnist_data(config, name: str) -> None:
  """28x28 grey digits: MNIST through TFDS, Fashion-MNIST from Debian's IDX files (offline)."""
  if name == "mnist":
    config.data.update(name="mnist", source="tfds", data_dir="")
  else:
    config.data.update(name="fashion_mnist", source="idx", data_dir=DEBIAN_FASHION_MNIST)
