"""What makes a written document count: ``WAIT`` for the node's replicas, then a read-back of every key of the run.

Redis replication is asynchronous, so a master's ``+OK`` can be lost in a failover. After the write
phase each master is asked ``WAIT numreplicas`` on the connection that wrote (``store.min_replicas_acked``;
-1: one where the node has a replica, none on a lone node), then every key of the run is read back
(pipelined per node on the same raw connections), and whatever is missing or not this load's is
written again (then waited for and read back again) before the manifest. A load that ``WAIT`` fully
covers (every master replicated and confirmed, nothing lost, redirected or replayed) skips the
read-back (:func:`_verification`). A fenced write gives every document of a load one expiry instant
(:mod:`.fence`), so the read-back is ``PEXPIRETIME key`` (an integer compared byte for byte: about a
third of the server's work of ``JSON.GET key $.run_id``, which plain writes are read back with).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

from ..config import StoreConfig
from ..runtime import get_logger
from .errors import DurabilityError, RedisUnavailableError, StoreError
from .fence import Fence, fence_for, load_fenced_write
from .resilience import is_cluster, transient_errors, wait_before_retry
from .topology import receive
from .writer import PipelinedWriter, ProgressCallback, stream_documents

log = get_logger("load_redis")


def _parse_reply(buffer: bytearray, position: int) -> tuple[Any, int] | None:
    """One RESP2 reply (``+``, ``-``, ``:`` or a bulk string) at ``position``: ``(value, next position)``,
    or None when the buffer does not hold all of it yet. Errors come back as ``Exception``, nil as None."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        return None
    kind, line = buffer[position:position + 1], bytes(buffer[position + 1:end])
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, end + 2
        if len(buffer) < end + 2 + size + 2:
            return None
        return bytes(buffer[end + 2:end + 2 + size]), end + 2 + size + 2
    if kind == b"-":
        from redis._parsers.base import BaseParser

        return BaseParser.parse_error(line.decode(errors="replace")), end + 2
    return line, end + 2


def _read_replies(name: str, connection: Any, count: int, fast: bytes | None,
                  buffer: bytearray | None = None) -> list[Any] | None:
    """``count`` replies from ``connection``; None when they are exactly ``fast`` (every row as expected).

    Bytes are received while they still match ``fast``; at the first difference the replies are
    parsed one by one (a missing key's reply is shorter than the expected one). ``buffer`` holds bytes
    already received from this connection (later requests' replies are left in it).
    """
    buffer = bytearray() if buffer is None else buffer
    if fast is not None:
        while len(buffer) < len(fast) and fast.startswith(buffer):
            receive(name, connection, buffer, len(buffer) + 1)
        if buffer[:len(fast)] == fast:
            del buffer[:len(fast)]
            return None
    replies, position = [], 0
    while len(replies) < count:
        parsed = _parse_reply(buffer, position)
        if parsed is None:
            receive(name, connection, buffer, len(buffer) + 1)
            continue
        value, position = parsed
        replies.append(value)
    del buffer[:position]
    return replies


def _node_replicas(client: Any, name: str) -> int:
    """Replicas connected to master ``name`` now (``INFO replication``); 0 when INFO is not allowed."""
    import redis

    node = client
    if is_cluster(client):
        host, _, port = name.rpartition(":")
        node = client.get_redis_connection(client.get_node(node_name=name) or client.get_node(host, int(port)))
    try:
        return int(node.info("replication").get("connected_slaves", 0) or 0)
    except redis.exceptions.NoPermissionError:
        log.warning("the Redis user may not run INFO on %s: not waiting for its replicas (grant +info)", name)
        return 0


def wait_for_replicas(writer: PipelinedWriter, settings: StoreConfig) -> dict[str, dict[str, int]]:
    """``WAIT`` on every connection the writer wrote through; raises :class:`DurabilityError` when a master's
    replicas still acknowledged fewer than required after ``store.retry_attempts`` tries of
    ``store.replica_ack_timeout_s`` each (a replica resyncing after a failover catches up meanwhile)."""
    timeout_ms = int(1000 * min(settings.replica_ack_timeout_s, 0.8 * settings.socket_timeout_s))
    acks = {}
    for name in writer.route.connected_names():
        for attempt in range(1, settings.retry_attempts + 1):
            wanted = settings.min_replicas_acked
            if wanted < 0:
                wanted = min(1, _node_replicas(writer.client, name))
            if wanted == 0:
                acks[name] = {"required": 0, "acknowledged": 0}
                break
            connection = writer.route.connection(name)
            connection.send_packed_command(connection.pack_command("WAIT", wanted, timeout_ms), check_health=False)
            value = (_read_replies(name, connection, 1, None) or [b"0"])[0]
            if isinstance(value, Exception):
                raise StoreError(f"{name} refused WAIT: {value}")
            acks[name] = {"required": wanted, "acknowledged": int(value)}
            if int(value) >= wanted:
                break
            message = (f"{name}: only {int(value)} of the {wanted} required replica(s) acknowledged this load's "
                       f"writes within {timeout_ms} ms (store.min_replicas_acked)")
            if attempt == settings.retry_attempts:
                raise DurabilityError(f"{message}, {attempt} tries; its writes could be lost in a failover")
            wait_before_retry(settings, attempt, DurabilityError(message), "waiting for the replicas")
    return acks


