"""Redis faults, reruns, backfills, rollback, the load lock and bounded memory, against real Redis processes.

Faults are real process control: a Redis with an append-only file is SIGKILLed in the middle of a
load and started again, or SIGSTOPped so that clients time out. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from conftest import finish_scored_run, make_run, rows_for, write_recs

from recsys_tasks.config import Config, StoreConfig
from recsys_tasks.ops.local_redis import free_port
from recsys_tasks.paths import RunPaths
from recsys_tasks.runtime import write_summary
from recsys_tasks.store import (
    LoadLock,
    LoadLockedError,
    RedisUnavailableError,
    load_redis,
    publish,
    read_manifest,
)

FAST = StoreConfig(
    pipeline_chunk_keys=25, ttl_s=3600, retry_attempts=3, retry_backoff_s=0.05, retry_backoff_max_s=0.2,
    lock_ttl_s=2, lock_wait_s=10, memory_sample_keys=20,
)
DAY = "2026-12-{:02d}T00:00:00+00:00"


def expected_doc(row, run_id, logical_date):
    return {"user_id": row["user_id"], "recommendations": row["recommendations"], "scores": row["scores"],
            "run_id": run_id, "logical_date": logical_date, "generated_at": "g"}


def documents(client, settings=FAST):
    out = {}
    for key in client.scan_iter(match=settings.key_prefix + "*"):
        out[key.decode()] = json.loads(client.execute_command("JSON.GET", key))
    return out


def FaultyRedis(*, fault_at, fault, **kwargs):  # noqa: N802 - reads like the client it builds
    """A real client; just before the load sends its ``fault_at``-th chunk of documents, ``fault`` runs
    (real process control: kill, restart or pause the Redis server)."""
    sent = {"chunks": 0}

    class FaultyConnection(redis.Connection):
        def send_packed_command(self, command, *args, **inner):
            payload = command[0] if isinstance(command, list) else command
            head = bytes(payload[:120])
            if (head.startswith(b"*4\r\n$8\r\nJSON.SET\r\n") or b"\r\n$7\r\nEVALSHA\r\n" in head[:20]) \
                    and b"USER:" in head:
                sent["chunks"] += 1
                if sent["chunks"] == fault_at:
                    fault()
            return super().send_packed_command(command, *args, **inner)

    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=FaultyConnection, **kwargs))


def publish_run(client, path, run_id, day, settings=FAST):
    return publish(client, path, settings, run_id=run_id, logical_date=DAY.format(day), generated_at="g")


def test_redis_killed_mid_load_keeps_the_old_run_whole_and_a_rerun_completes(tmp_path, aof_redis, aof_client, caplog):
    users = np.arange(1000, 2000)
    run_a = write_recs(tmp_path / "a.parquet", rows_for(users, 0))
    run_b_rows = rows_for(users, 50_000)
    run_b = write_recs(tmp_path / "b.parquet", run_b_rows)
    publish_run(aof_client, run_a, "run-a", 1)

    killer = FaultyRedis(port=aof_redis.port, fault_at=8, fault=aof_redis.kill)
    with caplog.at_level(logging.WARNING, logger="recsys_tasks"), pytest.raises(RedisUnavailableError) as failure:
        publish_run(killer, run_b, "run-b", 2)
    assert "still names run 'run-a'" in str(failure.value)
    assert "retrying in" in caplog.text  # the load retried with backoff before giving up

    aof_redis.start()  # same directory: the append-only file brings back every acknowledged write
    assert read_manifest(aof_client, FAST)["run_id"] == "run-a"
    docs = documents(aof_client)
    assert len(docs) == len(users)
    by_run = {"run-a": 0, "run-b": 0}
    rows = {"run-a": {r["user_id"]: r for r in rows_for(users, 0)}, "run-b": {r["user_id"]: r for r in run_b_rows}}
    for key, doc in docs.items():
        # Every document is one run's whole document: never half-written, never a mix of two runs.
        run_id = doc["run_id"]
        assert doc == expected_doc(rows[run_id][doc["user_id"]], run_id, DAY.format(1 if run_id == "run-a" else 2))
        assert 0 < aof_client.ttl(key) <= FAST.ttl_s
        by_run[run_id] += 1
    # The chunks sent before the kill: 6 acknowledged, the 7th in flight (its replies were not read yet).
    assert by_run["run-b"] in (6 * FAST.pipeline_chunk_keys, 7 * FAST.pipeline_chunk_keys)

    # The task's retry: the same load again. The killed load's lock expires (lock_ttl_s), then it completes.
    summary = publish_run(aof_client, run_b, "run-b", 2)
    assert summary["published"] and summary["users"] == len(users)
    assert read_manifest(aof_client, FAST)["run_id"] == "run-b"
    assert {doc["run_id"] for doc in documents(aof_client).values()} == {"run-b"}
    assert aof_client.get(FAST.lock_key) is None


def test_redis_restarted_during_the_backoff_lets_the_same_load_finish(tmp_path, aof_redis, aof_client):
    users = np.arange(500)
    path = write_recs(tmp_path / "b.parquet", rows_for(users, 7))
    settings = dataclasses.replace(FAST, retry_attempts=8, retry_backoff_s=0.1, retry_backoff_max_s=1.0, lock_ttl_s=30)

    def crash_and_recover():
        aof_redis.kill()
        threading.Timer(0.3, aof_redis.start).start()

    client = FaultyRedis(port=aof_redis.port, fault_at=5, fault=crash_and_recover)
    summary = publish_run(client, path, "run-b", 3, settings)
    assert summary["published"] and summary["users"] == len(users)
    docs = documents(aof_client)
    assert len(docs) == len(users) and {d["run_id"] for d in docs.values()} == {"run-b"}
    assert read_manifest(aof_client, settings)["users"] == len(users)


def test_a_hung_redis_times_out_and_is_retried(tmp_path, aof_redis, aof_client):
    users = np.arange(300)
    path = write_recs(tmp_path / "b.parquet", rows_for(users, 3))
    settings = dataclasses.replace(FAST, retry_attempts=8, retry_backoff_s=0.1, retry_backoff_max_s=0.5,
                                   lock_ttl_s=30)

    def hang_for_a_while():
        aof_redis.pause()  # SIGSTOP: connections stay open, nothing answers
        threading.Timer(1.0, aof_redis.resume).start()

    client = FaultyRedis(port=aof_redis.port, socket_timeout=0.3, fault_at=3, fault=hang_for_a_while)
    summary = publish_run(client, path, "run-hung", 4, settings)
    assert summary["published"]
    assert {d["run_id"] for d in documents(aof_client).values()} == {"run-hung"}


def test_redis_that_never_answers_fails_the_task_after_bounded_retries(tmp_path, caplog):
    path = write_recs(tmp_path / "b.parquet", rows_for(range(10), 0))
    client = redis.Redis(port=free_port())  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="recsys_tasks"), pytest.raises(RedisUnavailableError, match="3 tries"):
        publish_run(client, path, "run-x", 1)
    assert caplog.text.count("retrying in") >= FAST.retry_attempts - 1


def test_older_run_is_skipped_forced_rollback_is_exact_and_reruns_are_identical(tmp_path, redis_client):
    config = Config().with_overrides({"store": dataclasses.asdict(FAST)})
    newer = make_run(tmp_path, "newer", rows_for(range(0, 120), 100))
    older = make_run(tmp_path, "older", rows_for(range(0, 100), 0))  # users 100..119 are only in the newer run

    first = load_redis(config, newer.root, redis_client, run_id="day-5", logical_date=DAY.format(5))
    snapshot = documents(redis_client)
    again = load_redis(config, newer.root, redis_client, run_id="day-5", logical_date=DAY.format(5))
    assert documents(redis_client) == snapshot  # rerunning the load gives the same result
    assert first["published"] and again["published"]

    # A backfill of an older logical date: skipped, logged, the task succeeds and its summary is written.
    skipped = load_redis(config, older.root, redis_client, run_id="day-2", logical_date=DAY.format(2))
    assert skipped["published"] is False and "older than the published run 'day-5'" in skipped["reason"]
    assert json.loads(older.summary("load_redis").read_text())["published"] is False
    assert documents(redis_client) == snapshot
    assert read_manifest(redis_client, FAST)["run_id"] == "day-5"

    # The rollback: the same load, forced. Exactly the older run is published afterwards.
    forced_config = config.with_overrides({"store.force": True})
    rolled = load_redis(forced_config, older.root, redis_client, run_id="day-2", logical_date=DAY.format(2))
    assert rolled["published"] and rolled["newer_deleted"] == 20
    manifest = read_manifest(redis_client, FAST)
    assert (manifest["run_id"], manifest["forced"], manifest["users"]) == ("day-2", True, 100)
    docs = documents(redis_client)
    assert len(docs) == 100 and {d["run_id"] for d in docs.values()} == {"day-2"}

    # The next day's run publishes normally over the rolled-back state.
    assert load_redis(config, newer.root, redis_client, run_id="day-6", logical_date=DAY.format(6))["published"]
    assert read_manifest(redis_client, FAST)["run_id"] == "day-6"


def test_cli_rollback_republishes_an_old_run_as_it_was(tmp_path, redis_client, redis_server, capsys):
    from recsys_tasks.cli import main

    old = make_run(tmp_path, "old", rows_for(range(30), 1))
    new = make_run(tmp_path, "new", rows_for(range(40), 2))
    url = ["--redis-url", redis_server.url]
    for paths, run_id, day in ((old, "d1", 1), (new, "d2", 2)):
        assert main(["load_redis", "--run-dir", str(paths.root), "--run-id", run_id,
                     "--logical-date", DAY.format(day), *url]) == 0
    # Without --force the old run's artifacts are not published again ...
    assert main(["load_redis", "--run-dir", str(old.root), *url]) == 0
    assert read_manifest(redis_client)["run_id"] == "d2"
    # ... with it they are, under the run id and logical date they were first loaded with.
    assert main(["load_redis", "--run-dir", str(old.root), "--force", *url]) == 0
    manifest = read_manifest(redis_client)
    assert (manifest["run_id"], manifest["logical_date"], manifest["users"]) == ("d1", DAY.format(1), 30)
    assert {d["run_id"] for d in documents(redis_client, StoreConfig()).values()} == {"d1"}


def test_a_load_without_a_logical_date_does_not_guess_over_a_dated_run(tmp_path, redis_client):
    path = write_recs(tmp_path / "r.parquet", rows_for(range(5), 0))
    publish_run(redis_client, path, "dated", 3)
    with pytest.raises(ValueError, match="no logical date"):
        publish(redis_client, path, FAST, run_id="undated", logical_date="", generated_at="g")
    assert read_manifest(redis_client, FAST)["run_id"] == "dated"


def test_stale_lock_of_a_killed_worker_expires_and_a_held_lock_blocks(tmp_path, redis_client, caplog):
    path = write_recs(tmp_path / "r.parquet", rows_for(range(50), 0))
    # A worker died holding the lock: it stops renewing, so the lock runs out and the next load proceeds.
    redis_client.set(FAST.lock_key, "day-1 on dead-host pid 1 0000", px=800)
    with caplog.at_level(logging.INFO, logger="recsys_tasks"):
        assert publish_run(redis_client, path, "day-2", 2)["published"]
    assert "waiting up to" in caplog.text and "dead-host" in caplog.text
    assert redis_client.get(FAST.lock_key) is None  # released by its owner

    # A live load holds it: the second load waits lock_wait_s, then fails without writing anything.
    redis_client.flushdb()
    redis_client.set(FAST.lock_key, "day-3 on busy-host pid 2 1111", px=60_000)
    with pytest.raises(LoadLockedError, match="held by 'day-3 on busy-host"):
        publish_run(redis_client, path, "day-4", 4, dataclasses.replace(FAST, lock_wait_s=0.3))
    assert redis_client.keys("*") == [FAST.lock_key.encode()]


def test_only_the_owner_renews_or_releases_the_lock(redis_client):
    mine, theirs = LoadLock(redis_client, FAST, "a"), LoadLock(redis_client, FAST, "b")
    mine.acquire()
    theirs.release()
    assert not theirs.renew()
    assert redis_client.get(FAST.lock_key).decode() == mine.token
    assert mine.renew()
    mine.release()
    assert redis_client.get(FAST.lock_key) is None


def test_two_concurrent_loads_do_not_interleave(tmp_path, redis_server, redis_client):
    users = np.arange(400)
    paths = {name: write_recs(tmp_path / f"{name}.parquet", rows_for(users, salt))
             for name, salt in (("left", 0), ("right", 9000))}
    settings = dataclasses.replace(FAST, pipeline_chunk_keys=10, lock_ttl_s=30)
    order, errors = [], []

    def load(name):
        try:
            publish_run(redis.Redis.from_url(redis_server.url), paths[name], name, 5, settings)
            order.append(name)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(name,)) for name in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(order) == 2
    # The load that finished last wrote every document and the manifest: no mix of the two.
    assert read_manifest(redis_client, settings)["run_id"] == order[-1]
    assert {d["run_id"] for d in documents(redis_client).values()} == {order[-1]}


def test_foreign_keys_are_untouched_and_every_document_expires(tmp_path, redis_client):
    foreign = {
        "OTHER:1": ("string", "keep me"),
        "USERS:5": ("string", "not our prefix"),
        "USER:abc": ("string", "inside the prefix but not a document key"),
        "USER:007": ("string", "not the canonical form of a user id"),
        "app:USER:5": ("string", "prefix in the middle"),
    }
    for key, (_, value) in foreign.items():
        redis_client.set(key, value)
    redis_client.hset("RECSYS:OTHER", mapping={"a": "1"})
    # A document of a user who dropped out, written without a TTL (e.g. by an older job version).
    redis_client.execute_command("JSON.SET", "USER:99999", "$", json.dumps({"user_id": 99999, "run_id": "ancient"}))

    day1 = write_recs(tmp_path / "d1.parquet", rows_for(range(100), 0))
    day2 = write_recs(tmp_path / "d2.parquet", rows_for(range(20, 100), 1))  # users 0..19 drop out
    publish_run(redis_client, day1, "d1", 1)
    summary = publish_run(redis_client, day2, "d2", 2)

    for key, (_, value) in foreign.items():
        assert redis_client.get(key).decode() == value and redis_client.ttl(key) == -1, key
    assert redis_client.hgetall("RECSYS:OTHER") == {b"a": b"1"} and redis_client.ttl("RECSYS:OTHER") == -1
    assert summary["dropped_users"] == 21 and summary["ttl_added"] == 0  # 0..19 and 99999 (fixed on day 1)
    for key in redis_client.scan_iter(match="USER:*"):
        if key.decode() not in foreign:
            assert 0 < redis_client.ttl(key) <= FAST.ttl_s, key
    assert fetch_run(redis_client, 5) == "d1" and fetch_run(redis_client, 50) == "d2"
    assert summary["redis_bytes_per_user"] > 0 and summary["memory_sampled_keys"] == FAST.memory_sample_keys
    assert summary["redis_bytes_estimate"] >= summary["redis_bytes_per_user"] * 80


def fetch_run(client, user_id):
    return json.loads(client.execute_command("JSON.GET", f"USER:{user_id}"))["run_id"]


def valid_document(doc, key, top_n):
    assert key == f"USER:{doc['user_id']}"
    assert set(doc) == {"user_id", "recommendations", "scores", "run_id", "logical_date", "generated_at"}
    assert 0 < len(doc["recommendations"]) <= top_n and len(doc["scores"]) == len(doc["recommendations"])
    assert all(isinstance(i, int) for i in doc["recommendations"])
    assert doc["scores"] == sorted(doc["scores"], reverse=True) and all(0 <= s <= 1 for s in doc["scores"])


def test_soak_ten_daily_loads_keep_memory_flat_and_documents_valid(pipeline_run, tmp_path, redis_client):
    """Ten successive logical dates over the shared tiny run's recommendations, a different 20% of the
    users missing each day: memory stays flat, every document is valid, the manifest names the day."""
    config, paths, _ = pipeline_run
    recs = pq.read_table(paths.recommendations)
    pool = np.asarray(recs.column("user_id"))
    config = config.with_overrides({"store.ttl_s": 3600, "store.memory_sample_keys": 10})
    memory, keys = [], []
    for day in range(1, 11):
        missing = np.zeros(len(pool), dtype=bool)
        missing[(np.arange(len(pool)) % 5) == day % 5] = True
        day_dir = RunPaths(tmp_path / f"day{day}")
        day_dir.recommendations.mkdir(parents=True)
        pq.write_table(recs.filter(pa.array(~missing)), day_dir.recommendation_part(0))
        write_summary(day_dir, "score", {"stage": "score", "generated_at": DAY.format(day)})
        finish_scored_run(day_dir)

        started = time.perf_counter()
        summary = load_redis(config, day_dir.root, redis_client, run_id=f"day-{day}", logical_date=DAY.format(day))
        assert summary["published"] and summary["users"] == int((~missing).sum())
        manifest = read_manifest(redis_client, config.store)
        assert (manifest["run_id"], manifest["logical_date"], manifest["users"]) == (
            f"day-{day}", DAY.format(day), summary["users"]), time.perf_counter() - started
        today = set(pool[~missing].tolist())
        total = 0
        for key in redis_client.scan_iter(match="USER:*"):
            doc = json.loads(redis_client.execute_command("JSON.GET", key))
            valid_document(doc, key.decode(), config.scoring.top_n)
            assert (doc["run_id"] == f"day-{day}") == (doc["user_id"] in today)
            assert 0 < redis_client.ttl(key) <= 3600
            total += redis_client.memory_usage(key, samples=0)
        assert redis_client.get(config.store.lock_key) is None
        memory.append(total)
        keys.append(redis_client.dbsize())
    # Every user at most once, plus the manifest, the fallback list and the fence (store/fence.py).
    assert max(keys) <= len(pool) + 3
    assert max(memory[1:]) <= memory[1] * 1.05, memory  # flat once the dropped-out users are in the pool


def test_rerunning_score_on_the_same_inputs_gives_the_same_recommendations(pipeline_run, tmp_path):
    import shutil

    from recsys_tasks.scoring.stage import score

    config, source, _ = pipeline_run
    copy = RunPaths(tmp_path / "rerun")
    for part in (source.retrieval, source.ranking, source.retrieval_train, source.retrieval_valid, source.valid):
        shutil.copytree(part, copy.root / part.relative_to(source.root))
    score(config, copy.root)
    score(config, copy.root)  # a task retry: clears its own output and writes it again
    again = pq.read_table(copy.recommendations).to_pandas()
    original = pq.read_table(source.recommendations).to_pandas()
    assert list(again["user_id"]) == list(original["user_id"])
    assert [list(r) for r in again["recommendations"]] == [list(r) for r in original["recommendations"]]
    np.testing.assert_allclose(np.concatenate(again["scores"]), np.concatenate(original["scores"]), rtol=1e-6)
