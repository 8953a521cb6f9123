"""What a config asks for, checked and built: the data, the model, the optimizer and the step-0
state.

The trainer and `train.analyze` both build a run from its config through
these functions, so a restored run is the trained one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import kshapes_jax as K
from kshapes_jax import optim
from train import data
from train.trainer.restored import model_of, restore
from train.trainer.rundir import RunDir
from train.trainer.settings import ConfigError, OptimSettings, Settings, check_devices, read
from train.trainer.state import TrainState, split_model


def build_model(settings: Settings, dataset: data.Dataset) -> nnx.Module:
  """The config's model for the dataset's classes and channels; checks the input shape. With
  quantize.qat, the trained run quantize.from_run deployed and made fake-INT8 (`qat_model`)."""
  if settings.quantize.qat:
    return qat_model(settings, dataset)
  kwargs = dict(settings.model_kwargs)
  if settings.conv_options:
    kwargs["conv_options"] = dict(settings.conv_options)
  spec = K.models.spec(settings.model)
  if dataset.image_shape[-1] != spec.input_shape[-1]:
    kwargs["in_channels"] = dataset.image_shape[-1]
  if spec.takes_image_size and dataset.image_shape[:2] != spec.input_shape[:2]:
    kwargs["image_size"] = dataset.image_shape[0]
  try:
    model = K.models.create(
      settings.model,
      conv=settings.conv,
      num_classes=dataset.num_classes,
      rngs=nnx.Rngs(settings.seed),
      precision=settings.precision,
      dtype=settings.dtype,
      **kwargs,
    )
  except (TypeError, ValueError) as e:  # a model or conv option the layers refuse
    raise ConfigError(f"{settings.model} (conv={settings.conv}): {e}") from e
  try:
    nnx.eval_shape(lambda m: m(jnp.zeros((2, *dataset.image_shape))), model)
  except (TypeError, ValueError) as e:
    raise ConfigError(
      f"{settings.model} (conv={settings.conv}) cannot take {dataset.name} images of shape "
      f"{dataset.image_shape} (it is built for {spec.input_shape}): {e}"
    ) from e
  return model


def qat_model(settings: Settings, dataset: data.Dataset) -> nnx.Module:
  """The trained run `settings.quantize.from_run` (its latest intact checkpoint) deployed to
  plain convs and prepared for quantization-aware training (`kshapes_jax.qat.prepare`), its input
  ranges calibrated on `quantize.calibration` training images spread over the split.

  Raises:
    ConfigError: for a from_run that is no trained run, or one trained on other data.
    CheckpointError: when its checkpoints are damaged.
  """
  source = settings.quantize.from_run
  rundir = RunDir(source)
  try:
    theirs = read(rundir.read_config())
    base = build(theirs, dataset if theirs.data == settings.data else None)
    rundir.checkpoints.find(None)
  except FileNotFoundError as e:
    raise ConfigError(f"quantize.from_run={source!r} is not a trained run: {e}") from e
  them = (base.dataset.name, base.dataset.image_shape, base.dataset.num_classes)
  us = (dataset.name, dataset.image_shape, dataset.num_classes)
  if them != us:
    raise ConfigError(
      f"quantize.from_run={source!r} was trained on {them[0]} {them[1]} with {them[2]} classes; "
      f"this config reads {us[0]} {us[1]} with {us[2]}"
    )
  state = restore(rundir, jax.device_put(base.initial_state()))
  trained = model_of(split_model(base.model)[0], state)
  images, _ = data.spread(dataset.train, settings.quantize.calibration)
  calibration = K.export.normalized(images, (dataset.mean, dataset.std))
  return K.qat.prepare(K.deploy(trained), calibration)


def make_schedule(o: OptimSettings, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """The learning rate per step (boundaries and warm-up given in epochs).

  Raises:
    ConfigError: for boundaries that fall on the same or on no step at this epoch length.
  """
  steps = [round(b * steps_per_epoch) for b in o.boundaries]
  try:
    return optim.make_schedule(
      cast(optim.Schedule, o.schedule),
      o.learning_rate,
      total_steps,
      boundaries=steps,
      factor=o.factor,
      warmup_steps=round(o.warmup_epochs * steps_per_epoch),
    )
  except ValueError as e:
    raise ConfigError(
      f"optim.boundaries {tuple(o.boundaries)} (epochs) are steps {steps} at {steps_per_epoch} "
      f"steps per epoch: {e}"
    ) from e


def length(settings: Settings, steps_per_epoch: int) -> int:
  """The run's length in steps: num_steps, or num_epochs of full batches."""
  if settings.num_steps > 0:
    return settings.num_steps
  return math.ceil(settings.num_epochs * steps_per_epoch)


