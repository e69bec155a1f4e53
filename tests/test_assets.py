"""The DAG on daily partitions through real `airflow dags test`: the window follows the logical date, the
published-recommendations Asset gets one event per publish (none for a skipped or a refused load), the
consumer DAG is queued once, and the retention teardown prunes old run directories."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, TINY

DAG_ID = "offline_batch_recsys"
CONSUMER = "recsys_recommendations_published"
ASSET_URI = "redis://redis-recs/offline_batch_recsys/recommendations"
# The data and training tasks are marked successful without running: the run directory is a copy of a
# complete run (the cheap way to get another load). Scoring runs, because the mapped score task expands
# over what plan_scoring returns.
REUSE_MODELS = "generate_data|transform|fit_retrieval|fit_ranking"


def airflow(env, *args, check=True, timeout=1800):
    result = subprocess.run(["airflow", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


# What `airflow dags test DAG DAY` runs (DAG.test), with run_after = the logical date, so that the run id
# (manual__<run_after>) and so the run directory are known before the run: the CLI uses the wall clock.
DAG_TEST = """
import json, sys
import pendulum
from airflow.dag_processing.dagbag import DagBag
dag_id, day, conf, pattern = sys.argv[1:5]
dag = DagBag(dag_folder=sys.argv[5]).dags[dag_id]
when = pendulum.parse(day)
run = dag.test(run_after=when, logical_date=when, run_conf=json.loads(conf), mark_success_pattern=pattern or None)
sys.exit(0 if run.state == "success" else 1)
"""


def dag_test(env, day: str, conf: dict | None = None, mark_success: str = "", check: bool = True):
    import sys

    result = subprocess.run(
        [sys.executable, "-c", DAG_TEST, DAG_ID, day, json.dumps(conf or {}), mark_success, str(REPO / "dags")],
        env={**env, "PYTHONPATH": f"{REPO / 'plugins'}:{env.get('PYTHONPATH', '')}"},
        capture_output=True, text=True, timeout=3600,  # generous: a loaded 2-core machine
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dag test {day} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run_dir(artifacts: Path, day: str) -> Path:
    return artifacts / DAG_ID / f"manual__{day}T00_00_00_00_00"


def metadata(env, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return db.execute(sql, params).fetchall()


def asset_events(env) -> list[dict]:
    rows = metadata(env, "SELECT e.extra, e.source_run_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                         "WHERE a.uri = ? ORDER BY e.id", ASSET_URI)
    return [{**json.loads(extra), "source_run_id": run_id} for extra, run_id in rows]


def task_state(env, day: str, task_id: str) -> str:
    return metadata(env, "SELECT state FROM task_instance WHERE run_id = ? AND task_id = ?",
                    f"manual__{day}T00:00:00+00:00", task_id)[0][0]


def copy_run(artifacts: Path, source_day: str, day: str) -> None:
    """A complete run's artifacts under another run's directory (without its run.json: a new run)."""
    target = run_dir(artifacts, day)
    shutil.copytree(run_dir(artifacts, source_day), target)
    (target / "run.json").unlink()


@pytest.fixture(scope="module")
def daily_env(tmp_path_factory, redis_server):
    from recsys_tasks.config import Config
    from recsys_tasks.data.partitions import write_partitions
    from recsys_tasks.data.planted import generate_planted

    tmp = tmp_path_factory.mktemp("daily")
    frame, _ = generate_planted(Config().with_overrides({**TINY, "data.num_rows": 14 * 600}).data)
    write_partitions(frame, tmp / "partitions", "2026-11-01", 14)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW_CONN_REDIS_RECS": redis_server.url,
        "RECSYS__ARTIFACT_ROOT": str(tmp / "artifacts"),
        **{"RECSYS__" + k.upper().replace(".", "__"): str(v) for k, v in TINY.items()},
        "RECSYS__DATA__SOURCE": "parquet",
        "RECSYS__DATA__PARTITION_ROOT": str(tmp / "partitions"),
        "RECSYS__RETENTION__KEEP_RUNS": "1",
        # Plumbing, not model quality, is tested here: one epoch each, and a gate the first run passes
        # (the third run raises the AUC floor to 1.0 to be refused).
        "RECSYS__RETRIEVAL__EPOCHS": "1",
        "RECSYS__RANKING__EPOCHS": "1",
        "RECSYS__QUALITY__MIN_RECALL_LIFT": "0",
        "RECSYS__QUALITY__MIN_RANKING_AUC": "0",
    }
    airflow(env, "db", "migrate")
    airflow(env, "pools", "set", "gpu", "1", "GPU slots")
    airflow(env, "dags", "reserialize")
    return env, tmp / "artifacts"


def test_publish_emits_one_asset_event_skip_and_refusal_none(daily_env, redis_client):
    from recsys_tasks.store import read_manifest

    env, artifacts = daily_env
    # 1. A full run on the window ending 2026-11-14 publishes: one event, the consumer DAG queued once.
    dag_test(env, "2026-11-14")
    report = json.loads((run_dir(artifacts, "2026-11-14") / "report.json").read_text())
    window = report["data_window"]
    assert (window["start_date"], window["end_date"], window["valid_days"]) == ("2026-11-08", "2026-11-14",
                                                                                ["2026-11-14"])
    assert window["rows"]["train"] == 6 * 600 and window["rows"]["valid"] == 600
    manifest = read_manifest(redis_client)
    events = asset_events(env)
    assert len(events) == 1, events
    assert events[0]["run_id"] == manifest["run_id"] == "manual__2026-11-14T00:00:00+00:00"
    assert events[0]["logical_date"].startswith("2026-11-14") and events[0]["users"] == manifest["users"] > 0
    assert events[0]["source_run_id"] == manifest["run_id"]
    assert metadata(env, "SELECT target_dag_id FROM asset_dag_run_queue") == [(CONSUMER,)]

    # 2. An older date (a backfill) is skipped: the task ends skipped, no event, the run still succeeds.
    copy_run(artifacts, "2026-11-14", "2026-11-13")
    dag_test(env, "2026-11-13", mark_success=REUSE_MODELS)
    assert task_state(env, "2026-11-13", "load_redis") == "skipped"
    summary = json.loads((run_dir(artifacts, "2026-11-13") / "summaries" / "load_redis.json").read_text())
    assert summary["published"] is False and "older than the published run" in summary["reason"]
    assert len(asset_events(env)) == 1

    # 3. A newer date that fails the quality gate is refused: the task and the run fail, no event.
    copy_run(artifacts, "2026-11-14", "2026-11-15")
    refused = dag_test(env, "2026-11-15", {"quality.min_ranking_auc": 1.0}, REUSE_MODELS, check=False)
    assert refused.returncode != 0 and task_state(env, "2026-11-15", "load_redis") == "failed", refused.stdout[-6000:]
    assert "ranking_auc" in refused.stdout + refused.stderr
    assert len(asset_events(env)) == 1
    assert metadata(env, "SELECT target_dag_id FROM asset_dag_run_queue") == [(CONSUMER,)]
    assert read_manifest(redis_client)["run_id"] == manifest["run_id"]

    # Retention (keep 1) ran as each run's teardown, also after the refused load: the newest run and
    # the published one are left; the skipped 2026-11-13 run was deleted by the 2026-11-15 run.
    assert task_state(env, "2026-11-15", "prune_runs") == "success"
    assert sorted(p.name for p in (artifacts / DAG_ID).iterdir()) == [
        run_dir(artifacts, "2026-11-14").name, run_dir(artifacts, "2026-11-15").name]
