"""The config read once into typed settings, and the training side's import graph."""

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

import kshapes_jax as K
from configs import default, schema
from kshapes_jax import optim
from train.trainer import settings
from train.trainer.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def _write_config(tmp_path: Path, body: str) -> Path:
  path = tmp_path / "my_config.py"
  path.write_text("import ml_collections\n\n\ndef get_config(arg=None):\n" + body)
  return path


def test_a_config_without_a_key_gets_the_documented_default(tmp_path):
  # a user's config file that starts from nothing and sets only what it changes
  path = _write_config(
    tmp_path,
    "  c = ml_collections.ConfigDict()\n"
    "  c.model, c.conv = 'sn', 'rotate4'\n"
    "  c.optim = ml_collections.ConfigDict({'learning_rate': 0.01})\n  return c\n",
  )
  namespace: dict = {}
  exec(compile(path.read_text(), str(path), "exec"), namespace)
  s = settings.read(namespace["get_config"]())
  d = default.get_config()
  assert s.max_loss_factor == d.max_loss_factor == 1000.0  # the divergence bound is on
  assert (s.model, s.conv, s.optim.learning_rate) == ("sn", "rotate4", 0.01)
  assert s.optim.momentum == d.optim.momentum and s.optim.name == "sgd"
  # the schema's default is the library's (each shape parameter class's multiplier)
  assert s.optim.lr_multipliers == optim.default_lr_multipliers()
  assert optim.default_lr_multipliers() == {
    "positions": 0.01,
    "dcls_positions": 5.0,
    "dcls_sigmas": 5.0,
  }
  assert s.data == settings.DataSettings(**d.data) and s.seed == d.seed
  assert s.conv_options == {}  # unset options are not passed to the layers
  assert s.max_loss(10) == pytest.approx(1000.0 * 2.302585, rel=1e-6)
  assert settings.read({**json.loads(d.to_json()), "max_loss_factor": 0.0}).max_loss(10) == float(
    "inf"
  )


def test_every_default_key_is_a_typed_setting():
  flat = settings._flatten(json.loads(default.get_config().to_json_best_effort()))
  s = settings.read(default.get_config())
  for key in flat:
    if key.startswith("conv_options."):  # only the set ones are settings; all are declared
      assert key.removeprefix("conv_options.") in K.nn.conv_options()
      continue
    node = s
    for part in key.split("."):
      node = getattr(node, part)
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
  ("override", "message"),
  [
    ({"optim.lerning_rate": 0.1}, r"unknown config key\(s\) \['optim.lerning_rate'\]"),
    ({"max_loss_factor": -1.0}, r"max_loss_factor must be a number in \[0, inf\)"),
    ({"data.augment": "flip"}, r"data.augment must be one of \['none', 'cifar', 'inception'\]"),
    ({"optim.name": "lamb"}, r"optim.name must be one of \['sgd', 'adamw'\]"),
    ({"batch_size": 0}, r"batch_size must be an int in \[1, inf\)"),
  ],
)
def test_a_bad_value_is_one_config_error_naming_the_key(override, message):
  config = default.get_config()
  with config.unlocked():
    flat = json.loads(config.to_json_best_effort())
  for key, value in override.items():
    node = flat
    *parents, last = key.split(".")
    for part in parents:
      node = node[part]
    node[last] = value
  with pytest.raises(settings.ConfigError, match=message):
    settings.read(flat)


def test_each_key_is_declared_once_and_the_readme_lists_them():
  """The schema is the settings: every declared key is a field with a doc, the config file's
  defaults are the declarations', and the training guide's table is `python -m configs.schema`."""
  declared = {k.name: k for k in schema.keys()}
  assert all(k.doc for k in declared.values())
  flat = settings._flatten(json.loads(default.get_config().to_json_best_effort()))
  assert {k for k in flat if not k.startswith("conv_options.")} == set(declared) - {"conv_options"}
  for name, value in flat.items():
    if name in declared:
      assert value == json.loads(json.dumps(declared[name].default, default=list)), name
  text = (REPO / "docs" / "guides" / "training.md").read_text()
  start, end = "<!-- config-keys:start -->\n", "\n<!-- config-keys:end -->"
  assert text[text.index(start) + len(start) : text.index(end)] == schema.describe()


