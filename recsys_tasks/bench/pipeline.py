"""``python -m recsys_tasks bench-pipeline``: the whole DAG at a size, measured task by task.

Each point runs the real DAG with ``airflow dags test`` (its own Airflow home on SQLite, its own
artifact root, a throwaway Redis with RedisJSON unless ``--redis-url`` is given) and records, per task,
the seconds, the peak RSS of the task's process (its own ``VmHWM``: the stage resets the peak at its
start and reads it at its end, see :func:`recsys_tasks.runtime.reset_peak_rss`), the rows it handled and
rows/s, its CPU seconds, plus the machine's load average sampled every few seconds, so a slow figure
on a shared machine can be told apart from a slow stage. After the DAG, the training throughput of
both fits (Merlin's ``Loader`` streaming parquet) is measured against plain Keras ``model.fit`` of the
same model on in-memory arrays of the same rows.

``--preset FILE`` runs one point (a config YAML such as ``configs/scale-1m.yaml``); ``--sweep-users
10000,100000,1000000`` runs planted points of U users x U/10 items x 20 U impressions on top of the
preset. Results go to ``<out>/bench_pipeline.{json,md,png}`` (the PNG: seconds against users,
log-log, a line per stage). A point whose ``result.json`` is already in ``<out>/points/`` is not run
again (delete it, or pass ``--force``): an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runtime import get_logger
from .common import BenchError
from .pipeline_collect import DAG_ID, collect
from .pipeline_report import write_outputs
from .training import training_throughput

log = get_logger("bench_pipeline")

REPO = Path(__file__).resolve().parents[2]
LOGICAL_DATE = "2026-11-20T00:00:00+00:00"
IMPRESSIONS_PER_USER = 20
USERS_PER_ITEM = 10
STAGE_LINE = re.compile(r"stage (\w+) (starting (?:on|in) \S+|done in [0-9.]+s)")
LOAD_SAMPLE_S = 5.0


# --------------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------------


def sweep_overrides(users: int) -> dict[str, Any]:
    """Planted data of ``users`` users x users/10 items x 20 impressions per user."""
    return {"data": {"num_users": users, "num_items": max(1, users // USERS_PER_ITEM),
                     "num_rows": IMPRESSIONS_PER_USER * users}}


def point_config(preset: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's YAML mapping with the point's overrides merged in (checked by building the Config)."""
    import yaml

    from ..config import load_config

    base: dict[str, Any] = {}
    if preset is not None:
        base = yaml.safe_load(preset.read_text()) or {}
    merged = json.loads(json.dumps(base))
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    merged.pop("artifact_root", None)  # each point has its own
    load_config(None, overrides=merged, environ={})  # unknown keys or bad values fail here, before the DAG
    return merged


def _point_env(point_dir: Path, config_file: Path, redis_url: str) -> dict[str, str]:
    """Environment of an isolated ``airflow dags test``: its own home, artifacts and config file."""
    dags, plugins = REPO / "dags", REPO / "plugins"
    if not (dags / f"{DAG_ID}.py").exists():
        raise BenchError(f"{dags}/{DAG_ID}.py not found: bench-pipeline runs from a checkout of this repository")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS__", "AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": f"{REPO}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO),
        "AIRFLOW_HOME": str(point_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "RECSYS__ARTIFACT_ROOT": str(point_dir / "artifacts"),
        "RECSYS_CONFIG": str(config_file),
        "AIRFLOW_CONN_REDIS_RECS": redis_url,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",  # task log lines reach the progress reader as they are written
    })
    return env


class LoadSampler:
    """Samples the 1-minute load average in a thread while a point runs."""

    def __init__(self, interval_s: float = LOAD_SAMPLE_S):
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self._start, 1), os.getloadavg()[0]))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def latest(self) -> float:
        return self.samples[-1][1] if self.samples else float("nan")

    def summary(self) -> dict[str, Any]:
        values = [v for _, v in self.samples]
        return {
            "cores": os.cpu_count(),
            "samples": len(values),
            "mean_1min": round(sum(values) / len(values), 2) if values else None,
            "max_1min": round(max(values), 2) if values else None,
            "interval_s": self.interval_s,
        }


def _airflow(env: dict[str, str], *args: str, log_file: Path) -> None:
    with log_file.open("a") as out:
        status = subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, check=False).returncode
    if status:
        raise BenchError(f"airflow {' '.join(args)} failed (exit {status}); see {log_file}")


