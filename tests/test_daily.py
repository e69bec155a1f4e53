"""Daily operation without Airflow: partitioned input windows, run retention, report wording, CLI errors,
and the live stage lines of `make run`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from recsys_tasks.config import Config, ConfigError
from recsys_tasks.data.partitions import MissingPartitionError, plan_window, write_partitions
from recsys_tasks.data.planted import generate_planted
from recsys_tasks.data.sources import generate_data

SMALL = {"data.num_rows": 2800, "data.num_users": 150, "data.num_items": 80}


@pytest.fixture(scope="module")
def partition_root(tmp_path_factory):
    """Fourteen daily partitions, 2026-11-01 .. 2026-11-14, of one planted population."""
    root = tmp_path_factory.mktemp("partitions")
    frame, _ = generate_planted(Config().with_overrides(SMALL).data)
    written = write_partitions(frame, root, "2026-11-01", 14)
    assert [w["dt"] for w in written][::13] == ["2026-11-01", "2026-11-14"]
    assert sum(w["rows"] for w in written) == SMALL["data.num_rows"]
    return root


def partitioned(root, **overrides):
    return Config().with_overrides({"data.source": "parquet", "data.partition_root": str(root), **overrides})


def test_seven_consecutive_dates_read_seven_windows(partition_root, tmp_path):
    windows, raw = [], []
    for day in range(14, 21):
        end = f"2026-11-{day - 7:02d}"
        summary = generate_data(partitioned(partition_root, **{"data.end_date": end}), tmp_path / end)
        window = summary["window"]
        assert window["end_date"] == end and window["days"] == 7
        assert window["valid_days"] == [end]  # the time-based split: the last day validates
        assert window["train_days"][-1] < end and len(window["train_days"]) == 6
        assert window["rows"]["train"] + window["rows"]["valid"] == sum(window["rows_per_day"].values())
        assert summary["splits"]["valid"]["rows"] == window["rows_per_day"][end]
        windows.append((window["start_date"], window["end_date"]))
        raw.append(pd.read_parquet(tmp_path / end / "raw" / "train"))
    assert len(set(windows)) == 7
    # Consecutive windows overlap in five training days and differ in the rest.
    assert not raw[0].equals(raw[1]) and len(raw[0]) == len(raw[1])


def test_valid_days_and_window_days_are_settings(partition_root, tmp_path):
    plan = plan_window(partitioned(partition_root, **{"data.end_date": "2026-11-14", "data.window_days": 10,
                                                      "data.valid_days": 3}).data)
    assert [d.isoformat() for d in plan.valid_days] == ["2026-11-12", "2026-11-13", "2026-11-14"]
    assert plan.train_days[0].isoformat() == "2026-11-05" and len(plan.train_days) == 7


def test_a_missing_partition_names_its_path(partition_root, tmp_path):
    config = partitioned(partition_root, **{"data.end_date": "2026-11-16"})
    with pytest.raises(MissingPartitionError) as error:
        generate_data(config, tmp_path / "run")
    message = str(error.value)
    assert f"{partition_root}/dt=2026-11-15 (no such directory)" in message
    assert f"{partition_root}/dt=2026-11-16 (no such directory)" in message and "2 of its 7" in message
    empty = partition_root / "dt=2026-11-15"
    empty.mkdir()
    try:
        with pytest.raises(MissingPartitionError, match=r"dt=2026-11-15 \(no \*\.parquet files\)"):
            generate_data(config, tmp_path / "run")
    finally:
        empty.rmdir()
    with pytest.raises(Exception, match="data.end_date is empty"):
        generate_data(partitioned(partition_root), tmp_path / "run")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.source": "parquet", "data.partition_root": "/p", "data.train_path": "/t"}, "set one"),
        ({"data.partition_root": "/p"}, "data.source is 'planted'; set data.source=parquet"),
        ({"data.end_date": "2026-13-01"}, "data.end_date must be YYYY-MM-DD"),
        ({"data.valid_days": 7}, "data.valid_days must be >= 1 and < data.window_days (7)"),
        ({"retention.keep_runs": -1}, "retention.keep_runs must be >= 0"),
    ],
)
def test_partition_and_retention_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config().with_overrides(overrides)


# --------------------------------------------------------------------------------------------------
# Retention
# --------------------------------------------------------------------------------------------------


def make_runs(dag_root: Path, count: int) -> list[Path]:
    """``count`` run directories with a run.json each, started a minute apart, 1 MB of artifacts each."""
    runs = []
    for index in range(count):
        run_dir = dag_root / f"scheduled__2026-11-{index + 1:02d}T00_00_00_00_00"
        (run_dir / "ranking").mkdir(parents=True)
        (run_dir / "ranking" / "model.bin").write_bytes(b"x" * 1_000_000)
        (run_dir / "run.json").write_text(json.dumps({
            "run_id": f"scheduled__2026-11-{index + 1:02d}T00:00:00+00:00",
            "logical_date": f"2026-11-{index + 1:02d}T00:00:00+00:00",
            "started_at": f"2026-11-{index + 2:02d}T00:{index:02d}:00+00:00"}))
        runs.append(run_dir)
    return runs


def test_ten_runs_leave_the_newest_n(tmp_path):
    from recsys_tasks.ops.retention import directory_bytes, prune_runs

    runs = make_runs(tmp_path / "dag", 10)
    result = prune_runs(tmp_path / "dag", keep_runs=7, protected=[runs[-1]])
    assert sorted(p.name for p in (tmp_path / "dag").iterdir()) == [r.name for r in runs[3:]]
    assert result["deleted"] == [r.name for r in reversed(runs[:3])]
    assert result["bytes_freed"] >= 3_000_000 and directory_bytes(tmp_path / "dag") == result["bytes_kept"]
    # Running it again deletes nothing; keep_runs=0 keeps everything.
    assert prune_runs(tmp_path / "dag", keep_runs=7)["deleted"] == []
    assert prune_runs(tmp_path / "dag", keep_runs=0)["deleted"] == []


def test_retention_spares_the_published_and_running_runs(tmp_path):
    from recsys_tasks.ops.retention import prune_runs

    runs = make_runs(tmp_path / "dag", 10)
    published, running = runs[1], runs[4]
    running_id = json.loads((running / "run.json").read_text())["run_id"]
    asked = []

    def is_running(run_id: str) -> bool:
        asked.append(run_id)
        return run_id == running_id

    result = prune_runs(tmp_path / "dag", keep_runs=3, protected=[published], is_running=is_running)
    left = sorted(p.name for p in (tmp_path / "dag").iterdir())
    assert left == sorted([published.name, running.name, *(r.name for r in runs[7:])])
    assert result["kept"][published.name].startswith("protected") and result["kept"][running.name] == "still running"
    assert running_id in asked and len(result["deleted"]) == 5


# --------------------------------------------------------------------------------------------------
# Operator-facing wording
# --------------------------------------------------------------------------------------------------


REPORT = {
    "source": "parquet",
    "retrieval": {"cutoffs": [10], "users_evaluated": 5, "model": {"recall": {"10": 0.3}, "ndcg": {"10": 0.2}},
                  "popularity": {"recall": {"10": 0.1}, "ndcg": {"10": 0.1}}, "oracle": None},
    "ranking": {"auc": 0.9, "popularity_auc": 0.6, "log_loss": 0.1748, "base_rate_log_loss": 0.3238,
                "click_rate": 0.1, "rows": 500},
    "lists": {"top_n": 5, "recall_at_n": 0.3, "ndcg_at_n": 0.2, "retrieval_order_recall_at_n": 0.25,
              "retrieval_order_ndcg_at_n": 0.2, "users_with_list": 5, "catalog_users": 5, "user_coverage": 1.0,
              "full_list_share": 1.0, "catalog_coverage": 0.5, "exposure_gini": 0.3, "empty_lists": 0,
              "short_lists": 0, "duplicate_lists": 0, "lists_with_seen_item": 0},
    "stages": {"score": {"seconds": 1.0, "device": "cpu"}},
    "data_window": {"start_date": "2026-11-08", "end_date": "2026-11-14", "days": 7,
                    "train_days": ["2026-11-08", "2026-11-13"], "valid_days": ["2026-11-14"],
                    "rows": {"train": 600, "valid": 100}},
}
GATE = {"passed": True, "checks": []}


def test_a_skipped_load_does_not_say_published():
    from recsys_tasks.evaluation.report import summary_lines

    skipped = {"published": False, "users": 144, "reason": "logical date 2026-11-13 is older than the published run",
               "manifest": {"run_id": "scheduled__2026-11-14", "logical_date": "2026-11-14T00:00:00+00:00"}}
    text = "\n".join(summary_lines(REPORT, GATE, skipped))
    assert "published 144 documents" not in text and "manifest run" not in text
    assert "NOT published" in text and "is older than the published run" in text
    assert "Redis still serves run scheduled__2026-11-14" in text
    done = {"published": True, "users": 144, "manifest": {"run_id": "scheduled__2026-11-15"}}
    assert "published 144 documents, manifest run scheduled__2026-11-15" in "\n".join(
        summary_lines(REPORT, GATE, done))


def test_report_names_the_log_loss_reference_and_the_window():
    from recsys_tasks.evaluation.report import markdown

    text = markdown(REPORT)
    assert "base rate" not in text
    assert "log loss 0.1748 (predicting the mean click rate (0.1000) for every impression scores 0.3238" in text
    assert "Window: 2026-11-08 .. 2026-11-14 (7 daily partitions)" in text and "(100 rows)" in text


def test_cli_config_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "recsys_tasks", "generate_data", "--run-dir", str(tmp_path), "--set",
         "scoring.top_kk=3"], capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 2
    from recsys_tasks.config import ScoringConfig

    known = ", ".join(sorted(f.name for f in dataclasses.fields(ScoringConfig)))
    assert result.stderr.strip().splitlines() == [
        f"config error: params: unknown config key 'scoring.top_kk' (known here: {known})"
    ]


def test_make_run_streams_stage_lines_as_they_happen(tmp_path):
    """scripts/dag_test_live.sh (what `make run` calls) against a stand-in `airflow` that pauses between
    lines: each line reaches the console while the command still runs, and its exit status comes back."""
    fake = tmp_path / "bin" / "airflow"
    fake.parent.mkdir()
    fake.write_text(
        "#!/usr/bin/env python3\nimport sys, time\n"
        "print('INFO [DAG TEST] starting task_id=generate_data map_index=-1')\n"
        "print('INFO recsys_tasks.generate_data: stage generate_data starting on cpu in /x')\n"
        "time.sleep(3)\n"
        "print('INFO recsys_tasks.generate_data: stage generate_data done in 3.0s: {}')\n"
        "print('INFO [DAG TEST] starting task_id=score map_index=1')\n"
        "time.sleep(3)\nsys.exit(3)\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    started = time.monotonic()
    proc = subprocess.Popen([str(REPO / "scripts" / "dag_test_live.sh"), str(tmp_path / "log"), "dag", "day"],
                            stdout=subprocess.PIPE, text=True, env=env)
    arrivals = []
    for line in iter(proc.stdout.readline, ""):
        arrivals.append((time.monotonic() - started, line.strip()))
    assert proc.wait(timeout=60) == 3
    ended = time.monotonic() - started
    assert [line.split("  ", 1)[1] for _, line in arrivals] == [
        "task generate_data", "stage generate_data starting on cpu", "stage generate_data done in 3.0s",
        "task score map_index=1"]
    # Buffered output would arrive all at once when the stand-in exits; live lines arrive ~3 s apart.
    assert arrivals[2][0] - arrivals[1][0] > 1.0 and ended - arrivals[3][0] > 1.0, arrivals
    assert (tmp_path / "log").read_text().count("\n") == 4
