"""The publish under the faults of issue 22, against real Redis processes and a real 3 + 3 Redis Cluster.

Each case ends with an audit of every key against the manifest: no manifest names a run whose
documents are not all present, and no older run's document replaces a newer one's. Faults are
injected at points chosen by the load's progress (acknowledged documents) or by the test's own
timer, never by a sleep that races the load: a master SIGSTOPped past ``cluster-node-timeout``, a
lock holder SIGSTOPped past its lock while a newer run publishes, documents lost after their
acknowledgement, too few replicas, a Redis that evicts, a pre-flight at +15% / -5% of the measured
need, and clients that do not match the server (TLS vs plain, plain vs cluster, a stopped node).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone

import pytest
import redis
from conftest import REPO, make_run, rows_for, write_recs

from recsys_tasks.bench.store_load import synthetic_recommendations
from recsys_tasks.config import StoreConfig
from recsys_tasks.ops.local_redis import LocalCluster, LocalRedis, free_port
from recsys_tasks.store import CapacityError, RedisUnavailableError, publish, read_manifest
from recsys_tasks.store.connect import WrongClientError, connect
from recsys_tasks.store.errors import DurabilityError, EvictionError, SupersededError
from recsys_tasks.store.fence import EPOCH_LUA
from recsys_tasks.store.writer import write_documents

SETTINGS = StoreConfig(pipeline_chunk_keys=100, ttl_s=3600, retry_attempts=6, retry_backoff_s=0.2,
                       retry_backoff_max_s=1.0, lock_ttl_s=30, lock_wait_s=20, memory_sample_keys=20,
                       socket_timeout_s=2.0)
DAY = "2026-12-{:02d}T00:00:00+00:00"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    server = LocalCluster(tmp_path_factory.mktemp("fault_cluster"), masters=3, node_timeout_ms=1000).start()
    yield server
    server.stop()


@pytest.fixture
def cluster_client(cluster):
    cluster.wait_healthy()
    client = connect(cluster.url, SETTINGS)
    for node in client.get_primaries():
        client.get_redis_connection(node).flushall()
    yield client
    client.close()


@pytest.fixture
def lone_redis(tmp_path):
    server = LocalRedis(free_port(), tmp_path / "lone").start()
    yield server
    server.stop()


def nodes_of(client):
    if not hasattr(client, "get_primaries"):
        return [client]
    client.nodes_manager.initialize()
    return [client.get_redis_connection(n) for n in client.get_primaries()]


def stored_documents(client):
    """Every document under ``USER:`` on every master, by key."""
    found = {}
    for node in nodes_of(client):
        for key in node.scan_iter(match="USER:*", count=1000):
            found[key.decode()] = json.loads(node.execute_command("JSON.GET", key))
    return found


def audit(client, runs):
    """``runs``: run id -> (rows, logical date). The manifest's run is whole; every document is exactly one
    run's; none is older than the manifest's run. Returns the documents by run id."""
    manifest = read_manifest(client, SETTINGS)
    documents = stored_documents(client)
    by_run = {}
    for key, doc in documents.items():
        rows, logical_date = runs[doc["run_id"]]
        row = next(r for r in rows if r["user_id"] == doc["user_id"])
        assert doc == {**row, "run_id": doc["run_id"], "logical_date": logical_date, "generated_at": "g"}, key
        by_run.setdefault(doc["run_id"], set()).add(doc["user_id"])
    if manifest is not None:
        rows, logical_date = runs[manifest["run_id"]]
        assert by_run.get(manifest["run_id"], set()) == {r["user_id"] for r in rows}, "manifest names a partial run"
        newest = datetime.fromisoformat(logical_date)
        older = {run for run in by_run if datetime.fromisoformat(runs[run][1]) < newest}
        assert not older, f"documents of older runs {older} beside the manifest's {manifest['run_id']}"
    return by_run


# --- the fenced writer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stored", ["2026-12-05", "2026-12-05T00:00:00+00:00", "2026-12-05T01:30:00+01:30",
                                    "2026-02-28T23:59:59.5Z", "2024-02-29T12:00:00-05:00", "1999-12-31 23:59",
                                    "2026-03-01T00:00:00.000001+00:00"])
def test_the_fence_reads_logical_dates_as_python_does(redis_client, stored):
    epoch = EPOCH_LUA + "return tostring(epoch(ARGV[1]))"
    parsed = datetime.fromisoformat(stored.replace("Z", "+00:00"))
    seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    assert float(redis_client.eval(epoch, 0, stored)) == pytest.approx(seconds, abs=1e-6)


def test_an_older_run_never_replaces_a_newer_ones_documents_unless_forced(redis_client, tmp_path):
    rows_new, rows_old = rows_for(range(300), 6), rows_for(range(300), 5)
    newer = write_recs(tmp_path / "new.parquet", rows_new)
    older = write_recs(tmp_path / "old.parquet", rows_old)
    publish(redis_client, newer, SETTINGS, run_id="day-6", logical_date=DAY.format(6), generated_at="g")
    # A writer of the older date that has no lock at all (as a stalled one that resumed): every write is fenced.
    with pytest.raises(SupersededError, match="newer run's document"):
        write_documents(redis_client, older, SETTINGS, {"run_id": "day-5", "logical_date": DAY.format(5),
                                                        "generated_at": "g"})
    runs = {"day-6": (rows_new, DAY.format(6)), "day-5": (rows_old, DAY.format(5))}
    assert audit(redis_client, runs) == {"day-6": set(range(300))}
    # The same date (a rerun) and a forced older date (the rollback) do write.
    forced = dataclasses.replace(SETTINGS, force=True)
    assert write_documents(redis_client, older, forced, {"run_id": "day-5", "logical_date": DAY.format(5),
                                                         "generated_at": "g"})["written"] == 300
    assert {d["run_id"] for d in stored_documents(redis_client).values()} == {"day-5"}


LOADER = """
import json, sys
from pathlib import Path
from recsys_tasks.config import StoreConfig
from recsys_tasks.store import publish
from recsys_tasks.store.connect import connect
settings = StoreConfig(**json.loads(sys.argv[2]))
client = connect(sys.argv[1], settings)
try:
    publish(client, Path(sys.argv[3]), settings, run_id=sys.argv[4], logical_date=sys.argv[5], generated_at="g",
            on_progress=lambda done, total: print(done, flush=True))
