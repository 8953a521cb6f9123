"""The config read and checked once into typed settings: what every part of the trainer takes.

`read(config)` lays the config over `configs/default.py` (the one place where every key has its
default), refuses keys the trainer does not know, checks every value and returns `Settings`,
frozen dataclasses. Nothing after it reads a ConfigDict or a default of its own.
`Settings.to_dict()` is what config.json and the checkpoints keep, and `read` takes it back.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from collections.abc import Mapping
from typing import Any, cast, get_args

import jax
import ml_collections

import kshapes_jax as K
from configs import datasets, default
from kshapes_jax import _validation, optim


class ConfigError(ValueError):
  """A config that cannot run; raised before any data is read or code compiled."""


OPTIMIZERS = ("sgd", "adamw")
# cifar: on the device, in-memory data; inception: on the CPU workers, streamed data
AUGMENTS = ("none", "cifar", "inception")
# What a checkpoint's state means: a resume whose config changes one of these is refused (a
# prefix covers the keys under it). data.data_dir is left out: the same data may move.
STATE_KEYS = (
  "model",
  "model_kwargs",
  "conv",
  "conv_options",
  "dtype",
  "optim.name",
  "batch_size",
  "seed",
  "data",
)
_NOT_STATE_KEYS = ("data.data_dir", "data.workers", "data.threads")
# Free-form blocks: their keys are the model's or the optimizer's, not the config's; a config
# that sets one replaces the default's whole.
_OPEN_KEYS = ("model_kwargs", "optim.lr_multipliers")


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """config.data: which dataset, from where (configs/default.py documents the keys)."""

  name: str
  source: str
  data_dir: str
  augment: str
  train_size: int
  test_size: int
  image_size: int
  workers: int
  threads: int

  @property
  def streamed(self) -> bool:
    """Read example by example (ImageNet, a prepared folder), not held in memory."""
    return datasets.streamed(self.name, self.source)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  """config.optim: the optimizer and the papers' per-label rules."""

  name: str
  learning_rate: float
  schedule: optim.Schedule
  boundaries: tuple[float, ...]
  factor: float
  warmup_epochs: float
  momentum: float
  nesterov: bool
  weight_decay: float
  decay_labels: tuple[str, ...]
  lr_multipliers: Mapping[str, float]
  position_warmup_steps: int
  angle_eps: float
  b1: float
  b2: float


@dataclasses.dataclass(frozen=True)
class Settings:
  """A checked config (configs/default.py documents every key).

  conv_options holds only the options the config sets.
  """

  model: str
  conv: str
  model_kwargs: Mapping[str, Any]
  conv_options: Mapping[str, Any]
  precision: str
  dtype: str
  deterministic: bool
  data: DataSettings
  batch_size: int
  eval_batch_size: int
  num_epochs: float
  num_steps: int
  optim: OptimSettings
  max_loss_factor: float
  acu_radius_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  log_every_steps: int
  eval_every_epochs: int
  seed: int
  progress: bool
  distributed: bool

  def to_dict(self) -> dict[str, Any]:
    """The settings as JSON values, every conv option present (None: unset), as config.json keeps
    them."""
    d = json.loads(json.dumps(dataclasses.asdict(self), default=dict))
    d["conv_options"] = {name: self.conv_options.get(name) for name in default.CONV_OPTIONS}
    return d

  def max_loss(self, num_classes: int) -> float:
    """The training loss beyond which the run counts as diverged: max_loss_factor x ln(classes)."""
    if self.max_loss_factor <= 0:
      return math.inf
    return self.max_loss_factor * math.log(max(num_classes, 2))


def _as_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=dict))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and not _under(f"{prefix}{key}", _OPEN_KEYS):
      # an empty block has no keys (unset, as a missing key is)
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def _defaults() -> dict[str, Any]:
  return _flatten(_as_dict(default.get_config()))


def config_changes(saved: Mapping[str, Any], settings: Settings) -> list[str]:
  """The STATE_KEYS whose value differs between a checkpoint's config and `settings`, as 'key (old
  -> new)'.

  The saved config is laid over configs/default.py as `read` lays a config, so a config written
  before a key existed has that key's default.
  """
  before, now = {**_defaults(), **_flatten(saved)}, _flatten(settings.to_dict())
  keys = sorted(
    k
    for k in before.keys() | now.keys()
    if _under(k, STATE_KEYS) and not _under(k, _NOT_STATE_KEYS)
  )
  return [f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in keys if before.get(k) != now.get(k)]


