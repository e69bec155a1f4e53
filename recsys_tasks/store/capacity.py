"""Redis memory: the capacity pre-flight before the first write, the eviction check, and bytes per user after the load.

The pre-flight measures what a document of this run really costs: it writes a probe batch of this
run's documents (with their TTL) to scratch keys next to the lock on one master, reads how much
``used_memory`` grew (less the hash tables' own growth, from ``MEMORY STATS``), and deletes them.
Each master's estimate is that cost x the users it will newly hold, plus the growth of its key
and expiry hash tables, plus the size change of the documents it overwrites; the master is refused
when the estimate x ``MARGIN`` exceeds ``maxmemory - used_memory`` (or ``total_system_memory`` without
a limit), or x ``EVICTING_MARGIN`` under a ``maxmemory-policy`` that evicts (``allkeys-*``; ``volatile-*``,
since every document has a TTL): there a short estimate would silently cost documents, not fail the load.
The load summary records the estimate, the real growth of ``used_memory`` and their ratio.
"""

from __future__ import annotations

from typing import Any

from ..config import StoreConfig
from ..runtime import get_logger
from . import keys
from .errors import CapacityError, RedisJSONMissingError, StoreError, json_module_hint
from .resilience import is_cluster
from .topology import key_slots, route_for

log = get_logger("load_redis")

MARGIN = 1.05
EVICTING_MARGIN = 1.10
EVICTING_POLICIES = ("allkeys-", "volatile-")


def _primaries(client: Any) -> dict[str, Any]:
    """Each master's name and a plain client for it (the client itself for a single Redis)."""
    if not is_cluster(client):
        pool_kwargs = client.connection_pool.connection_kwargs
        return {f"{pool_kwargs.get('host', 'redis')}:{pool_kwargs.get('port', '')}": client}
    return {node.name: client.get_redis_connection(node) for node in client.get_primaries()}


def require_json_module(client: Any, settings: StoreConfig | None = None) -> None:
    """Fail at once, naming the module and how to load it, unless every master knows ``JSON.GET``.

    Each master is asked for the manifest (a key the load may read under a least-privilege ACL).
    """
    import redis

    probe = (settings or StoreConfig()).manifest_key
    for name, node in _primaries(client).items():
        try:
            node.execute_command("JSON.GET", probe)
        except redis.exceptions.AskError:
            continue  # MOVED/ASK: the node knows JSON.GET (commands are looked up before slots)
        except redis.ResponseError as exc:
            if "unknown command" in str(exc).lower():
                raise RedisJSONMissingError(json_module_hint(f"Redis at {name}")) from exc
            raise


def _memory_info(name: str, node: Any) -> dict[str, Any]:
    import redis

    try:
        info = node.info("memory")
        stats = node.info("stats")
    except redis.exceptions.NoPermissionError as exc:
        raise StoreError(
            f"the Redis user may not run INFO on {name}, which the capacity pre-flight reads (used_memory, "
            "maxmemory, maxmemory_policy, evicted_keys): grant it +info, or set store.capacity_check=false to "
            "load without the pre-flight"
        ) from exc
    memory: dict[str, Any] = {k: int(info.get(k, 0) or 0) for k in ("used_memory", "maxmemory", "total_system_memory")}
    memory["maxmemory_policy"] = str(info.get("maxmemory_policy", "noeviction"))
    replication = node.info("replication")
    # The replication backlog fills up (to repl_backlog_size) as the load's writes stream to the replicas.
    memory["backlog_room"] = (max(int(replication.get("repl_backlog_size", 0) or 0)
                                  - int(replication.get("repl_backlog_histlen", 0) or 0), 0)
                              if int(replication.get("connected_slaves", 0) or 0) else 0)
    memory["evicted_keys"] = int(stats.get("evicted_keys", 0) or 0)
    return memory


def memory_of_masters(client: Any) -> dict[str, dict[str, Any]]:
    """``INFO memory`` / ``INFO stats`` figures of every master (used_memory, maxmemory, policy, evicted_keys)."""
    return {name: _memory_info(name, node) for name, node in _primaries(client).items()}