except Exception as exc:
    print("FAILED", type(exc).__name__, exc, flush=True)
    sys.exit(3)
print("PUBLISHED", flush=True)
"""


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_a_lock_holder_stalled_past_its_lock_never_overwrites_the_newer_run(where, redis_server, redis_client,
                                                                             request, tmp_path):
    client = redis_client if where == "single" else request.getfixturevalue("cluster_client")
    url = redis_server.url if where == "single" else request.getfixturevalue("cluster").url
    users = 6000
    rows_a, rows_b = rows_for(range(users), 5), rows_for(range(users), 6)
    path_a, path_b = write_recs(tmp_path / "a.parquet", rows_a), write_recs(tmp_path / "b.parquet", rows_b)
    stalled = dataclasses.replace(SETTINGS, lock_ttl_s=2, pipeline_chunk_keys=25, capacity_check=False)
    loader = subprocess.Popen(
        [sys.executable, "-c", LOADER, url, json.dumps(dataclasses.asdict(stalled)), str(path_a), "day-5",
         DAY.format(5)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in loader.stdout:
            if line.strip().isdigit() and int(line) >= users // 4:
                os.kill(loader.pid, signal.SIGSTOP)  # stalled mid-load, holding the lock
                break
        else:
            pytest.fail(f"loader A ended before it was stopped: {line}")
        # Loader B waits for A's lock to expire (lock_ttl_s=2 s, not renewed while A is stopped), then publishes.
        summary = publish(client, path_b, SETTINGS, run_id="day-6", logical_date=DAY.format(6), generated_at="g")
        assert summary["published"]
    finally:
        os.kill(loader.pid, signal.SIGCONT)
    output, _ = loader.communicate(timeout=120)
    assert loader.returncode == 3, output
    assert "LockLostError" in output or "SupersededError" in output, output
    runs = {"day-5": (rows_a, DAY.format(5)), "day-6": (rows_b, DAY.format(6))}
    assert audit(client, runs) == {"day-6": set(range(users))}
    assert read_manifest(client, SETTINGS)["run_id"] == "day-6"


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_a_writer_stalled_between_its_lock_check_and_a_chunk_never_overwrites_a_rerun_of_the_same_date(
        where, redis_client, request, tmp_path):
    """The window the lock check leaves: writer A checks its lock, stalls (here: the check itself runs loader B),
    B takes the lock and publishes a rerun of the SAME logical date, then A sends its chunk. The dates cannot
    tell them apart; B's later lock generation in every fence it wrote refuses A's chunk."""
    from recsys_tasks.store.durability import write_confirmed
    from recsys_tasks.store.fence import server_time_us

    client = redis_client if where == "single" else request.getfixturevalue("cluster_client")
    users = 1000
    rows_a, rows_b = rows_for(range(users), 5), rows_for(range(users), 6)
    path_a, path_b = write_recs(tmp_path / "a.parquet", rows_a), write_recs(tmp_path / "b.parquet", rows_b)
    generation_a = server_time_us(client, SETTINGS.lock_key)  # when A took its lock (since lost)
    checks = []

    def check_lock():  # A's lock check before each chunk passes; before the third, A stalls while B publishes
        checks.append(len(checks))
        if len(checks) == 3:
            assert publish(client, path_b, SETTINGS, run_id="rerun-b", logical_date=DAY.format(5),
                           generated_at="g")["published"]

    with pytest.raises(SupersededError, match="newer run's document"):
        write_confirmed(client, path_a, SETTINGS, {"run_id": "rerun-a", "logical_date": DAY.format(5),
                                                   "generated_at": "g"},
                        total=users, check_lock=check_lock, generation_us=generation_a)
    assert len(checks) in (3, 4)  # the refusal of the third chunk is read once the fourth is sent
    runs = {"rerun-a": (rows_a, DAY.format(5)), "rerun-b": (rows_b, DAY.format(5))}
    assert audit(client, runs) == {"rerun-b": set(range(users))}
    assert read_manifest(client, SETTINGS)["run_id"] == "rerun-b"


# --- acknowledged is not durable: read-back and WAIT --------------------------------------------------------------
def test_documents_lost_after_their_acknowledgement_are_found_by_the_read_back_and_written_again(redis_client,
                                                                                                  tmp_path):
    rows = rows_for(range(1000), 1)
    path = write_recs(tmp_path / "r.parquet", rows)
    lost = [f"USER:{u}" for u in range(0, 1000, 40)]

    def lose_some(done, total):
        if done == total:  # every write acknowledged; then 25 of them vanish (as in a failover)
            redis_client.delete(*lost)

    summary = publish(redis_client, path, SETTINGS, run_id="r", logical_date=DAY.format(1), generated_at="g",
                      on_progress=lose_some)
    assert summary["read_back_replayed"] == len(lost)
    assert summary["manifest_replicas"] == {"required": 0, "acknowledged": 0}  # a lone Redis: nothing to wait for
    assert summary["verified"] == "read back"  # no replica confirms a lone node's writes: every key is read back
    assert audit(redis_client, {"r": (rows, DAY.format(1))}) == {"r": set(range(1000))}


def test_too_few_replicas_acknowledging_fails_the_load_before_the_manifest(cluster_client, tmp_path):
    first, second = rows_for(range(500), 1), rows_for(range(500), 2)
    done = publish(cluster_client, write_recs(tmp_path / "a.parquet", first), SETTINGS, run_id="a",
                   logical_date=DAY.format(1), generated_at="g")
    # Each master has one replica: by default each must confirm it (WAIT 1).
    assert {v["required"] for v in done["replicas"].values()} == {1}
    assert all(v["acknowledged"] >= 1 for v in done["replicas"].values()) and len(done["replicas"]) == 3
    # WAIT confirmed every write, and every key is still read back before the manifest.
    assert done["verified"] == "read back"
    # The manifest too: a manifest lost in a failover would bring back one naming a replaced run.
    assert done["manifest_replicas"]["required"] == 1 and done["manifest_replicas"]["acknowledged"] >= 1
    strict = dataclasses.replace(SETTINGS, min_replicas_acked=2, replica_ack_timeout_s=0.3, retry_attempts=2,
                                 retry_backoff_s=0.1)
    with pytest.raises(DurabilityError, match="only 1 of the 2 required replica") as failure:
        publish(cluster_client, write_recs(tmp_path / "b.parquet", second), strict, run_id="b",
                logical_date=DAY.format(2), generated_at="g")
    assert "was not written by this load (it named run 'a'" in str(failure.value)
    assert read_manifest(cluster_client, SETTINGS)["run_id"] == "a"


def test_a_master_paused_past_the_node_timeout_mid_load_loses_nothing_the_manifest_names(cluster, cluster_client,
                                                                                         tmp_path):
    """Runs after the other cluster tests: the paused master comes back as its replica's replica."""
    users = 6000
    rows = rows_for(range(users), 3)
    path = write_recs(tmp_path / "r.parquet", rows)
    lock_node = cluster_client.get_node_from_key(SETTINGS.lock_key).name
    victim = next(n for n in nodes_of(cluster_client) if
                  f"127.0.0.1:{n.connection_pool.connection_kwargs['port']}" != lock_node)
    server = cluster.node_at(victim.connection_pool.connection_kwargs["port"])
    resumed = threading.Event()
    paused = []

    def pause(done, total):
        if done >= users // 3 and not paused:
            paused.append(done)
            server.pause()  # SIGSTOP for 3 x cluster-node-timeout: its replica is promoted meanwhile
            threading.Timer(3.0, lambda: (server.resume(), resumed.set())).start()

    settings = dataclasses.replace(SETTINGS, socket_timeout_s=1.0)
    try:
        summary = publish(cluster_client, path, settings, run_id="paused", logical_date=DAY.format(4),
                          generated_at="g", on_progress=pause)
    except RedisUnavailableError as exc:  # allowed: a clear error; the manifest must not name the run
        assert "rerunning the load completes it" in str(exc)
        summary = None
    assert resumed.wait(30) and paused
    cluster.wait_healthy()
    by_run = audit(cluster_client, {"paused": (rows, DAY.format(4))})
    if summary is not None:
        assert summary["published"] and by_run == {"paused": set(range(users))}
        assert summary["verified"] == "read back"  # a connection was lost: WAIT alone does not cover it
        assert read_manifest(cluster_client, SETTINGS)["run_id"] == "paused"


