"""The store against a real local Redis Cluster: 3 masters + 3 replicas, RedisJSON on every node.

The cluster is started by the fixture (``redis-server --cluster-enabled yes`` per node, then
``redis-cli --cluster create --cluster-replicas 1``) on free ports in a temporary directory.
Faults happen at a chosen point of the load through its progress callback (acknowledged documents),
not after a sleep: a slot migrated (MIGRATING/IMPORTING + MIGRATE, then the new owner set) and a
master SIGKILLed so that its replica takes over. The failover test has a cluster of its own (it leaves
one master without a replica), so the tests pass in any order.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from redis.cluster import RedisCluster
from redis.crc import key_slot

from recsys_tasks.config import StoreConfig
from recsys_tasks.ops.local_redis import LocalCluster
from recsys_tasks.scoring.stage import recommendations_schema
from recsys_tasks.store import RedisUnavailableError, fetch, publish, read_manifest

SETTINGS = StoreConfig(pipeline_chunk_keys=100, ttl_s=3600, retry_attempts=10, retry_backoff_s=0.2,
                       retry_backoff_max_s=2.0, lock_ttl_s=30, lock_wait_s=10, memory_sample_keys=20)
DAY = "2026-12-{:02d}T00:00:00+00:00"
USERS = 3000


def rows_for(user_ids, salt):
    return [{"user_id": int(u), "recommendations": [int(u) + salt, int(u) + salt + 1, 7], "scores": [0.75, 0.5, 0.25]}
            for u in user_ids]


def write_recs(path, rows):
    table = pa.Table.from_pylist([{"user_id_encoded": i, **r} for i, r in enumerate(rows)],
                                 schema=recommendations_schema())
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    server = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3, node_timeout_ms=1000).start()
    yield server
    server.stop()


@pytest.fixture
def failover_cluster(tmp_path_factory):
    """A cluster for one test that kills a master: the shared one keeps every node and replica."""
    server = LocalCluster(tmp_path_factory.mktemp("failover_cluster"), masters=3, node_timeout_ms=1000).start()
    yield server
    server.stop()


@pytest.fixture
def client(cluster):
    client = cluster.client()
    for node in client.get_primaries():
        client.get_redis_connection(node).flushall()
    yield client
    client.close()


def masters(client):
    """Each master's plain client, by node name."""
    client.nodes_manager.initialize()
    return {n.name: client.get_redis_connection(n) for n in client.get_primaries()}


def audit(client, rows, run_id, logical_date):
    """Every user's document, key by key, is exactly this run's, with a TTL, on the master owning its slot."""
    owner = {slot: nodes[0].name for slot, nodes in client.nodes_manager.slots_cache.items()}
    per_node = masters(client)
    placed = {name: 0 for name in per_node}
    for row in rows:
        key = f"USER:{row['user_id']}"
        name = owner[key_slot(key.encode())]
        node = per_node[name]
        raw = node.execute_command("JSON.GET", key)
        assert raw is not None, f"{key} missing on {name}"
        assert json.loads(raw) == {**row, "run_id": run_id, "logical_date": logical_date, "generated_at": "g"}, key
        assert 0 < node.ttl(key) <= SETTINGS.ttl_s, key
        placed[name] += 1
    stored = sum(sum(1 for _ in node.scan_iter(match="USER:*", count=1000)) for node in per_node.values())
    assert stored == len(rows)  # no stray document anywhere
    return placed


