"""Helpers for the Celery-stack test: start/stop scripts/stack.sh, read its environment, and talk to its
REST API (token login, DAG runs, task instances) with the standard library only."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from conftest import REPO

STACK_SH = REPO / "scripts" / "stack.sh"
DAG_ID = "offline_batch_recsys"


def stack_command(*args: str, env: dict[str, str], timeout_s: float = 900, check: bool = True
                  ) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(STACK_SH), *args], env=env, capture_output=True, text=True,
                            timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"stack.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def stack_env(stack_dir: Path) -> dict[str, str]:
    """The stack's environment as its services see it (stack.env sourced by bash)."""
    out = subprocess.run(["bash", "-c", f"set -a; source {stack_dir / 'stack.env'}; env -0"],
                         capture_output=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def service_sessions(stack_dir: Path) -> dict[str, int]:
    """Service name -> the session its pid file names (stack.sh writes ``pid start-time``)."""
    return {p.stem: int(p.read_text().split()[0]) for p in (stack_dir / "pids").glob("*.pid")}


def session_members(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def stack_processes(stack_env: dict[str, str], sessions: set[int], outsiders: set[int]) -> list[str]:
    """``pid sid args`` of every live process of the stack (what `down` must leave empty): in one of the
    services' sessions, or running with the stack's AIRFLOW_HOME in its environment, except the outsiders
    (processes a user started with the stack's environment, which `down` must leave alone)."""
    found = []
    own_sid = os.getsid(0)
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        pid, sid, stat, _args = (line.split(None, 3) + [""])[:4]
        # A zombie is dead already (in containers whose init does not reap orphans, they stay listed).
        if stat.startswith("Z"):
            continue
        if int(sid) != own_sid and int(sid) in sessions and int(pid) not in outsiders:
            found.append(line.strip())
    for proc in psutil.process_iter():
        if proc.pid in outsiders or proc.pid == os.getpid():
            continue
        try:  # a process may exit between the listing and the read, and another user's environment is closed
            if proc.environ().get("AIRFLOW_HOME") == stack_env["AIRFLOW_HOME"]:
                found.append(f"{proc.pid} (stack environment) {' '.join(proc.cmdline())[:200]!r}")
        except psutil.Error:
            continue
    return found


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class AirflowApi:
    """A logged-in client of the stack's REST API (``/auth/token`` then ``Authorization: Bearer``)."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        token = self._request("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        self.token = token["access_token"]

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: HTTP {error.code} {error.read().decode()[:1000]}") from error
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, body)

    def dag_runs(self, dag_id: str = DAG_ID) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=logical_date")["dag_runs"]

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        quoted = urllib.request.quote(run_id, safe="")
        value = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/"
                         "return_value?deserialize=true")["value"]
        return json.loads(value) if isinstance(value, str) else value

    def wait_for_dag(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.get(f"/api/v2/dags/{DAG_ID}")
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)

    def wait_for_runs(self, run_ids: set[str], timeout_s: float) -> dict[str, dict]:
        """Poll until every run is finished; fail at once, with its failed tasks, when one fails."""
        deadline = time.monotonic() + timeout_s
        while True:
            runs = {r["dag_run_id"]: r for r in self.dag_runs() if r["dag_run_id"] in run_ids}
            failed = [r for r in runs.values() if r["state"] == "failed"]
            if failed:
                tasks = [(t["task_id"], t["map_index"], t["state"], t["hostname"])
                         for r in failed for t in self.task_instances(r["dag_run_id"]) if t["state"] != "success"]
                raise AssertionError(f"runs failed: {[r['dag_run_id'] for r in failed]}; tasks {tasks}")
            if len(runs) == len(run_ids) and all(r["state"] == "success" for r in runs.values()):
                return runs
            if time.monotonic() > deadline:
                states = {rid: r["state"] for rid, r in runs.items()}
                raise AssertionError(f"runs not finished after {timeout_s:.0f}s: {states}")
            time.sleep(5)