def _get_commands(key_names: Any, fence: Fence | None) -> bytes:
    """``PEXPIRETIME key`` (fenced writes) or ``JSON.GET key $.run_id`` for every key, as one RESP payload."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .keys import payload

    lengths = pc.cast(pc.binary_length(key_names), pa.string())
    if fence is not None:
        return payload(pc.binary_join_element_wise("*2\r\n$11\r\nPEXPIRETIME\r\n$", lengths, "\r\n", key_names,
                                                   "\r\n", ""))
    return payload(pc.binary_join_element_wise("*3\r\n$8\r\nJSON.GET\r\n$", lengths, "\r\n", key_names,
                                               "\r\n$8\r\n$.run_id\r\n", ""))


def _expected(run_id: str, fence: Fence | None) -> tuple[bytes, bytes]:
    """The read-back's reply for a key holding this load's write: ``(value, its RESP bytes)``."""
    if fence is not None:
        value = str(fence.expire_at_ms).encode()
        return value, b":%s\r\n" % value
    value = json.dumps([run_id], separators=(",", ":")).encode()
    return value, b"$%d\r\n%s\r\n" % (len(value), value)


class _ReadRound:
    """One round of the read-back: reads a request's replies, sorting its rows into missing / to retry."""

    def __init__(self, route: Any, rex: Any, expected: tuple[bytes, bytes], missing: dict[int, list[int]],
                 again: list[tuple[int, Any]]) -> None:
        self.route, self.rex, self.missing, self.again = route, rex, missing, again
        self.stored, self.row_reply = expected
        self.down: set[str] = set()
        self.buffers: dict[str, bytearray] = collections.defaultdict(bytearray)

    def read(self, request: tuple[int, str, Any]) -> BaseException | None:
        """The replies of one request; returns the error that makes some of its rows retry, if any."""
        import numpy as np

        index, name, subset = request
        if name in self.down:
            self.again.append((index, subset))
            return None
        try:
            replies = _read_replies(name, self.route.connection(name), len(subset), self.row_reply * len(subset),
                                    self.buffers[name])
        except (self.rex.ConnectionError, self.rex.TimeoutError) as exc:
            self.down.add(name)
            self.route.drop(name)
            self.again.append((index, subset))
            return exc
        redo, error = [], None
        for row, reply in zip(subset.tolist(), replies or ()):
            if isinstance(reply, (self.rex.AskError, self.rex.ClusterDownError, self.rex.TryAgainError)):
                redo.append(row)
                error = reply
            elif isinstance(reply, Exception):
                raise StoreError(f"{name} refused the read-back of this run's documents: {reply}")
            elif reply != self.stored:
                self.missing[index].append(row)
        if redo:
            self.again.append((index, np.asarray(redo)))
        return error


def read_back(writer: PipelinedWriter, settings: StoreConfig, chunks: list[tuple[Any, Any]],
              run_id: str, fence: Fence | None = None) -> dict[int, list[int]]:
    """Rows of each chunk whose key does not hold this load's write (missing, or another run's): by the
    ``fence``'s expiry instant, or without a fence by the document's ``run_id``."""
    import numpy as np
    import pyarrow as pa

    route, rex = writer.route, writer._rex
    expected = _expected(run_id, fence)
    missing: dict[int, list[int]] = collections.defaultdict(list)
    pending: list[tuple[int, Any]] = [(i, np.arange(len(names))) for i, (names, _) in enumerate(chunks)]
    failures = 0
    while pending:
        again: list[tuple[int, Any]] = []
        error: BaseException | None = None
        in_flight: collections.deque[tuple[int, str, Any]] = collections.deque()
        round_ = _ReadRound(route, rex, expected, missing, again)
        down = round_.down
        for index, rows in pending:
            names, slots = chunks[index]
            sent = 0
            for name, picks in route.group(slots[rows]).items():
                subset = rows if picks is None else rows[picks]
                if name in down:
                    again.append((index, subset))
                    continue
                try:
                    route.connection(name).send_packed_command(
                        [_get_commands(names.take(pa.array(subset)), fence)], check_health=False)
                except transient_errors() as exc:
                    down.add(name)
                    route.drop(name)
                    again.append((index, subset))
                    error = exc
                    continue
                in_flight.append((index, name, subset))
                sent += 1
            while len(in_flight) > sent:  # one chunk in flight: the servers work while we read and encode
                error = round_.read(in_flight.popleft()) or error
        while in_flight:
            error = round_.read(in_flight.popleft()) or error
        if again:
            failures += 1
            if failures >= settings.retry_attempts:
                raise RedisUnavailableError(
                    f"the read-back could not reach every node after {settings.retry_attempts} tries "
                    f"({type(error).__name__}: {error})") from error
            wait_before_retry(settings, failures, error or RuntimeError("?"), "during the read-back")
            try:
                route.refresh()
            except (*transient_errors(), rex.RedisClusterException) as exc:
                log.warning("refreshing the slot map failed (%s); trying again", exc)
        pending = again
    return dict(missing)


