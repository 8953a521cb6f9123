"""The README's example is the file it shows, and it runs."""

import pathlib
import runpy

import pytest

from kshapes_jax.models import list_models

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_shows_the_quickstart_verbatim():
  code = (ROOT / "examples" / "quickstart.py").read_text()
  assert code in (ROOT / "README.md").read_text()


def test_quickstart_runs(capsys):
  runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
  out = capsys.readouterr().out
  assert "(8, 16, 16, 32) (8, 32, 32, 32)" in out
  gap = float(out.rsplit("=", 1)[1])
  assert gap < 1e-4


def _readme_parameter_table() -> list[str]:
  readme = (ROOT / "README.md").read_text()
  start, end = "<!-- param-table:start -->\n", "\n<!-- param-table:end -->"
  return readme[readme.index(start) + len(start) : readme.index(end)].split("\n")


def test_readme_parameter_table_has_the_header_and_one_row_per_model():
  from kshapes_jax.models.table import table_header

  shown = _readme_parameter_table()
  assert "\n".join(shown[:2]) == table_header()
  assert [line.split(" | ")[0].removeprefix("| ") for line in shown[2:]] == list_models()


# the deep members of a family take 3-16 s each to count: their rows run with -m slow, the
# family's shallower rows (0.05-4 s) by default
_DEEP = (
  "resnet110",
  "densenet121",
  "resnet56",
  "densenet40",
  "resnet44",
  "resnext50_32x4d",
  "resnet50",
  "preact_resnet47_bottleneck",
  "preact_resnet32",
  "resnet32",
)


@pytest.mark.parametrize(
  "name",
  [pytest.param(n, marks=pytest.mark.slow) if n in _DEEP else n for n in list_models()],
)
def test_readme_parameter_row_is_the_commands_output(name):
  from kshapes_jax.models.table import parameter_row

  assert _readme_parameter_table()[2 + list_models().index(name)] == parameter_row(name)


def test_readme_optimizer_snippet_runs_on_a_model():
  import re

  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from kshapes_jax import models

  readme = (ROOT / "README.md").read_text()
  snippet = next(
    block
    for block in re.findall(r"```python\n(.*?)```", readme, re.S)
    if "optim.param_labels(model)" in block
  )
  scope = {"model": models.create("sn", conv="active", rngs=nnx.Rngs(0))}
  exec(snippet, scope)
  params = nnx.state(scope["model"], nnx.Param)
  updates, _ = scope["tx"].update(
    jax.tree.map(jnp.ones_like, params), scope["tx"].init(params), params
  )
  moved = optax.apply_updates(params, updates)
  # warm-up: the positions stay, the weights move
  assert jnp.array_equal(moved["convs"][1]["positions"][...], params["convs"][1]["positions"][...])
  assert not jnp.array_equal(moved["convs"][1]["weights"][...], params["convs"][1]["weights"][...])


def _section_code(title: str) -> list[str]:
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index(f"## {title}\n") :]
  section = section[: section.index("\n## ", 1)]
  return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_readme_convert_and_linen_examples_run(tmp_path, monkeypatch):
  """The 'Your own model' snippets, on a small user model of the kind they describe."""
  pytest.importorskip("onnx")
  monkeypatch.chdir(tmp_path)
  prelude = """
import jax, numpy as np
from flax import nnx

class MyNet(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.body = nnx.Sequential(
      nnx.Conv(8, 8, (3, 3), padding=1, rngs=rngs), nnx.Conv(8, 16, (1, 1), rngs=rngs)
    )
    self.fc = nnx.Linear(16, 10, rngs=rngs)
  def __call__(self, x):
    x = jax.nn.relu(self.bn(self.stem(x)))
    return self.fc(self.body(x).mean(axis=(1, 2)))

images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
key, x = jax.random.key(1), images
"""
  nnx_example, linen_example = _section_code("Your own model: convert, deploy to Flax, Linen")
  namespace: dict = {}
  exec(prelude + nnx_example, namespace)
  assert (tmp_path / "acnet.onnx").exists() and namespace["certificate"].agreement == 1.0
  exec(prelude + linen_example, namespace)
  assert namespace["logits"].shape == (8, 10)