def run_dag(point_dir: Path, env: dict[str, str], seed: int, label: str, deadline_s: float) -> dict[str, Any]:
    """``airflow dags test`` once, printing a progress line at each task's start and end.

    With ``deadline_s`` > 0 the DAG is stopped after that many seconds; the tasks finished by then are
    still reported (``complete`` is False and ``stopped_at_deadline`` True).
    """
    log_file = point_dir / "airflow-dags-test.log"
    setup_log = point_dir / "airflow-setup.log"
    _airflow(env, "db", "migrate", log_file=setup_log)
    _airflow(env, "pools", "set", "gpu", "1", "GPU slots", log_file=setup_log)
    started = time.monotonic()
    command = [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG_ID, LOGICAL_DATE,
               "-c", json.dumps({"data.seed": seed})]
    stopped = threading.Event()
    with LoadSampler() as load, log_file.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def stop_at_deadline() -> None:
            stopped.set()
            print(f"[{label}] deadline of {deadline_s:.0f}s reached: stopping the DAG (pid {process.pid})", flush=True)
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:  # airflow dags test may not stop on SIGTERM mid-task
                process.kill()

        timer = threading.Timer(deadline_s, stop_at_deadline) if deadline_s > 0 else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            match = STAGE_LINE.search(line)
            if match:
                print(f"[{label}] {time.monotonic() - started:7.0f}s  {match.group(1)} {match.group(2)}  "
                      f"(load {load.latest():.1f} on {os.cpu_count()} cores)", flush=True)
        status = process.wait()
        if timer is not None:
            timer.cancel()
    wall = round(time.monotonic() - started, 1)
    if status and not stopped.is_set():
        print(f"[{label}] airflow dags test failed (exit {status}) after {wall}s; see {log_file}", flush=True)
    return {"dag_wall_s": wall, "complete": status == 0, "exit_status": status,
            "stopped_at_deadline": stopped.is_set(), "load": load.summary(), "load_samples": load.samples,
            "log": str(log_file)}


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def run_point(name: str, config_map: dict[str, Any], out_dir: Path, redis_url: str, *, throughput_rows: int,
              throughput_epochs: int, force: bool, deadline_s: float = 0.0) -> dict[str, Any]:
    """One point: the DAG, its per-task figures, the training throughput; cached in ``result.json``."""
    import yaml

    from ..config import load_config

    point_dir = out_dir / "points" / name
    result_file = point_dir / "result.json"
    if result_file.exists() and not force:
        cached = json.loads(result_file.read_text())
        if cached.get("config") == config_map and cached.get("complete"):
            print(f"[{name}] already measured ({result_file}); skipping (--force reruns it)", flush=True)
            return cached
    if point_dir.exists():
        shutil.rmtree(point_dir)
    point_dir.mkdir(parents=True)
    config_file = point_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_map, sort_keys=True))
    config = load_config(config_file, environ={})
    data = config.data
    print(f"[{name}] {data.num_users} users x {data.num_items} items x {data.num_rows} impressions: "
          f"airflow dags test {DAG_ID} ({point_dir})", flush=True)
    env = _point_env(point_dir, config_file, redis_url)
    dag = run_dag(point_dir, env, data.seed, name, deadline_s)
    collected = collect(point_dir)
    result = {"name": name, "config": config_map, "users": data.num_users, "items": data.num_items,
              "impressions": data.num_rows, **dag, **collected}
    if throughput_rows > 0 and dag["complete"]:
        result["throughput"] = training_throughput(Path(collected["run_dir"]), config, throughput_rows,
                                                   throughput_epochs, point_dir / "throughput")
    result_file.write_text(json.dumps(result, indent=2))
    done = [t["task"] for t in collected["tasks"]]
    print(f"[{name}] {'done' if dag['complete'] else 'INCOMPLETE'}: DAG {dag['dag_wall_s']:.0f}s, tasks measured "
          f"{done}; results in {result_file}", flush=True)
    return result