# --- capacity, eviction -------------------------------------------------------------------------------------------
def measured_need(client, path):
    """Publish once into an empty Redis: the pre-flight's estimate, and what used_memory really grew by."""
    summary = publish(client, path, SETTINGS, run_id="probe", logical_date=DAY.format(1), generated_at="g")
    capacity = summary["capacity"]
    client.flushall()
    return capacity["estimate_bytes"], capacity["real_growth_bytes"], capacity["estimate_vs_real"]


def test_the_pre_flight_estimate_is_within_ten_percent_and_refuses_at_minus_5_but_not_plus_15(lone_redis, tmp_path):
    client = lone_redis.client()
    path = synthetic_recommendations(tmp_path / "recs.parquet", 8000, 10, 7)
    estimate, real, ratio = measured_need(client, path)
    assert 0.9 <= estimate / real <= 1.1 and ratio == round(estimate / real, 3), (estimate, real)
    client.config_set("maxmemory-policy", "noeviction")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + int(1.15 * real))
    summary = publish(client, path, SETTINGS, run_id="fits", logical_date=DAY.format(2), generated_at="g")
    assert summary["published"] and 0.9 <= summary["capacity"]["estimate_vs_real"] <= 1.1
    client.config_set("maxmemory", 0)
    client.flushall()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + int(0.95 * real))
    with pytest.raises(CapacityError, match="does not fit; nothing was written"):
        publish(client, path, SETTINGS, run_id="short", logical_date=DAY.format(3), generated_at="g")
    assert client.dbsize() == 0


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_a_redis_that_would_evict_is_refused_and_an_eviction_fails_the_load(lone_redis, tmp_path, policy):
    client = lone_redis.client()
    path = synthetic_recommendations(tmp_path / "recs.parquet", 8000, 10, 7)
    _, real, _ = measured_need(client, path)
    client.config_set("maxmemory-policy", policy)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + int(0.95 * real))
    evicted_before = int(client.info("stats")["evicted_keys"])
    with pytest.raises(CapacityError, match=f"maxmemory-policy {policy} would evict documents"):
        publish(client, path, SETTINGS, run_id="short", logical_date=DAY.format(2), generated_at="g")
    assert client.dbsize() == 0 and int(client.info("stats")["evicted_keys"]) == evicted_before
    # Without the pre-flight the load runs into the limit: Redis evicts, and the load fails instead of publishing.
    with pytest.raises(EvictionError, match=f"evicted .* under maxmemory-policy {policy}"):
        publish(client, path, dataclasses.replace(SETTINGS, capacity_check=False), run_id="evicting",
                logical_date=DAY.format(3), generated_at="g")
    assert int(client.info("stats")["evicted_keys"]) > evicted_before
    assert read_manifest(client, SETTINGS) is None


