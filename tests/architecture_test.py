"""The package's layers (docs/architecture.md) hold, and imports form no cycle.

The import graph is read statically: every `import` and `from ... import` in
`dss_jax/`, at the top of a module and inside functions alike (an import
inside a function still ties the two modules together). Imports guarded by
`if TYPE_CHECKING:` name types only and never run, so they count for the
layers but not for cycles.
"""

import ast
import pathlib
import re

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
_PACKAGE = "dss_jax"

# Imports that point up a layer today. Each entry names the issue-15 work that
# removes it; the test fails once an entry no longer occurs, so remove it then
# and the check gets stricter as the work lands.
_KNOWN_UPWARD: set[tuple[str, str]] = set()


# Library modules (layers 1-3) that touch the command line today, with why.
# The test fails once one no longer does, so the list only shrinks (empty
# since `errors.run` moved up to `cli.run`).
_KNOWN_COMMAND_LINE: set[str] = set()


def _modules() -> dict[str, pathlib.Path]:
  """Module name -> file, for every module of the package."""
  modules = {}
  for path in sorted((_REPO / _PACKAGE).rglob("*.py")):
    parts = list(path.relative_to(_REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    modules[".".join(parts)] = path
  return modules


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
  )


def _imported_names(
  tree: ast.AST, module: str, is_package: bool
) -> list[tuple[str, bool]]:
  """(dotted name, type-checking only) of every import in a module."""
  found = []

  def visit(node: ast.AST, type_only: bool) -> None:
    if isinstance(node, ast.If) and _is_type_checking(node):
      for child in node.body:
        visit(child, True)
      for child in node.orelse:
        visit(child, type_only)
      return
    if isinstance(node, ast.Import):
      found.extend((alias.name, type_only) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
          package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
      # `from pkg import mod` imports the module pkg.mod when there is one.
      found.extend((f"{base}.{alias.name}", type_only) for alias in node.names)
    for child in ast.iter_child_nodes(node):
      visit(child, type_only)

  visit(tree, False)
  return found


def _import_graph() -> dict[str, dict[str, bool]]:
  """Module -> {imported package module: type-checking only}."""
  modules = _modules()

  def resolve(name: str) -> str | None:
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name or None

  graph: dict[str, dict[str, bool]] = {}
  for module, path in modules.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    edges: dict[str, bool] = {}
    for name, type_only in _imported_names(
      tree, module, path.name == "__init__.py"
    ):
      if name.split(".")[0] != _PACKAGE:
        continue
      target = resolve(name)
      if target is not None and target != module:
        edges[target] = edges.get(target, True) and type_only
    graph[module] = edges
  return graph


def _layers() -> dict[str, int]:
  """Module name (or package prefix) -> layer, from docs/architecture.md."""
  text = (_REPO / "docs" / "architecture.md").read_text()
  section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
  layers = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3 and cells[0].isdigit():
      for name in re.findall(r"`([\w.]+)`", cells[2]):
        full = _PACKAGE if name == _PACKAGE else f"{_PACKAGE}.{name}"
        assert full not in layers, f"{name} is in two layers"
        layers[full] = int(cells[0])
  return layers


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
  """The layer of a module, or of the package that holds it."""
  name = module
  # The root package's entry is its __init__ alone, not every module.
  while name and (name != _PACKAGE or module == _PACKAGE):
    if name in layers:
      return layers[name]
    name = name.rpartition(".")[0]
  return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components = []

  def connect(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph[node]):
      if nxt not in index:
        connect(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        components.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      connect(node)
  return components


def test_the_graph_sees_imports_inside_functions():
  graph = _import_graph()
  # Imported inside `main` only.
  assert "dss_jax.hf_export" in graph["dss_jax.export"]
  # `from dss_jax.teacher.backends import base` names the module, not the
  # package.
  offline = graph["dss_jax.teacher.backends.offline"]
  assert "dss_jax.teacher.backends.base" in offline
  assert "dss_jax.teacher.backends" not in offline


def test_cycle_finder_finds_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def _runtime_graph() -> dict[str, set[str]]:
  """The import graph without the imports that name types only."""
  return {
    module: {target for target, type_only in edges.items() if not type_only}
    for module, edges in _import_graph().items()
  }


def _subpackage(module: str) -> str:
  """`dss_jax.teacher.backends.base` -> `dss_jax.teacher`; modules stay."""
  return ".".join(module.split(".")[:2])


def test_no_import_cycle():
  assert _cycles(_runtime_graph()) == []


def test_no_cycle_between_a_subpackage_and_the_rest():
  # Importing any module of a subpackage runs the subpackage's __init__, and
  # a subpackage is one layer, so it and the modules outside it must not
  # import each other (as cards and teacher/ once did).
  collapsed: dict[str, set[str]] = {}
  for module, targets in _runtime_graph().items():
    node = _subpackage(module)
    collapsed.setdefault(node, set()).update(
      _subpackage(t) for t in targets if _subpackage(t) != node
    )
  assert _cycles(collapsed) == []


def test_every_module_has_a_layer():
  layers = _layers()
  unplaced = [m for m in _modules() if _layer_of(m, layers) is None]
  assert not unplaced, (
    f"{unplaced}: place them in docs/architecture.md's layer table"
  )
  stale = [name for name in layers if name not in _modules()]
  assert not stale, f"{stale}: in the layer table but not in the package"


def test_imports_point_down_the_layers():
  layers = _layers()
  upward = set()
  for module, edges in _import_graph().items():
    for target in edges:
      if _layer_of(target, layers) > _layer_of(module, layers):
        upward.add((module, target))
  assert sorted(upward - _KNOWN_UPWARD) == [], (
    "imports from a lower layer to a higher one (docs/architecture.md)"
  )
  assert sorted(_KNOWN_UPWARD - upward) == [], (
    "no longer imported: remove these entries from _KNOWN_UPWARD"
  )


@pytest.mark.parametrize(
  "module",
  ["dss_jax.cards", "dss_jax.answers", "dss_jax.synthetic"],
)
def test_teacher_is_a_layer_above_cards_and_problems(module):
  # The cards parse answers themselves, and the demo's problems know nothing
  # of the teacher that annotates them.
  assert not any(
    target.startswith("dss_jax.teacher") for target in _import_graph()[module]
  )


def test_no_library_module_imports_the_test_double():
  importers = [
    module
    for module, edges in _import_graph().items()
    if "dss_jax.teacher.testing" in edges
  ]
  assert importers == []


# Every module is held to "imports at the top". An import that stays inside
# a function (a real cycle, a heavy dependency only one path needs, or a
# library that must start after the entry point's host settings) says why
# with this marker, on its line or in the comment right above it (or above
# the group of imports it heads).
_IMPORTS_AT_THE_TOP = tuple(sorted(_modules()))
_IMPORT_REASON = re.compile(r"#\s*Imported here: \S")


def _unexplained_function_imports(source: str) -> list[int]:
  """Lines of the imports inside functions that carry no marked reason."""
  lines = source.splitlines()

  def explained(lineno: int) -> bool:
    if _IMPORT_REASON.search(lines[lineno - 1]):
      return True
    above = lineno - 2

    def in_group(i: int) -> bool:
      text = lines[i].strip()
      if not text:  # a blank line between the sections of an import group
        return i > 0 and lines[i - 1].lstrip().startswith(("import ", "from "))
      return text.startswith(("#", "import ", "from "))

    # The marked comment may head a group of imports.
    while above >= 0 and in_group(above):
      if _IMPORT_REASON.search(lines[above]):
        return True
      above -= 1
    return False

  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      for inner in ast.walk(node):
        if isinstance(inner, (ast.Import, ast.ImportFrom)) and not explained(
          inner.lineno
        ):
          found.add(inner.lineno)
  return sorted(found)


def test_the_import_check_needs_a_reason():
  source = (
    "import os\n"
    "\n"
    "def f():\n"
    "  import json\n"
    "  # Imported here: loads nltk, only one path needs it.\n"
    "  from a import b\n"
    "  # Imported here: a real cycle, the\n"
    "  # second line of the reason.\n"
    "  import c\n"
    "  import d  # Imported here: optional.\n"
    "  import d2\n"
    "\n"
    "  from d import e2\n"
    "  # Imported here: the comment\n"
    "\n"
    "  import e\n"
    "  class G:\n"
    "    def h(self):\n"
    "      import g\n"
  )
  assert _unexplained_function_imports(source) == [4, 16, 19]


@pytest.mark.parametrize("module", _IMPORTS_AT_THE_TOP)
def test_imports_inside_functions_say_why(module):
  path = _modules()[module]
  unexplained = _unexplained_function_imports(path.read_text())
  assert unexplained == [], (
    f"{path.relative_to(_REPO)} lines {unexplained}: move the import to the "
    "top (under `if TYPE_CHECKING:` when it names types only), or say why it "
    "stays with `# Imported here: <reason>`"
  )


def _command_line_uses(tree: ast.AST, module: str, is_package: bool) -> list:
  """absl.flags and argparse imports, and flag definitions, in a module."""
  uses = [
    name
    for name, _ in _imported_names(tree, module, is_package)
    if name.split(".")[0] == "argparse"
    or name == "absl.flags"
    or name.startswith("absl.flags.")
  ]
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else ""
      name = func.id if isinstance(func, ast.Name) else name
      if name.startswith("DEFINE"):
        uses.append(f"{name}(...) on line {node.lineno}")
  return uses


def test_the_command_line_check_sees_flags():
  source = (
    "from absl import flags\n"
    "def main():\n"
    "  import argparse\n"
    "  flags.DEFINE_string('x', None, 'x')\n"
  )
  uses = _command_line_uses(ast.parse(source), "dss_jax.m", False)
  assert uses == [
    "absl.flags",
    "argparse",
    "DEFINE_string(...) on line 4",
  ]


def test_library_modules_hold_no_command_line():
  # Flags are defined and parsed only in entry points (layer 4), as T5X
  # defines them in `t5x/train.py`'s `__main__` and nowhere in its library.
  layers = _layers()
  found = {}
  for module, path in _modules().items():
    if _layer_of(module, layers) == 4:
      continue
    tree = ast.parse(path.read_text(), filename=str(path))
    uses = _command_line_uses(tree, module, path.name == "__init__.py")
    if uses:
      found[module] = uses
  unexpected = {m: u for m, u in found.items() if m not in _KNOWN_COMMAND_LINE}
  assert not unexpected, (
    "command lines belong in entry points (layer 4, docs/architecture.md)"
  )
  assert sorted(_KNOWN_COMMAND_LINE - set(found)) == [], (
    "no longer on the command line: remove from _KNOWN_COMMAND_LINE"
  )