def test_full_load_audited_key_by_key_and_read_back(cluster, client, tmp_path, capsys):
    rows = rows_for(range(USERS), 10)
    path = write_recs(tmp_path / "recs.parquet", rows)
    fallback = {"recommendations": [1, 2, 3], "scores": [0.3, 0.2, 0.1]}
    summary = publish(client, path, SETTINGS, run_id="day-5", logical_date=DAY.format(5), generated_at="g",
                      fallback=fallback)
    assert summary["status"] == "published" and summary["users"] == USERS
    assert set(summary["capacity"]["nodes"]) == set(masters(client))
    placed = audit(client, rows, "day-5", DAY.format(5))
    assert len(placed) == 3 and all(count > USERS / 6 for count in placed.values()), placed
    manifest = read_manifest(client, SETTINGS)
    assert (manifest["run_id"], manifest["users"], manifest["forced"], manifest["forced_by"]) == (
        "day-5", USERS, False, [])
    assert client.get(SETTINGS.lock_key) is None
    assert fetch(client, 17, SETTINGS)["recommendations"] == [27, 28, 7]
    cold = fetch(client, 10**9, SETTINGS)
    assert cold["fallback"] is True and cold["recommendations"] == [1, 2, 3]

    # The CLI reaches the cluster through a redis+cluster:// URL.
    from recsys_tasks.cli import main

    assert main(["fetch", "17", "--redis-url", cluster.url, "--set", "store.ttl_s=3600"]) == 0
    assert json.loads(capsys.readouterr().out)["recommendations"] == [27, 28, 7]

    # An older logical date is skipped; forcing it is the rollback, recorded in the manifest.
    older = write_recs(tmp_path / "older.parquet", rows_for(range(100), 20))
    skipped = publish(client, older, SETTINGS, run_id="day-2", logical_date=DAY.format(2), generated_at="g")
    assert (skipped["status"], skipped["published"]) == ("skipped", False)
    assert read_manifest(client, SETTINGS)["run_id"] == "day-5"
    forced = publish(client, older, dataclasses.replace(SETTINGS, force=True), run_id="day-2",
                     logical_date=DAY.format(2), generated_at="g")
    assert forced["newer_deleted"] == USERS - 100
    manifest = read_manifest(client, SETTINGS)
    assert (manifest["run_id"], manifest["forced"], manifest["forced_by"]) == ("day-2", True, ["date"])
    audit(client, rows_for(range(100), 20), "day-2", DAY.format(2))
    capsys.readouterr()
    assert main(["show", "--redis-url", cluster.url, "--set", f"artifact_root={tmp_path}",
                 "--expect-logical-date", DAY.format(2)]) == 0
    assert '"run_id": "day-2"' in capsys.readouterr().out


def test_the_airflow_connection_with_the_cluster_extra_loads_into_the_cluster(cluster, client, tmp_path,
                                                                              monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    import recsys_airflow

    port = cluster.live_nodes()[0].port
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_RECS", json.dumps(
        {"conn_type": "redis", "host": "127.0.0.1", "port": port, "extra": {"cluster": True}}))
    hooked = recsys_airflow.redis_client()
    assert isinstance(hooked, RedisCluster)
    # Built with the load's bounded waits (store.socket_timeout_s), not the hook's unbounded defaults.
    timeout_s = StoreConfig().socket_timeout_s
    assert hooked.nodes_manager.connection_kwargs["socket_timeout"] == timeout_s
    assert hooked.nodes_manager.connection_kwargs["socket_connect_timeout"] == timeout_s
    rows = rows_for(range(500), 3)
    summary = publish(hooked, write_recs(tmp_path / "r.parquet", rows), SETTINGS, run_id="hooked",
                      logical_date=DAY.format(6), generated_at="g")
    assert summary["published"]
    audit(client, rows, "hooked", DAY.format(6))


