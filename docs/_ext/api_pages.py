"""Writes the API reference's pages from the code when the site builds.

Each group page lists every public name of its modules in a table (its docstring's first
paragraph), and each name gets its own page. A module's public names are its ``__all__`` where
it has one, otherwise the functions and classes it defines whose names do not start with an
underscore; a name added to the code therefore gets its page without anyone editing the docs.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

# (page, title, what a user looks for there, modules)
GROUPS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
  (
    "layers",
    "Layers and kinds",
    "The conv layers of every kind, the factory that builds any of them, the registry of "
    "kinds, batch norm and the shape parameters that carry their own optimizer labels.",
    ("kshapes_jax.nn",),
  ),
  (
    "kernels",
    "Kernel builders and convolutions",
    "Pure functions: parameters -> effective kernel (each cites its paper's equation), the "
    "one convolution that runs it, the normalized gradients, and the literal NumPy references "
    "the tests compare with.",
    ("kshapes_jax.kernels", "kshapes_jax.conv", "kshapes_jax.gradients", "kshapes_jax.reference"),
  ),
  (
    "models",
    "Models",
    "The zoo (CIFAR, MNIST, ImageNet families, RepVGG, ConvNeXt), built for any kind, and "
    "their parameter and FLOP accounting.",
    ("kshapes_jax.models",),
  ),
  (
    "deploy",
    "Convert, deploy, certify",
    "Your own Flax model with our kinds (convert), the trained network fused to plain convs "
    "(deploy), the measured fusion error (certify), and the Linen wrappers.",
    ("kshapes_jax.convert", "kshapes_jax.deploy", "kshapes_jax.certificate", "kshapes_jax.linen"),
  ),
  (
    "shipping",
    "Shipping: jax.export, ONNX, INT8",
    "Files you can ship: jax.export and ONNX with the fusion certificate embedded, the INT8 "
    "routes (onnxruntime and Qwix) with their measured report, and quantization-aware "
    "fine-tuning of a deployed network.",
    ("kshapes_jax.export", "kshapes_jax.int8", "kshapes_jax.qat"),
  ),
  (
    "interop",
    "Official weights",
    "Readers and writers of the official PyTorch blocks' state dicts (ACNet, versatile "
    "filters, DBB, RepVGG, DCLS).",
    ("kshapes_jax.interop",),
  ),
  (
    "optim",
    "Optimizer rules",
    "The per-label rules (learning-rate multipliers, no decay on shape parameters, the "
    "ACU's normalized position gradient and warm-up, DCLS's clamp) around any optax optimizer.",
    ("kshapes_jax.optim",),
  ),
  (
    "analysis",
    "Analyses",
    "The papers' analyses of a trained layer: angles, ACB magnitudes and pruning, versatile "
    "masks, ACU and DCLS positions.",
    (
      "kshapes_jax.analysis.acb",
      "kshapes_jax.analysis.active",
      "kshapes_jax.analysis.dcls",
      "kshapes_jax.analysis.rotate",
      "kshapes_jax.analysis.versatile",
      "kshapes_jax.support",
    ),
  ),
  (
    "training",
    "Training system",
    "The trainer as a function (train_and_evaluate) and the errors it raises, a finished run "
    "rebuilt from its directory, and the export of a run.",
    ("train.trainer", "train.trainer.trained_run", "train.export"),
  ),
)

# the command-line programs: their module docstring is their manual
PROGRAMS = (
  "train.main",
  "train.export",
  "train.analyze",
  "train.reproduce",
  "train.reproduce.int8",
  "train.prepare",
)


def public_names(module_name: str) -> list[str]:
  """The names a user imports from a module (see the module docstring)."""
  module = importlib.import_module(module_name)
  names = getattr(module, "__all__", None)
  if names is None:
    names = [
      name
      for name, value in vars(module).items()
      if not name.startswith("_")
      and (inspect.isfunction(value) or inspect.isclass(value))
      and value.__module__ == module_name
    ]
  return sorted(n for n in names if not isinstance(getattr(module, n), types.ModuleType))


def _docstring_block(module_name: str) -> list[str]:
  # module docstrings here are plain text laid out for `help()` and `--help`: shown as written
  text = inspect.cleandoc(importlib.import_module(module_name).__doc__ or "")
  return ["````text", text, "````", ""] if text else []


def summary(module_name: str, name: str) -> str:
  """The first paragraph of a name's docstring, as one line of a Markdown table."""
  value = getattr(importlib.import_module(module_name), name)
  doc = inspect.getdoc(value) or ""
  if not (inspect.isclass(value) or callable(value)) and doc == inspect.getdoc(type(value)):
    doc = ""  # a constant: no docstring of its own
  first = " ".join(doc.split("\n\n", 1)[0].split())
  for char in "\\|*$<":  # Markdown and MyST's dollar math, read literally
    first = first.replace(char, "\\" + char)
  return first


def _group_page(page: str, title: str, about: str, modules: tuple[str, ...]) -> str:
  lines = [f"# {title}", "", about, ""]
  for module_name in modules:
    names = public_names(module_name)
    lines += [
      f"## `{module_name}`",
      "",
      "```{eval-rst}",
      f".. py:module:: {module_name}",
      "```",
      "",
      *_docstring_block(module_name),
      # our own table, not autosummary's, whose summaries end at the first ". " ("eq. 6")
      "| name | what it is |",
      "|---|---|",
      *(f"| {{py:obj}}`~{module_name}.{n}` | {summary(module_name, n)} |" for n in names),
      "",
      "```{toctree}",
      ":hidden:",
      "",
      *(f"generated/{module_name}.{n}" for n in names),
      "```",
      "",
    ]
  return "\n".join(lines)


