"""The store package's structure: every module imports alone in a fresh interpreter, and no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "recsys_tasks"
STORE_MODULES = sorted(p.stem for p in (PACKAGE / "store").glob("*.py") if p.stem != "__init__")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``recsys_tasks`` module this file imports, at the top or inside functions."""
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.startswith("recsys_tasks"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("recsys_tasks"))
    return found


def test_every_store_module_imports_alone_in_a_fresh_interpreter():
    assert {"keys", "writer", "lock", "publish", "reader"} <= set(STORE_MODULES)
    processes = {
        name: subprocess.Popen([sys.executable, "-c", f"import recsys_tasks.store.{name}"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in STORE_MODULES
    }
    failures = {}
    for name, process in processes.items():
        out, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            failures[name] = out[-800:]
    assert failures == {}


def test_no_import_cycles_in_the_package_and_no_store_module_past_400_lines():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}
    # A package's __init__ re-exports its modules; a module importing a sibling goes through the
    # package only to reach that sibling, so edges into a package's own __init__ from its members are dropped.
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m in ("recsys_tasks", "recsys_tasks.store")
                                                      and name.startswith(m + "."))}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []
    assert "recsys_tasks.store" not in {m.rsplit(".", 1)[0] for m in graph["recsys_tasks.evaluation.evaluate"]}
    long = {name: n for name in STORE_MODULES if (n := len((PACKAGE / "store" / f"{name}.py").read_text()
                                                              .splitlines())) > 400}
    assert long == {}