def test_slot_migrated_during_the_load(client, tmp_path):
    rows = rows_for(range(USERS), 30)
    path = write_recs(tmp_path / "recs.parquet", rows)
    nodes = masters(client)
    ids = {name: client.get_node(node_name=name) for name in nodes}
    node_ids = {name: nodes[name].execute_command("CLUSTER", "MYID") for name in nodes}
    node_ids = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node_ids.items()}
    owner = {slot: ns[0].name for slot, ns in client.nodes_manager.slots_cache.items()}
    source, target = sorted(nodes)[:2]
    # 40 slots of the source holding users from all over the file: some written before the
    # migration starts (they are moved by MIGRATE), some while it runs (ASK), some after (MOVED).
    slots_of_users = {}
    for row in rows:
        slot = key_slot(f"USER:{row['user_id']}".encode())
        if owner[slot] == source:
            slots_of_users.setdefault(slot, []).append(row["user_id"])
    moving = sorted(slots_of_users, key=lambda s: min(slots_of_users[s]))[::max(len(slots_of_users) // 40, 1)][:40]
    events = []

    def migrate(done, total):
        if done >= USERS // 3 and "started" not in events:
            events.append("started")
            for slot in moving:
                nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_ids[source])
                nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_ids[target])
                present = nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
                if present:
                    nodes[source].execute_command("MIGRATE", ids[target].host, ids[target].port, "", 0, 10000,
                                                  "KEYS", *present)
        if done >= 2 * USERS // 3 and "finished" not in events:
            events.append("finished")
            for slot in moving:
                present = nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
                if present:
                    nodes[source].execute_command("MIGRATE", ids[target].host, ids[target].port, "", 0, 10000,
                                                  "KEYS", *present)
                for name in (target, source, *(n for n in nodes if n not in (source, target))):
                    nodes[name].execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_ids[target])

    summary = publish(client, path, SETTINGS, run_id="migrating", logical_date=DAY.format(7), generated_at="g",
                      on_progress=migrate)
    assert events == ["started", "finished"]
    assert summary["published"] and summary["users"] == USERS
    assert summary["replayed"]["ask"] > 0 and summary["replayed"]["moved"] > 0, summary["replayed"]
    assert summary["verified"] == "read back"  # rows were redirected: every key is read back, not left to WAIT
    client.nodes_manager.initialize()
    assert all(client.nodes_manager.slots_cache[slot][0].name == target for slot in moving)
    audit(client, rows, "migrating", DAY.format(7))
    moved_users = sum(len(slots_of_users[s]) for s in moving)
    users_in = [k for s in moving for k in nodes[target].execute_command("CLUSTER", "GETKEYSINSLOT", s, 1000)
                if k.startswith(b"USER:")]  # a slot also holds its fence key (store/fence.py)
    assert len(users_in) == moved_users
    assert read_manifest(client, SETTINGS)["run_id"] == "migrating"


def test_master_killed_mid_load_replica_takes_over_and_the_load_completes(failover_cluster, tmp_path):
    cluster = failover_cluster
    client = cluster.client()
    rows = rows_for(range(USERS), 40)
    path = write_recs(tmp_path / "recs.parquet", rows)
    before = masters(client)
    lock_owner = client.get_node_from_key(SETTINGS.lock_key).name
    victim = next(name for name in sorted(before) if name != lock_owner)
    victim_port = int(victim.rsplit(":", 1)[1])
    killed = []

    def kill(done, total):
        if done >= USERS // 3 and not killed:
            killed.append(done)
            cluster.node_at(victim_port).kill()

    try:
        summary = publish(client, path, SETTINGS, run_id="failover", logical_date=DAY.format(8), generated_at="g",
                          on_progress=kill)
    except RedisUnavailableError as exc:  # allowed: a clear error, then the rerun completes
        assert "rerunning the load completes it" in str(exc)
        cluster.wait_healthy()
        summary = publish(client, path, SETTINGS, run_id="failover", logical_date=DAY.format(8), generated_at="g")
    assert killed and summary["published"] and summary["users"] == USERS
    assert summary["replayed"]["lost_or_busy"] > 0
    after = masters(client)
    assert victim not in after and len(after) == 3  # the victim's replica was promoted
    audit(client, rows, "failover", DAY.format(8))
    manifest = read_manifest(client, SETTINGS)
    assert (manifest["run_id"], manifest["users"]) == ("failover", USERS)
    assert datetime.fromisoformat(manifest["completed_at"]) <= datetime.now(timezone.utc)
    assert SimpleNamespace(**manifest).logical_date == DAY.format(8)
    client.close()
