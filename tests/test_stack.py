"""The production topology run for real: scripts/stack.sh brings up Postgres, a Redis broker, the RedisJSON
store, Airflow's api-server, scheduler, dag-processor and triggerer (CeleryExecutor), two Celery workers
on queue `gpu` from the Python 3.10 GPU-worker venv and one on queue `default`. A triggered run and a
3-date backfill go through to `load_redis`; the UI is checked in headless Chromium (tests/stack_browser.py).
Then the operator's cases: stop and start keep the run history; a GPU worker killed mid-task is replaced
within the documented time and comes back with `restart`; a publish starts a finished run of the
downstream DAG; `down` leaves no process of the stack and spares one started with its environment.

This replaces the former two-date `airflow dags test` backfill test: it asserts the same things (a run
directory per date, data tied to the date, mapped shard instances with their labels, a run's params
beating the environment, Redis serving the newest date) on a real scheduler and real workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import psutil
import pytest
from conftest import REPO, TINY
from stack_support import (
    DAG_ID,
    AirflowApi,
    parse_time,
    service_sessions,
    session_members,
    stack_command,
    stack_env,
    stack_processes,
)

TASKS = {"generate_data", "transform", "fit_retrieval", "fit_ranking", "plan_scoring", "score", "collect_scores",
         "evaluate", "load_redis", "prune_runs"}
GPU_WORKERS = {"gpu-worker-1", "gpu-worker-2"}
DOWNSTREAM_DAG_ID = "recsys_recommendations_published"
TRIGGERED = ("stack_test__2026-11-19", "2026-11-19T00:00:00Z", 4, 5)  # run id, date, shards, top_n
BACKFILL_DATES = ("2026-11-20", "2026-11-21")  # two dates run side by side: enough to show both, in CI's time
BACKFILL_CONF = {"scoring.num_shards": 2, "scoring.top_n": 4}
# Generous: the machine is shared (a 3-date backfill took over 10 min at load average 10 on 2 cores).
RUN_TIMEOUT_S = 1200
# docs/stack-operations.md: a GPU worker lost mid-task is replaced within this (heartbeat timeout 90 s,
# detection every 10 s, retry delay 30-60 s, then queueing; slack for a loaded machine).
RECOVERY_BOUND_S = 300


def artifacts_dir() -> Path:
    """Where screenshots and the stack's logs are kept after the test (CI keeps the clone's artifacts/)."""
    path = Path(os.environ.get("RECSYS_TEST_ARTIFACTS", REPO / "artifacts" / "test_stack"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_sessions(stack: dict) -> None:
    stack["sessions"].update(service_sessions(stack["dir"]).values())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack_dir = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS"))}
    env.update({
        "STACK_DIR": str(stack_dir),
        **{"RECSYS__" + k.upper().replace(".", "__"): str(v) for k, v in TINY.items()},
        "RECSYS_NUM_SHARDS": str(TRIGGERED[2]),
        "RECSYS_TASK_TIMEOUT_MINUTES": "20",
        # Only the runs this test makes, until test_stop_and_start_keep_the_run_history turns the clock on.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    })
    state = {"env": env, "dir": stack_dir, "sessions": set()}
    outsider = None
    try:
        stack_command("up", env=env, timeout_s=900)
        record_sessions(state)
        senv = stack_env(stack_dir)
        # What the README's CLI recipe does: a shell that sourced stack.env starts something of its own.
        recipe = f"set -a; source {stack_dir / 'stack.env'}; set +a; exec sleep 3600"
        outsider = subprocess.Popen(["bash", "-c", recipe],
                                    start_new_session=True)
        api = AirflowApi(senv["AIRFLOW__API__BASE_URL"], senv["AIRFLOW_ADMIN_USERNAME"], senv["AIRFLOW_ADMIN_PASSWORD"])
        state.update({"stack_env": senv, "api": api})
        yield state
    finally:
        logs = stack_dir / "logs"
        try:
            down = stack_command("down", env=env, timeout_s=300)
        finally:
            if logs.is_dir():
                subprocess.run(["cp", "-r", str(logs), str(artifacts_dir() / "stack_logs")], check=False)
            senv = stack_env(stack_dir)
            left = stack_processes(senv, state["sessions"], {outsider.pid} if outsider else set())
            outsider_alive = outsider is not None and outsider.poll() is None
            if outsider is not None:
                outsider.kill()
                outsider.wait()
            purge = stack_command("down", "--purge", env=env, timeout_s=300)
    # `down` left no process: none in the services' sessions or with the stack's AIRFLOW_HOME, but it did
    # not touch the process a user started with the stack's environment; `down --purge` deleted the state.
    assert state["sessions"]
    assert left == []
    assert outsider_alive
    assert "state kept" in down.stderr
    assert "DELETED" in purge.stderr and not Path(senv["PG_DIR"]).exists() and not (stack_dir / "stack.env").exists()


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


def check_mapped_run(stack: dict, run_id: str, shards: int, top_n: int, *, load_may_skip: bool = False) -> list[dict]:
    """Every task succeeded on a GPU-queue worker; `score` expanded into `shards` labelled instances.

    With ``load_may_skip`` (dates running side by side), `load_redis` may end *skipped* instead: Redis already
    held a newer logical date when this run's load got the lock, which is the load's date check at work."""
    instances = stack["api"].task_instances(run_id)
    assert {t["task_id"] for t in instances} == TASKS
    for ti in instances:
        if load_may_skip and ti["task_id"] == "load_redis" and ti["state"] == "skipped":
            load = summaries(stack, run_id)["load_redis"]
            assert load["published"] is False and load["status"] == "skipped", load
        else:
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
    # One part per shard, plus the validation-only users' part when the day's data has such users.
    window = ["part-window.parquet"] if stage["score"]["window_users"] else []
    assert parts == [f"part-{i:05d}.parquet" for i in range(shards)] + window, stage["score"]
    # evaluate ran on a GPU-queue worker (the Merlin image's layer + the install step's matplotlib): plots.
    evaluation = run_dir(stack, run_id) / "evaluation"
    report_md = (evaluation / "report.md").read_text()
    assert "Plots were not drawn" not in report_md and "| method |" in report_md
    from recsys_tasks.evaluation.report import PLOTS

    drawn = {p.name for p in evaluation.glob("*.png") if p.stat().st_size > 1000}
    assert drawn >= set(PLOTS.values()), drawn
    return score


def test_workers_run_the_python_3_10_gpu_venv(stack):
    """Both Celery workers are processes of the GPU-worker venv's Python 3.10 (the Merlin image's layer)."""
    sessions = service_sessions(stack["dir"])
    pids = [sessions[name] for name in sorted(GPU_WORKERS)]
    for pid in pids:
        # Celery rewrites the command line; the interpreter and the loaded extension modules tell.
        worker = psutil.Process(pid)
        assert Path(worker.exe()).resolve().name.startswith("python3.10"), worker.exe()
        assert any(".venv-gpu-worker/lib/python3.10/site-packages/" in m.path for m in worker.memory_maps())
    status = stack_command("status", env=stack["env"]).stdout
    assert "UNHEALTHY" not in status and "DOWN" not in status, status


def test_a_run_scores_its_shards_on_both_gpu_workers_at_once(stack):
    api = stack["api"]
    api.wait_for_dag(timeout_s=300)
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    run_id, date, shards, top_n = TRIGGERED
    api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": date, "conf": {}})
    api.wait_for_runs({run_id}, timeout_s=RUN_TIMEOUT_S)

    score = check_mapped_run(stack, run_id, shards, top_n)
    assert {t["hostname"] for t in score} == GPU_WORKERS
    overlapping = [
        (a["map_index"], b["map_index"]) for a, b in combinations(score, 2)
        if a["hostname"] != b["hostname"]
        and parse_time(a["start_date"]) < parse_time(b["end_date"])
        and parse_time(b["start_date"]) < parse_time(a["end_date"])
    ]
    assert overlapping, [(t["map_index"], t["hostname"], t["start_date"], t["end_date"]) for t in score]


def test_backfill_of_two_dates_is_run_by_the_scheduler(stack):
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
        # The run's conf beats the stack's environment (4 shards, top_n 5). The dates run side by side, so an
        # older date whose load comes after a newer one's is skipped by the load's date check (not published).
        check_mapped_run(stack, run_id, BACKFILL_CONF["scoring.num_shards"], BACKFILL_CONF["scoring.top_n"],
                         load_may_skip=date != BACKFILL_DATES[-1])
        load = summaries(stack, run_id)["load_redis"]
        if load["published"] or date == BACKFILL_DATES[-1]:  # the newest date is always published
            assert load["published"] and date in load["manifest"]["logical_date"], load
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


def test_the_ui_shows_every_task_the_shards_and_the_docs(stack):
    from stack_browser import check_ui

    senv = stack["stack_env"]
    check_ui(senv["AIRFLOW__API__BASE_URL"], senv["AIRFLOW_ADMIN_USERNAME"], senv["AIRFLOW_ADMIN_PASSWORD"],
             dag_id=DAG_ID, run_id=TRIGGERED[0], tasks=TASKS, shards=TRIGGERED[2], screenshots=artifacts_dir())


def test_stop_and_start_keep_the_run_history(stack):
    api, env, stack_dir = stack["api"], stack["env"], stack["dir"]
    before = {r["dag_run_id"]: r["state"] for r in api.dag_runs()}
    assert before[TRIGGERED[0]] == "success" and len(before) == 1 + len(BACKFILL_DATES)
    task_logs = stack_dir / "airflow" / "logs" / f"dag_id={DAG_ID}" / f"run_id={TRIGGERED[0]}"
    assert task_logs.is_dir()

    # The clock goes on at the next start; paused, the DAG gets its scheduled run only when the worker-kill
    # test unpauses it and watches for a training stage (else the run may finish before that test looks).
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": True})
    stack_command("stop", env=env, timeout_s=600)
    status = stack_command("status", env=env, check=False)
    assert status.returncode != 0 and "running" not in status.stdout.replace("STATE", ""), status.stdout
    assert (Path(stack["stack_env"]["PG_DIR"]) / "data" / "PG_VERSION").is_file() and task_logs.is_dir()
    # An operator's change of setting: edit stack.env, start again. The clock goes on for the next tests.
    env_file = stack_dir / "stack.env"
    env_file.write_text(env_file.read_text().replace("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE='False'",
                                                     "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE='True'"))
    stack_command("start", env=env, timeout_s=900)
    record_sessions(stack)
    senv = stack_env(stack_dir)
    assert senv["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "True"
    api = stack["api"] = AirflowApi(senv["AIRFLOW__API__BASE_URL"], senv["AIRFLOW_ADMIN_USERNAME"],
                                    senv["AIRFLOW_ADMIN_PASSWORD"])
    after = {r["dag_run_id"]: r["state"] for r in api.dag_runs() if r["dag_run_id"] in before}
    assert after == before
    # The Redis store kept the published run as well.
    import pyarrow.parquet as pq

    from recsys_tasks.config import Config
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.store import fetch, read_manifest

    client = store_client(stack)
    manifest = read_manifest(client)
    assert manifest["run_id"] in before
    users = pq.read_table(RunPaths(run_dir(stack, manifest["run_id"])).recommendations, columns=["user_id"])
    assert fetch(client, int(users.column("user_id")[0].as_py()), Config().store)["run_id"] == manifest["run_id"]


def test_a_gpu_worker_killed_mid_task_is_replaced_in_minutes(stack):
    """With the clock on, the unpaused DAG gets its scheduled run for yesterday; one GPU worker is killed
    (every process of it, as when its machine dies) during a training stage: the scheduler notices the lost
    heartbeat, retries the task on the other worker and the run succeeds; `restart` brings the worker back."""
    api, env = stack["api"], stack["env"]
    api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})  # paused since the stop/start test
    deadline = time.monotonic() + 900
    victim = None
    while victim is None:
        scheduled = [r for r in api.dag_runs() if r["run_type"] == "scheduled"]
        if scheduled:
            run_id = scheduled[0]["dag_run_id"]
            running = [t for t in api.task_instances(run_id)
                       if t["task_id"] in ("transform", "fit_retrieval", "fit_ranking") and t["state"] == "running"
                       and t["hostname"] in GPU_WORKERS]
            victim = running[0] if running else None
        assert time.monotonic() < deadline, "no scheduled run reached a training stage within 900 s"
        if victim is None:
            time.sleep(0.5)
    worker = victim["hostname"]
    sid = service_sessions(stack["dir"])[worker]
    killed_at = datetime.now(timezone.utc)
    for pid in session_members(sid):
        os.kill(pid, signal.SIGKILL)

    stack["stack_env"]["SCHEDULED_RUN"] = run_id
    api.wait_for_runs({run_id}, timeout_s=RUN_TIMEOUT_S + RECOVERY_BOUND_S)
    check_mapped_run(stack, run_id, TRIGGERED[2], TINY["scoring.top_n"])
    retried = next(t for t in api.task_instances(run_id) if t["task_id"] == victim["task_id"])
    (other,) = GPU_WORKERS - {worker}
    assert retried["try_number"] >= 2 and retried["hostname"] == other, retried
    recovery_s = (parse_time(retried["start_date"]) - killed_at).total_seconds()
    record = {"task": victim["task_id"], "killed": worker, "killed_at": killed_at.isoformat(),
              "retry_started": retried["start_date"], "recovery_s": round(recovery_s, 1)}
    (artifacts_dir() / "worker_kill.json").write_text(json.dumps(record, indent=2))
    print("worker kill:", record)
    assert recovery_s <= RECOVERY_BOUND_S, record

    restarted = stack_command("restart", worker, env=env, timeout_s=600)
    assert f"{worker}: ok" in restarted.stderr
    record_sessions(stack)
    assert service_sessions(stack["dir"])[worker] != sid
    status = stack_command("status", env=env).stdout
    assert "UNHEALTHY" not in status and "DOWN" not in status, status


def test_a_publish_starts_a_finished_downstream_run(stack):
    """recsys_recommendations_published is unpaused on creation and its `announce` runs on the default
    queue's worker: the scheduled run's publish produces a finished run that names it."""
    api = stack["api"]
    assert api.get(f"/api/v2/dags/{DOWNSTREAM_DAG_ID}")["is_paused"] is False
    published = stack["stack_env"]["SCHEDULED_RUN"]
    deadline = time.monotonic() + 300
    while True:
        finished = [r for r in api.dag_runs(DOWNSTREAM_DAG_ID) if r["state"] == "success"]
        announced = {r["dag_run_id"]: api.xcom(DOWNSTREAM_DAG_ID, r["dag_run_id"], "announce") for r in finished}
        matching = [rid for rid, value in announced.items() if published in {e.get("run_id") for e in value}]
        if matching:
            break
        failed = [r["dag_run_id"] for r in api.dag_runs(DOWNSTREAM_DAG_ID) if r["state"] == "failed"]
        assert not failed, failed
        assert time.monotonic() < deadline, (announced, api.dag_runs(DOWNSTREAM_DAG_ID))
        time.sleep(3)
    (announce,) = api.task_instances(matching[0], DOWNSTREAM_DAG_ID)
    assert announce["state"] == "success" and announce["queue"] == "default", announce
    assert announce["hostname"] == "default-worker", announce
