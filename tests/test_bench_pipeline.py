"""``bench-pipeline`` at its smallest point: the real DAG through ``airflow dags test``, measured per task."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, TINY

from recsys_tasks.bench.pipeline_report import TASKS, slopes


def test_tiny_preset_is_the_test_suites_size():
    import yaml

    preset = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    flat = {f"{section}.{key}": value for section, values in preset.items() for key, value in values.items()}
    assert flat == TINY


def test_bench_pipeline_smallest_point_end_to_end(tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "recsys_tasks", "bench-pipeline", "--preset", str(REPO / "configs" / "tiny.yaml"),
               "--out", str(out), "--throughput-rows", "1500", "--throughput-epochs", "1"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Progress lines while it ran: each task's start and end, with the machine's load.
    for task in ("generate_data", "fit_ranking", "evaluate", "load_redis"):
        assert "] " in run.stdout and f"{task} done in" in run.stdout, task
    results = json.loads((out / "bench_pipeline.json").read_text())
    point = results["points"][0]
    assert point["name"] == "tiny" and point["users"] == 150 and point["dag_wall_s"] > 0
    assert [t["task"] for t in point["tasks"]] == list(TASKS)
    for task in point["tasks"]:
        assert task["seconds"] > 0 and task["rows"] > 0 and task["rows_per_s"] > 0, task
        assert 0.05 < task["peak_rss_gb"] < 8, task  # the task process's own VmHWM, in GB
    assert point["quality"]["gate_passed"] is True
    quality = point["quality"]  # the published lists, beside popularity and the retrieval order
    assert 0 <= quality["published_recall_at_n"] <= 1 and quality["popularity_recall_at_n"] is not None
    assert len(quality["published_minus_retrieval_order_ci95"]) == 2
    assert point["load"]["samples"] >= 1
    for name in ("fit_retrieval", "fit_ranking"):
        ratio = point["throughput"][name]
        assert ratio["loader_samples_per_s"] > 0 and ratio["plain_fit_samples_per_s"] > 0, name
        # Both trainings learn the same task: cross-entropy losses of the same size (the plain fit once
        # trained the DLRM on a raw id column as the label, with a loss of -5e13).
        for loader_loss, plain_loss in zip(ratio["loader_loss_per_epoch"], ratio["plain_loss_per_epoch"]):
            assert 0 < plain_loss < 2 * loader_loss + 1, (name, ratio)
    markdown = (out / "bench_pipeline.md").read_text()
    assert "| fit_ranking |" in markdown and "plain model.fit" in markdown
    assert (out / "bench_pipeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resumable: the measured point is not run again.
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already measured" in again.stdout

    # --throughput-only measures the training comparison again on the point's run, without the DAG.
    only = subprocess.run([*command, "--throughput-only"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert only.returncode == 0, only.stdout[-3000:] + only.stderr[-3000:]
    assert "training throughput only" in only.stdout and "generate_data starting" not in only.stdout
    remeasured = json.loads((out / "points" / "tiny" / "result.json").read_text())
    assert remeasured["dag_wall_s"] == point["dag_wall_s"]
    assert remeasured["throughput"]["fit_ranking"]["plain_fit_samples_per_s"] > 0


def test_slopes_are_log_log_between_consecutive_points():
    def point(users, seconds):
        return {"users": users, "dag_wall_s": seconds * 2, "tasks": [{"task": "score", "seconds": seconds}]}

    result = slopes([point(1000, 10.0), point(100, 1.0), point(10_000, 200.0)])
    assert [(s["from_users"], s["to_users"]) for s in result] == [(100, 1000), (1000, 10_000)]
    assert result[0]["score"] == 1.0 and result[1]["score"] == 1.3 and result[0]["whole DAG"] == 1.0
