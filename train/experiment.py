"""What a config asks for, checked and built: the data, the model, the optimizer and the step-0 state.

The trainer and `train.analyze` both build a run from its config through
these functions, so a restored run is the trained one.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from typing import Any, get_args

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import kshapes_jax as K
from kshapes_jax import _validation, optim
from train import input_pipeline
from train.programs import acu_convs
from train.state import TrainState


class ConfigError(ValueError):
  """A config that cannot run; raised before any data is read or code compiled."""


OPTIMIZERS = ("sgd", "adamw")

# What a checkpoint's state means: a resume whose config changes one of these is refused (a
# prefix covers the keys under it). data.data_dir is left out: the same data may move.
STATE_KEYS = ("model", "model_kwargs", "conv", "conv_options", "dtype", "optim.name", "batch_size", "seed",
              "data")
_NOT_STATE_KEYS = ("data.data_dir",)
# Free-form blocks: their keys are the model's or the optimizer's, not the config's.
_OPEN_KEYS = ("model_kwargs", "optim.lr_multipliers")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):  # an empty block has no keys (unset, as a missing key is)
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _as_dict(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(saved: dict[str, Any], config) -> list[str]:
  """The STATE_KEYS whose value differs between a checkpoint's config and `config`, as 'key (old -> new)'.

  A key missing on one side counts as unset (None), so a config written before a key existed
  compares equal to one that leaves it unset.
  """
  before, now = _flatten(saved), _flatten(_as_dict(config))
  keys = sorted(k for k in before.keys() | now.keys() if _under(k, STATE_KEYS) and not _under(k, _NOT_STATE_KEYS))
  return [f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in keys if before.get(k) != now.get(k)]


def check_keys(config) -> None:
  """ConfigError for keys the trainer does not know (a typo would otherwise be ignored)."""
  from configs import default  # noqa: PLC0415 (configs import train: no cycle at import time)

  known = _flatten(_as_dict(default.get_config()))
  unknown = [k for k in _flatten(_as_dict(config)) if k not in known and not _under(k, _OPEN_KEYS)]
  if unknown:
    raise ConfigError(f"unknown config key(s) {unknown}; see configs/default.py for the keys")


def _check_number(name: str, value, low: float, high: float = math.inf, *, integer: bool = False,
                  low_open: bool = False, high_open: bool = False) -> None:
  """ConfigError unless `value` is a finite number (an int if `integer`) in the interval."""
  ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
  ok = ok and math.isfinite(value) and (low < value if low_open else low <= value)
  ok = ok and (value < high if high_open else value <= high)
  if not ok:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
    raise ConfigError(f"{name} must be {'an int' if integer else 'a number'} in {interval}, got {value!r}")


def check_config(config) -> None:
  """Fails fast, with the valid choices, on a config that cannot run."""
  try:
    _validation.precision(config.get("precision", "default"))
  except ValueError as e:
    raise ConfigError(f"config.precision: {e}") from e
  try:
    _validation.compute_dtype(config.get("dtype", "float32"))
  except ValueError as e:
    raise ConfigError(f"config.dtype must be a floating dtype such as 'float32' or 'bfloat16', "
                      f"got {config.dtype!r}") from e
  if config.model not in K.models.list_models():
    raise ConfigError(f"unknown model {config.model!r}; expected one of {K.models.list_models()}")
  kinds = K.models.spec(config.model).kinds
  if config.conv not in kinds:
    raise ConfigError(f"conv kind {config.conv!r} does not apply to {config.model}; it takes {list(kinds)}")
  if config.data.name not in input_pipeline.DATASETS:
    raise ConfigError(f"unknown dataset {config.data.name!r}; expected one of "
                      f"{sorted(input_pipeline.DATASETS)}")
  if config.data.source not in input_pipeline.SOURCES:
    raise ConfigError(f"unknown data source {config.data.source!r}; expected one of "
                      f"{list(input_pipeline.SOURCES)}")
  if config.data.augment not in get_args(input_pipeline.Augment):
    raise ConfigError(f"data.augment must be 'none' or 'cifar', got {config.data.augment!r}")
  for key in ("batch_size", "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints",
              "log_every_steps", "eval_every_epochs"):
    if not isinstance(config[key], int) or config[key] < 1:
      raise ConfigError(f"{key} must be an int >= 1, got {config[key]!r}")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % devices:
      raise ConfigError(f"{key}={config[key]} must be a multiple of the {devices} devices "
                        "(each device gets an equal share)")
  every = config.get("acu_radius_every_steps", 0)
  if not isinstance(every, int) or every < 0:
    raise ConfigError(f"acu_radius_every_steps must be an int >= 0 (0: off), got {every!r}")
  o = config.optim
  if every and o.get("name", "sgd") != "sgd":
    raise ConfigError("acu_radius_every_steps needs optim.name='sgd': the margin it keeps is SGD's bound "
                      "on a step of the normalized gradient")
  if every and "positions" in o.decay_labels:
    raise ConfigError("acu_radius_every_steps needs positions without weight decay (the margin bounds "
                      "only the normalized gradient's steps)")
  if o.get("name", "sgd") not in OPTIMIZERS:
    raise ConfigError(f"optim.name must be one of {list(OPTIMIZERS)}, got {o.name!r}")
  if o.schedule not in get_args(optim.Schedule):
    raise ConfigError(f"optim.schedule must be constant, staircase or cosine, got {o.schedule!r}")
  _check_number("optim.learning_rate", o.learning_rate, 0, low_open=True)
  _check_number("optim.momentum", o.momentum, 0, 1, high_open=True)
  _check_number("optim.weight_decay", o.weight_decay, 0)
  _check_number("optim.factor", o.factor, 0, low_open=True)
  _check_number("optim.warmup_epochs", o.warmup_epochs, 0)
  _check_number("optim.position_warmup_steps", o.position_warmup_steps, 0, integer=True)
  for key in ("b1", "b2"):
    _check_number(f"optim.{key}", o.get(key, 0.9), 0, 1, high_open=True)
  if list(o.boundaries) != sorted(o.boundaries) or any(b < 0 for b in o.boundaries):
    raise ConfigError(f"optim.boundaries must be epochs >= 0 in increasing order, got {tuple(o.boundaries)}")
  for label, multiplier in dict(o.lr_multipliers).items():
    _check_number(f"optim.lr_multipliers.{label}", multiplier, 0)
  _check_number("seed", config.seed, 0, 2**32 - 1, integer=True)
  _check_number("num_epochs", config.num_epochs, 0)
  _check_number("num_steps", config.num_steps, 0, integer=True)
  _check_number("max_loss_factor", config.get("max_loss_factor", 0.0), 0)
  if config.data.source == "synthetic":
    for key in ("train_size", "test_size"):
      _check_number(f"data.{key}", config.data.get(key, 1), 1, integer=True)
  _check_conv_options(config)
  for label in list(o.decay_labels) + list(o.lr_multipliers):
    if label not in optim.LABELS:
      raise ConfigError(f"unknown parameter label {label!r} in optim; expected some of {list(optim.LABELS)}")


def conv_options(config) -> dict[str, Any]:
  """The conv options the config sets (the unset ones are None)."""
  return {k: v for k, v in dict(config.get("conv_options", {})).items() if v is not None}


def _check_conv_options(config) -> None:
  """ConfigError for a conv option the conv kind's layer does not take."""
  layer = K.nn.CONV_KINDS.get(config.conv)
  if layer is None:
    return
  from configs import default  # noqa: PLC0415

  cls = layer.func if isinstance(layer, functools.partial) else layer  # rotate4 / rotate2 fix the version
  # the declared options this layer's constructor has (PlainConv's bias is an array, not an option)
  takes = sorted(set(inspect.signature(cls.__init__).parameters) & set(default.CONV_OPTIONS)
                 - ({"bias"} if cls is K.nn.PlainConv else set()))
  for name in conv_options(config):
    if name not in takes:
      raise ConfigError(f"conv_options.{name} does not apply to conv {config.conv!r}; it takes "
                        f"{takes if takes else 'no options'}")