def check_evictions(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Keys each master evicted between two :func:`memory_of_masters` readings; raises when any did."""
    from .errors import EvictionError

    evicted = {name: after[name]["evicted_keys"] - before[name]["evicted_keys"] for name in after if name in before}
    lost = {name: count for name, count in evicted.items() if count > 0}
    if lost:
        raise EvictionError(
            "Redis evicted keys during this load (" + ", ".join(
                f"{name}: {count} key(s) under maxmemory-policy {after[name]['maxmemory_policy']}"
                for name, count in lost.items())
            + "): documents of this or the published run may be gone; the manifest was not written. Raise "
            "maxmemory or set maxmemory-policy noeviction (a full Redis then fails the load instead of losing keys)")
    return evicted


def _pow2_at_least(count: int) -> int:
    return 1 << max(int(count) - 1, 0).bit_length() if count > 0 else 0


def _table_growth_bytes(keys_now: int, keys_added: int) -> int:
    """Bytes the key and the expiry hash tables grow by (8-byte buckets, sized to a power of two >= the keys)."""
    return 2 * 8 * max(_pow2_at_least(keys_now + keys_added + 1) - _pow2_at_least(keys_now + 1), 0)


def _users_per_node(client: Any, settings: StoreConfig, user_ids: Any) -> dict[str, int]:
    import numpy as np
    import pyarrow as pa

    nodes = _primaries(client)
    if not is_cluster(client):
        return {next(iter(nodes)): len(user_ids)}
    route = route_for(client)
    try:
        key_names = pa.array([keys.user_key(settings, int(u)) for u in user_ids], type=pa.string())
        owners = route.owner[key_slots(key_names)]
        counts = np.bincount(owners[owners >= 0], minlength=len(route.names))
        return {name: int(counts[i]) for i, name in enumerate(route.names)}
    finally:
        route.release()


DICT_ENTRY_BYTES = 24  # one entry in the key table and one in the expiry table per document
CLUSTER_KEY_LINK_BYTES = 16  # a cluster node links each key into its slot's list (two pointers per key)


def _dataset_bytes(node: Any) -> int | None:
    """``MEMORY STATS`` ``dataset.bytes``: used_memory less every overhead (client buffers, replication, hash
    tables), so a probe's growth is not blurred by its own connection's buffers. None when not allowed."""
    import redis

    try:
        return int(node.memory_stats()["dataset.bytes"])
    except (redis.RedisError, KeyError):
        return None


def _key_bytes(name_length: int) -> int:
    """The allocation of a key name of this length (an sds: 3-byte header + name + NUL, in jemalloc's size class)."""
    size = 3 + name_length + 1
    if size <= 64:
        return -(-size // 8) * 8
    step = 1 << max((size - 1).bit_length() - 3, 4)
    return -(-size // step) * step


def _probe_cost(client: Any, settings: StoreConfig, documents: list[str], key_length: float) -> tuple[float, float]:
    """``used_memory`` bytes per document of this run (probe batch on one master, written then deleted), and the
    mean ``MEMORY USAGE`` of a probe key (to convert other keys' ``MEMORY USAGE`` into used_memory bytes).

    The batch is first written unmeasured: that pays the one-time costs of a fresh server (the first JSON
    values, the first keys, client buffers), which would otherwise read ~15-35% high.
    """
    import numpy as np

    base = keys.size_probe_key(settings)
    warm_keys = [f"{base}:{{p}}:w{i}" for i in range(len(documents))]  # one hash tag: one slot, one master
    probe_keys = [f"{base}:{{p}}:{i}" for i in range(len(documents))]
    node = client.get_redis_connection(client.get_node_from_key(probe_keys[0])) if is_cluster(client) else client

    def write(names: list[str]) -> None:
        pipe = node.pipeline(transaction=False)
        for key, document in zip(names, documents):
            pipe.execute_command("JSON.SET", key, "$", document)
            pipe.expire(key, settings.ttl_s)
        pipe.execute()

    try:
        write(warm_keys)  # kept until the end: deleting it would free some of what it paid for
        used_before, dataset_before = int(node.info("memory")["used_memory"]), _dataset_bytes(node)
        write(probe_keys)
        used_after, dataset_after = int(node.info("memory")["used_memory"]), _dataset_bytes(node)
        pipe = node.pipeline(transaction=False)
        for key in probe_keys[:20]:
            pipe.memory_usage(key, samples=0)
        usage = float(np.mean([int(v or 0) for v in pipe.execute()]))
    finally:
        node.delete(*warm_keys, *probe_keys)
    if dataset_before is not None and dataset_after is not None:
        grown = (dataset_after - dataset_before) / len(documents) + 2 * DICT_ENTRY_BYTES
    else:  # without MEMORY STATS: used_memory, which also counts this connection's buffers (an overestimate)
        grown = (used_after - used_before) / len(documents)
    # Probe keys are longer than document keys: each key's name is stored once (in the key table).
    probe_key_length = float(np.mean([len(k) for k in probe_keys]))
    per_document = grown - _key_bytes(round(probe_key_length)) + _key_bytes(round(key_length))
    return max(per_document, 1.0), max(usage, 1.0)


def _overwritten(client: Any, settings: StoreConfig, user_ids: Any) -> tuple[float, float]:
    """Share of this run's users that already have a document, and the mean ``MEMORY USAGE`` of those documents."""
    import numpy as np

    picks = user_ids[np.linspace(0, len(user_ids) - 1, min(max(settings.memory_sample_keys, 1), len(user_ids)))
                     .astype(int)]
    pipe = client.pipeline(transaction=False)
    for user_id in picks:
        pipe.memory_usage(keys.user_key(settings, int(user_id)), samples=0)
    sizes = [int(v) for v in pipe.execute() if v]
    return len(sizes) / len(picks), float(np.mean(sizes)) if sizes else 0.0


def check_capacity(client: Any, settings: StoreConfig, user_ids: Any, documents: list[str]) -> dict[str, Any]:
    """The pre-flight: raise :class:`CapacityError` (nothing written) unless every master has room.

    ``documents`` are documents of this run (the probe batch), JSON-encoded as they will be stored.
    Returns what it measured (the load summary records it).
    """
    import numpy as np
    import redis

    nodes = _primaries(client)
    memory_of = {name: _memory_info(name, node) for name, node in nodes.items()}  # INFO first: ACL errors write nothing
    frees = [m["maxmemory"] - m["used_memory"] for m in memory_of.values() if m["maxmemory"]]
    if frees:  # the probe (written twice) takes at most a fifth of the smallest headroom
        fitting = int(0.2 * max(min(frees), 0) / (2 * 3 * max(len(documents[0]), 1)))
        documents = documents[:max(fitting, 20)]
    try:
        key_length = len(settings.key_prefix) + float(np.mean([len(str(int(u))) for u in user_ids[::max(
            len(user_ids) // 1000, 1)]]))
        per_document, probe_usage = _probe_cost(client, settings, documents, key_length)
    except redis.exceptions.OutOfMemoryError as exc:
        raise CapacityError(
            f"Redis is out of memory before this run wrote anything (a probe batch of {len(documents)} documents "
            f"was refused: {exc}); {len(user_ids)} users need about {len(user_ids) * 2 * len(documents[0]):,} bytes "
            "more. Nothing was written (the probe's keys were deleted)"
        ) from exc
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise RedisJSONMissingError(json_module_hint("Redis")) from exc
        raise
    share, old_usage = _overwritten(client, settings, user_ids)
    old_per_document = per_document * old_usage / probe_usage  # MEMORY USAGE scaled to used_memory bytes
    report: dict[str, Any] = {"bytes_per_document": round(per_document, 1), "probe_documents": len(documents),
                              "overwritten_share": round(share, 3), "bytes_per_overwritten": round(old_per_document, 1),
                              "nodes": {}}
    slot_link = CLUSTER_KEY_LINK_BYTES if is_cluster(client) else 0
    short = []
    for name, users in _users_per_node(client, settings, user_ids).items():
        memory = memory_of.get(name) or _memory_info(name, nodes.get(name) or client)
        limit = memory["maxmemory"] or memory["total_system_memory"]
        new_users = round(users * (1 - share))
        keys_now = int(nodes[name].dbsize()) if name in nodes else 0
        backlog = min(memory["backlog_room"], users * len(documents[0]))
        needed = int(new_users * (per_document + slot_link) + (users - new_users) * (per_document - old_per_document)
                     + _table_growth_bytes(keys_now, new_users) + backlog)
        evicting = memory["maxmemory"] > 0 and memory["maxmemory_policy"].startswith(EVICTING_POLICIES)
        margin = EVICTING_MARGIN if evicting else MARGIN
        free = max(limit - memory["used_memory"], 0) if limit else None
        report["nodes"][name] = {"users": users, "needed_bytes": needed, "free_bytes": free, **memory}
        if free is not None and needed * margin > free:
            short.append(f"{name} needs ~{needed:,} bytes for {users:,} users but has {free:,} free "
                         f"(used_memory {memory['used_memory']:,} of "
                         + (f"maxmemory {memory['maxmemory']:,})" if memory["maxmemory"]
                            else f"total_system_memory {memory['total_system_memory']:,}, no maxmemory)")
                         + (f"; its maxmemory-policy {memory['maxmemory_policy']} would evict documents (every "
                            "document has a TTL) instead of failing the load" if evicting else ""))
    report["estimate_bytes"] = sum(v["needed_bytes"] for v in report["nodes"].values())
    if short:
        raise CapacityError(
            "capacity pre-flight: this run does not fit; nothing was written. " + "; ".join(short)
            + f". Estimate: ~{per_document:.0f} bytes per document (used_memory growth of a {len(documents)}-document "
            f"probe), x{margin:.2f} margin. Raise maxmemory, add cluster nodes, or free memory"
        )
    log.info("capacity pre-flight passed: %s", "; ".join(
        f"{n} needs ~{v['needed_bytes']:,} B of "
        + (f"{v['free_bytes']:,}" if v["free_bytes"] is not None else "unlimited") + " B free"
        for n, v in report["nodes"].items()))
    return report


def sample_memory(client: Any, settings: StoreConfig, user_ids: Any) -> dict[str, Any]:
    """Redis bytes per user: ``MEMORY USAGE`` of up to ``memory_sample_keys`` documents spread over the run."""
    import numpy as np

    count = min(settings.memory_sample_keys, len(user_ids))
    if count == 0:
        return {}
    picks = user_ids[np.linspace(0, len(user_ids) - 1, count).astype(np.int64)]
    pipe = client.pipeline(transaction=False)
    for user_id in picks:
        pipe.memory_usage(keys.user_key(settings, int(user_id)), samples=0)
    sizes = [int(v) for v in pipe.execute() if v is not None]
    per_user = sum(sizes) / max(len(sizes), 1)
    return {
        "redis_bytes_per_user": round(per_user, 1),
        "redis_bytes_estimate": int(per_user * len(user_ids)),
        "memory_sampled_keys": len(sizes),
    }
