"""The production topology run for real: scripts/stack.sh brings up Postgres, a Redis broker, the RedisJSON
store, Airflow's api-server, scheduler, dag-processor and triggerer (CeleryExecutor) and two Celery workers
on queue `gpu` from the Python 3.10 GPU-worker venv. A triggered run and a 3-date backfill go through to
`load_redis`; the UI is checked in headless Chromium (tests/stack_browser.py); `down` leaves no process.
It asserts a run directory per date, data tied to the date, mapped shard instances with their labels, a run's
params beating the environment and Redis serving the newest date, on a real scheduler and real workers.
"""

from __future__ import annotations

import json
import os
import subprocess
from itertools import combinations
from pathlib import Path

import pytest
from conftest import REPO, TINY
from stack_support import DAG_ID, AirflowApi, parse_time, stack_command, stack_env, stack_processes

TASKS = {"generate_data", "transform", "fit_retrieval", "fit_ranking", "plan_scoring", "score", "collect_scores",
         "evaluate", "load_redis", "prune_runs"}
GPU_WORKERS = {"gpu-worker-1", "gpu-worker-2"}
TRIGGERED = ("stack_test__2026-11-19", "2026-11-19T00:00:00Z", 4, 5)  # run id, date, shards, top_n
BACKFILL_DATES = ("2026-11-20", "2026-11-21", "2026-11-22")
BACKFILL_CONF = {"scoring.num_shards": 2, "scoring.top_n": 4}
RUN_TIMEOUT_S = 600


