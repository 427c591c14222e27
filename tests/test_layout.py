"""The package's shape: imports only go down (no cycles, the loop imported only by the CLI and
sweeps, the data modules standing on their own)."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "imgcls"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
  """The imgcls modules `name` imports, at the top or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(MODULES[name].read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgcls"):
      for alias in node.names:
        child = f"{node.module}.{alias.name}"
        found.add(child if child in MODULES else node.module)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.startswith("imgcls"))
  return found - {name}


GRAPH = {name: imports(name) for name in MODULES}


def test_no_import_cycles():
  cycles = []
  for start in GRAPH:
    stack = [(start, (start,))]
    while stack:
      node, path = stack.pop()
      for nxt in GRAPH.get(node, ()):
        if nxt == start:
          cycles.append(" -> ".join((*path, start)))
        elif nxt not in path:
          stack.append((nxt, (*path, nxt)))
  assert not cycles, cycles


def test_only_the_cli_and_sweeps_import_the_training_loop():
  assert {"imgcls.steps", "imgcls.checkpoint", "imgcls.predict"} <= GRAPH["imgcls.train"]  # The graph is read.
  importers = sorted(name for name, deps in GRAPH.items() if "imgcls.train" in deps)
  assert set(importers) <= {"imgcls.main", "imgcls.sweep"}, importers


def test_data_modules_import_nothing_above_them():
  for name, deps in GRAPH.items():
    if name.startswith("imgcls.data"):
      outside = {d for d in deps if not d.startswith("imgcls.data") and d != "imgcls"}
      assert not outside, (name, outside)


def test_the_pipelines_are_siblings():
  assert "imgcls.data.tf_pipeline" not in GRAPH["imgcls.data.grain_pipeline"]
  assert "imgcls.data.grain_pipeline" not in GRAPH["imgcls.data.tf_pipeline"]
