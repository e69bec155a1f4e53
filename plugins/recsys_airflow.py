"""Airflow-only glue for the offline_batch_recsys DAG: config from params, run directory, Redis client, shards.

Everything here needs Airflow; everything else lives in the Airflow-free ``recsys_tasks`` package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The Airflow connection of the recommendations store.
REDIS_CONN_ID = "redis_recs"
# The YAML config file every task reads (see recsys_tasks.config.load_config).
CONFIG_FILE_ENV = "RECSYS_CONFIG"
# A worker's host name for its task instances (worker_hostname); scripts/stack.sh sets it per worker.
WORKER_HOSTNAME_ENV = "RECSYS_WORKER_HOSTNAME"
# The published recommendations as an Airflow Asset (recommendations_asset).
RECOMMENDATIONS_ASSET_NAME = "offline_batch_recsys_recommendations"
RECOMMENDATIONS_ASSET_URI = "redis://redis-recs/offline_batch_recsys/recommendations"


def task_config(context: Any) -> Any:
    """Config defaults <- YAML file named by ``$RECSYS_CONFIG`` <- ``RECSYS__*`` env <- non-null DAG params.

    Unless the run's ``data.seed`` param is set, the data seed is tied to the run's logical date
    (:func:`seed_for_date`): every date of a backfill gets its own data, and rerunning a date
    reproduces it.
    """
    from recsys_tasks.config import load_config

    overrides = {k: v for k, v in (context.get("params") or {}).items() if "." in k and v is not None}
    config = load_config(os.environ.get(CONFIG_FILE_ENV) or None, overrides=overrides)
    date = context.get("logical_date")
    if "data.seed" not in overrides and date is not None:
        config = config.with_overrides({"data.seed": seed_for_date(config.data.seed, date)})
    # Daily partitions: the window ends at the run's logical date, so each backfill date reads its own.
    day = date or getattr(context.get("dag_run"), "run_after", None)
    if config.data.partition_root and "data.end_date" not in overrides and day is not None:
        config = config.with_overrides({"data.end_date": day.strftime("%Y-%m-%d")}, origin="logical date")
    return config


def seed_for_date(base_seed: int, date: Any) -> int:
    """The configured seed plus the date as ``YYYYMMDD`` (e.g. 42 on 2026-11-20 gives 20261162)."""
    return int(base_seed) + int(date.strftime("%Y%m%d"))


def task_run_dir(context: Any, config: Any) -> Path:
    """``<artifact_root>/<dag_id>/<run_id>``: scheduled runs, manual runs and backfills never share one.

    The first task of a run records the run id, logical date and start time in its ``run.json`` (retention
    orders runs by it and asks Airflow whether that run id is still running)."""
    from recsys_tasks.ops.retention import record_run
    from recsys_tasks.paths import RunPaths, run_dir_for

    run_dir = run_dir_for(config.artifact_root, context["dag"].dag_id, context["run_id"])
    record_run(RunPaths(run_dir), run_id=context["run_id"], logical_date=logical_date(context))
    return run_dir


def logical_date(context: Any) -> str:
    """The run's logical date; a run triggered without one (Airflow 3 allows it) uses its ``run_after``."""
    value = context.get("logical_date") or getattr(context.get("dag_run"), "run_after", None)
    return value.isoformat() if value is not None else ""


def redis_client(conn_id: str = REDIS_CONN_ID, settings: Any = None) -> Any:
    """A redis-py client from the Airflow connection: host, port, login (ACL user), password, and the extras
    ``db``, ``ssl``, ``ssl_ca_certs``, ``ssl_cert_reqs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``;
    with the extra ``{"cluster": true}`` (and optionally ``startup_nodes``) it is a ``RedisCluster``, which the
    load and ``fetch`` handle as well.

    Built by ``recsys_tasks.store.connect`` with the timeouts and tries of ``settings`` (``store.*``), like a
    client from ``--redis-url``: the hook's own client has none, and a cluster client connects while it is
    built. Secrets stay in the connection (Airflow masks them in task logs).
    """
    from airflow.providers.redis.hooks.redis import RedisHook

    from recsys_tasks.store.connect import connect_fields

    connection = RedisHook.get_connection(conn_id)
    return connect_fields(settings, host=connection.host, port=connection.port, login=connection.login,
                          password=connection.password, extra=connection.extra_dejson)


