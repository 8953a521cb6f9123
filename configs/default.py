"""The defaults every experiment config starts from (a short SN run on synthetic data).

  python -m train.main --config configs/default.py --workdir /tmp/default

Every key, its type, default, range and meaning is declared once, in `configs/schema.py`; the
table of keys in docs/guides/training.md is `python -m configs.schema`. This config is those
defaults.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

import ml_collections

from configs import schema


def conv_options() -> ml_collections.ConfigDict:
  """Every option a registered conv kind takes, typed and unset: so that
  `--config.conv_options.radius=3` parses (a locked config refuses new keys)."""
  from kshapes_jax.nn import conv_options as declared  # the kinds' own signatures

  return ml_collections.ConfigDict(
    {
      name: ml_collections.FieldReference(None, field_type=kind)
      for name, kind in declared().items()
    }
  )


def _value(k: schema.Key):
  if k.name == "conv_options":
    return conv_options()
  if typing.get_origin(k.type) in (Mapping, dict):
    return ml_collections.ConfigDict(dict(k.default))
  return k.default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  for k in schema.keys():
    node = c
    *blocks, name = k.name.split(".")
    for b in blocks:
      if b not in node:
        node[b] = ml_collections.ConfigDict()
      node = node[b]
    node[name] = _value(k)
  return c
