"""The config read and checked once into typed settings: what every part of the trainer takes.

`read(config)` lays the config over the declared defaults (`configs/schema.py`, the one place
where every key has its default, type, range and meaning), refuses keys the trainer does not
know, checks every value against its declaration, has the library check what it checks itself
(the model and conv kind, the kind's options, precision and dtype, the optimizer's arguments)
and returns `Settings`, frozen dataclasses. Nothing after it reads a ConfigDict or a default of
its own. `Settings.to_dict()` is what config.json and the checkpoints keep, and `read` takes it
back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import jax
import ml_collections

import kshapes_jax as K
from configs import datasets, schema
from configs.schema import DataSettings, OptimSettings, Settings
from kshapes_jax import _validation, optim

__all__ = [
  "ConfigError",
  "DataSettings",
  "OptimSettings",
  "STATE_KEYS",
  "Settings",
  "check_config",
  "check_devices",
  "config_changes",
  "read",
]


class ConfigError(ValueError):
  """A config that cannot run; raised before any data is read or code compiled."""


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
  "quantize",
)
_NOT_STATE_KEYS = ("data.data_dir", "data.workers", "data.threads")
_T = TypeVar("_T")


def _keys() -> dict[str, schema.Key]:
  return {k.name: k for k in schema.keys()}


def _open_keys() -> tuple[str, ...]:
  """Free-form blocks: their keys are the model's or the optimizer's, not the config's; a config
  that sets one replaces the default's whole."""
  return tuple(k.name for k in schema.keys() if k.open_block)


def _as_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=dict))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and not _under(f"{prefix}{key}", _open_keys()):
      # an empty block has no keys (unset, as a missing key is)
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def _defaults() -> dict[str, Any]:
  """Every declared key's default, flat; each conv option of the registered kinds unset."""
  flat = {k.name: k.default for k in schema.keys() if k.name != "conv_options"}
  flat.update({f"conv_options.{name}": None for name in K.nn.conv_options()})
  return json.loads(json.dumps(flat, default=list))


def config_changes(saved: Mapping[str, Any], settings: Settings) -> list[str]:
  """The STATE_KEYS whose value differs between a checkpoint's config and `settings`, as 'key (old
  -> new)'.

  The saved config is laid over the declared defaults as `read` lays a config, so a config
  written before a key existed has that key's default.
  """
  before, now = {**_defaults(), **_flatten(saved)}, _flatten(settings.to_dict())
  keys = sorted(
    k
    for k in before.keys() | now.keys()
    if _under(k, STATE_KEYS) and not _under(k, _NOT_STATE_KEYS)
  )
  return [f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in keys if before.get(k) != now.get(k)]


