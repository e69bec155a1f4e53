"""Redis memory: the capacity pre-flight before the first write, and the bytes-per-user figure after the load.

The pre-flight estimates what the run adds on each node and refuses, writing nothing, when a node
lacks the room: ``MEMORY USAGE`` of sampled documents of this run (written one at a time to a
scratch key next to the lock, then deleted) x the users that node will hold, less what the
documents they overwrite take today (``MEMORY USAGE`` of the same users' current keys), plus 10%
for the expiry entries and allocator slack that ``MEMORY USAGE`` leaves out, against the node's
headroom: ``maxmemory - used_memory`` from ``INFO memory``. A node with ``maxmemory 0``
(no limit) is checked against the machine's ``total_system_memory`` as that node reports it
(other processes on that machine are not counted).
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

MARGIN = 1.10


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


def _memory_info(name: str, node: Any) -> dict[str, int]:
    import redis

    try:
        info = node.info("memory")
    except redis.exceptions.NoPermissionError as exc:
        raise StoreError(
            f"the Redis user may not run INFO on {name}, which the capacity pre-flight reads (used_memory, "
            "maxmemory): grant it +info, or set store.capacity_check=false to load without the pre-flight"
        ) from exc
    return {k: int(info.get(k, 0) or 0) for k in ("used_memory", "maxmemory", "total_system_memory")}


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


def _sample_sizes(client: Any, settings: StoreConfig, user_ids: Any, documents: list[str]) -> tuple[float, float]:
    """Mean ``MEMORY USAGE`` of this run's documents (via the scratch key) and of the keys they replace."""
    import numpy as np

    probe = keys.size_probe_key(settings)
    pipe = client.pipeline(transaction=False)
    for document in documents:  # one key rewritten per sample, measured after each write: one round trip
        pipe.execute_command("JSON.SET", probe, "$", document)
        pipe.memory_usage(probe, samples=0)
    try:
        replies = pipe.execute()
    finally:
        client.delete(probe)
    new_sizes = [int(v or 0) for v in replies[1::2]]
    picks = user_ids[np.linspace(0, len(user_ids) - 1, min(settings.memory_sample_keys, len(user_ids))).astype(int)]
    pipe = client.pipeline(transaction=False)
    for user_id in picks:
        pipe.memory_usage(keys.user_key(settings, int(user_id)), samples=0)
    old_sizes = [int(v or 0) for v in pipe.execute()]
    return float(np.mean(new_sizes)), float(np.mean(old_sizes)) if old_sizes else 0.0


def check_capacity(client: Any, settings: StoreConfig, user_ids: Any, documents: list[str]) -> dict[str, Any]:
    """The pre-flight: raise :class:`CapacityError` (nothing written) unless every master has room.

    ``documents`` are sampled documents of this run, JSON-encoded as they will be stored.
    Returns what it measured (the load summary records it).
    """
    import redis

    nodes = _primaries(client)
    memory_of = {name: _memory_info(name, node) for name, node in nodes.items()}  # INFO first: ACL errors write nothing
    try:
        new_bytes, old_bytes = _sample_sizes(client, settings, user_ids, documents)
    except redis.exceptions.OutOfMemoryError as exc:
        raise CapacityError(
            f"Redis is out of memory before this run wrote anything (a {len(documents[0])}-byte sample document "
            f"was refused: {exc}); {len(user_ids)} users need about "
            f"{len(user_ids) * 2 * len(documents[0]):,} bytes more. Nothing was written"
        ) from exc
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise RedisJSONMissingError(json_module_hint("Redis")) from exc
        raise
    per_user = max(new_bytes - old_bytes, 0.0) * MARGIN
    report: dict[str, Any] = {"bytes_per_document": round(new_bytes, 1), "freed_per_user": round(old_bytes, 1),
                              "nodes": {}}
    short = []
    for name, users in _users_per_node(client, settings, user_ids).items():
        memory = memory_of.get(name) or _memory_info(name, nodes.get(name) or client)
        limit = memory["maxmemory"] or memory["total_system_memory"]
        needed = int(users * per_user)
        free = max(limit - memory["used_memory"], 0) if limit else None
        report["nodes"][name] = {"users": users, "needed_bytes": needed, "free_bytes": free, **memory}
        if free is not None and needed > free:
            short.append(f"{name} needs ~{needed:,} bytes for {users:,} users but has {free:,} free "
                         f"(used_memory {memory['used_memory']:,} of "
                         + (f"maxmemory {memory['maxmemory']:,})" if memory["maxmemory"]
                            else f"total_system_memory {memory['total_system_memory']:,}, no maxmemory)"))
    if short:
        raise CapacityError(
            "capacity pre-flight: this run does not fit; nothing was written. " + "; ".join(short)
            + f". Estimate: ~{new_bytes:.0f} bytes per document (MEMORY USAGE of {len(documents)} sampled), less "
            f"~{old_bytes:.0f} freed per overwritten user, +10%. Raise maxmemory, add cluster nodes, or free memory"
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