def remeasure_throughput(name: str, out_dir: Path, *, throughput_rows: int, throughput_epochs: int) -> dict[str, Any]:
    """Measure only the training throughput again on a measured point's run directory (its DAG is not rerun)."""
    from ..config import load_config

    point_dir = out_dir / "points" / name
    result_file = point_dir / "result.json"
    if not result_file.exists():
        raise SystemExit(f"--throughput-only: {name} has no result in {result_file}; measure the point first")
    result = json.loads(result_file.read_text())
    config = load_config(point_dir / "config.yaml", environ={})
    print(f"[{name}] training throughput only, on {result['run_dir']}", flush=True)
    result["throughput"] = training_throughput(Path(result["run_dir"]), config, throughput_rows, throughput_epochs,
                                               point_dir / "throughput")
    result_file.write_text(json.dumps(result, indent=2))
    return result


def all_points(out_dir: Path) -> list[dict[str, Any]]:
    """Every point measured under ``out_dir`` (this run's and earlier runs'), by users."""
    points = [json.loads(f.read_text()) for f in sorted((out_dir / "points").glob("*/result.json"))]
    return sorted(points, key=lambda p: (p.get("users") or 0, p["name"]))


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="python -m recsys_tasks bench-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", type=Path, help="config YAML of the point (e.g. configs/scale-1m.yaml); "
                        "with --sweep-users, the base the sweep sizes are put on")
    parser.add_argument("--sweep-users", default="", help="comma-separated user counts, e.g. 10000,100000,1000000 "
                        "(items = users/10, impressions = 20 x users)")
    parser.add_argument("--out", type=Path, default=Path("bench-pipeline"), help="output directory")
    parser.add_argument("--redis-url", default="", help="Redis with RedisJSON to load into (default: a throwaway "
                        "local one)")
    parser.add_argument("--throughput-rows", type=int, default=500_000,
                        help="rows of each fit's training data for the Loader vs plain model.fit comparison (0: skip)")
    parser.add_argument("--throughput-epochs", type=int, default=2, help="epochs of that comparison (the first "
                        "is left out of the rate when there are two or more)")
    parser.add_argument("--force", action="store_true", help="rerun points that already have a result")
    parser.add_argument("--throughput-only", action="store_true", help="measure only the training throughput again "
                        "on the points' existing run directories (the DAG is not rerun)")
    parser.add_argument("--deadline-s", type=float, default=0.0, help="stop a point's DAG after this many seconds "
                        "and report the tasks finished by then (0: no limit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.preset is not None and not args.preset.is_file():
        parser.error(f"--preset {args.preset}: no such file")
    users = [int(u.replace("_", "")) for u in args.sweep_users.split(",") if u.strip()]
    if args.preset is None and not users:
        parser.error("give --preset FILE, --sweep-users N[,N...], or both")
    plan = ([(f"users-{u}", point_config(args.preset, sweep_overrides(u))) for u in users] if users
            else [(args.preset.stem, point_config(args.preset, {}))])
    args.out.mkdir(parents=True, exist_ok=True)

    server = None
    redis_url = args.redis_url
    if not redis_url and not args.throughput_only:
        import tempfile

        from ..ops.local_redis import LocalRedis, free_port

        # Its own directory (pid file): several bench-pipeline commands may share --out.
        server = LocalRedis(free_port(), Path(tempfile.mkdtemp(prefix="redis-", dir=args.out))).start()
        redis_url = server.url
    incomplete = []
    try:
        for index, (name, config_map) in enumerate(plan, start=1):
            print(f"==> point {index}/{len(plan)}: {name}", flush=True)
            if args.throughput_only:
                remeasure_throughput(name, args.out.resolve(), throughput_rows=args.throughput_rows,
                                     throughput_epochs=args.throughput_epochs)
                continue
            result = run_point(name, config_map, args.out.resolve(), redis_url, throughput_rows=args.throughput_rows,
                               throughput_epochs=args.throughput_epochs, force=args.force,
                               deadline_s=args.deadline_s)
            if not result["complete"]:
                incomplete.append(name)
            write_outputs(args.out, all_points(args.out))  # a partial sweep is reported too
    finally:
        if server is not None:
            server.stop()
    results = write_outputs(args.out, all_points(args.out))
    print((args.out / "bench_pipeline.md").read_text())
    failed = [t["target"] for t in results["targets"] if not t["met"]]
    if failed:
        print(f"targets not met at the largest point: {', '.join(failed)}", flush=True)
    if incomplete:
        print(f"points whose DAG did not complete: {', '.join(incomplete)}", file=sys.stderr)
        return 1
    return 0
