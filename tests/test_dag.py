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
    assert dag.schedule == "@daily" or str(dag.timetable.summary) == "@daily"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "load_redis" in dag.doc_md
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate", "load_redis"
    }
    upstream = {tid: set(t.upstream_task_ids) for tid, t in tasks.items()}
    assert upstream == {
        "generate_data": set(),
        "transform": {"generate_data"},
        "fit_retrieval": {"transform"},
        "fit_ranking": {"transform"},
        "score": {"fit_retrieval", "fit_ranking"},
        "evaluate": {"score"},
        "load_redis": {"evaluate"},
    }
    for task in tasks.values():
        assert task.queue == "gpu" and task.pool == "gpu", task.task_id
        assert task.retries >= 1 and task.retry_delay.total_seconds() > 0, task.task_id
    for key in ("data.num_rows", "scoring.top_k", "scoring.top_n", "retrieval.epochs", "ranking.epochs"):
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


def test_airflow_dags_test_runs_end_to_end(airflow_env, redis_server, redis_client, tmp_path):
    from recsys_tasks.config import Config
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.store import fetch, read_manifest

    env = {
        **airflow_env,
        "AIRFLOW_CONN_REDIS_RECS": redis_server.url,
        "RECSYS__ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        **{"RECSYS__" + k.upper().replace(".", "__"): str(v) for k, v in TINY.items()},
    }
    run_airflow(env, "db", "migrate")
    run_airflow(env, "pools", "set", "gpu", "1", "GPU slots")
    # A manual-run param beats the environment: top_n 4 instead of TINY's 5.
    result = run_airflow(env, "dags", "test", DAG_ID, "2026-11-20", "-c", json.dumps({"scoring.top_n": 4}))

    runs = list((tmp_path / "artifacts" / DAG_ID).iterdir())
    assert len(runs) == 1, runs
    paths = RunPaths(runs[0])
    summaries = {p.stem: json.loads(p.read_text()) for p in (paths.root / "summaries").glob("*.json")}
    assert set(summaries) == {
        "generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate", "load_redis"
    }, (
        result.stdout[-3000:]
    )
    manifest = read_manifest(redis_client)
    assert manifest["users"] == summaries["score"]["users"] == summaries["load_redis"]["users"]
    assert manifest["logical_date"].startswith("2026-11-20")
    assert paths.root.name in manifest["run_id"].replace(":", "_").replace("+", "_")
    user_keys = list(redis_client.scan_iter("USER:*"))
    assert len(user_keys) == manifest["users"]
    doc = fetch(redis_client, int(user_keys[0].decode().split(":")[1]), Config().store)
    assert len(doc["recommendations"]) == 4
    assert doc["run_id"] == manifest["run_id"]
