"""Run retention: keep the newest ``retention.keep_runs`` run directories of a DAG, delete the older ones.

Every run directory records who it belongs to in ``run.json`` (run id, logical date, when it started).
Pruning never deletes the run the Redis manifest names (the published lists' artifacts, needed for a
rollback), the caller's own run, or a run the caller reports as still running.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..paths import RunPaths
from ..runtime import get_logger

log = get_logger("prune_runs")


def record_run(paths: RunPaths, *, run_id: str, logical_date: str) -> None:
    """Write ``run.json`` once per run directory (a rerun of a task keeps the first start time)."""
    target = paths.run_info
    if target.exists():
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    info = {"run_id": run_id, "logical_date": logical_date,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(target)


def read_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory; without one (a directory made by the command line, or by an older
    version) the directory's name stands for the run id and its modification time for the start."""
    paths = RunPaths(run_dir)
    try:
        info = json.loads(paths.run_info.read_text())
    except (OSError, ValueError):
        info = {}
    started = info.get("started_at") or datetime.fromtimestamp(run_dir.stat().st_mtime, timezone.utc).isoformat()
    return {"run_id": info.get("run_id"), "logical_date": info.get("logical_date"), "started_at": started}


def prune_runs(
    dag_root: str | Path,
    *,
    keep_runs: int,
    protected: Iterable[Path] = (),
    is_running: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Delete all but the ``keep_runs`` newest run directories under ``dag_root`` (0 keeps all).

    ``protected`` directories (the manifest's run, the caller's own run) are never deleted, nor is a run
    whose id ``is_running`` reports as running; they still count among the newest when they are. Returns
    what was kept and deleted, and the bytes freed.
    """
    root = Path(dag_root)
    runs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    infos = {d: read_run(d) for d in runs}
    newest_first = sorted(runs, key=lambda d: (infos[d]["started_at"], d.name), reverse=True)
    keep = set(newest_first[:keep_runs]) if keep_runs else set(newest_first)
    protected_dirs = {Path(p).resolve() for p in protected}
    kept_why: dict[str, str] = {d.name: "newest" for d in keep}
    deleted, freed = [], 0
    for run_dir in newest_first:
        if run_dir in keep:
            continue
        run_id = infos[run_dir]["run_id"]
        if run_dir.resolve() in protected_dirs:
            kept_why[run_dir.name] = "protected (published or this run)"
            continue
        if run_id and is_running is not None and is_running(run_id):
            kept_why[run_dir.name] = "still running"
            continue
        size = directory_bytes(run_dir)
        shutil.rmtree(run_dir)
        deleted.append(run_dir.name)
        freed += size
        log.info("deleted run directory %s (%d bytes, started %s)", run_dir, size, infos[run_dir]["started_at"])
    log.info("kept %d run directories under %s, deleted %d (%d bytes)", len(kept_why), root, len(deleted), freed)
    return {"dag_root": str(root), "keep_runs": keep_runs, "kept": kept_why, "deleted": deleted,
            "bytes_freed": freed, "bytes_kept": sum(directory_bytes(root / name) for name in kept_why)}


def directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