# --- clients that do not match the server -------------------------------------------------------------------------
def bounded(call, timeout_s=60.0):
    """``call()`` in a thread; its exception, or a failure if it is still waiting after ``timeout_s`` (a hang)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still waiting after {timeout_s}s"
    return outcome.get("error")


QUICK = dataclasses.replace(SETTINGS, socket_timeout_s=1.0, retry_attempts=2, retry_backoff_s=0.1)


def test_a_plain_url_at_a_cluster_node_is_refused_before_anything_is_written(cluster, cluster_client, tmp_path,
                                                                              capsys):
    from recsys_tasks.cli import main

    port = cluster.live_nodes()[0].port
    error = bounded(lambda: connect(f"redis://127.0.0.1:{port}", QUICK))
    assert isinstance(error, WrongClientError), error
    assert "is a Redis Cluster node; connect with a cluster client" in str(error)
    # A client built elsewhere (e.g. by the Airflow hook) is refused by the load itself, before the lock.
    path = write_recs(tmp_path / "r.parquet", rows_for(range(200), 1))
    with pytest.raises(WrongClientError, match="connect with a cluster client"):
        publish(redis.Redis(port=port), path, SETTINGS, run_id="r", logical_date=DAY.format(1), generated_at="g")
    assert sum(node.dbsize() for node in nodes_of(cluster_client)) == 0
    run = make_run(tmp_path, "run", rows_for(range(20), 1))
    assert main(["load_redis", "--run-dir", str(run.root), "--redis-url", f"redis://127.0.0.1:{port}"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: WrongClientError: 127.0.0.1:") and "--debug" in lines[-1]
    with pytest.raises(WrongClientError):  # --debug: the traceback
        main(["load_redis", "--run-dir", str(run.root), "--redis-url", f"redis://127.0.0.1:{port}", "--debug"])
    assert sum(node.dbsize() for node in nodes_of(cluster_client)) == 0


def test_a_tls_url_at_a_plain_server_or_cluster_says_so_in_bounded_time(cluster, redis_server):
    for url in (f"rediss+cluster://127.0.0.1:{cluster.live_nodes()[0].port}",
                f"rediss://127.0.0.1:{redis_server.port}"):
        error = bounded(lambda url=url: connect(url, QUICK))
        assert isinstance(error, WrongClientError) and "speaks plain-text Redis, not TLS" in str(error), error


def test_a_cluster_url_or_airflow_connection_at_a_stopped_node_fails_in_bounded_time(cluster, cluster_client,
                                                                                    monkeypatch):
    sys.path.insert(0, str(REPO / "plugins"))
    import recsys_airflow

    replica = next(n for n in cluster.live_nodes() if n.client().info("replication")["role"] == "slave")
    # The DAG's client (plugins/): built from the Airflow connection, with the load's timeouts and tries.
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_RECS", json.dumps(
        {"conn_type": "redis", "host": "127.0.0.1", "port": replica.port, "extra": {"cluster": True}}))
    replica.pause()
    try:
        errors = [bounded(lambda: connect(f"redis+cluster://127.0.0.1:{replica.port}", QUICK)),
                  bounded(lambda: recsys_airflow.redis_client(settings=QUICK))]
    finally:
        replica.resume()
    for error in errors:
        assert isinstance(error, RedisUnavailableError), error
        assert "did not answer within 1s, 2 tries" in str(error) and "nothing was read or written" in str(error)


def test_an_unreachable_redis_is_told_once_with_what_was_written(tmp_path):
    path = write_recs(tmp_path / "r.parquet", rows_for(range(10), 0))
    with pytest.raises(RedisUnavailableError) as failure:
        publish(redis.Redis(port=free_port()), path, QUICK, run_id="x", logical_date=DAY.format(1), generated_at="g")
    message = str(failure.value)
    assert message.count("unreachable") == 1 and "0 of 10 documents of this run were written" in message
