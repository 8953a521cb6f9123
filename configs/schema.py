"""Every key of a training config, declared once: its default, type, range and meaning.

The declarations are the trainer's settings themselves (frozen dataclasses, one field a key):
`configs/default.py` builds the ConfigDict every experiment starts from out of their defaults,
`train/trainer/settings.py` reads a config into them and checks each value against its
declaration, and `describe()` writes the table of keys the training guide shows
(`python -m configs.schema`). A key's range or choices here are the trainer's own; what the
library checks itself (model and kind names, a kind's options, precision and dtype, the
optimizer's arguments) the library checks, and the trainer reports it as the key's error.

The conv options are the registered kinds' (`kshapes_jax.nn.conv_options()`: each option's
type comes from the layers' signatures), declared unset, and only the set ones reach the layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from configs import datasets

# cifar: on the device, in-memory data; inception: on the CPU workers, streamed data
AUGMENTS = ("none", "cifar", "inception")
OPTIMIZERS = ("sgd", "adamw")


@dataclasses.dataclass(frozen=True)
class Bounds:
  """The interval a number must lie in; `integer`: an int."""

  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False

  def __str__(self) -> str:
    opening = "(" if self.low_open or self.low == -math.inf else "["
    closing = ")" if self.high_open or self.high == math.inf else "]"
    return f"{opening}{_number(self.low)}, {_number(self.high)}{closing}"

  def holds(self, value: float) -> bool:
    above = self.low < value if self.low_open else self.low <= value
    below = value < self.high if self.high_open else value <= self.high
    return math.isfinite(value) and above and below


def _number(x: float) -> str:
  """-inf, 0, 0.5, 4294967295: an integral bound without its '.0'."""
  return str(int(x)) if math.isfinite(x) and x == int(x) else str(x)


def key(
  default: Any,
  doc: str,
  *,
  bounds: Bounds | None = None,
  choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
  library: str | None = None,
  open_block: bool = False,
) -> Any:
  """One key's declaration: a dataclass field with its default and, as metadata, its meaning
  (`doc`), the interval a number must lie in, the choices a string must be one of, the library
  function that checks its value instead (`library`, for the docs: the trainer calls it), and
  whether it is a free-form block (its keys are a model's or an optimizer's, not the config's).
  """
  metadata = {
    "doc": doc,
    "bounds": bounds,
    "choices": choices,
    "library": library,
    "open": open_block,
  }
  if isinstance(default, Mapping):
    frozen = dict(default)
    return dataclasses.field(default_factory=lambda: dict(frozen), metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def block(cls: type, doc: str) -> Any:
  """A nested block of keys (config.data, config.optim)."""
  return dataclasses.field(default_factory=cls, metadata={"doc": doc, "block": True})


AT_LEAST_0 = Bounds(0)
AT_LEAST_1 = Bounds(1)
POSITIVE = Bounds(0, low_open=True)
UNIT = Bounds(0, 1, high_open=True)  # [0, 1)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """config.data: which dataset, from where."""

  name: str = key(
    "mnist",
    "mnist, fashion_mnist, cifar10, cifar100, svhn_cropped: held in memory; any other TFDS "
    "dataset (imagenet2012, ...) or the name of a folder of python -m train.prepare: streamed",
  )
  source: str = key(
    "synthetic",
    "tfds; idx or npz (a local directory); synthetic; arrayrecord (a folder of python -m "
    "train.prepare)",
    choices=datasets.SOURCES,
  )
  data_dir: str = key(
    "", "where the source reads: TFDS's data_dir, the idx / npz directory, the prepared folder"
  )
  augment: str = key(
    "none",
    "none; cifar: pad-4 crop and flip, on the device (in-memory data); inception: the "
    "Inception crop and flip, on the CPU (streamed data). A streamed evaluation resizes the "
    "shorter side to image_size / 0.875 and takes the centre",
    choices=AUGMENTS,
  )
  train_size: int = key(512, "training examples of synthetic data", bounds=AT_LEAST_1)
  test_size: int = key(256, "test examples of synthetic data", bounds=AT_LEAST_1)
  image_size: int = key(0, "streamed only: the image side (0: 224)", bounds=AT_LEAST_0)
  workers: int = key(0, "streamed only: grain worker processes (0: none)", bounds=AT_LEAST_0)
  threads: int = key(8, "streamed only: reading threads per process", bounds=AT_LEAST_1)

  @property
  def streamed(self) -> bool:
    """Read example by example (ImageNet, a prepared folder), not held in memory."""
    return datasets.streamed(self.name, self.source)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  """config.optim: the optimizer and the papers' per-label rules
  (kshapes_jax.optim.with_shape_rules)."""

  name: str = key(
    "sgd",
    "sgd (kshapes_jax.optim.sgd) or adamw (kshapes_jax.optim.adamw)",
    choices=OPTIMIZERS,
  )
  b1: float = key(0.9, "adamw's b1", bounds=UNIT)
  b2: float = key(0.999, "adamw's b2", bounds=UNIT)
  learning_rate: float = key(
    0.02, "the schedule's top learning rate", library="optim.make_schedule"
  )
  schedule: str = key("constant", "constant, staircase or cosine", library="optim.make_schedule")
  boundaries: tuple[float, ...] = key(
    (), "the staircase's drops, in epochs", library="optim.check_boundaries"
  )
  factor: float = key(0.1, "the staircase's factor at each boundary", bounds=POSITIVE)
  warmup_epochs: float = key(
    0.0, "a linear learning-rate ramp over these epochs", bounds=AT_LEAST_0
  )
  momentum: float = key(0.9, "sgd's momentum", library="optim.sgd")
  nesterov: bool = key(False, "sgd's Nesterov momentum")
  weight_decay: float = key(
    5e-4,
    "sgd: L2 added to the gradient; adamw: its decoupled decay (both for decay_labels)",
    library="optim.with_shape_rules",
  )
  decay_labels: tuple[str, ...] = key(
    ("weights",),
    "the parameter labels that decay (kshapes_jax.optim.param_labels)",
    library="optim.check_labels",
  )
  lr_multipliers: Mapping[str, float] = key(
    {"positions": 0.01, "dcls_positions": 5.0, "dcls_sigmas": 5.0},
    "learning-rate multiplier per label (optim.default_lr_multipliers: ACU positions at 0.01, "
    "section 3.1; DCLS positions and sigmas at 5, the official recipe)",
    library="optim.scale_by_label",
    open_block=True,
  )
  position_warmup_steps: int = key(0, "ACU positions frozen for these steps", bounds=AT_LEAST_0)
  angle_eps: float = key(
    1.0, "RotateConv eq. 6, in degrees; < 0 turns the angle projection off", bounds=Bounds()
  )


@dataclasses.dataclass(frozen=True)
class QuantizeSettings:
  """config.quantize: quantization-aware fine-tuning of a trained run (kshapes_jax.qat)."""

  qat: bool = key(
    False,
    "fine-tune the trained run `from_run`, deployed to plain convs, with fake INT8 weights (per "
    "output channel) and inputs (calibrated ranges), as onnxruntime's QDQ INT8 computes them; "
    "then python -m train.export --int8 ships it",
  )
  from_run: str = key("", "the workdir of the trained run that quantize.qat fine-tunes")
  calibration: int = key(
    512,
    "training images that calibrate the input ranges (spread over the split)",
    bounds=AT_LEAST_1,
  )


@dataclasses.dataclass(frozen=True)
class Settings:
  """A checked config: every key of the trainer (conv_options holds only the options set)."""

  model: str = key(
    "sn", "a registered model (kshapes_jax.models.list_models())", library="models.check_kind"
  )
  conv: str = key(
    "plain",
    "the conv kind of its kxk layers (one the model takes)",
    library="models.check_kind",
  )
  model_kwargs: Mapping[str, Any] = key(
    {}, "passed to kshapes_jax.models.create (e.g. width)", open_block=True
  )
  conv_options: Mapping[str, Any] = key(
    {},
    "passed to every shaped conv layer, e.g. conv_options.radius=3 for the ACU; every "
    "registered kind's options are declared (unset)",
    library="nn.get_kind(conv).options",
  )
  precision: str = key(
    "default",
    "of every conv and dense layer: default (the backend's: TF32 on a GPU, bf16 passes on a "
    "TPU, float32 on a CPU), high or highest (exact float32, slower on a GPU); kernels are "
    "built exactly either way",
    choices=("default", "high", "highest"),
  )
  dtype: str = key(
    "float32",
    "compute dtype: float32, or bfloat16 (mixed precision: bf16 convs, dense layers and BN "
    "outputs; float32 parameters, BN statistics, optimizer and loss). Other floats are refused: "
    "float16 needs loss scaling, which the trainer does not do, and JAX computes float64 "
    "('d', 'double') in float32 unless x64 is on",
    choices=("float32", "bfloat16"),
  )
  deterministic: bool = key(
    True,
    "GPU runs use XLA's deterministic ops (set before JAX starts), so a resumed run equals an "
    "uninterrupted one bit for bit on the same machine; no effect on CPU or TPU",
  )
  data: DataSettings = block(DataSettings, "the dataset")
  batch_size: int = key(64, "the global batch (split over the devices)", bounds=AT_LEAST_1)
  eval_batch_size: int = key(256, "the global evaluation batch", bounds=AT_LEAST_1)
  num_epochs: float = key(5.0, "the run's length in epochs", bounds=AT_LEAST_0)
  num_steps: int = key(0, "the run's length in steps (> 0 wins over num_epochs)", bounds=AT_LEAST_0)
  optim: OptimSettings = block(OptimSettings, "the optimizer")
  quantize: QuantizeSettings = block(QuantizeSettings, "quantization-aware fine-tuning")
  max_loss_factor: float = key(
    1000.0,
    "the run stops as on a NaN once a step's training loss exceeds this x ln(classes), the "
    "loss of a uniform guess; 0: off",
    bounds=AT_LEAST_0,
  )
  acu_radius_every_steps: int = key(
    0,
    "ACU extent bucketing: every N steps each ACU gets the smallest radius that holds its "
    "positions and how far they can move before the next check; 0: off",
    bounds=AT_LEAST_0,
  )
  dcls_repulsion_from_epoch: float = key(
    -1.0,
    "from this epoch on, the square of DCLS's repulsion (kshapes_jax.nn.dcls_repulsion) is "
    "added to the loss; ConvNeXt-dcls: 21 (its epoch > 20, counted from 0); < 0: off",
    bounds=Bounds(),
  )
  checkpoint_every_steps: int = key(1000, "a checkpoint every N steps", bounds=AT_LEAST_1)
  keep_checkpoints: int = key(3, "checkpoints kept", bounds=AT_LEAST_1)
  log_every_steps: int = key(20, "a metrics line every N steps", bounds=AT_LEAST_1)
  eval_every_epochs: int = key(1, "a test evaluation every N epochs", bounds=AT_LEAST_1)
  seed: int = key(
    0, "the model's, the batches' and the augmentation's", bounds=Bounds(0, 2**32 - 1)
  )
  progress: bool = key(True, "the progress bar, on a terminal (the epoch lines are always printed)")
  distributed: bool = key(
    False, "join the run's other processes first (train.initialize_distributed: several hosts)"
  )

  def to_dict(self) -> dict[str, Any]:
    """The settings as JSON values, every conv option present (None: unset), as config.json
    keeps them."""
    from kshapes_jax.nn import conv_options  # the registered kinds' options

    d = json.loads(json.dumps(dataclasses.asdict(self), default=dict))
    d["conv_options"] = {name: self.conv_options.get(name) for name in conv_options()}
    return d

  def dcls_repulsion_from_step(self, steps_per_epoch: int) -> int | None:
    """The first step whose loss has the DCLS repulsion, None when it is off."""
    if self.dcls_repulsion_from_epoch < 0:
      return None
    return math.ceil(self.dcls_repulsion_from_epoch * steps_per_epoch)

  def max_loss(self, num_classes: int) -> float:
    """The training loss beyond which the run counts as diverged: max_loss_factor x
    ln(classes)."""
    if self.max_loss_factor <= 0:
      return math.inf
    return self.max_loss_factor * math.log(max(num_classes, 2))


@dataclasses.dataclass(frozen=True)
class Key:
  """One declared key, as `keys()` lists them: its dotted name, type, default and field."""

  name: str
  type: Any
  default: Any
  field: dataclasses.Field

  @property
  def doc(self) -> str:
    return self.field.metadata["doc"]

  @property
  def bounds(self) -> Bounds | None:
    return self.field.metadata.get("bounds")

  @property
  def choices(self) -> tuple[str, ...] | None:
    choices = self.field.metadata.get("choices")
    return tuple(choices() if callable(choices) else choices) if choices is not None else None

  @property
  def library(self) -> str | None:
    return self.field.metadata.get("library")

  @property
  def open_block(self) -> bool:
    return bool(self.field.metadata.get("open"))


def keys(cls: type = Settings, prefix: str = "") -> list[Key]:
  """Every key of `cls`, blocks flattened ("optim.momentum"), in declaration order."""
  hints = typing.get_type_hints(cls)
  out = []
  instance = cls()
  for field in dataclasses.fields(cls):
    if field.metadata.get("block"):
      out.extend(keys(hints[field.name], f"{prefix}{field.name}."))
    else:
      out.append(Key(prefix + field.name, hints[field.name], getattr(instance, field.name), field))
  return out


def type_name(kind: Any) -> str:
  """bool, int, float, str, tuple[float, ...], mapping."""
  if typing.get_origin(kind) is tuple:
    return f"tuple[{typing.get_args(kind)[0].__name__}, ...]"
  if typing.get_origin(kind) in (Mapping, dict):
    return "mapping"
  return kind.__name__


def describe() -> str:
  """The keys as a markdown table: key, type, default, the values it takes, what it does."""
  rows = ["| key | type | default | values | meaning |", "|---|---|---|---|---|"]
  for k in keys():
    values = ""
    if k.choices:
      values = " / ".join(k.choices)
    elif k.bounds is not None:
      values = str(k.bounds)
    elif k.library:
      values = f"checked by `{k.library}`"
    default = json.dumps(k.default, default=list) if not isinstance(k.default, str) else k.default
    rows.append(f"| `{k.name}` | {type_name(k.type)} | `{default}` | {values} | {k.doc} |")
  return "\n".join(rows)


if __name__ == "__main__":
  print(describe())
