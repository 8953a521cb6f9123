"""The command line's contract: every failure is one `error:` line and an exit status by kind,
no usage dump, no traceback (in this process, but one real process per command)."""

import importlib
import json
import math
import subprocess
import sys

import hypothesis
import numpy as np
import pytest
from absl import flags, logging
from hypothesis import strategies as st
from runs import REPO

import kshapes_jax as K
from configs import schema
from train import cli
from train.cli import one_line
from train.trainer.settings import ConfigError

# config_flags loads a config file with importlib's load_module
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def _reset_flags() -> None:
  """absl's flags as before any parse (config_flags defines each override flag a parse meets)."""
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()


@pytest.fixture
def train_main(command):
  """`python -m train.main ARGS` in this process: (exit status, stderr)."""
  return lambda *args: command("train.main", *args)


@pytest.fixture
def command(monkeypatch, capsys):
  """`python -m COMMAND ARGS` in this process: (exit status, stderr). The command's own path
  (absl's parsing, config_flags, main) with its exit raised as SystemExit, not os._exit."""

  def exit_now(status: int):
    raise SystemExit(status)

  monkeypatch.setattr(cli, "exit_now", exit_now)
  # the signal handlers of a command are not this test process's
  monkeypatch.setattr(cli.signals, "install", lambda: None)
  monkeypatch.setattr(cli.signals, "ignore", lambda: None)
  verbosity = logging.get_verbosity()
  # the command marks its flags required: validators the process's later parses must not meet
  validators = {name: list(flags.FLAGS[name].validators) for name in flags.FLAGS}

  def run(name: str, *args: str) -> tuple[int, str]:
    _reset_flags()
    for flag in flags.FLAGS:  # only this command's validators (several commands share flags)
      flags.FLAGS[flag].validators = list(validators.get(flag, []))
    monkeypatch.setattr(sys, "argv", [name, *args])
    capsys.readouterr()
    entry = {"train.analyze": "train.analyze.__main__", "train.reproduce": "train.reproduce.driver"}
    module = importlib.import_module(entry.get(name, name))
    try:
      module.run()
      status = 0
    except SystemExit as e:
      status = int(e.code or 0)
    return status, capsys.readouterr().err

  yield run
  _reset_flags()
  for name in flags.FLAGS:
    flags.FLAGS[name].validators = validators.get(name, [])
  logging.set_verbosity(verbosity)


def test_one_error_line_names_an_os_error_anywhere_in_the_chain():
  try:
    try:
      raise OSError(28, "No space left on device", "/runs/x/checkpoints/8/state")
    except OSError as e:
      raise ValueError("tensorstore: write failed") from e
  except ValueError as e:
    assert one_line(e) == "No space left on device: /runs/x/checkpoints/8/state"