def build_model(config, dataset: input_pipeline.Dataset) -> nnx.Module:
  """The config's model for the dataset's classes and channels; checks the input shape."""
  kwargs = dict(config.model_kwargs)
  if conv_options(config):
    kwargs["conv_options"] = conv_options(config)
  spec = K.models.spec(config.model)
  if dataset.image_shape[-1] != spec.input_shape[-1]:
    kwargs["in_channels"] = dataset.image_shape[-1]
  if spec.takes_image_size and dataset.image_shape[:2] != spec.input_shape[:2]:
    kwargs["image_size"] = dataset.image_shape[0]
  try:
    model = K.models.create(config.model, conv=config.conv, num_classes=dataset.num_classes,
                            rngs=nnx.Rngs(config.seed), precision=config.get("precision", "default"),
                            dtype=config.get("dtype", "float32"), **kwargs)
    nnx.eval_shape(lambda m: m(jnp.zeros((2, *dataset.image_shape))), model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{config.model} (conv={config.conv}) cannot take {dataset.name} images of shape "
                      f"{dataset.image_shape} (it is built for {spec.input_shape}): {e}") from e
  return model


def make_optimizer(config, labels, steps_per_epoch: int, total_steps: int):
  """The config's optimizer (optim.name: sgd or adamw) with the papers' per-label rules; (tx, schedule)."""
  o = config.optim
  schedule = optim.make_schedule(
      o.schedule, o.learning_rate, total_steps,
      boundaries=[round(b * steps_per_epoch) for b in o.boundaries], factor=o.factor,
      warmup_steps=round(o.warmup_epochs * steps_per_epoch))
  rules = dict(weight_decay=o.weight_decay, decay_labels=tuple(o.decay_labels),
               lr_multipliers=dict(o.lr_multipliers), freeze_steps=o.position_warmup_steps,
               angle_eps=o.angle_eps if o.angle_eps >= 0 else None)
  if o.get("name", "sgd") == "adamw":
    return optim.adamw(labels, schedule, b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), **rules), schedule
  return optim.sgd(labels, schedule, momentum=o.momentum, nesterov=o.nesterov, **rules), schedule



