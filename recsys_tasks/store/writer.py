"""The hot loop: pipelined, pre-encoded ``JSON.SET`` + ``EXPIRE`` writes to one Redis or a Redis Cluster.

Each chunk of users is encoded to RESP column-wise (:func:`keys.encode_commands`); on a cluster its
rows are grouped by the master owning each key's slot and each group goes to that master's raw
connection. Replies of a chunk are read only after the next chunk is sent, so the servers work while
we encode. A row counts as written when both its replies are read (progress counts acknowledged
replies, not commands sent). Rows that come back with MOVED/ASK, a cluster error (CLUSTERDOWN,
TRYAGAIN, READONLY, LOADING) or whose replies were lost with a connection are replayed (both
commands are idempotent) after refreshing the slot map; connection faults get
``store.retry_attempts`` tries with backoff, then :class:`RedisUnavailableError`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import StoreConfig
from ..runtime import Progress, get_logger
from . import keys
from .errors import (
    RedisJSONMissingError,
    RedisUnavailableError,
    StoreError,
    StoreOutOfMemoryError,
    SupersededError,
    json_module_hint,
)
from .fence import load_fenced_write
from .resilience import transient_errors, wait_before_retry
from .topology import key_slots, receive, route_for

log = get_logger("load_redis")

ProgressCallback = Callable[[int, int], None]
MAX_REDIRECT_ROUNDS = 64
ROW_REPLIES = b"+OK\r\n:1\r\n"  # JSON.SET, EXPIRE
ROW_REPLIES_ASKING = b"+OK\r\n+OK\r\n+OK\r\n:1\r\n"  # ASKING, JSON.SET, ASKING, EXPIRE
FENCED_REPLIES = {False: b":1\r\n", True: b"+OK\r\n:1\r\n"}  # EVALSHA of the fenced write (after ASKING)


def _parse_error(message: str) -> Exception:
    """An error line as redis-py raises it (MOVED -> MovedError, OOM -> OutOfMemoryError, ...)."""
    from redis._parsers.base import BaseParser

    return BaseParser.parse_error(message)


@dataclass
class Part:
    """Rows bound for one node: one RESP string per user (both commands) and the users' slots."""

    commands: Any
    slots: Any
    asking: bool = False
    fenced: bool = False

    def __len__(self) -> int:
        return len(self.commands)

    def take(self, indices: Any) -> Part:
        import pyarrow as pa

        if indices is None:
            return self
        return Part(self.commands.take(pa.array(indices)), self.slots[indices], self.asking, self.fenced)

    @property
    def replies_per_row(self) -> int:
        return (2 if self.asking else 1) if self.fenced else (4 if self.asking else 2)

    @property
    def row_replies(self) -> bytes:
        if self.fenced:
            return FENCED_REPLIES[self.asking]
        return ROW_REPLIES_ASKING if self.asking else ROW_REPLIES

    def payload(self) -> bytes:
        if not self.asking:
            return keys.payload(self.commands)
        return b"".join(keys.asking_payload(row.encode()) for row in self.commands.to_pylist())


@dataclass
class Outcome:
    """Rows of a round that were not acknowledged, by what to do with them."""

    transient: list[Part] = field(default_factory=list)
    moved: list[Part] = field(default_factory=list)
    ask: dict[str, list[Part]] = field(default_factory=dict)
    error: BaseException | None = None
    noscript: bool = False  # a node lacked the fenced-write script (a promoted replica, a restart)

    def __bool__(self) -> bool:
        return bool(self.transient or self.moved or self.ask)

    def rows(self) -> int:
        return sum(len(p) for p in (*self.transient, *self.moved, *(p for ps in self.ask.values() for p in ps)))