def run_stage(name: str, context: Any) -> dict[str, Any]:
    """Run one pipeline stage for this task instance and return its summary (the XCom)."""
    import logging

    from recsys_tasks.stages import run_stage as run

    logging.getLogger("recsys_tasks").setLevel(logging.INFO)
    config = task_config(context)
    run_dir = task_run_dir(context, config)
    client = redis_client(settings=config.store) if name == "load_redis" else None
    return run(name, config, run_dir, redis_client=client, run_id=context["run_id"], logical_date=logical_date(context))


def plan_scoring_shards(context: Any) -> list[int]:
    """Clear the run's recommendation parts, record the shard count; the shard indices feed ``.expand()``."""
    from recsys_tasks.scoring.stage import plan_shards

    config = task_config(context)
    return plan_shards(config, task_run_dir(context, config))["shards"]


def score_shard(shard_index: int, context: Any) -> dict[str, Any]:
    """One mapped ``score`` task instance: its shard's users into its own part file."""
    import logging

    from recsys_tasks.scoring.stage import score_shard as run

    logging.getLogger("recsys_tasks").setLevel(logging.INFO)
    config = task_config(context)
    return run(config, task_run_dir(context, config), int(shard_index))


def collect_scoring_shards(context: Any) -> dict[str, Any]:
    """After all shards: check every planned part is in (and nothing else) and write the score summary."""
    from recsys_tasks.scoring.stage import collect_shards

    config = task_config(context)
    return collect_shards(config, task_run_dir(context, config))


def worker_hostname() -> str:
    """The host name a worker reports for its task instances (``[core] hostname_callable``).

    ``$RECSYS_WORKER_HOSTNAME`` when set, else Airflow's default (the FQDN). scripts/stack.sh runs both
    GPU workers on one machine and sets it to each worker's Celery name, so the UI and the metadata DB tell
    them apart; in docker-compose every worker is its own container with its own host name already.
    """
    name = os.environ.get(WORKER_HOSTNAME_ENV)
    if name:
        return name
    from airflow.utils.net import getfqdn

    return getfqdn()


def recommendations_asset() -> Any:
    """The published recommendations (the documents and manifest in the ``redis_recs`` Redis) as an Asset:
    ``load_redis`` emits an event each time it publishes, so DAGs scheduled on it run after every publish."""
    from airflow.sdk import Asset

    return Asset(name=RECOMMENDATIONS_ASSET_NAME, uri=RECOMMENDATIONS_ASSET_URI, group="recsys")


def load_and_announce(context: Any) -> dict[str, Any]:
    """``load_redis``, then an asset event carrying the run id, logical date and user count.

    A load that does not publish emits no event: a refused one (quality gate) fails the task at once, without
    retries, and a skipped
    one (Redis already holds a newer logical date) ends the task as *skipped*, which Airflow does not
    count as an update of its outlets. Its summary is in ``summaries/load_redis.json`` and the log.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from recsys_tasks.evaluation.gate import QualityGateError

    try:
        summary = run_stage("load_redis", context)
    except QualityGateError as exc:
        # The same artifacts fail the same checks again: no retries (they would hold the gpu slot for 15 min).
        raise AirflowFailException(str(exc)) from exc
    if not summary.get("published"):
        raise AirflowSkipException(f"load_redis did not publish: {summary.get('reason', '')}")
    manifest = summary.get("manifest") or {}
    context["outlet_events"][recommendations_asset()].extra = {
        "run_id": summary["run_id"],
        "logical_date": summary["logical_date"],
        "users": summary["users"],
        "completed_at": manifest.get("completed_at"),
        "manifest_key": task_config(context).store.manifest_key,
    }
    return summary


def prune_run_dirs(context: Any) -> dict[str, Any]:
    """Keep the newest ``retention.keep_runs`` run directories of this DAG; never the run the Redis manifest
    names, this run, or a run Airflow reports as queued or running."""
    from recsys_tasks.ops.retention import prune_runs
    from recsys_tasks.paths import run_dir_for
    from recsys_tasks.store import read_manifest

    config = task_config(context)
    dag_id = context["dag"].dag_id
    protected = [task_run_dir(context, config)]
    # An unreachable Redis fails the task: nothing deleted.
    manifest = read_manifest(redis_client(settings=config.store), config.store)
    if manifest and manifest.get("run_id"):
        protected.append(run_dir_for(config.artifact_root, dag_id, manifest["run_id"]))

    def is_running(run_id: str) -> bool:
        # Asked of Airflow's API server through the task SDK (tasks have no metadata-database access).
        return context["ti"].get_dr_count(dag_id=dag_id, run_ids=[run_id], states=["queued", "running"]) > 0

    return prune_runs(Path(config.artifact_root) / dag_id, keep_runs=config.retention.keep_runs,
                      protected=protected, is_running=is_running)
