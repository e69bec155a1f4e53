"""What the GPU-queue Celery workers need from the pipeline code: Dask options that cannot start worker
processes inside a Celery prefork child (a daemonic process) are refused or run as threads, not hung."""

from __future__ import annotations

import multiprocessing

import pytest

from recsys_tasks.config import ConfigError, TransformConfig


def _enter_cluster(kind: str, result: multiprocessing.Queue) -> None:
    from recsys_tasks.features.workflow import dask_cluster, in_daemonic_process

    try:
        with dask_cluster(TransformConfig(dask_cluster=kind, dask_workers=1)) as used:
            from distributed import get_client

            workers = get_client().scheduler_info()["workers"]
            result.put(("ok", in_daemonic_process(), used["dask_workers"], sorted(workers)))
    except ConfigError as error:
        result.put(("ConfigError", in_daemonic_process(), str(error), []))


def run_in_daemon(kind: str) -> tuple:
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    process = context.Process(target=_enter_cluster, args=(kind, result), daemon=True)
    process.start()
    try:
        return result.get(timeout=180)
    finally:
        process.join(timeout=60)


def test_local_cuda_is_refused_in_a_daemonic_process():
    outcome, daemonic, message, _ = run_in_daemon("local_cuda")
    assert daemonic and outcome == "ConfigError"
    assert "transform.dask_cluster=local_cuda" in message and "RECSYS__TRANSFORM__DASK_CLUSTER=none" in message


@pytest.mark.filterwarnings("ignore")
def test_local_runs_its_dask_workers_as_threads_in_a_daemonic_process():
    outcome, daemonic, workers, addresses = run_in_daemon("local")
    assert daemonic and outcome == "ok" and workers == 1
    # In-process workers have inproc:// addresses; worker processes would have tcp:// ones.
    assert all(a.startswith("inproc://") for a in addresses), addresses
