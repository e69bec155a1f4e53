"""What one ``bench-pipeline`` point measured: the per-task table (seconds, peak RSS, rows, CPU) and the
quality figures of the published lists, read from the run's stage summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import BenchError
from .pipeline_report import TASKS

DAG_ID = "offline_batch_recsys"


def _run_dir(point_dir: Path) -> Path:
    runs = sorted((point_dir / "artifacts" / DAG_ID).glob("*"))
    if len(runs) != 1:
        raise BenchError(f"{point_dir / 'artifacts' / DAG_ID}: expected one run directory, found {len(runs)}")
    return runs[0]


def _gb(value: Any) -> float | None:
    return None if value is None else round(value / 1e9, 3)


def task_rows(summaries: dict[str, dict[str, Any]], shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task: seconds, peak RSS, rows handled (and what a row is), rows/s, CPU seconds."""
    def rows_of(name: str, s: dict[str, Any]) -> tuple[str, int]:
        if name == "generate_data":
            return "impressions", sum(split["rows"] for split in s["splits"].values())
        if name == "transform":
            return "impressions", s["rows"]["train"] + s["rows"]["valid"]
        if name in ("fit_retrieval", "fit_ranking"):
            return "training samples", s["rows_per_epoch"] * len(s["loss_per_epoch"])
        if name == "score":
            return "users", s["users"]
        if name == "evaluate":
            return "validation impressions", s["ranking"]["rows"]
        return "documents", s.get("users", 0)

    out = []
    for name in TASKS:
        s = summaries.get(name)
        if s is None:
            continue
        resources = s.get("resources", {})
        shard_resources = [sh["resources"] for sh in shards if sh.get("resources", {}).get("peak_rss_bytes")]
        if name == "score" and shard_resources:  # the mapped tasks: the busiest shard's process
            resources = max(shard_resources, key=lambda r: r["peak_rss_bytes"])
        unit, rows = rows_of(name, s)
        seconds = float(s["seconds"])
        out.append({
            "task": name,
            "seconds": round(seconds, 3),
            "peak_rss_gb": _gb(resources.get("peak_rss_bytes")),
            "rss_at_start_gb": _gb(resources.get("rss_at_start_bytes")),
            "rows": int(rows),
            "row_unit": unit,
            "rows_per_s": round(rows / max(seconds, 1e-9), 1),
            "cpu_seconds": resources.get("cpu_seconds"),
            "cpu_per_wall": round(resources["cpu_seconds"] / max(seconds, 1e-9), 2)
            if resources.get("cpu_seconds") is not None else None,
            "loadavg_at_end": resources.get("loadavg"),
        })
    return out


def collect(point_dir: Path) -> dict[str, Any]:
    """The run's stage summaries, turned into the per-task table and the quality figures."""
    run_dir = _run_dir(point_dir)
    summaries = {
        name: json.loads((run_dir / "summaries" / f"{name}.json").read_text())
        for name in TASKS
        if (run_dir / "summaries" / f"{name}.json").exists()
    }
    shards = [json.loads(p.read_text()) for p in sorted((run_dir / "scoring" / "shards").glob("shard-*.json"))]
    report = summaries.get("evaluate", {})
    retrieval = report.get("retrieval", {})
    quality: dict[str, Any] = {}
    if retrieval:
        quality = {
            "recall_at_10": retrieval["model"]["recall"].get("10"),
            "recall_at_10_ci95": retrieval["model"].get("recall_ci95", {}).get("10"),
            "popularity_recall_at_10": retrieval["popularity"]["recall"].get("10"),
            "oracle_recall_at_10": (retrieval.get("oracle") or {}).get("recall", {}).get("10"),
            "auc": report["ranking"]["auc"],
            "auc_ci95": report["ranking"].get("auc_ci95"),
            "users_evaluated": retrieval["users_evaluated"],
        }
    lists = report.get("lists", {})
    if "recall_at_n" in lists:  # what is published, beside the retrieval order and popularity (same users)
        quality.update({
            "published_recall_at_n": lists["recall_at_n"],
            "published_recall_at_n_ci95": lists.get("recall_at_n_ci95"),
            "retrieval_order_recall_at_n": lists.get("retrieval_order_recall_at_n"),
            "popularity_recall_at_n": lists.get("popularity_recall_at_n"),
            "published_minus_retrieval_order_ci95":
                lists.get("paired_difference", {}).get("retrieval_order", {}).get("recall_at_n", {}).get("ci95"),
            "published_catalog_coverage": lists.get("catalog_coverage"),
        })
    gate = summaries.get("load_redis", {}).get("quality_gate", {})
    quality["gate_passed"] = gate.get("passed")
    return {"run_dir": str(run_dir), "tasks": task_rows(summaries, shards), "quality": quality}
