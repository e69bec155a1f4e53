"""The store package's structure: every module imports alone in a fresh interpreter.

Import cycles, module sizes and which package may import which are checked for the whole package in
tests/test_structure.py.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "recsys_tasks"
STORE_MODULES = sorted(p.stem for p in (PACKAGE / "store").glob("*.py") if p.stem != "__init__")


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