def make_optimizer(
  o: OptimSettings, labels: Any, steps_per_epoch: int, total_steps: int, bounds: Any = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The config's optimizer (optim.name: sgd or adamw) with the papers' per-label rules and the
  clamp to `bounds` (`optim.param_bounds`: DCLS positions); (tx, schedule)."""
  schedule = make_schedule(o, steps_per_epoch, total_steps)
  rules: dict[str, Any] = dict(
    weight_decay=o.weight_decay,
    decay_labels=tuple(o.decay_labels),
    lr_multipliers=dict(o.lr_multipliers),
    freeze_steps=o.position_warmup_steps,
    angle_eps=o.angle_eps if o.angle_eps >= 0 else None,
    bounds=bounds,
  )
  if o.name == "adamw":
    return optim.adamw(labels, schedule, b1=o.b1, b2=o.b2, **rules), schedule
  return optim.sgd(labels, schedule, momentum=o.momentum, nesterov=o.nesterov, **rules), schedule


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A config made concrete.

  Attributes:
    settings: the checked config.
    dataset: its data, in memory or streamed.
    model: its model at initialisation (settings.seed), train mode.
    tx: the optimizer with the papers' per-label rules.
    schedule: the learning rate per step.
    steps_per_epoch: full batches per epoch (the last incomplete one is dropped).
    total_steps: the length of the run.
  """

  settings: Settings
  dataset: data.Dataset
  model: nnx.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  steps_per_epoch: int
  total_steps: int

  @property
  def device_augment(self) -> str:
    """The augmentation the jitted step applies: the config's, where the device makes it (cifar);
    none where the CPU workers crop (inception)."""
    augment = self.settings.data.augment
    return augment if augment in data.DEVICE_AUGMENTS else "none"

  def initial_state(self) -> TrainState:
    """The TrainState at step 0 (host arrays)."""
    _, params, rest = split_model(self.model)
    return TrainState.create(self.tx, params, rest, K.nn.active_radii(self.model))


def build(
  config: Settings | ml_collections.ConfigDict | Mapping[str, Any],
  dataset: data.Dataset | None = None,
) -> Experiment:
  """Reads and checks the config (unless given Settings), loads its data (unless given) and builds
  its model and optimizer.

  Raises:
    ConfigError: for a config that cannot run (before anything is compiled).
    data.DataError: for a dataset that is missing, with how to get it.
  """
  settings = config if isinstance(config, Settings) else read(config)
  check_devices(settings)
  dataset = data.load(settings.data, settings.seed) if dataset is None else dataset
  steps_per_epoch = data.BatchPlan(
    len(dataset.train), settings.batch_size, settings.seed
  ).steps_per_epoch
  total_steps = length(settings, steps_per_epoch)
  model = build_model(settings, dataset)
  model.train()
  tx, schedule = make_optimizer(
    settings.optim,
    optim.param_labels(model),
    steps_per_epoch,
    total_steps,
    optim.param_bounds(model),
  )
  return Experiment(settings, dataset, model, tx, schedule, steps_per_epoch, total_steps)
