"""The import graph of the project runs one way: no module imports one that imports it back
(function-local and TYPE_CHECKING imports counted), and the library needs nothing of the
training stack."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kshapes_jax", "train", "configs", "bench")
# the training system's dependencies (pyproject's [train] extra): the library imports none
TRAINING_STACK = (
  "absl",
  "array_record",
  "cv2",
  "grain",
  "matplotlib",
  "ml_collections",
  "orbax",
  "PIL",
  "simplejpeg",
  "tensorflow_datasets",
  "tqdm",
)


def _modules() -> dict[str, tuple[Path, bool]]:
  """Every module of the project by dotted name: (file, is a package's __init__)."""
  out = {}
  for package in PACKAGES:
    for path in (REPO / package).rglob("*.py"):
      parts = list(path.relative_to(REPO).with_suffix("").parts)
      is_package = parts[-1] == "__init__"
      out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
  return out


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
  """(module, names, level) of every import statement, wherever it is in the file."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(a.name, [], 0) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      found.append((node.module or "", [a.name for a in node.names], node.level))
  return found


def _graph() -> dict[str, set[str]]:
  """module -> the project's modules it imports (`from pkg import mod` is an edge to pkg.mod; a
  parent package's implicit import is not counted)."""
  modules = _modules()

  def known(name: str) -> str | None:
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  edges: dict[str, set[str]] = {m: set() for m in modules}
  for name, (path, is_package) in modules.items():
    for module, names, level in _imports(path):
      if level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        module = ".".join(base[: len(base) - (level - 1)] + ([module] if module else []))
      targets = [f"{module}.{n}" if f"{module}.{n}" in modules else known(module) for n in names]
      for target in targets or [known(module)]:
        if target is not None and target != name:
          edges[name].add(target)
  return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def test_no_module_imports_one_that_imports_it_back():
  assert _cycles(_graph()) == []


def test_the_graph_finds_a_circle_when_there_is_one():
  edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(edges) == [["a", "b", "c"]]
  graph = _graph()
  assert "kshapes_jax.nn.kinds" in graph["kshapes_jax.nn.factory"]  # `from x import y` edges
  assert "train.data.memory" in graph["train.data.dataset"]  # `from pkg import module` edges


def test_the_library_imports_nothing_of_the_training_system():
  for name, (path, _) in _modules().items():
    if not name.startswith("kshapes_jax"):
      continue
    for module, _, level in _imports(path):
      top = module.split(".")[0]
      assert level or top not in ("train", "configs", "bench", *TRAINING_STACK), (name, module)
