"""The package's import graph points one way, read from the source (imports inside functions
included): no cycles of any length; models/ imports none of interop/, data/, train/, evaluate/;
sampling/ imports neither interop/ nor data/; nothing below imports the command line."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "longvid_jax"

# package → packages it may not import (directly, at any depth of the function)
FORBIDDEN = {
    "models": ("interop", "data", "train", "evaluate", "sampling", "runs", "config", "cli"),
    "sampling": ("interop", "data", "train", "evaluate", "models", "runs", "config", "cli"),
    "parallel": ("models", "interop", "data", "train", "evaluate", "sampling", "runs", "cli"),
    "interop": ("evaluate", "cli"),
    "data": ("train", "evaluate", "runs", "cli"),
    "train": ("evaluate", "cli"),
}


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
  out = {}
  for p in root.rglob("*.py"):
    parts = p.relative_to(root.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = p
  return out


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
  """Module → the package modules it imports anywhere in its body."""
  mods = modules(root)
  top = root.name
  graph: dict[str, set[str]] = {m: set() for m in mods}
  for name, path in mods.items():
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
          base = ".".join(base + ([node.module] if node.module else []))
        else:
          base = node.module or ""
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in mods:
          t = t.rpartition(".")[0]
        if t and t.split(".")[0] == top and t != name and not name.startswith(t + "."):
          graph[name].add(t)
  return graph


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle per strongly connected group of modules (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        out.append(sorted(group))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def violations(graph: dict[str, set[str]]) -> list[str]:
  found = [f"import cycle: {' ↔ '.join(c)}" for c in cycles(graph)]
  for src, targets in sorted(graph.items()):
    for t in sorted(targets):
      if _package(t) in FORBIDDEN.get(_package(src), ()):
        found.append(f"{src} imports {t}: {_package(src)}/ may not import {_package(t)}/")
  return found


def test_the_package_imports_one_way():
  assert violations(import_graph()) == []


def test_the_check_fails_on_a_wrong_way_import(tmp_path):
  """A function-local import from models/ into interop/ and a two-module cycle are both caught."""
  pkg = tmp_path / "longvid_jax"
  for sub in ("models", "interop"):
    (pkg / sub).mkdir(parents=True)
    (pkg / sub / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text("")
  (pkg / "models" / "llm.py").write_text(
      "def load():\n  from longvid_jax.interop import hf\n  return hf\n")
  (pkg / "interop" / "hf.py").write_text("from longvid_jax.models import llm\n")
  (pkg / "interop" / "gguf.py").write_text("from . import tables\n")
  (pkg / "interop" / "tables.py").write_text("from longvid_jax.interop.gguf import x\n")
  graph = import_graph(pkg)
  assert graph["longvid_jax.models.llm"] == {"longvid_jax.interop.hf"}
  assert graph["longvid_jax.interop.gguf"] == {"longvid_jax.interop.tables"}
  found = violations(graph)
  assert any("models/ may not import interop/" in v for v in found)
  assert any("longvid_jax.interop.gguf ↔ longvid_jax.interop.tables" in v for v in found)
  assert any("longvid_jax.interop.hf ↔ longvid_jax.models.llm" in v for v in found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_every_rule_names_real_packages(package):
  names = {_package(m) for m in modules(ROOT)}
  assert package in names and set(FORBIDDEN[package]) <= names | {"runs", "config", "cli"}