@pytest.mark.parametrize("key", [k.name for k in schema.keys() if k.bounds or k.choices])
def test_every_declared_range_is_checked(key):
  """A value outside a key's declared range or choices is that key's ConfigError."""
  k = next(k for k in schema.keys() if k.name == key)
  bad: object = "no such choice" if k.choices else k.bounds.low - 1  # type: ignore[union-attr]
  if k.bounds is not None and k.bounds.low == -float("inf"):
    bad = float("nan")
  with pytest.raises(settings.ConfigError, match="^" + key.replace(".", r"\.") + " must be"):
    settings.read(_with({}, **{key: bad}))


def _with(config: dict, **flat) -> dict:
  """A config dict with dotted keys set."""
  out = json.loads(json.dumps(config))
  for key, value in flat.items():
    node = out
    *parents, last = key.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = value
  return out


def test_settings_round_trip_through_config_json(tmp_path):
  config = default.get_config()
  config.conv, config.conv_options.normalize_grad = "rotate4", False
  s = settings.read(config)
  RunDir(tmp_path).write_config(s)
  again = settings.read(RunDir(tmp_path).read_config())
  assert again == s and again.conv_options == {"normalize_grad": False}
  assert settings.config_changes(RunDir(tmp_path).read_config(), s) == []
  other = settings.read(ml_collections.ConfigDict({**json.loads(config.to_json()), "seed": 3}))
  assert settings.config_changes(RunDir(tmp_path).read_config(), other) == ["seed (0 -> 3)"]


def _imports(path: Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
  return names


def test_configs_import_nothing_from_train():
  for path in sorted((REPO / "configs").glob("*.py")):
    bad = sorted(n for n in _imports(path) if n == "train" or n.startswith("train."))
    assert not bad, f"{path.name} imports {bad}"


def test_every_module_of_train_imports_with_the_others_and_defines_its_flags():
  # one process, every module: no flag defined at import, none twice
  modules = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts)
    for p in (REPO / "train").rglob("*.py")
    if p.name != "__main__.py"
  )
  code = (
    "import importlib, sys\n"
    f"mods = [importlib.import_module(m) for m in {modules!r}]\n"
    "from absl import flags\n"
    "assert not [f for f in flags.FLAGS if f in ('workdir', 'runs', 'config')], 'flags at import'\n"
    "for m in mods:\n"
    "  getattr(m, 'define_flags', lambda: None)()\n"
    "import train.analyze.__main__ as a; a.define_flags()\n"
    "print('ok', len(mods))\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("ok")


def _other_spellings(valid: tuple[str, ...]) -> list[str]:
  """Names the library or NumPy also parse for the valid ones, and their case variants."""
  floats = sorted(
    name
    for name, t in np.sctypeDict.items()
    if isinstance(name, str) and np.issubdtype(t, np.floating) and name not in valid
  )
  lax_names = ["bfloat16", "tensorfloat32", "float32"]  # lax's precision names
  cases = [f(v) for v in valid for f in (str.upper, str.capitalize)]
  return floats + lax_names + ["float8_e4m3fn", "d", "double"] + cases


@pytest.mark.parametrize("key", ["dtype", "precision"])
def test_a_numerics_key_takes_only_its_named_values_not_what_numpy_also_parses(key):
  """config.dtype='d' (NumPy's float64, which JAX computes in float32 unless x64 is on) trained
  in float32 under a config that said otherwise; 'HIGH' or 'float32' for precision passed the
  library's parsing. The config names a run's numerics one way, its choices."""
  valid = next(k for k in schema.keys() if k.name == key).choices
  assert valid is not None
  for value in _other_spellings(valid):
    if value in valid:
      continue
    with pytest.raises(settings.ConfigError, match=f"^{key} must be one of"):
      settings.read(_with({}, **{key: value}))
  for value in valid:
    assert getattr(settings.read(_with({}, **{key: value})), key) == value
