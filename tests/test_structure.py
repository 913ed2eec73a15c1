"""The package's shape, checked on its source: no import cycle inside jaxseg, and no module outside
jaxseg/methods/ that names a method (everything the loop, evaluation, bench and data builder need
comes through the Method protocol, jaxseg/methods/base.py)."""

import ast
import pathlib

from jaxseg import methods

REPO = pathlib.Path(__file__).resolve().parents[1]
PKG = REPO / "jaxseg"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
  """module -> the jaxseg modules it imports, at any depth of its body (a function-level import
  that only hides a cycle is still a cycle)."""
  mods = _modules()
  graph = {}
  for name, path in mods.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        deps.update(
          f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
          for a in node.names
        )
    graph[name] = {d for d in deps if d in mods and d != name}
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  cycles, state, stack = [], {}, []

  def visit(u):
    state[u] = "open"
    stack.append(u)
    for v in sorted(graph[u]):
      if state.get(v) == "open":
        cycles.append(stack[stack.index(v) :] + [v])
      elif v not in state:
        visit(v)
    stack.pop()
    state[u] = "done"

  for u in sorted(graph):
    if u not in state:
      visit(u)
  return cycles


def test_find_cycles_finds_one():
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
  graph = import_graph()
  assert "jaxseg.train" in graph and graph["jaxseg.train"]
  assert find_cycles(graph) == []


def method_mentions(path: pathlib.Path, root: pathlib.Path = REPO) -> list[str]:
  """Identifiers, attribute names, imports and whole string constants equal to a method's
  registry name (docstrings and prose citing upstream papers are not code)."""
  names = set(methods.METHODS)
  hits = []
  for node in ast.walk(ast.parse(path.read_text())):
    found = None
    if isinstance(node, ast.Name):
      found = node.id
    elif isinstance(node, ast.Attribute):
      found = node.attr
    elif isinstance(node, ast.alias):
      found = node.name.rsplit(".", 1)[-1]
    elif isinstance(node, ast.ImportFrom) and node.module:
      found = node.module.rsplit(".", 1)[-1]
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      found = node.value
    if found is not None and found.lower() in names:
      hits.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}: {found}")
  return hits


def test_method_mentions_are_found(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text('"""About BCP."""\nfrom jaxseg.methods import uamt\nx = cfg.dtc\ny = "bcp"\n')
  found = [h.rsplit(": ", 1)[1] for h in method_mentions(probe, tmp_path)]
  assert found == ["uamt", "dtc", "bcp"]


# Data keyed by method name, with no method logic: the published tables.
DATA_MODULES = {"published.py"}


def test_no_module_outside_methods_names_a_method():
  hits = [
    h
    for p in sorted(PKG.rglob("*.py"))
    if "methods" not in p.relative_to(PKG).parts and p.name not in DATA_MODULES
    for h in method_mentions(p)
  ]
  assert hits == []
