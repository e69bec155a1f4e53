"""What the load says and does when Redis cannot take the run: no room, no RedisJSON, out of memory
mid-load, unreachable mid-load (exactly ``retry_attempts`` tries), each against a real Redis process."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import redis
from conftest import make_run, rows_for, write_recs

from recsys_tasks.config import Config, StoreConfig
from recsys_tasks.ops.local_redis import LocalRedis, free_port
from recsys_tasks.store import (
    CapacityError,
    RedisJSONMissingError,
    RedisUnavailableError,
    StoreOutOfMemoryError,
    fetch,
    load_redis,
    publish,
    read_manifest,
)

SETTINGS = StoreConfig(pipeline_chunk_keys=100, ttl_s=3600, retry_attempts=3, retry_backoff_s=0.05,
                       retry_backoff_max_s=0.2, lock_ttl_s=60, lock_wait_s=5, memory_sample_keys=20)
DAY = "2026-12-{:02d}T00:00:00+00:00"


def snapshot(client):
    """Every key's DUMP (type, value and encoding, byte for byte) and whether it has a TTL."""
    return {key: (client.dump(key), client.ttl(key) > 0) for key in client.scan_iter(count=1000)}


def test_a_run_that_does_not_fit_is_refused_before_any_write_and_redis_is_byte_identical(tmp_path, aof_client):
    publish(aof_client, write_recs(tmp_path / "a.parquet", rows_for(range(200), 0)), SETTINGS, run_id="run-a",
            logical_date=DAY.format(1), generated_at="g")
    aof_client.set("OTHER:1", "an application's key")
    aof_client.hset("OTHER:2", mapping={"a": "1"})
    used = int(aof_client.info("memory")["used_memory"])
    aof_client.config_set("maxmemory-policy", "noeviction")
    aof_client.config_set("maxmemory", used + 300_000)  # room for ~300 kB; the run needs several MB
    before = snapshot(aof_client)
    big = write_recs(tmp_path / "b.parquet", rows_for(range(10_000), 5))
    with pytest.raises(CapacityError) as refused:
        publish(aof_client, big, SETTINGS, run_id="run-b", logical_date=DAY.format(2), generated_at="g")
    message = str(refused.value)
    assert "nothing was written" in message and "needs ~" in message and " free (used_memory " in message
    needed, free = (int(part.split(" ")[0].replace(",", "")) for part in message.split("needs ~")[1].split(
        " bytes for ")[0:1] + message.split("but has ")[1:2])
    assert needed > free > 0
    assert snapshot(aof_client) == before  # byte-identical: nothing written, nothing left behind
    assert read_manifest(aof_client, SETTINGS)["run_id"] == "run-a"


def test_redis_without_redisjson_is_named_with_how_to_load_it(tmp_path, tmp_path_factory):
    plain = LocalRedis(free_port(), tmp_path_factory.mktemp("plain_redis"), json_module=False).start()
    try:
        aof_client = redis.Redis(port=plain.port)
        path = write_recs(tmp_path / "r.parquet", rows_for(range(10), 0))
        with pytest.raises(RedisJSONMissingError, match=r"no RedisJSON module \(module name 'ReJSON'.*--loadmodule "
                                                        r".*rejson\.so.*redis-stack"):
            publish(aof_client, path, SETTINGS, run_id="r", logical_date=DAY.format(1), generated_at="g")
        assert aof_client.dbsize() == 0
        with pytest.raises(RedisJSONMissingError, match="ReJSON"):
            fetch(aof_client, 1, SETTINGS)
    finally:
        plain.stop()


