"""The README's example is the file it shows, and it runs; the guides' tables are their commands'
output and their snippets run (the site build runs every guide too)."""

import pathlib
import re
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


def _parameter_table() -> list[str]:
  readme = (ROOT / "docs" / "guides" / "layers.md").read_text()
  start, end = "<!-- param-table:start -->\n", "\n<!-- param-table:end -->"
  return readme[readme.index(start) + len(start) : readme.index(end)].split("\n")


def test_parameter_table_has_the_header_and_one_row_per_model():
  from kshapes_jax.models.table import table_header

  shown = _parameter_table()
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
def test_parameter_row_is_the_commands_output(name):
  from kshapes_jax.models.table import parameter_row

  assert _parameter_table()[2 + list_models().index(name)] == parameter_row(name)


def test_training_guide_optimizer_snippet_runs_on_a_model():
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  snippet = next(b for b in _guide_code("training") if "optim.param_labels(model)" in b)
  scope: dict = {}
  exec(snippet, scope)  # its model: an ACU network
  params = nnx.state(scope["model"], nnx.Param)
  updates, _ = scope["tx"].update(
    jax.tree.map(jnp.ones_like, params), scope["tx"].init(params), params
  )
  moved = optax.apply_updates(params, updates)
  # warm-up: the positions stay, the weights move
  assert jnp.array_equal(moved["convs"][1]["positions"][...], params["convs"][1]["positions"][...])
  assert not jnp.array_equal(moved["convs"][1]["weights"][...], params["convs"][1]["weights"][...])


def _guide_code(page: str) -> list[str]:
  """The Python of a guide in docs/guides/, its executed cells and its plain blocks."""
  text = (ROOT / "docs" / "guides" / f"{page}.md").read_text()
  return re.findall(r"```(?:python|\{code-cell\} ipython3)\n(.*?)```", text, re.S)


def test_own_model_guide_runs(tmp_path, monkeypatch):
  """The 'Your own model' guide's cells in order: its model, convert / deploy / certify / ONNX,
  then the Linen network."""
  pytest.importorskip("onnx")
  monkeypatch.chdir(tmp_path)
  model_cell, nnx_example, linen_example = _guide_code("own-model")
  namespace: dict = {}
  exec(model_cell + nnx_example, namespace)
  assert (tmp_path / "acnet.onnx").exists() and namespace["certificate"].agreement == 1.0
  exec(linen_example, namespace)
  assert namespace["logits"].shape == (8, 10)