def write_confirmed(client: Any, path: Any, settings: StoreConfig, run_fields: dict[str, str], *, total: int,
                    on_progress: ProgressCallback | None = None,
                    check_lock: Callable[[], None] | None = None,
                    after_write: Callable[[], None] | None = None,
                    generation_us: int | None = None) -> dict[str, Any]:
    """Claim the fences, write every document of ``path``, wait for the replicas, read the keys back where
    ``WAIT`` does not cover them (:func:`_verification`), and replay what is missing.

    ``generation_us`` is when the load took its lock (the fence's generation; default: the server's
    time now). Returns the counts of :func:`recsys_tasks.store.writer.write_documents` plus ``replicas``
    (per master: required and acknowledged), ``verified`` (``"read back"`` or ``"off"``) and
    ``read_back_replayed`` (documents written again after the read-back).
    """
    fence = None
    if settings.fenced_writes:
        load_fenced_write(client)
        fence = fence_for(client, settings, run_fields["logical_date"], generation_us)
    writer = PipelinedWriter(client, settings, total=total, on_progress=on_progress)
    replayed_after_read_back = 0
    try:
        if fence is not None:
            writer.claim(fence)
        chunks, payload_bytes = stream_documents(writer, path, settings, run_fields, fence=fence,
                                                 check_lock=check_lock)
        written = writer.finish()
        if after_write is not None:  # e.g. the eviction check: before a read-back would replay evicted documents
            after_write()
        replicas = wait_for_replicas(writer, settings)
        verified = _verification(writer, settings, replicas)
        for attempt in range(settings.retry_attempts + 1):
            if verified != "read back":
                break
            missing = read_back(writer, settings, chunks, run_fields["run_id"], fence)
            count = sum(len(rows) for rows in missing.values())
            if not count:
                break
            if attempt == settings.retry_attempts:
                raise DurabilityError(
                    f"{count} document(s) of run {run_fields['run_id']!r} were acknowledged but are still not in "
                    f"Redis after {attempt} replays (a node keeps losing writes)")
            log.warning("read-back: %d acknowledged document(s) of this run are missing (lost in a failover?); "
                        "writing them again", count)
            replayed_after_read_back += count
            stream_documents(writer, path, settings, run_fields, fence=fence, only=missing, check_lock=check_lock)
            writer.finish()
            replicas = wait_for_replicas(writer, settings)
    finally:
        writer.close()
    return {"written": written, "payload_bytes": payload_bytes, "replayed": dict(writer.replayed),
            "read_back_replayed": replayed_after_read_back, "replicas": replicas, "verified": verified}


def _verification(writer: PipelinedWriter, settings: StoreConfig, replicas: dict[str, dict[str, int]]) -> str:
    """How the acknowledged writes are confirmed: ``"read back"`` (every key, the default) or ``"off"``.

    Every key is read back even when ``WAIT`` confirmed every write of an undisturbed load: ``WAIT`` says the
    replicas received the writes, not that the documents are there now (a third party's ``DEL``, an
    eviction between write and manifest), and the manifest promises they are. The read-back is one
    ``PEXPIRETIME`` per key, about a third of the fence's server cost (docs/store-durability.md).
    """
    return "read back" if settings.verify_writes else "off"


def write_manifest(client: Any, lock: Any, settings: StoreConfig, document: str) -> dict[str, int]:
    """The manifest, written only while ``lock`` is held, then ``WAIT`` like the documents
    (``store.min_replicas_acked``) on the same connection: a manifest lost in a failover would bring back
    the previous one, which names a run whose documents were just replaced. Short of replicas it is
    written again (the same document) and waited for, ``store.retry_attempts`` tries; then
    :class:`DurabilityError`."""
    key = settings.manifest_key
    name = client.get_node_from_key(key).name if is_cluster(client) else "redis"
    timeout_ms = int(1000 * min(settings.replica_ack_timeout_s, 0.8 * settings.socket_timeout_s))
    wanted = settings.min_replicas_acked
    if wanted < 0:
        wanted = min(1, _node_replicas(client, name))
    for attempt in range(1, settings.retry_attempts + 1):
        acknowledged = lock.set_if_owner(key, document, replicas=wanted, timeout_ms=timeout_ms)
        if acknowledged >= wanted:
            return {"required": wanted, "acknowledged": acknowledged}
        message = (f"{name}: only {acknowledged} of the {wanted} required replica(s) acknowledged {key} within "
                   f"{timeout_ms} ms (store.min_replicas_acked)")
        if attempt == settings.retry_attempts:
            raise DurabilityError(f"{message}, {attempt} tries: {key} names this run on the master, but a failover "
                                  "could bring back the previous manifest; rerun the load")
        wait_before_retry(settings, attempt, DurabilityError(message), "waiting for the replicas of the manifest")
    raise AssertionError("unreachable")