def test_out_of_memory_mid_load_names_the_published_run_and_a_rerun_completes(tmp_path, aof_client):
    publish(aof_client, write_recs(tmp_path / "a.parquet", rows_for(range(100), 0)), SETTINGS, run_id="run-a",
            logical_date=DAY.format(1), generated_at="g")
    aof_client.config_set("maxmemory-policy", "noeviction")
    path = write_recs(tmp_path / "b.parquet", rows_for(range(2000), 9))
    seen = []

    def fill_up(done, total):
        seen.append(done)
        if done >= 500 and len(seen) == 5:  # the fifth acknowledged chunk: memory runs out from here on
            aof_client.config_set("maxmemory", 1)

    with pytest.raises(StoreOutOfMemoryError) as oom:
        publish(aof_client, path, SETTINGS, run_id="run-b", logical_date=DAY.format(2), generated_at="g",
                on_progress=fill_up)
    message = str(oom.value)
    # The chunk in flight when memory ran out may have been taken whole or in part: counted if acknowledged.
    assert f"ran out of memory after {seen[-1]} of 2000 documents of run 'run-b'" in message and 500 <= seen[-1] < 2000
    assert "RECSYS:MANIFEST still names run 'run-a' (2026-12-01T00:00:00+00:00)" in message
    assert "rerun the load: it completes the run" in message
    aof_client.config_set("maxmemory", 0)
    assert read_manifest(aof_client, SETTINGS)["run_id"] == "run-a"
    summary = publish(aof_client, path, SETTINGS, run_id="run-b", logical_date=DAY.format(2), generated_at="g")
    assert summary["published"]
    assert read_manifest(aof_client, SETTINGS)["run_id"] == "run-b"
    assert {json.loads(aof_client.execute_command("JSON.GET", f"USER:{u}"))["run_id"] for u in range(2000)} == {"run-b"}


class CountingConnection(redis.Connection):
    """A real connection that counts its connection attempts (each TCP connect it makes)."""

    attempts = 0

    def _connect(self):
        CountingConnection.attempts += 1
        return super()._connect()


def test_killed_redis_gets_exactly_retry_attempts_tries_and_progress_counts_acknowledged(
        tmp_path, aof_redis, aof_client, caplog):
    settings = dataclasses.replace(SETTINGS, retry_attempts=4)
    path = write_recs(tmp_path / "b.parquet", rows_for(range(2000), 3))
    counting = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=CountingConnection,
                                                                port=aof_redis.port))
    acknowledged, at_kill = [], []

    def kill(done, total):
        acknowledged.append(done)
        if done >= 600 and not at_kill:
            at_kill.append(CountingConnection.attempts)
            aof_redis.kill()

    with caplog.at_level(logging.WARNING, logger="recsys_tasks"), pytest.raises(RedisUnavailableError) as failure:
        publish(counting, path, settings, run_id="run-k", logical_date=DAY.format(3), generated_at="g",
                on_progress=kill)
    # The try that failed, then retry_attempts - 1 more, each one connection attempt after a wait.
    assert CountingConnection.attempts - at_kill[0] == settings.retry_attempts - 1
    assert caplog.text.count("retrying in") == settings.retry_attempts - 1
    assert f"after {settings.retry_attempts} tries" in str(failure.value)
    assert f"{acknowledged[-1]} of 2000 documents acknowledged" in str(failure.value)
    aof_redis.start()  # from its append-only file: every acknowledged write is there
    written = sum(1 for u in range(2000) if aof_client.exists(f"USER:{u}"))
    assert 600 <= acknowledged[-1] <= written < 2000


def test_a_skipped_load_does_not_claim_it_published(tmp_path, aof_client, caplog):
    config = Config().with_overrides({"store": dataclasses.asdict(SETTINGS)})
    newer, older = make_run(tmp_path, "newer", rows_for(range(50), 1)), make_run(tmp_path, "older", rows_for(
        range(40), 2))
    load_redis(config, newer.root, aof_client, run_id="day-5", logical_date=DAY.format(5))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsys_tasks"):
        summary = load_redis(config, older.root, aof_client, run_id="day-2", logical_date=DAY.format(2))
    assert (summary["status"], summary["published"]) == ("skipped", False)
    lines = [r.getMessage() for r in caplog.records]
    assert not any(line.startswith("published ") for line in lines)
    assert any(line.startswith("NOT published (skipped)") and "run 'day-5'" in line for line in lines)