def test_command_line_failures_are_one_error_line(tmp_path, train_main):
  default = str(REPO / "configs/default.py")
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  (tmp_path / "a_file").write_text("")
  (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
  (tmp_path / "npz").mkdir()
  for split, n in (("train", 0), ("test", 4)):
    np.savez(
      tmp_path / "npz" / f"{split}.npz", image=np.zeros((n, 28, 28), np.uint8), label=[0] * n
    )
  cases = [
    (
      ["--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "w")],
      2,
      "No such file",
    ),
    (
      ["--config", str(tmp_path / "broken.py"), "--workdir", str(tmp_path / "w")],
      2,
      "the config file cannot be loaded: SyntaxError",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.lr=0.1"],
      2,
      "unknown config key 'optim.lr'",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.num_steps=abc"],
      2,
      "flag --config.num_steps=abc",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.momentum=5.0"],
      2,
      "optim.momentum: momentum must be in [0, 1)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "a_file")],
      4,
      "exists and is not a directory",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.source=idx",
        "--config.data.name=fashion_mnist",
        "--config.data.data_dir=/nonexistent",
      ],
      2,
      "does not exist",
    ),
    # one synapse learns no position: it trained every step and then hung on its first save
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.conv=active",
        "--config.conv_options.synapses=1",
      ],
      2,
      "ActiveConv synapses must be an int >= 2, got 1",
    ),
    (["--config", default, "--workdir="], 2, "--workdir is empty"),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.learning_rat=0.1"],
      2,
      "unknown config key 'optim.learning_rat' ('learning_rat' is not a key; did you mean "
      "'learning_rate' instead of 'learning_rat'?)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.boundaries=(0,)"],
      2,
      "optim.boundaries (epochs): schedule boundaries must be positive and increasing, got (0,)",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.optim.schedule=staircase",
        "--config.optim.boundaries=(0.01,)",
      ],
      2,
      "optim.boundaries (0.01,) (epochs) are steps [0] at 8 steps per epoch",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.model=resnet21"],
      2,
      "config.model: unknown model 'resnet21'",
    ),
    (
      ["extra", "--config", default, f"--workdir={tmp_path / 'w'}"],
      2,
      "unexpected arguments: ['extra']",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.source=npz",
        f"--config.data.data_dir={tmp_path / 'npz'}",
      ],
      2,
      "train.npz holds no examples (an empty split)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "dangling")],
      4,
      "is a symbolic link to",
    ),
    (
      [
        "--config",
        default,
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.source=arrayrecord",
        "--config.data.name=imagenet2012",
        "--config.data.data_dir=/nonexistent",
      ],
      2,
      "/nonexistent holds no prepared dataset (no metadata.json)",
    ),
    (
      ["--config", default, "--workdir", str(tmp_path / "w"), "--config.optim.angle_eps=nan"],
      2,
      "optim.angle_eps must be a number in (-inf, inf), got nan",
    ),
  ]
  for args, status, message in cases:
    code, stderr = train_main(*args)
    lines = stderr.strip().splitlines()
    assert (
      code == status and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    ), (args, code, stderr[-3000:])
  # --debug: the exception itself, whose traceback Python prints
  with pytest.raises(ConfigError, match="momentum must be in"):
    train_main(
      "--config",
      default,
      "--workdir",
      str(tmp_path / "w"),
      "--config.optim.momentum=5.0",
      "--debug",
    )


@pytest.mark.slow  # a whole run; settings_test checks the conv options parse
def test_the_readmes_conv_option_parses_and_trains(tmp_path, train_main):
  run = ("--config", str(REPO / "configs/default.py"), "--workdir", str(tmp_path))
  small = ("--config.conv=active", "--config.data.train_size=64", "--config.progress=False")
  code, stderr = train_main(*run, *small, "--config.conv_options.radius=3", "--config.num_steps=1")
  assert code == 0, stderr[-3000:]
  assert json.loads((tmp_path / "config.json").read_text())["conv_options"]["radius"] == 3
  # sn's four ACUs
  assert json.loads((tmp_path / "summary.json").read_text())["acu_radii"] == [3] * 4
  code, stderr = train_main(*run, *small, "--config.num_steps=2")
  assert code == 2
  assert stderr.strip() == (
    f"error: {tmp_path} holds checkpoints of another config: conv_options.radius "
    "(3 -> None). Use another --workdir, or pass --allow_config_change to resume them anyway"
  )


