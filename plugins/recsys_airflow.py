"""Airflow-only glue for the offline_batch_recsys DAG: config from params, run directory, Redis client.

Everything here needs Airflow; everything else lives in the Airflow-free ``recsys_tasks`` package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REDIS_CONN_ID = "redis_recs"
CONFIG_FILE_ENV = "RECSYS_CONFIG"


def task_config(context: Any) -> Any:
    """Config defaults <- YAML file named by ``$RECSYS_CONFIG`` <- ``RECSYS__*`` env <- non-null DAG params."""
    from recsys_tasks.config import load_config

    overrides = {k: v for k, v in (context.get("params") or {}).items() if "." in k and v is not None}
    return load_config(os.environ.get(CONFIG_FILE_ENV) or None, overrides=overrides)


def task_run_dir(context: Any, config: Any) -> Path:
    """``<artifact_root>/<dag_id>/<run_id>``: scheduled runs, manual runs and backfills never share one."""
    from recsys_tasks.paths import run_dir_for

    return run_dir_for(config.artifact_root, context["dag"].dag_id, context["run_id"])


def logical_date(context: Any) -> str:
    """The run's logical date; a run triggered without one (Airflow 3 allows it) uses its ``run_after``."""
    value = context.get("logical_date") or getattr(context.get("dag_run"), "run_after", None)
    return value.isoformat() if value is not None else ""


def redis_client(conn_id: str = REDIS_CONN_ID) -> Any:
    """A redis-py client from the Airflow connection: host, port, login (ACL user), password, and the extras
    ``db``, ``ssl``, ``ssl_ca_certs``, ``ssl_cert_reqs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``.

    Secrets stay in the connection (Airflow masks them in task logs); the load adds retries and timeouts.
    """
    from airflow.providers.redis.hooks.redis import RedisHook

    return RedisHook(redis_conn_id=conn_id).get_conn()


def run_stage(name: str, context: Any) -> dict[str, Any]:
    """Run one pipeline stage for this task instance and return its summary (the XCom)."""
    import logging

    from recsys_tasks.cli import run_stage as run

    logging.getLogger("recsys_tasks").setLevel(logging.INFO)
    config = task_config(context)
    run_dir = task_run_dir(context, config)
    client = redis_client() if name == "load_redis" else None
    return run(name, config, run_dir, redis_client=client, run_id=context["run_id"], logical_date=logical_date(context))
