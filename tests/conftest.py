"""Shared fixtures: a real Redis with RedisJSON, and one tiny real pipeline run shared by the session."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _terminate(signum, frame):
    """SIGTERM (a CI timeout, scripts/run_tests.sh stopping its second process) ends the session like ^C,
    so fixtures tear down: the Redis servers and the native stack are stopped, not orphaned."""
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _terminate)

REPO = Path(__file__).resolve().parents[1]

# Test tiers (markers registered in pyproject.toml). `make test-unit` runs `-m unit`; `make test` and CI
# run every tier. A module's tier is its entry below, a single test's entry (module::test) overrides it,
# and a test that carries a tier marker itself keeps it. A module missing here counts as integration.
#   unit         no server, no training, no Airflow run: pure Python/numpy, static files, the package's shape
#   integration  a real Redis (one node or a cluster), real NVTabular/TensorFlow training, the DAG parsed
#   e2e          the whole DAG run (DAG.test / airflow dags test) or the production stack
TIERS = ("unit", "integration", "e2e")
TEST_TIERS = {
    "test_config.py": "unit",
    "test_daily.py": "unit",
    "test_data.py": "unit",
    "test_data.py::test_planted_schema_is_merlins_aliccp_raw": "integration",  # imports Merlin's generator
    "test_deploy.py": "unit",
    "test_scale.py": "unit",
    "test_runtime.py": "unit",
    "test_stack_parity.py": "unit",
    "test_store_structure.py": "unit",
    "test_store_structure.py::test_every_store_module_imports_alone_in_a_fresh_interpreter": "integration",
    "test_structure.py": "unit",
    "test_worker_compat.py": "unit",
    "test_approximate.py": "integration",
    "test_batch_remainder.py": "integration",
    "test_bench.py": "integration",
    "test_bench_store.py": "integration",
    "test_cluster.py": "integration",
    "test_dag.py": "integration",
    "test_pipeline.py": "integration",
    "test_quality.py": "integration",
    "test_reliability.py": "integration",
    "test_security.py": "integration",
    "test_sharding.py": "integration",
    "test_store.py": "integration",
    "test_store_errors.py": "integration",
    "test_training.py": "integration",
    "test_validation.py": "integration",
    "test_assets.py": "e2e",
    "test_bench_pipeline.py": "e2e",
    "test_stack.py": "e2e",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        module = item.path.name
        tier = TEST_TIERS.get(f"{module}::{item.originalname}") or TEST_TIERS.get(module, "integration")
        item.add_marker(getattr(pytest.mark, tier))

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
    from recsys_tasks.ops.local_redis import LocalRedis, free_port

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


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory):
    """A Redis (one per test module) that persists every acknowledged write (append-only file), so a test
    can kill it and start it again with its data."""
    from recsys_tasks.ops.local_redis import LocalRedis, free_port

    server = LocalRedis(free_port(), tmp_path_factory.mktemp("aof_redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture
def aof_client(aof_redis):
    """A client of ``aof_redis`` (started again if a test left it down), empty and without a memory limit."""
    import redis

    if not aof_redis.ping():
        aof_redis.start()
    client = redis.Redis(port=aof_redis.port)
    client.config_set("maxmemory", 0)
    client.flushdb()
    yield client
    client.config_set("maxmemory", 0)
    client.close()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from recsys_tasks.config import Config

    root = tmp_path_factory.mktemp("artifacts")
    return Config().with_overrides({**TINY, "artifact_root": str(root)})


@pytest.fixture(scope="session")
def pipeline_run(tiny_config):
    """Stages 1-5 run once for real (NVTabular, TensorFlow); tests read the run directory."""
    from recsys_tasks.paths import RunPaths, run_dir_for
    from recsys_tasks.stages import run_stage

    run_dir = run_dir_for(tiny_config.artifact_root, "tests", "session_run")
    summaries = {}
    for name in ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score"):
        summaries[name] = run_stage(name, tiny_config, run_dir)
    return tiny_config, RunPaths(run_dir), summaries


def finish_scored_run(paths) -> None:
    """Complete a hand-made run directory (recommendation parts + score summary) so `load_redis` accepts it.

    Writes what `plan_scoring`, the shard tasks and `evaluate` leave beside the parts: the shard plan
    and shard summaries, the item table, a report that passes the quality gate, and the fallback list.
    Tests of loading semantics (faults, rollback, security, soak) use it; the gate and the shard
    checks themselves are tested on real runs in test_quality.py and test_sharding.py.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_tasks.evaluation.evaluate import recommendations_fingerprint

    parts = sorted(paths.recommendations.glob("*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    users = sum(t.num_rows for t in tables)
    items = sorted({i for t in tables for items in t.column("recommendations").to_pylist() for i in items})
    paths.scoring_shards.mkdir(parents=True, exist_ok=True)
    paths.scoring_plan.write_text(json.dumps({"num_shards": len(parts), "users": users,
                                              "shards": list(range(len(parts))), "retrieval_kernel": "tiled"}))
    for index, table in enumerate(tables):
        paths.shard_summary(index).write_text(json.dumps(
            {"shard_index": index, "users": table.num_rows, "seconds": 0.1, "short_lists": 0,
             "generated_at": "2026-12-01T01:00:00+00:00"}))
    paths.retrieval.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": list(range(len(items))), "item_id_raw": items}), paths.item_features)
    report = {
        "source": "hand-made test run",
        "stages": {},
        "retrieval": {"cutoffs": [10], "model": {"recall": {"10": 0.3}}, "popularity": {"recall": {"10": 0.1}}},
        "ranking": {"auc": 0.9, "popularity_auc": 0.6, "log_loss": 0.3},
        "lists": {"empty_lists": 0, "short_lists": 0, "duplicate_lists": 0, "lists_with_seen_item": 0,
                  "users_with_list": users, "top_n": 0, "user_coverage": 1.0, "catalog_users": users,
                  "recall_at_n": 0.3, "retrieval_order_recall_at_n": 0.3, "catalog_coverage": 1.0,
                  "exposure_gini": 0.5, "full_list_share": 1.0, "users_evaluated": users, "ndcg_at_n": 0.2,
                  "popularity_recall_at_n": 0.1,
                  "paired_difference": {"popularity": {"recall_at_n": {"mean": 0.2, "ci95": [0.1, 0.3]}},
                                        "retrieval_order": {"recall_at_n": {"mean": 0.0, "ci95": [-0.1, 0.1]}}}},
        "recommendations_sha256": recommendations_fingerprint(paths.recommendations),
    }
    paths.report_json.write_text(json.dumps(report))
    paths.evaluation.mkdir(parents=True, exist_ok=True)
    paths.fallback_list.write_text(json.dumps({"recommendations": items[:5], "scores": [0.5] * len(items[:5])}))


def rows_for(user_ids, salt):
    """Lists that differ per run (``salt``), so a document mixed from two runs would be visible."""
    return [{"user_id": int(u), "recommendations": [int(u) + salt, int(u) + salt + 1], "scores": [0.75, 0.25]}
            for u in user_ids]


def write_recs(path, rows):
    """``rows`` as a recommendations parquet part, in the schema the 'score' stage writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_tasks.scoring.stage import recommendations_schema

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"user_id_encoded": i, **r} for i, r in enumerate(rows)],
                                        schema=recommendations_schema()), path)
    return path


def make_run(tmp_path, name, rows):
    """A run directory holding what the 'score' stage leaves behind."""
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.runtime import write_summary

    paths = RunPaths(tmp_path / name)
    write_recs(paths.recommendation_part(0), rows)
    write_summary(paths, "score", {"stage": "score", "generated_at": "2026-12-01T01:00:00+00:00"})
    finish_scored_run(paths)
    return paths