def _is_number(value: Any, integer: bool = False) -> bool:
  if integer:
    return _validation.is_int(value)
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed(name: str, kind: Any, value: Any) -> Any:
  """`value` as a key of type `kind` holds it (a list read from JSON as the declared tuple).

  Raises:
    ConfigError: naming the key, for a value of another type.
  """
  origin = typing.get_origin(kind)
  if origin is tuple:
    item = typing.get_args(kind)[0]
    ok = isinstance(value, (list, tuple)) and all(
      _is_number(v) if item is float else isinstance(v, item) for v in value
    )
    if not ok:
      raise ConfigError(f"{name} must be a tuple of {item.__name__}s, got {value!r}")
    return tuple(value)
  if origin in (Mapping, dict):
    if not isinstance(value, Mapping):
      raise ConfigError(f"{name} must be a mapping of names to values, got {value!r}")
    return dict(value)
  if kind is float or kind is int:
    if not _is_number(value, integer=kind is int):
      raise ConfigError(f"{name} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    return value
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")
  return value


def _checked(k: schema.Key, value: Any) -> Any:
  """`value` of key `k`, typed and checked against its declared range or choices."""
  if k.bounds is not None:
    integer = k.type is int
    if not (_is_number(value, integer) and k.bounds.holds(value)):
      raise ConfigError(
        f"{k.name} must be {'an int' if integer else 'a number'} in {k.bounds}, got {value!r}"
      )
  value = _typed(k.name, k.type, value)
  if k.choices is not None and value not in k.choices:
    raise ConfigError(f"{k.name} must be one of {list(k.choices)}, got {value!r}")
  return value


def _block(cls: type[_T], values: Mapping[str, Any], prefix: str = "") -> _T:
  """The dataclass `cls` holding the flat `values` of its keys (blocks built recursively)."""
  hints = typing.get_type_hints(cls)
  fields = {}
  for field in dataclasses.fields(cls):  # type: ignore[arg-type]
    if field.metadata.get("block"):
      fields[field.name] = _block(hints[field.name], values, f"{prefix}{field.name}.")
    else:
      fields[field.name] = values[f"{prefix}{field.name}"]
  return cls(**fields)


def read(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Settings:
  """The config laid over the declared defaults, checked, as Settings (the devices are not asked
  for: `check_devices` does that).

  Raises:
    ConfigError: naming the key, for an unknown key or a value the trainer cannot run.
  """
  given = _flatten(_as_dict(config))
  flat = _defaults()
  unknown = [k for k in given if k not in flat and not _under(k, _open_keys())]
  if unknown:
    raise ConfigError(f"unknown config key(s) {unknown}; see configs/schema.py for the keys")
  flat.update(given)
  declared = _keys()
  values = {name: _checked(k, flat[name]) for name, k in declared.items() if name in flat}
  if values.get("data.data_dir"):  # a `~` the shell left as it is (after an `=`): the home
    values["data.data_dir"] = os.path.expanduser(values["data.data_dir"])
  options = {
    name.removeprefix("conv_options."): v
    for name, v in flat.items()
    if name.startswith("conv_options.") and v is not None
  }
  values["conv_options"] = options
  s = _block(Settings, values)
  _check_library(s)
  _check_relations(s)
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


def _library(key: str, check: Callable[[], Any]) -> None:
  """Runs a check the library makes; its ValueError becomes the key's ConfigError."""
  try:
    check()
  except ValueError as e:
    raise ConfigError(f"{key}: {e}") from e


def _check_library(s: Settings) -> None:
  """The values the library checks itself, checked by the library."""
  _library("config.model", lambda: K.models.spec(s.model))
  _library("config.conv", lambda: K.models.check_kind(s.model, s.conv))
  _check_conv_options(s)
  o = s.optim
  _library("optim.learning_rate", lambda: optim.make_schedule("constant", o.learning_rate, 1))
  schedule = cast(optim.Schedule, o.schedule)
  _library("optim.schedule", lambda: optim.make_schedule(schedule, 1.0, 1))
  _library("optim.boundaries (epochs)", lambda: optim.check_boundaries(o.boundaries))

  def build(values: Any) -> None:
    rules: dict[str, Any] = dict(
      weight_decay=values.weight_decay,
      decay_labels=values.decay_labels,
      lr_multipliers=values.lr_multipliers,
      angle_eps=None,  # < 0 is off; a finite angle_eps is the schema's to check
    )
    if o.name == "sgd":
      optim.sgd({}, 0.1, momentum=values.momentum, **rules)
    else:
      optim.adamw({}, 0.1, b1=values.b1, b2=values.b2, **rules)

  # the optimizer's arguments one at a time (the others at their defaults), so that an error
  # names its key; then together
  own = ("momentum",) if o.name == "sgd" else ("b1", "b2")
  for name in (*own, "weight_decay", "decay_labels", "lr_multipliers"):
    one = dataclasses.replace(OptimSettings(), **{name: getattr(o, name)})
    _library(f"optim.{name}", functools.partial(build, one))
  _library("optim", lambda: build(o))


def _check_conv_options(s: Settings) -> None:
  """ConfigError for a conv option the conv kind's layer does not take, or of another type."""
  takes = K.nn.get_kind(s.conv).options()
  for name, value in s.conv_options.items():
    if name not in takes:
      raise ConfigError(
        f"conv_options.{name} does not apply to conv {s.conv!r}; it takes "
        f"{sorted(takes) if takes else 'no options'}"
      )
    _typed(f"conv_options.{name}", takes[name], value)


def _check_relations(s: Settings) -> None:
  """What one key allows of another."""
  if not s.data.streamed and s.data.name not in datasets.DATASETS:
    raise ConfigError(
      f"unknown dataset {s.data.name!r} for data.source={s.data.source!r}; expected one of "
      f"{sorted(datasets.DATASETS)} (any TFDS image dataset streams with source='tfds', a "
      "folder of python -m train.prepare with source='arrayrecord')"
    )
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
  if s.num_steps <= 0 and s.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  if s.quantize.qat != bool(s.quantize.from_run):
    raise ConfigError(
      "quantize.qat fine-tunes a trained run: set quantize.from_run to its workdir"
      if s.quantize.qat
      else "quantize.from_run is the run that quantize.qat fine-tunes: set quantize.qat=True"
    )
  if s.acu_radius_every_steps and s.optim.name != "sgd":
    raise ConfigError(
      "acu_radius_every_steps needs optim.name='sgd': the margin it keeps is SGD's bound "
      "on a step of the normalized gradient"
    )
  if s.acu_radius_every_steps and "positions" in s.optim.decay_labels:
    raise ConfigError(
      "acu_radius_every_steps needs positions without weight decay (the margin bounds "
      "only the normalized gradient's steps)"
    )