def artifacts_dir() -> Path:
    """Where screenshots and the stack's logs are kept after the test (CI keeps the clone's artifacts/)."""
    path = Path(os.environ.get("RECSYS_TEST_ARTIFACTS", REPO / "artifacts" / "test_stack"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack_dir = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS"))}
    env.update({
        "STACK_DIR": str(stack_dir),
        **{"RECSYS__" + k.upper().replace(".", "__"): str(v) for k, v in TINY.items()},
        "RECSYS_NUM_SHARDS": str(TRIGGERED[2]),
        "RECSYS_TASK_TIMEOUT_MINUTES": "20",
        # Only the runs this test makes: no scheduled run for "yesterday" competing for the workers.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    })
    sessions: set[int] = set()
    try:
        stack_command("up", env, timeout_s=900)
        sessions.update(int(p.read_text()) for p in (stack_dir / "pids").glob("*.pid"))
        senv = stack_env(stack_dir)
        api = AirflowApi(senv["AIRFLOW__API__BASE_URL"], senv["AIRFLOW_ADMIN_USERNAME"], senv["AIRFLOW_ADMIN_PASSWORD"])
        yield {"env": env, "stack_env": senv, "api": api, "dir": stack_dir}
    finally:
        logs = stack_dir / "logs"
        try:
            stack_command("down", env, timeout_s=300)
        finally:
            if logs.is_dir():
                subprocess.run(["cp", "-r", str(logs), str(artifacts_dir() / "stack_logs")], check=False)
    # `down` left no process: none in the services' sessions, naming the stack's directories or marked.
    assert sessions
    assert stack_processes(stack_dir, stack_env(stack_dir), sessions) == []


def airflow_cli(stack: dict, *args: str) -> str:
    senv = stack["stack_env"]
    result = subprocess.run([str(REPO / ".venv" / "bin" / "airflow"), *args], env=senv, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def run_dir(stack: dict, run_id: str) -> Path:
    from recsys_tasks.paths import run_dir_for

    return run_dir_for(stack["stack_env"]["RECSYS__ARTIFACT_ROOT"], DAG_ID, run_id)


def summaries(stack: dict, run_id: str) -> dict[str, dict]:
    root = run_dir(stack, run_id) / "summaries"
    return {p.stem: json.loads(p.read_text()) for p in root.glob("*.json")}


def store_client(stack: dict):
    import redis

    senv = stack["stack_env"]
    return redis.Redis(host="127.0.0.1", port=int(senv["REDIS_RECS_PORT"]), password=senv["REDIS_RECS_PASSWORD"])


def check_mapped_run(stack: dict, run_id: str, shards: int, top_n: int) -> list[dict]:
    """Every task succeeded on a GPU-queue worker; `score` expanded into `shards` labelled instances."""
    instances = stack["api"].task_instances(run_id)
    assert {t["task_id"] for t in instances} == TASKS
    for ti in instances:
        assert ti["state"] == "success", ti
        assert ti["queue"] == "gpu" and ti["pool"] == "gpu", ti
        assert ti["hostname"] in GPU_WORKERS, ti
    score = sorted((t for t in instances if t["task_id"] == "score"), key=lambda t: t["map_index"])
    assert [t["map_index"] for t in score] == list(range(shards))
    assert [t["rendered_map_index"] for t in score] == [f"shard {i}" for i in range(shards)]
    stage = summaries(stack, run_id)
    assert set(stage) >= {"generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate",
                          "load_redis"}
    assert stage["score"]["num_shards"] == shards and stage["score"]["top_n"] == top_n
    parts = sorted(p.name for p in (run_dir(stack, run_id) / "scoring" / "recommendations").glob("*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(shards)]
    # evaluate ran where the Merlin image's layer is: no matplotlib, the report keeps its tables.
    report_md = (run_dir(stack, run_id) / "evaluation" / "report.md").read_text()
    assert "Plots were not drawn" in report_md and "| method |" in report_md
    return score


def test_workers_run_the_python_3_10_gpu_venv(stack):
    """Both Celery workers are processes of the GPU-worker venv's Python 3.10 (the Merlin image's layer)."""
    pids = [int((stack["dir"] / "pids" / f"{name}.pid").read_text()) for name in sorted(GPU_WORKERS)]
    for pid in pids:
        # Celery rewrites the command line; the interpreter and the loaded extension modules tell.
        assert Path(f"/proc/{pid}/exe").resolve().name.startswith("python3.10"), Path(f"/proc/{pid}/exe").resolve()
        assert ".venv-gpu-worker/lib/python3.10/site-packages/" in Path(f"/proc/{pid}/maps").read_text()
    status = stack_command("status", stack["env"]).stdout
    assert "UNHEALTHY" not in status and "DOWN" not in status, status


@pytest.fixture(scope="module")
def triggered_run(stack) -> str:
    """The DAG unpaused and one run triggered and finished, whichever test asks first. The backfill asks too,
    so its newer dates always publish after this run (in the other order this run's load would be skipped)."""
    api = stack["api"]
    api.wait_for_dag(timeout_s=300)
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    run_id, date, _, _ = TRIGGERED
    api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": date, "conf": {}})
    api.wait_for_runs({run_id}, timeout_s=RUN_TIMEOUT_S)
    return run_id


def test_a_run_scores_its_shards_on_both_gpu_workers_at_once(stack, triggered_run):
    _, _, shards, top_n = TRIGGERED
    score = check_mapped_run(stack, triggered_run, shards, top_n)
    assert {t["hostname"] for t in score} == GPU_WORKERS
    overlapping = [
        (a["map_index"], b["map_index"]) for a, b in combinations(score, 2)
        if a["hostname"] != b["hostname"]
        and parse_time(a["start_date"]) < parse_time(b["end_date"])
        and parse_time(b["start_date"]) < parse_time(a["end_date"])
    ]
    assert overlapping, [(t["map_index"], t["hostname"], t["start_date"], t["end_date"]) for t in score]


def test_backfill_of_three_dates_is_run_by_the_scheduler(stack, triggered_run):
    import pandas as pd
    import pyarrow.parquet as pq

    from recsys_tasks.config import Config
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.store import fetch, read_manifest

    api = stack["api"]
    airflow_cli(stack, "backfill", "create", "--dag-id", DAG_ID, "--from-date", BACKFILL_DATES[0],
                "--to-date", BACKFILL_DATES[-1], "--max-active-runs", "2",
                "--dag-run-conf", json.dumps(BACKFILL_CONF))
    backfill_runs = [r for r in api.dag_runs() if r["run_type"] == "backfill"]
    assert sorted(r["logical_date"][:10] for r in backfill_runs) == list(BACKFILL_DATES), backfill_runs
    api.wait_for_runs({r["dag_run_id"] for r in backfill_runs}, timeout_s=RUN_TIMEOUT_S)

    by_date = {r["logical_date"][:10]: r["dag_run_id"] for r in backfill_runs}
    dirs = {date: run_dir(stack, run_id) for date, run_id in by_date.items()}
    assert len(set(dirs.values())) == len(BACKFILL_DATES)
    for date, run_id in by_date.items():
        # The run's conf beats the stack's environment (4 shards, top_n 5).
        check_mapped_run(stack, run_id, BACKFILL_CONF["scoring.num_shards"], BACKFILL_CONF["scoring.top_n"])
        assert date in summaries(stack, run_id)["load_redis"]["manifest"]["logical_date"]
    # Data is tied to the logical date: each date generated its own impressions.
    raw = [pd.read_parquet(RunPaths(dirs[d]).raw_train) for d in BACKFILL_DATES[:2]]
    assert not raw[0].equals(raw[1])

    client = store_client(stack)
    manifest = read_manifest(client)
    assert manifest["logical_date"].startswith(BACKFILL_DATES[-1])
    assert manifest["run_id"] == by_date[BACKFILL_DATES[-1]]
    newest_users = pq.read_table(RunPaths(dirs[BACKFILL_DATES[-1]]).recommendations,
                                 columns=["user_id"]).column("user_id").to_pylist()
    assert manifest["users"] == len(newest_users)
    doc = fetch(client, int(newest_users[0]), Config().store)
    assert len(doc["recommendations"]) == BACKFILL_CONF["scoring.top_n"] and doc["run_id"] == manifest["run_id"]


def test_the_ui_shows_every_task_the_shards_and_the_docs(stack, triggered_run):
    from stack_browser import check_ui

    senv = stack["stack_env"]
    check_ui(senv["AIRFLOW__API__BASE_URL"], senv["AIRFLOW_ADMIN_USERNAME"], senv["AIRFLOW_ADMIN_PASSWORD"],
             dag_id=DAG_ID, run_id=triggered_run, tasks=TASKS, shards=TRIGGERED[2], screenshots=artifacts_dir())