def load_data(config) -> input_pipeline.Dataset:
  """The config's dataset; synthetic data is drawn from the run's seed."""
  data_cfg = config.data.copy_and_resolve_references()
  with data_cfg.unlocked():
    data_cfg.seed = config.seed
  return input_pipeline.load(data_cfg)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A config made concrete.

  Attributes:
    config: the checked config.
    dataset: its data, in memory.
    model: its model at initialisation (config.seed), train mode.
    tx: the optimizer with the papers' per-label rules.
    schedule: the learning rate per step.
    steps_per_epoch: full batches per epoch (the last incomplete one is dropped).
    total_steps: the length of the run.
  """

  config: object
  dataset: input_pipeline.Dataset
  model: nnx.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  steps_per_epoch: int
  total_steps: int

  def initial_state(self) -> TrainState:
    """The TrainState at step 0 (host arrays)."""
    _, params, rest = nnx.split(self.model, nnx.Param, ...)
    return TrainState.create(self.tx, params, rest, [layer.radius for _, layer in acu_convs(self.model)])


def build(config, dataset: input_pipeline.Dataset | None = None) -> Experiment:
  """Checks the config, loads its data (unless given) and builds its model and optimizer.

  Raises:
    ConfigError: for a config that cannot run (before anything is compiled).
    input_pipeline.DataError: for a dataset that is missing, with how to get it.
  """
  check_config(config)
  dataset = load_data(config) if dataset is None else dataset
  steps_per_epoch = input_pipeline.Batches(dataset.train, config.batch_size, config.seed).steps_per_epoch
  total_steps = config.num_steps if config.num_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
  model = build_model(config, dataset)
  model.train()
  tx, schedule = make_optimizer(config, optim.param_labels(model), steps_per_epoch, total_steps)
  return Experiment(config, dataset, model, tx, schedule, steps_per_epoch, total_steps)
