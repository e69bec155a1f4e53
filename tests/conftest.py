"""Shared fixtures: a real Redis with RedisJSON, and one tiny real pipeline run shared by the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]

# Small enough to train in seconds on 2 CPU cores, big enough that every stage has real work.
# The planted data is scaled down with it (150 users x 80 items) so that the tiny models still learn
# enough to pass the quality gate that load_redis runs.
TINY = {
    "data.num_rows": 4000,
    "data.num_users": 150,
    "data.num_items": 80,
    "retrieval.epochs": 4,
    "retrieval.batch_size_rows": 64,
    "retrieval.learning_rate": 0.01,
    "ranking.epochs": 3,
    "ranking.batch_size_rows": 128,
    "ranking.learning_rate": 0.01,
    "scoring.top_k": 20,
    "scoring.top_n": 5,
    "scoring.user_chunk_size": 64,
    "scoring.rank_batch_rows": 500,
    "store.pipeline_chunk_keys": 100,
}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from recsys_tasks.local_redis import LocalRedis, free_port

    server = LocalRedis(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from recsys_tasks.config import Config

    root = tmp_path_factory.mktemp("artifacts")
    return Config().with_overrides({**TINY, "artifact_root": str(root)})


@pytest.fixture(scope="session")
def pipeline_run(tiny_config):
    """Stages 1-5 run once for real (NVTabular, TensorFlow); tests read the run directory."""
    from recsys_tasks.cli import run_stage
    from recsys_tasks.paths import RunPaths, run_dir_for

    run_dir = run_dir_for(tiny_config.artifact_root, "tests", "session_run")
    summaries = {}
    for name in ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score"):
        summaries[name] = run_stage(name, tiny_config, run_dir)
    return tiny_config, RunPaths(run_dir), summaries
