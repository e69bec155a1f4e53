"""The DAG: integrity (parse, structure, cheap imports) and one real `airflow dags test` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY

DAG_ID = "offline_batch_recsys"
HEAVY = ("tensorflow", "merlin", "nvtabular", "cudf")


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }
    return env


@pytest.fixture(scope="module")
def dag(airflow_env):
    os.environ.update({k: v for k, v in airflow_env.items() if k.startswith("AIRFLOW")})
    sys.path.insert(0, str(REPO / "plugins"))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def test_dag_shape(dag):
    assert dag is not None
    # @daily with data intervals: the run at 00:00 UTC on D+1 has logical date D (its partitions end at D).
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "load_redis" in dag.doc_md
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "generate_data", "transform", "fit_retrieval", "fit_ranking", "plan_scoring", "score", "collect_scores",
        "evaluate", "load_redis", "prune_runs",
    }
    upstream = {tid: set(t.upstream_task_ids) for tid, t in tasks.items()}
    assert upstream == {
        "generate_data": set(),
        "transform": {"generate_data"},
        "fit_retrieval": {"transform"},
        "fit_ranking": {"transform"},
        "plan_scoring": {"fit_retrieval", "fit_ranking"},
        "score": {"plan_scoring"},
        "collect_scores": {"score"},
        "evaluate": {"collect_scores"},
        "load_redis": {"evaluate"},
        "prune_runs": {"load_redis"},
    }
    # load_redis announces each publish on an Asset; retention is a teardown (runs after failures too,
    # and does not decide the run's state).
    assert [a.uri for a in tasks["load_redis"].outlets] == ["redis://redis-recs/offline_batch_recsys/recommendations"]
    assert tasks["prune_runs"].is_teardown
    # score is mapped over the shard indices plan_scoring returns; the others are plain tasks.
    assert tasks["score"].is_mapped and not tasks["collect_scores"].is_mapped
    assert tasks["collect_scores"].trigger_rule == "all_success"
    for task in tasks.values():
        assert task.queue == "gpu" and task.pool == "gpu", task.task_id
        assert task.retries >= 1 and task.retry_delay.total_seconds() > 0, task.task_id
    for key in ("data.num_rows", "scoring.top_k", "scoring.top_n", "scoring.num_shards", "retrieval.epochs",
                "ranking.epochs"):
        assert key in dag.params


def test_every_param_is_a_config_key(dag):
    from recsys_tasks.config import Config

    Config().with_overrides({key: 3 for key in dag.params})


def test_parsing_the_dag_imports_nothing_heavy(airflow_env):
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(REPO / 'plugins')!r}); "
        f"runpy.run_path({str(REPO / 'dags' / 'offline_batch_recsys.py')!r}); "
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_recsys_tasks_never_imports_airflow():
    code = (
        "import sys, recsys_tasks.cli, recsys_tasks.store, recsys_tasks.scoring, recsys_tasks.config; "
        "print([m for m in sys.modules if m.split('.')[0] == 'airflow'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def run_airflow(env, *args, timeout=900):
    result = subprocess.run(["airflow", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def mapped_score_instances(env, run_id: str) -> list[dict]:
    out = run_airflow(env, "tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json").stdout
    rows = json.loads(out[out.index("["):])
    return [r for r in rows if r["task_id"] == "score"]


def test_backfill_dates_run_end_to_end_with_mapped_scoring(airflow_env, redis_server, redis_client, tmp_path):
    """Two logical dates, as a backfill runs them: separate run directories, each complete, data tied to
    its date; the score task expands into each run's shard count; the later run is what Redis serves."""
    import pandas as pd

    from recsys_tasks.config import Config
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.store import fetch, read_manifest

    env = {
        **airflow_env,
        "AIRFLOW_CONN_REDIS_RECS": redis_server.url,
        "RECSYS__ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        **{"RECSYS__" + k.upper().replace(".", "__"): str(v) for k, v in TINY.items()},
        "RECSYS__SCORING__NUM_SHARDS": "3",
    }
    run_airflow(env, "db", "migrate")
    run_airflow(env, "pools", "set", "gpu", "1", "GPU slots")
    # Day 1: three shards from the environment. Day 2: a manual-run param beats it (two shards), and
    # top_n 4 instead of TINY's 5.
    days = {"2026-11-20": ({}, 3, 5), "2026-11-21": ({"scoring.num_shards": 2, "scoring.top_n": 4}, 2, 4)}
    # The README's backfill command accepts this DAG and plans one run per date (dry run: no scheduler here).
    run_airflow(env, "dags", "reserialize")
    plan = run_airflow(env, "backfill", "create", "--dag-id", DAG_ID, "--from-date", "2026-11-20",
                       "--to-date", "2026-11-21", "--dry-run").stdout
    assert "2026-11-20 00:00:00+00:00" in plan and "2026-11-21 00:00:00+00:00" in plan, plan[-2000:]
    runs = {}
    for day, (conf, _, _) in days.items():
        result = run_airflow(env, "dags", "test", DAG_ID, day, "-c", json.dumps(conf))
        runs[day] = result

    run_dirs = sorted((tmp_path / "artifacts" / DAG_ID).iterdir())
    assert len(run_dirs) == 2, run_dirs
    raw_by_day = {}
    for (day, (_, shards, top_n)), run_dir in zip(days.items(), run_dirs):
        paths = RunPaths(run_dir)
        summaries = {p.stem: json.loads(p.read_text()) for p in (paths.root / "summaries").glob("*.json")}
        assert set(summaries) == {"generate_data", "transform", "fit_retrieval", "fit_ranking", "score",
                                  "evaluate", "load_redis"}, runs[day].stdout[-3000:]
        assert day in summaries["load_redis"]["manifest"]["logical_date"]
        assert summaries["score"]["num_shards"] == shards and summaries["score"]["top_n"] == top_n
        assert sorted(p.name for p in paths.recommendations.glob("*.parquet")) == [
            f"part-{i:05d}.parquet" for i in range(shards)
        ]
        run_id = summaries["load_redis"]["manifest"]["run_id"]
        assert paths.root.name in run_id.replace(":", "_").replace("+", "_")
        instances = mapped_score_instances(env, run_id)
        assert sorted(int(r["map_index"]) for r in instances) == list(range(shards)), instances
        assert {r["state"] for r in instances} == {"success"}
        assert shard_labels(env, run_id) == [f"shard {i}" for i in range(shards)]
        raw_by_day[day] = pd.read_parquet(paths.raw_train)
    # Data is tied to the logical date: the two days generated different impressions.
    first, second = raw_by_day.values()
    assert not first.equals(second)

    manifest = read_manifest(redis_client)
    assert manifest["logical_date"].startswith("2026-11-21")
    assert manifest["users"] == len(pq_users(RunPaths(run_dirs[1])))
    user_keys = list(redis_client.scan_iter("USER:*"))
    assert len(user_keys) >= manifest["users"]
    doc = fetch(redis_client, int(pq_users(RunPaths(run_dirs[1]))[0]), Config().store)
    assert len(doc["recommendations"]) == 4
    assert doc["run_id"] == manifest["run_id"]


def shard_labels(env, run_id: str) -> list[str]:
    """What the UI shows for each mapped score instance (map_index_template), from the metadata DB."""
    import sqlite3
    from pathlib import Path

    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute(
            "SELECT rendered_map_index FROM task_instance WHERE task_id = 'score' AND run_id = ? ORDER BY map_index",
            (run_id,),
        ).fetchall()
    return [row[0] for row in rows]


def pq_users(paths) -> list[int]:
    import pyarrow.parquet as pq

    return pq.read_table(paths.recommendations, columns=["user_id"]).column("user_id").to_pylist()


def test_data_seed_follows_the_logical_date_unless_pinned(monkeypatch):
    import pendulum

    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    monkeypatch.delenv("RECSYS__DATA__SEED", raising=False)
    from recsys_airflow import task_config

    day = pendulum.datetime(2026, 11, 20, tz="UTC")
    assert task_config({"params": {}, "logical_date": day}).data.seed == 42 + 20261120
    assert task_config({"params": {}, "logical_date": day.add(days=1)}).data.seed == 42 + 20261121
    assert task_config({"params": {"data.seed": 7}, "logical_date": day}).data.seed == 7
    assert task_config({"params": {}, "logical_date": None}).data.seed == 42