def _check_number(
  name: str,
  value: Any,
  low: float,
  high: float = math.inf,
  *,
  integer: bool = False,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """ConfigError unless `value` is a finite number (an int if `integer`) in the interval."""
  ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
  ok = ok and math.isfinite(value) and (low < value if low_open else low <= value)
  ok = ok and (value < high if high_open else value <= high)
  if not ok:
    opening = "(" if low_open or low == -math.inf else "["
    closing = ")" if high_open or high == math.inf else "]"
    interval = f"{opening}{low}, {high}{closing}"
    raise ConfigError(
      f"{name} must be {'an int' if integer else 'a number'} in {interval}, got {value!r}"
    )


def _choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
  if value not in choices:
    raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def read(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Settings:
  """The config laid over configs/default.py, checked, as Settings (the devices are not asked for:
  `check_devices` does that).

  Raises:
    ConfigError: naming the key, for an unknown key or a value the trainer cannot run.
  """
  given = _flatten(_as_dict(config))
  flat = _defaults()
  unknown = [k for k in given if k not in flat and not _under(k, _OPEN_KEYS)]
  if unknown:
    raise ConfigError(f"unknown config key(s) {unknown}; see configs/default.py for the keys")
  flat.update(given)
  o = {k.removeprefix("optim."): v for k, v in flat.items() if k.startswith("optim.")}
  d = {k.removeprefix("data."): v for k, v in flat.items() if k.startswith("data.")}
  options = {
    k.removeprefix("conv_options."): v for k, v in flat.items() if k.startswith("conv_options.")
  }
  s = Settings(
    model=flat["model"],
    conv=flat["conv"],
    model_kwargs=dict(flat["model_kwargs"] or {}),
    conv_options={k: v for k, v in options.items() if v is not None},
    precision=flat["precision"],
    dtype=flat["dtype"],
    deterministic=flat["deterministic"],
    data=DataSettings(**d),
    batch_size=flat["batch_size"],
    eval_batch_size=flat["eval_batch_size"],
    num_epochs=flat["num_epochs"],
    num_steps=flat["num_steps"],
    optim=OptimSettings(
      **{
        **o,
        "boundaries": tuple(o["boundaries"]),
        "decay_labels": tuple(o["decay_labels"]),
        "lr_multipliers": dict(o["lr_multipliers"] or {}),
      }
    ),
    max_loss_factor=flat["max_loss_factor"],
    acu_radius_every_steps=flat["acu_radius_every_steps"],
    checkpoint_every_steps=flat["checkpoint_every_steps"],
    keep_checkpoints=flat["keep_checkpoints"],
    log_every_steps=flat["log_every_steps"],
    eval_every_epochs=flat["eval_every_epochs"],
    seed=flat["seed"],
    progress=flat["progress"],
    distributed=flat["distributed"],
  )
  _check(s)
  return s


def check_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> None:
  """Fails fast, with the valid choices, on a config that cannot run here (ConfigError)."""
  check_devices(read(config))


def check_devices(s: Settings) -> None:
  """ConfigError unless the batch sizes divide among the devices (asks JAX for them: call it
  after `jax.distributed.initialize`, which must come before the backend starts)."""
  devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if getattr(s, key) % devices:
      raise ConfigError(
        f"{key}={getattr(s, key)} must be a multiple of the {devices} devices "
        "(each device gets an equal share)"
      )


def _check(s: Settings) -> None:
  try:
    _validation.precision(s.precision)
  except ValueError as e:
    raise ConfigError(f"config.precision: {e}") from e
  try:
    _validation.compute_dtype(s.dtype)
  except ValueError as e:
    raise ConfigError(
      f"config.dtype must be a floating dtype such as 'float32' or 'bfloat16', got {s.dtype!r}"
    ) from e
  if s.model not in K.models.list_models():
    raise ConfigError(f"unknown model {s.model!r}; expected one of {K.models.list_models()}")
  kinds = K.models.spec(s.model).kinds
  if s.conv not in kinds:
    raise ConfigError(f"conv kind {s.conv!r} does not apply to {s.model}; it takes {list(kinds)}")
  _choice("data.source", s.data.source, datasets.SOURCES)
  if not s.data.streamed and s.data.name not in datasets.DATASETS:
    raise ConfigError(
      f"unknown dataset {s.data.name!r} for data.source={s.data.source!r}; expected one of "
      f"{sorted(datasets.DATASETS)} (any TFDS image dataset streams with source='tfds', a "
      "folder of python -m train.prepare with source='arrayrecord')"
    )
  _choice("data.augment", s.data.augment, AUGMENTS)
  for key in ("image_size", "workers"):
    _check_number(f"data.{key}", getattr(s.data, key), 0, integer=True)
  _check_number("data.threads", s.data.threads, 1, integer=True)
  if s.data.streamed and s.data.augment == "cifar":
    raise ConfigError(
      f"data.augment='cifar' is for the small in-memory datasets; {s.data.name} "
      f"(source={s.data.source!r}) is streamed: use 'inception' or 'none'"
    )
  if not s.data.streamed and (s.data.augment == "inception" or s.data.image_size):
    raise ConfigError(
      f"{s.data.name} (source={s.data.source!r}) is held in memory at its own size: "
      "data.augment='inception' and data.image_size apply to streamed datasets "
      "(source='arrayrecord', or a TFDS dataset such as imagenet2012)"
    )
  for key in (
    "batch_size",
    "eval_batch_size",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "log_every_steps",
    "eval_every_epochs",
  ):
    _check_number(key, getattr(s, key), 1, integer=True)
  if s.num_steps <= 0 and s.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  _check_number("acu_radius_every_steps", s.acu_radius_every_steps, 0, integer=True)
  o = s.optim
  _choice("optim.name", o.name, OPTIMIZERS)
  if s.acu_radius_every_steps and o.name != "sgd":
    raise ConfigError(
      "acu_radius_every_steps needs optim.name='sgd': the margin it keeps is SGD's bound "
      "on a step of the normalized gradient"
    )
  if s.acu_radius_every_steps and "positions" in o.decay_labels:
    raise ConfigError(
      "acu_radius_every_steps needs positions without weight decay (the margin bounds "
      "only the normalized gradient's steps)"
    )
  _choice("optim.schedule", o.schedule, get_args(optim.Schedule))
  _check_number("optim.learning_rate", o.learning_rate, 0, low_open=True)
  _check_number("optim.momentum", o.momentum, 0, 1, high_open=True)
  _check_number("optim.weight_decay", o.weight_decay, 0)
  _check_number("optim.factor", o.factor, 0, low_open=True)
  _check_number("optim.warmup_epochs", o.warmup_epochs, 0)
  _check_number("optim.position_warmup_steps", o.position_warmup_steps, 0, integer=True)
  _check_number("optim.angle_eps", o.angle_eps, -math.inf)  # finite; < 0: no projection
  for key in ("b1", "b2"):
    _check_number(f"optim.{key}", getattr(o, key), 0, 1, high_open=True)
  if list(o.boundaries) != sorted(o.boundaries) or any(
    not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0 for b in o.boundaries
  ):
    raise ConfigError(
      f"optim.boundaries must be epochs > 0 in increasing order, got {tuple(o.boundaries)}"
    )
  for label, multiplier in o.lr_multipliers.items():
    _check_number(f"optim.lr_multipliers.{label}", multiplier, 0)
  _check_number("seed", s.seed, 0, 2**32 - 1, integer=True)
  _check_number("num_epochs", s.num_epochs, 0)
  _check_number("num_steps", s.num_steps, 0, integer=True)
  _check_number("max_loss_factor", s.max_loss_factor, 0)
  if s.data.source == "synthetic":
    for key in ("train_size", "test_size"):
      _check_number(f"data.{key}", getattr(s.data, key), 1, integer=True)
  _check_conv_options(s)
  for label in list(o.decay_labels) + list(o.lr_multipliers):
    if label not in optim.LABELS:
      raise ConfigError(
        f"unknown parameter label {label!r} in optim; expected some of {list(optim.LABELS)}"
      )


def _check_conv_options(s: Settings) -> None:
  """ConfigError for a conv option the conv kind's layer does not take."""
  layer = K.nn.CONV_KINDS.get(s.conv)
  if layer is None:
    return
  # the layer's class (rotate4 / rotate2 are partials that fix the version)
  cls = cast(type, layer.func if isinstance(layer, functools.partial) else layer)
  # the declared options its constructor has (PlainConv's bias is an array, not an option)
  takes = sorted(
    set(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]
    & set(default.CONV_OPTIONS) - ({"bias"} if cls is K.nn.PlainConv else set())
  )
  for name in s.conv_options:
    if name not in takes:
      raise ConfigError(
        f"conv_options.{name} does not apply to conv {s.conv!r}; it takes "
        f"{takes if takes else 'no options'}"
      )