class PipelinedWriter:
    """Writes chunks of documents; :meth:`finish` waits for every reply and returns the counts."""

    def __init__(self, client: Any, settings: StoreConfig, *, total: int,
                 on_progress: ProgressCallback | None = None) -> None:
        import redis.exceptions as rex

        self.client, self.settings, self.total, self.on_progress = client, settings, total, on_progress
        self.route = route_for(client)
        self.queues: dict[str, collections.deque[Part]] = collections.defaultdict(collections.deque)
        self.acknowledged = 0
        self.replayed = {"moved": 0, "ask": 0, "lost_or_busy": 0}
        self.progress = Progress(log, "loaded %d/%d documents, acknowledged (%.0f keys/s, %.0fs left)", total)
        self._transient = transient_errors()
        self._cluster_retry = (rex.ClusterDownError, rex.TryAgainError, rex.BusyLoadingError, rex.ReadOnlyError)
        self._rex = rex
        self._down: set[str] = set()  # nodes whose connection failed in the current round
        self._buffers: dict[str, bytearray] = {}  # bytes received from a node and not yet parsed

    # --- sending and reading -----------------------------------------------------------------------------
    def _send(self, name: str, part: Part, outcome: Outcome) -> None:
        if name in self._down:  # its connection failed in this round: one connection attempt per node and try
            outcome.transient.append(part)
            return
        try:
            self.route.connection(name).send_packed_command([part.payload()], check_health=False)
        except self._transient as exc:
            if isinstance(exc, self._rex.AuthenticationError):
                raise
            self._lose_node(name, outcome, exc, [part])
            return
        self.queues[name].append(part)

    def _lose_node(self, name: str, outcome: Outcome, error: BaseException, extra: list[Part]) -> None:
        """A node's connection failed: everything sent to it and not yet acknowledged is replayed."""
        self._down.add(name)
        outcome.transient.extend([*self.queues.pop(name, ()), *extra])
        outcome.error = error
        self._buffers.pop(name, None)
        self.route.drop(name)

    def _read(self, name: str, outcome: Outcome) -> None:
        """Read the replies of the oldest part sent to ``name``.

        Every reply to ``JSON.SET``, ``EXPIRE`` and ``ASKING`` is one line (``+OK``, ``:1``, or an
        ``-`` error), so the replies are read straight from the socket: when a part's bytes equal
        ``+OK :1`` per row (the normal case) one comparison acknowledges the whole part; otherwise
        each line is looked at, and an error line is classified as redis-py would raise it.
        """
        part = self.queues[name].popleft()
        connection = self.route.connection(name)
        per_row = part.replies_per_row
        total = len(part) * per_row
        buffer = self._buffers.setdefault(name, bytearray())
        expected = part.row_replies * len(part)
        lines: list[bytes] = []
        lost: BaseException | None = None
        try:
            receive(name, connection, buffer, len(expected))
            if buffer[: len(expected)] == expected:
                del buffer[: len(expected)]
                self._count(len(part))
                return
            position = 0
            while len(lines) < total:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    receive(name, connection, buffer, len(buffer) + 1)
                    continue
                lines.append(bytes(buffer[position:end]))
                position = end + 2
            del buffer[:position]
        except (self._rex.ConnectionError, self._rex.TimeoutError) as exc:
            if isinstance(exc, self._rex.AuthenticationError):
                raise
            lost = exc
        verdicts: dict[int, Any] = {}
        for index, line in enumerate(lines):
            if part.fenced and line == b":0":
                connection.disconnect()
                self._buffers.pop(name, None)
                self.queues.pop(name, None)
                raise SupersededError(
                    f"{name} holds a newer run's document for a user of this load (a newer logical date was published "
                    "while this load ran, e.g. after it stalled past its lock); the fenced write left it in place and "
                    "this load stops without writing the manifest")
            if line[:1] == b"-":
                verdict = self._classify(name, _parse_error(line[1:].decode(errors="replace")), connection)
                if verdict is not None:
                    verdicts.setdefault(index // per_row, verdict)
        if lost is not None:
            # The connection is gone: complete rows are answered, the rest are not.
            row = len(lines) // per_row
            self._count(row - sum(1 for r in verdicts if r < row))
            self._lose_node(name, outcome, lost, [part.take(list(range(row, len(part))))])
            self._collect(part, {r: v for r, v in verdicts.items() if r < row}, outcome)
            return
        self._count(len(part) - len(verdicts))
        self._collect(part, verdicts, outcome)

    def _classify(self, name: str, exc: Exception, connection: Any) -> tuple[Any, ...] | None:
        rex = self._rex
        if isinstance(exc, rex.AskError):  # MovedError is an AskError too
            if not self.route.cluster:
                connection.disconnect()
                raise StoreError(f"{name} answered {exc}: it is a Redis Cluster node; connect with a cluster client "
                                 "(--redis-url redis+cluster://host:port, or the connection extra {\"cluster\": true})")
            if isinstance(exc, rex.MovedError):
                return ("moved",)
            return ("ask", self.route.node_of_address(exc.host, exc.port))
        if isinstance(exc, self._cluster_retry):
            return ("transient", exc)
        if isinstance(exc, rex.NoScriptError):
            return ("noscript",)
        connection.disconnect()
        if isinstance(exc, rex.OutOfMemoryError):
            raise StoreOutOfMemoryError(f"{name} refused a write: {exc}") from exc
        if "unknown command" in str(exc).lower() and "json." in str(exc).lower():
            raise RedisJSONMissingError(json_module_hint(name)) from exc
        raise StoreError(f"{name} refused a document write: {exc}") from exc

    @staticmethod
    def _collect(part: Part, verdicts: dict[int, Any], outcome: Outcome) -> None:
        redo: dict[Any, list[int]] = collections.defaultdict(list)
        for row, verdict in sorted(verdicts.items()):
            redo[verdict if verdict[0] == "ask" else verdict[0]].append(row)
            if verdict[0] == "transient":
                outcome.error = verdict[1]
        for kind, rows in redo.items():
            if kind == "transient":
                outcome.transient.append(part.take(rows))
            elif kind in ("moved", "noscript"):
                outcome.moved.append(part.take(rows))
                outcome.noscript = outcome.noscript or kind == "noscript"
            else:
                target = part.take(rows)
                outcome.ask.setdefault(kind[1], []).append(
                    Part(target.commands, target.slots, asking=True, fenced=target.fenced))

    def _count(self, rows: int) -> None:
        if not rows:
            return
        self.acknowledged += rows
        if self.on_progress is not None:
            self.on_progress(self.acknowledged, self.total)
        self.progress.update(self.acknowledged)

    def _drain(self, outcome: Outcome, keep_newest: bool = False) -> None:
        for name in list(self.queues):
            while name in self.queues and len(self.queues[name]) > (1 if keep_newest else 0):
                self._read(name, outcome)

    # --- the public steps ----------------------------------------------------------------------------------
    def submit(self, part: Part) -> None:
        """Send one chunk (grouped by node), then read the replies of the chunk before it."""
        outcome = Outcome()
        self._down.clear()
        for name, indices in self.route.group(part.slots).items():
            self._send(name, part.take(indices), outcome)
        self._drain(outcome, keep_newest=not outcome)
        if outcome:
            self._drain(outcome)
            self._replay(outcome)

    def finish(self) -> int:
        outcome = Outcome()
        self._drain(outcome)
        if outcome:
            self._replay(outcome)
        return self.acknowledged

    def close(self) -> None:
        """Give the connections back; one with replies still unread (the load failed) is closed first."""
        for name in {*(n for n, q in self.queues.items() if q), *(n for n, b in self._buffers.items() if b)}:
            self.route.drop(name)
        self.queues.clear()
        self._buffers.clear()
        self.route.release()

    def _replay(self, outcome: Outcome) -> None:
        """Resend unacknowledged rows until all are acknowledged or a failure has used every try."""
        failures = 1 if outcome.transient else 0  # the try that just failed
        for _ in range(MAX_REDIRECT_ROUNDS):
            if not outcome:
                return
            self.replayed["moved"] += sum(len(p) for p in outcome.moved)
            self.replayed["ask"] += sum(len(p) for ps in outcome.ask.values() for p in ps)
            self.replayed["lost_or_busy"] += sum(len(p) for p in outcome.transient)
            if outcome.transient:
                if failures >= self.settings.retry_attempts:
                    raise RedisUnavailableError(
                        f"Redis unreachable after {self.settings.retry_attempts} tries "
                        f"({type(outcome.error).__name__}: {outcome.error}); {outcome.rows()} document(s) of this "
                        f"chunk unacknowledged") from outcome.error
                wait_before_retry(self.settings, failures, outcome.error or RuntimeError("?"),
                                  f"with {outcome.rows()} document(s) unacknowledged; replaying them")
                failures += 1
            if outcome.transient or outcome.moved:
                try:
                    self.route.refresh()
                    if outcome.noscript:
                        load_fenced_write(self.client)
                except (*self._transient, self._rex.RedisClusterException) as exc:
                    if isinstance(exc, self._rex.AuthenticationError):
                        raise
                    outcome.error = exc
                    outcome.transient.extend(outcome.moved)
                    outcome.moved = []
                    continue
            pending = Outcome(noscript=outcome.noscript and bool(outcome.transient or outcome.moved))
            self._down.clear()
            for part in (*outcome.transient, *outcome.moved):
                for name, indices in self.route.group(part.slots).items():
                    self._send(name, part.take(indices), pending)
            for target, parts in outcome.ask.items():
                for part in parts:
                    self._send(target, part, pending)
            self._drain(pending)
            if pending.transient and pending.error is None:
                pending.error = outcome.error
            outcome = pending
        raise RedisUnavailableError(f"{outcome.rows()} document(s) still redirected after {MAX_REDIRECT_ROUNDS} "
                                    "rounds of MOVED/ASK (a cluster that keeps resharding)")


def stream_documents(writer: PipelinedWriter, path: Any, settings: StoreConfig, run_fields: dict[str, str], *,
                     only: dict[int, Any] | None = None, check_lock: Callable[[], None] | None = None,
                     ) -> tuple[list[tuple[Any, Any]], int]:
    """Encode and submit every chunk of ``path`` (or, with ``only``, the given rows of the given chunks: a replay).

    With ``settings.fenced_writes`` each row is the fenced write (:mod:`.fence`); ``check_lock()`` runs
    before each chunk. Returns each chunk's ``(key names, slots)`` (for the read-back) and the JSON bytes sent.
    """
    from .fence import fence_arguments
    from .source import iter_recommendation_batches

    tail = keys.document_tail(run_fields)
    fence = fence_arguments(run_fields["logical_date"], settings.force) if settings.fenced_writes else None
    chunks, payload_bytes = [], 0
    for index, batch in enumerate(iter_recommendation_batches(path, settings.pipeline_chunk_keys)):
        if only is not None:
            if index not in only:
                continue
            batch = batch.take(only[index])
        if check_lock is not None:
            check_lock()
        commands, key_names, document_bytes = keys.encode_commands(batch, settings, tail, fence)
        slots = key_slots(key_names) if writer.route.cluster else _zeros(len(commands))
        writer.submit(Part(commands, slots, fenced=fence is not None))
        chunks.append((key_names, slots))
        payload_bytes += document_bytes
    return chunks, payload_bytes


def write_documents(client: Any, path: Any, settings: StoreConfig, run_fields: dict[str, str], *,
                    on_progress: ProgressCallback | None = None) -> dict[str, int]:
    """Write every user's document of ``path`` (pipelined, with TTL) to ``client`` (a ``Redis`` or ``RedisCluster``).

    ``run_fields`` (run id, logical date, generation time) go into every document. Returns
    ``{"written": acknowledged rows, "payload_bytes": JSON bytes, "replayed": rows replayed by cause}``.
    ``on_progress(acknowledged, total)`` is called as replies come in. No read-back and no ``WAIT``:
    :func:`recsys_tasks.store.durability.write_confirmed` adds them.
    """
    from .source import count_rows

    if settings.fenced_writes:
        load_fenced_write(client)
    writer = PipelinedWriter(client, settings, total=count_rows(path), on_progress=on_progress)
    try:
        _, payload_bytes = stream_documents(writer, path, settings, run_fields)
        written = writer.finish()
    finally:
        writer.close()
    return {"written": written, "payload_bytes": payload_bytes, "replayed": dict(writer.replayed)}


def _zeros(count: int) -> Any:
    import numpy as np

    return np.zeros(count, dtype=np.int64)
