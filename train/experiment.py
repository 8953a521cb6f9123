"""What a config asks for, checked and built: the data, the model, the optimizer and the step-0 state.

The trainer and `train.analyze` both build a run from its config through
these functions, so a restored run is the trained one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import get_args

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


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf."""


OPTIMIZERS = ("sgd", "adamw")


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
  if o.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate must be > 0, got {o.learning_rate}")
  for label in list(o.decay_labels) + list(o.lr_multipliers):
    if label not in optim.LABELS:
      raise ConfigError(f"unknown parameter label {label!r} in optim; expected some of {list(optim.LABELS)}")


def build_model(config, dataset: input_pipeline.Dataset) -> nnx.Module:
  """The config's model for the dataset's classes and channels; checks the input shape."""
  kwargs = dict(config.model_kwargs)
  if config.conv_options:
    kwargs["conv_options"] = dict(config.conv_options)
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
