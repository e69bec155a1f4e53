"""Where each document goes: one connection to a single Redis, or one per cluster master by slot owner.

The writer asks a route to group rows by node and for that node's raw connection; after a redirect
or a failover it asks the route to refresh (a cluster's slot map is read again from the nodes).
Connections are taken from the client's own pools, so credentials and TLS come with them, and each
makes one connection attempt per try (:mod:`recsys_tasks.store.resilience` owns the tries).
"""

from __future__ import annotations

import functools
from typing import Any

from .resilience import is_cluster, single_try

SLOTS = 16384


@functools.lru_cache(maxsize=1)
def _crc16_table() -> Any:
    """CRC16-XMODEM (polynomial 0x1021), the hash of Redis Cluster, one entry per byte value."""
    import numpy as np

    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[byte] = crc & 0xFFFF
    return table


def key_slots(keys: Any) -> Any:
    """The cluster hash slot of every key of a pyarrow string array: CRC16 of the key (or of its ``{tag}``) mod 16384.

    Computed column-wise, one byte position at a time over all keys (keys are short); a key with a
    ``{`` takes redis-py's per-key function, which applies the hash-tag rule.
    """
    import numpy as np
    import pyarrow.compute as pc
    from redis.crc import key_slot

    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    if pc.any(pc.match_substring(keys, "{")).as_py():
        return np.fromiter((key_slot(k.encode()) for k in keys.to_pylist()), dtype=np.int64, count=len(keys))
    _, offsets_buffer, data = keys.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[keys.offset : keys.offset + len(keys) + 1]
    raw = np.frombuffer(data, dtype=np.uint8)
    starts, lengths = offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)
    table = _crc16_table()
    crc = np.zeros(len(keys), dtype=np.uint32)
    for position in range(int(lengths.max())):
        active = lengths > position
        byte = raw[np.minimum(starts + position, len(raw) - 1)].astype(np.uint32)
        updated = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
        crc = np.where(active, updated, crc)
    return (crc % SLOTS).astype(np.int64)


def receive(name: str, connection: Any, buffer: bytearray, size: int) -> None:
    """Receive from ``connection``'s socket (``name``'s) until ``buffer`` holds ``size`` bytes; the socket's
    timeout bounds each wait, and a failure is raised as redis-py's ConnectionError / TimeoutError."""
    import redis.exceptions as rex

    sock = connection._sock
    if sock is None:
        raise rex.ConnectionError(f"the connection to {name} is closed")
    while len(buffer) < size:
        try:
            chunk = sock.recv(max(65536, size - len(buffer)))
        except TimeoutError as exc:
            raise rex.TimeoutError(f"Timeout reading from {name}") from exc
        except OSError as exc:
            raise rex.ConnectionError(f"Error while reading from {name}: {exc}") from exc
        if not chunk:
            raise rex.ConnectionError(f"Connection closed by {name}.")
        buffer += chunk


class SingleRoute:
    """Everything goes to the one server, on one connection of the client's pool."""

    cluster = False

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self._connection: Any = None
        self._saved_retry: Any = None

    def connection(self, name: str) -> Any:
        if self._connection is None:
            self._connection = self.pool.get_connection()
            self._saved_retry, self._connection.retry = self._connection.retry, single_try()
        return self._connection

    def group(self, slots: Any) -> dict[str, Any]:
        return {"redis": None}

    def connected_names(self) -> list[str]:
        return ["redis"] if self._connection is not None else []

    def node_of_address(self, host: str, port: int) -> str:
        return "redis"

    def refresh(self) -> None:
        """Nothing to learn: a dropped connection reconnects (one attempt) when it next sends."""

    def drop(self, name: str) -> None:
        if self._connection is not None:
            self._connection.disconnect()

    def release(self) -> None:
        if self._connection is not None:
            self._connection.retry = self._saved_retry
            self.pool.release(self._connection)
            self._connection = None


class ClusterRoute:
    """Rows grouped by the master that owns their slot; one raw connection per master."""

    cluster = True

    def __init__(self, client: Any) -> None:
        import numpy as np

        self.client = client
        self.owner = np.full(SLOTS, -1, dtype=np.int64)
        self.names: list[str] = []
        self._connections: dict[str, tuple[Any, Any, Any]] = {}
        self._build()

    def _build(self) -> None:
        import numpy as np

        names: dict[str, int] = {}
        owner = np.full(SLOTS, -1, dtype=np.int64)
        for slot, nodes in self.client.nodes_manager.slots_cache.items():
            if nodes:
                owner[slot] = names.setdefault(nodes[0].name, len(names))
        self.owner, self.names = owner, list(names)

    def refresh(self) -> None:
        """Read the slot map again (after MOVED, a failover or a finished migration)."""
        self.client.nodes_manager.initialize()
        self._build()
        for name in [n for n in self._connections if n not in self.names]:
            self.drop(name)

    def group(self, slots: Any) -> dict[str, Any]:
        import numpy as np

        from .errors import RedisUnavailableError

        owners = self.owner[slots]
        if (owners < 0).any():
            slot = int(slots[owners < 0][0])
            raise RedisUnavailableError(f"no cluster node serves slot {slot} (slot map incomplete)")
        order = np.argsort(owners, kind="stable")
        sorted_owners = owners[order]
        bounds = np.flatnonzero(np.diff(sorted_owners)) + 1
        return {self.names[int(chunk[0])]: order[start:end] for chunk, start, end in zip(
            np.split(sorted_owners, bounds), [0, *bounds], [*bounds, len(order)])}

    def connected_names(self) -> list[str]:
        return list(self._connections)

    def node_of_address(self, host: str, port: int) -> str:
        from redis.cluster import get_node_name

        return get_node_name(host, port)

    def connection(self, name: str) -> Any:
        if name not in self._connections:
            host, _, port = name.rpartition(":")
            node = self.client.get_node(node_name=name) or self.client.nodes_manager.get_node(host, int(port))
            if node is None:
                from redis.cluster import ClusterNode

                node = ClusterNode(host, int(port))
                self.client.nodes_manager.create_redis_connections([node])
            pool = self.client.get_redis_connection(node).connection_pool
            connection = pool.get_connection()
            self._connections[name] = (pool, connection, connection.retry)
            connection.retry = single_try()
        return self._connections[name][1]

    def drop(self, name: str) -> None:
        entry = self._connections.pop(name, None)
        if entry is not None:
            pool, connection, retry = entry
            connection.disconnect()
            connection.retry = retry
            pool.release(connection)

    def release(self) -> None:
        for name in list(self._connections):
            entry = self._connections.pop(name)
            pool, connection, retry = entry
            connection.retry = retry
            pool.release(connection)


def route_for(client: Any) -> SingleRoute | ClusterRoute:
    return ClusterRoute(client) if is_cluster(client) else SingleRoute(client)