def test_every_command_fails_with_one_error_line_and_no_usage_dump(tmp_path):
  """One real process per command: the exit status and stderr a user's shell sees."""
  default = str(REPO / "configs/default.py")
  cases = [
    (["train.analyze", f"--workdir={tmp_path / 'none'}"], 2, "config.json not found"),
    (["train.export", f"--workdir={tmp_path / 'none'}"], 2, "config.json not found"),
    (["train.reproduce", "--rows=sn_v99", "--report="], 2, "unknown rows ['sn_v99']"),
    (
      ["train.prepare", f"--src={tmp_path / 'no_tree'}", f"--out={tmp_path / 'out'}"],
      2,
      "no_tree",
    ),
    # a fresh process: in one that has run JAX, the distributed start is refused otherwise
    (
      [
        "train.main",
        "--config",
        default,
        f"--workdir={tmp_path / 'w'}",
        "--config.distributed=True",
      ],
      2,
      "cannot find the run's others: set JAX_COORDINATOR_ADDRESS",
    ),
  ]
  for (command, *args), status, message in cases:
    run = subprocess.run(
      [sys.executable, "-m", command, *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
    lines = run.stderr.strip().splitlines()
    assert (
      run.returncode == status
      and len(lines) == 1
      and lines[0].startswith("error: ")
      and message in lines[0]
    ), (command, args, run.returncode, run.stderr[-3000:])


# The hostile-input harness of the config keys (issue 39): bad values generated from each key's
# declaration in configs/schema.py, through the real command in this process.

_VALID_NAMES = {
  "model": lambda: K.models.list_models(),
  "conv": lambda: K.nn.kind_names(),
  "optim.schedule": lambda: ("constant", "staircase", "cosine"),
}
_TEXT = st.text(
  st.characters(
    blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=",=\\'\""
  ),
  max_size=6,
)
_NOT_NUMBERS = st.sampled_from(["abc", "", "ünï", "~", "1e", "[1]"])


def _beyond(kind: type, edge: float, open_edge: bool, below: bool) -> st.SearchStrategy[str]:
  """Numbers of `kind` past an interval's edge (the edge itself when the interval is open)."""
  if kind is int:
    numbers = st.integers(
      **{"max_value" if below else "min_value": int(edge) + (-1 if below else 1)}
    )
  else:
    side = "max" if below else "min"
    numbers = st.floats(
      **{f"{side}_value": edge, f"exclude_{side}": not open_edge},
      allow_nan=False,
      allow_infinity=False,
    )
  return numbers.map(str)


def _bad_values(k: schema.Key) -> st.SearchStrategy[str] | None:
  """Values `k` must refuse, as command-line text; None for free-form keys (data.name,
  data.data_dir: judged when the data loads) and open blocks."""
  kind, bounds = k.type, k.bounds
  if kind is bool:
    return st.sampled_from(["maybe", "2", "", "ünï"])
  if kind in (int, float):
    bad = [_NOT_NUMBERS] if kind is int else [_NOT_NUMBERS, st.sampled_from(["nan", "inf", "-inf"])]
    if kind is int:
      bad.append(st.sampled_from(["1.5", "nan"]))
    if bounds is not None and math.isfinite(bounds.low):
      bad.append(_beyond(kind, bounds.low, bounds.low_open, below=True))
    if bounds is not None and math.isfinite(bounds.high):
      bad.append(_beyond(kind, bounds.high, bounds.high_open, below=False))
    if kind is float and k.library and bounds is None:  # the library's own range: sign and size
      bad.append(st.sampled_from(["-1.0", "-1e30"]))
    return st.one_of(bad)
  if kind is str and (k.choices or k.name in _VALID_NAMES):
    valid = set(k.choices or _VALID_NAMES[k.name]())
    return _TEXT.filter(lambda s: s not in valid)
  if k.name == "optim.boundaries":
    return st.sampled_from(["(nan,)", "(-1.0,)", "(3.0, 1.0)", "('a',)", "(inf,)"])
  if k.name == "optim.decay_labels":
    return st.sampled_from(["('nope',)", "('',)", "(1,)"])
  return None


_HOSTILE = {k.name: (k, s) for k in schema.keys() if (s := _bad_values(k)) is not None}


def _drawn(examples: int):
  """hypothesis drawing `examples` values in a test that takes function-scoped fixtures (each
  example writes under its own folder)."""

  def decorate(test):
    settings = hypothesis.settings(
      max_examples=examples,
      deadline=None,
      suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
    )
    return settings(hypothesis.given(data=st.data())(test))

  return decorate


@pytest.mark.parametrize("name", list(_HOSTILE))
@_drawn(5)
def test_a_bad_value_of_any_config_key_is_one_error_line_naming_it_and_nothing_written(
  tmp_path, train_main, name, data
):
  key, values = _HOSTILE[name]
  value = data.draw(values)
  workdir = tmp_path / f"w{abs(hash((key.name, value)))}"
  status, err = train_main(
    "--config",
    str(REPO / "configs/default.py"),
    "--workdir",
    str(workdir),
    f"--config.{key.name}={value}",
  )
  lines = err.strip().splitlines()
  assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (key.name, value, err)
  assert key.name.split(".")[-1] in lines[0], (key.name, value, lines[0])
  assert "Traceback" not in err and not workdir.exists(), (key.name, value, err)


# ... and of the other commands' flags: out-of-range numbers, text for numbers, unknown names,
# empty paths; each refused when the flags are parsed, before anything is read or written.

_INTEGER_FLAGS = {  # command: {flag: (low, high)}
  "train.prepare": {
    "max_side": (0, None),
    "quality": (1, 100),
    "examples_per_shard": (1, None),
    "workers": (1, None),
  },
  "train.export": {"step": (0, None), "check_images": (0, None)},
  "train.analyze": {"step": (0, None), "prune_examples": (0, None), "prune_seeds": (0, None)},
  "train.reproduce": {"parallel": (1, None)},
}
_NAMED_FLAGS = {  # command: {flag: the names it takes}
  "train.export": {"format": ("onnx", "jax", "both")},
  "train.analyze": {"sections": ("rotate", "active", "acb", "versatile")},
  "train.reproduce": {"methods": ("rotate", "active", "acb", "versatile"), "seeds": ()},
}
_PATH_FLAGS = {
  "train.prepare": ("src", "out"),
  "train.export": ("workdir",),
  "train.analyze": ("workdir",),
}


def _flag_values() -> dict[tuple[str, str], st.SearchStrategy[str]]:
  cases = {}
  for name, bounded in _INTEGER_FLAGS.items():
    for flag, (low, high) in bounded.items():
      bad = [st.integers(max_value=low - 1), _NOT_NUMBERS, st.sampled_from(["1.5", "nan"])]
      if high is not None:
        bad.append(st.integers(min_value=high + 1))
      cases[name, flag] = st.one_of(bad).map(str)
  for name, named in _NAMED_FLAGS.items():
    for flag, names in named.items():
      entry = _TEXT.filter(lambda t, ok=names: t not in ok and t.strip() and not t.isdigit())
      cases[name, flag] = entry
  for name, paths in _PATH_FLAGS.items():
    for flag in paths:
      cases[name, flag] = st.sampled_from(["", " "])
  return cases


_FLAG_VALUES = _flag_values()


@pytest.mark.parametrize("name,flag", list(_FLAG_VALUES))
@_drawn(12)
def test_a_bad_flag_value_of_any_command_is_one_error_line_naming_it_and_nothing_written(
  tmp_path, command, name, flag, data
):
  value = data.draw(_FLAG_VALUES[name, flag])
  case = (name, flag, value)
  root = tmp_path / f"c{abs(hash(case))}"
  valid = {
    "train.prepare": [f"--src={root / 'tree'}", f"--out={root / 'out'}"],
    "train.export": [f"--workdir={root / 'run'}", f"--out={root / 'out'}"],
    "train.analyze": [f"--workdir={root / 'run'}", f"--out={root / 'out'}"],
    "train.reproduce": [f"--runs={root / 'runs'}", "--report=", "--ledger=", "--rows=sn"],
  }[name]
  status, err = command(name, *valid, f"--{flag}={value}")
  lines = err.strip().splitlines()
  assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, err)
  assert f"--{flag}" in lines[0], (case, lines[0])
  assert not root.exists(), (case, "wrote", sorted(root.rglob("*")))


def test_a_tilde_in_a_path_flag_or_data_dir_is_the_home_folder(tmp_path, command, monkeypatch):
  """The shell leaves `--out=~/x` as it is: prepare made a folder named `~` in the current one."""
  from PIL import Image

  from train.trainer import settings

  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  for split in ("train", "val"):
    for name in ("a", "b"):
      (tmp_path / "tree" / split / name).mkdir(parents=True)
      Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "tree" / split / name / "0.jpg")
  status, err = command("train.prepare", "--src=~/tree", "--out=~/prepared", "--workers=1")
  assert status == 0, err
  assert (tmp_path / "prepared" / "metadata.json").exists() and not (tmp_path / "~").exists()
  config = {"data": {"source": "arrayrecord", "data_dir": "~/prepared", "name": "prepared"}}
  assert settings.read(config).data.data_dir == str(tmp_path / "prepared")
