"""The package's layers, read from the code's own imports (those inside functions too): every
module imports, no layer imports one above it, and no modules import each other in a circle."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flaxderm"

# Layer -> the layers it may import (itself included). The layer of a module is its first name
# below flaxderm (flaxderm.data.builders.ph2 -> "data"); flaxderm/__init__.py only re-exports.
ALLOWED = {
    "hints": {"hints"},
    "models": {"models", "hints"},
    "losses": {"losses"},
    "metrics": {"metrics"},
    "subgroups": {"subgroups", "metrics"},
    "data": {"data", "hints"},
    "attribution": {"attribution", "models", "hints"},
    "train": {"train", "models", "data", "losses", "metrics", "subgroups", "hints"},
    "experiments": {"experiments", "train"},
    "tools": {"tools", "train", "models", "data", "losses", "metrics", "subgroups",
              "attribution", "experiments", "hints"},
    "cli": {"cli", "tools"},
}


def _modules() -> dict[str, Path]:
  found = {}
  for path in [*PACKAGE.rglob("*.py"), *(ROOT / "experiments").glob("*.py")]:
    if path.is_relative_to(PACKAGE):
      parts = ("flaxderm", *path.relative_to(PACKAGE).with_suffix("").parts)
    else:
      parts = ("flaxderm", "experiments", path.stem)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    found[".".join(parts)] = path
  return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
  """The flaxderm modules ``name`` imports (a name imported from a package counts as its module
  when it is one)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([node.module] if node.module else []))
      out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
  return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> str | None:
  parts = name.split(".")
  return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports(name):
  importlib.import_module(name)


def test_no_layer_imports_a_layer_above_it():
  wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                 if _layer(a) and _layer(b) and _layer(b) not in ALLOWED[_layer(a)])
  assert not wrong, wrong
  assert set(filter(None, map(_layer, MODULES))) == set(ALLOWED)


def test_no_import_circle():
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(name: str, path: list[str]) -> None:
    state[name] = 1
    for target in sorted(GRAPH[name]):
      if state.get(target) == 1:
        circle = path[path.index(target):] + [name, target] if target in path else [name, target]
        pytest.fail(f"import circle: {' -> '.join(circle)}")
      if target not in state:
        visit(target, path + [name])
    state[name] = 2

  for name in sorted(GRAPH):
    if name not in state:
      visit(name, [])