def _stub(module_name: str, name: str) -> str:
  value = getattr(importlib.import_module(module_name), name)
  if inspect.isclass(value):
    directive = "autoclass"
  elif callable(value):
    directive = "autofunction"
  else:
    directive = "autodata"
  title = f"{module_name}.{name}"
  return "\n".join(
    [
      title,
      "=" * len(title),
      "",
      f".. currentmodule:: {module_name}",
      "",
      f".. {directive}:: {name}",
      "",
    ]
  )


def _programs_page() -> str:
  lines = [
    "# Command-line programs",
    "",
    "Each program's manual is its `--help`; the same text is here.",
    "",
  ]
  for module_name in PROGRAMS:
    lines += [f"## `python -m {module_name}`", "", *_docstring_block(module_name)]
  return "\n".join(lines)


def write_pages(api_dir: Path) -> list[str]:
  """Writes the group pages and the API index into api_dir; returns the pages' names."""
  generated = api_dir / "generated"
  generated.mkdir(parents=True, exist_ok=True)
  pages, stubs = [], set()
  for page, title, about, modules in GROUPS:
    for module_name in modules:
      for name in public_names(module_name):
        stub = generated / f"{module_name}.{name}.rst"
        _write(stub, _stub(module_name, name))
        stubs.add(stub)
    _write(api_dir / f"{page}.md", _group_page(page, title, about, modules))
    pages.append(page)
  for stale in set(generated.glob("*.rst")) - stubs:  # a name no longer public
    stale.unlink()
  _write(api_dir / "programs.md", _programs_page())
  pages.append("programs")
  index = [
    "# API reference",
    "",
    "Every public name of `kshapes_jax` and the trainer's entry points, grouped as you look "
    "for them. The equations a docstring cites are in [the papers' equations](../equations.md).",
    "",
    "```{toctree}",
    ":maxdepth: 1",
    "",
    *pages,
    "```",
    "",
  ]
  _write(api_dir / "index.md", "\n".join(index))
  return pages


def _write(path: Path, text: str) -> None:
  # unchanged pages keep their time stamp, so Sphinx does not reread them
  if not path.exists() or path.read_text() != text:
    path.write_text(text)


# which paper's "eq. N" a docstring cites: by the words of the name, else of the docstring
PAPERS = (
  ("rotateconv", "RotateConv", ("rotate", "angle")),
  ("acnet", "ACNet", ("acb", "acnet", "asymmetric")),
  ("versatile", "versatile filters", ("versatile",)),
  ("acu", "the Active Convolution Unit", ("active", "acu", "position_grad", "gather")),
)


def _cited_papers(name: str, text: str) -> list[tuple[str, str]]:
  if not re.search(r"\beq(uations?|s?\.)\s*\d", text, re.I):
    return []
  for words in (name.lower(), text.lower()):
    found = [(key, title) for key, title, keys in PAPERS if any(k in words for k in keys)]
    if found:
      return found
  return []


def _equation_labels(srcdir: Path) -> set[str]:
  return set(re.findall(r"(?m)^\(([\w-]+-eq-\d+)\)=$", (srcdir / "equations.md").read_text()))


def _link_equations(line: str, paper: str, labels: set[str]) -> str:
  """Each "eq. N" (also "eq. 5-9", "eqs. 6, 7": the first number) of a docstring citing one
  paper -> a link to that paper's equation N."""

  def link(match: re.Match) -> str:
    label = f"{paper}-eq-{match.group(2)}"
    return (
      f":ref:`{match.group(1)}{match.group(2)} <{label}>`" if label in labels else match.group(0)
    )

  return re.sub(r"\b(eqs?\.\s*)(\d+)", link, line)


def _plain_text_docstring(app, what, name, obj, options, lines: list[str]) -> None:
  """Reads our docstrings as the plain text they are written as (|x| is an absolute value, not
  an RST substitution; a constant shows no docstring of its type), and links the equations a
  docstring cites to the papers' equations page."""
  if what == "data" and inspect.cleandoc(type(obj).__doc__ or "") == "\n".join(lines).strip():
    lines.clear()
  cited = _cited_papers(name, "\n".join(lines))
  labels = _equation_labels(Path(app.srcdir))
  for i, line in enumerate(lines):
    lines[i] = line.replace("|", "\\|")
    if len(cited) == 1 and "`" not in line:  # one paper: "eq. N" is its equation N
      lines[i] = _link_equations(lines[i], cited[0][0], labels)
  if cited and what in ("function", "class", "method"):
    links = ", ".join(f":ref:`{title} <{key}-equations>`" for key, title in cited)
    lines += ["", f"The equations cited: {links}."]


def _on_builder_inited(app) -> None:
  write_pages(Path(app.srcdir) / "api")


def setup(app):
  # before Sphinx reads the sources, so that the pages written are read
  app.connect("builder-inited", _on_builder_inited, priority=400)
  app.connect("autodoc-process-docstring", _plain_text_docstring)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
