"""The hot loop: pipelined, pre-encoded document writes (fenced, or plain) to one Redis or a Redis Cluster.

Each chunk of users is encoded to RESP column-wise (:mod:`.keys`, :mod:`.parts`); on a cluster its
rows are grouped by the master owning each key's slot and each group goes to that master's raw
connection (fenced-write calls of up to 512 rows). Replies of a chunk are read only after the next
chunk is sent, so the servers work while we encode. A row counts as written when its replies are
read (progress counts acknowledged rows, not commands sent). Rows that come back with MOVED/ASK, a
cluster error (CLUSTERDOWN, TRYAGAIN, READONLY, LOADING) or whose replies were lost with a connection
are replayed (every write is idempotent) after refreshing the slot map; connection faults get
``store.retry_attempts`` tries with backoff, then :class:`RedisUnavailableError`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ..config import StoreConfig
from ..runtime import Progress, get_logger
from . import keys
from .claim import claim_fences, superseded
from .errors import (
    RedisJSONMissingError,
    RedisUnavailableError,
    StoreError,
    StoreOutOfMemoryError,
    json_module_hint,
)
from .fence import REFUSED, Fence, load_fenced_write
from .parts import Outcome, Part, parse_error
from .resilience import transient_errors, wait_before_retry
from .topology import key_slots, receive, route_for

log = get_logger("load_redis")

ProgressCallback = Callable[[int, int], None]
MAX_REDIRECT_ROUNDS = 64


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
        # Set once a connection was lost or rows were redirected or replayed: acknowledged writes may then
        # sit outside what WAIT on the current connections covers (.durability reads every key back).
        self.disturbed = False

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
        self.disturbed = True
        self._down.add(name)
        outcome.transient.extend([*self.queues.pop(name, ()), *extra])
        outcome.error = error
        self._buffers.pop(name, None)
        self.route.drop(name)

    def _read(self, name: str, outcome: Outcome) -> None:
        """Read the replies of the oldest part sent to ``name``.

        Every reply to ``JSON.SET``, ``EXPIRE``, ``ASKING`` and the fenced write is one line (``+OK``,
        ``:<n>``, or an ``-`` error), so the replies are read straight from the socket: when a part's
        bytes are the expected ones (the normal case) one comparison acknowledges the whole part;
        otherwise each line is looked at, and an error line is classified as redis-py would raise it.
        """
        part = self.queues[name].popleft()
        connection = self.route.connection(name)
        per_row = part.replies_per_row
        total = part.reply_lines()
        buffer = self._buffers.setdefault(name, bytearray())
        expected = part.expected_replies()
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
            if part.fence is not None and line == REFUSED:
                connection.disconnect()
                self._buffers.pop(name, None)
                self.queues.pop(name, None)
                raise superseded(name)
            if line[:1] == b"-":
                verdict = self._classify(name, parse_error(line[1:].decode(errors="replace")), connection,
                                         batch=part.fence is not None and part.batch)
                if verdict is not None:
                    verdicts.setdefault(index // per_row if per_row else len(verdicts), verdict)
        if part.fence is not None and part.batch:
            # One reply per call of rows: all rows count once every call succeeded, else all are replayed (a
            # failed call may have written some: whole documents of this load; the writes are idempotent).
            if lost is not None:
                self._lose_node(name, outcome, lost, [part])
            elif verdicts:
                self._collect_batch(part, next(iter(verdicts.values())), outcome)
            else:
                self._count(len(part))
            return
        if lost is not None:
            # The connection is gone: complete rows are answered, the rest are not.
            row = len(lines) // per_row
            self._count(row - sum(1 for r in verdicts if r < row))
            self._lose_node(name, outcome, lost, [part.take(list(range(row, len(part))))])
            self._collect(part, {r: v for r, v in verdicts.items() if r < row}, outcome)
            return
        self._count(len(part) - len(verdicts))
        self._collect(part, verdicts, outcome)

    def _classify(self, name: str, exc: Exception, connection: Any, batch: bool = False) -> tuple[Any, ...] | None:
        rex = self._rex
        if isinstance(exc, rex.AskError):  # MovedError is an AskError too
            if not self.route.cluster:
                connection.disconnect()
                raise StoreError(f"{name} answered {exc}: it is a Redis Cluster node; connect with a cluster client "
                                 "(--redis-url redis+cluster://host:port, or the connection extra {\"cluster\": true})")
            if isinstance(exc, rex.MovedError):
                return ("moved",)
            return ("ask", self.route.node_of_address(exc.host, exc.port))
        if batch and (isinstance(exc, rex.TryAgainError) or "non local key" in str(exc)):
            return ("rows",)  # a key of a slot being migrated: each row alone follows its own redirect
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
    def _collect_batch(part: Part, verdict: tuple[Any, ...], outcome: Outcome) -> None:
        if verdict[0] in ("ask", "rows"):
            outcome.moved.append(part.one_call_per_row())
        elif verdict[0] == "transient":
            outcome.transient.append(part)
            outcome.error = verdict[1]
        else:
            outcome.moved.append(part)
            outcome.noscript = outcome.noscript or verdict[0] == "noscript"

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
            elif kind in ("moved", "noscript", "rows"):
                outcome.moved.append(part.take(rows))
                outcome.noscript = outcome.noscript or kind == "noscript"
            else:
                target = part.take(rows)
                outcome.ask.setdefault(kind[1], []).append(
                    target.one_call_per_row(asking=True) if target.fence is not None else
                    Part(target.commands, target.slots, asking=True))

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
    def claim(self, fence: Fence) -> None:
        """Claim every slot's fence for this load before its first document (:func:`.claim.claim_fences`)."""
        claim_fences(self.route, self.client, self.settings, fence)

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
        self.disturbed = True
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
                     fence: Fence | None = None, only: dict[int, Any] | None = None,
                     check_lock: Callable[[], None] | None = None) -> tuple[list[tuple[Any, Any]], int]:
    """Encode and submit every chunk of ``path`` (or, with ``only``, the given rows of the given chunks: a replay).

    With a ``fence`` the rows are fenced writes (:mod:`.fence`), else plain ``JSON.SET`` + ``EXPIRE``;
    ``check_lock()`` runs before each chunk. Returns each chunk's ``(key names, slots)`` (for the
    read-back) and the JSON bytes sent.
    """
    import numpy as np

    from .source import iter_recommendation_batches

    tail = keys.document_tail(run_fields)
    chunks, payload_bytes = [], 0
    for index, batch in enumerate(iter_recommendation_batches(path, settings.pipeline_chunk_keys)):
        if only is not None:
            if index not in only:
                continue
            batch = batch.take(only[index])
        if check_lock is not None:
            check_lock()
        if fence is None:
            commands, key_names, document_bytes = keys.encode_commands(batch, settings, tail)
            documents = None
        else:
            commands, documents, key_names, document_bytes = keys.encode_fenced(batch, settings, tail)
        # No slots on a single Redis: -1 (its one fence key).
        slots = key_slots(key_names) if writer.route.cluster else np.full(len(commands), -1, dtype=np.int64)
        writer.submit(Part(commands, slots, fence=fence, documents=documents))
        chunks.append((key_names, slots))
        payload_bytes += document_bytes
    return chunks, payload_bytes


def write_documents(client: Any, path: Any, settings: StoreConfig, run_fields: dict[str, str], *,
                    on_progress: ProgressCallback | None = None, generation_us: int | None = None) -> dict[str, int]:
    """Write every user's document of ``path`` (pipelined, with TTL) to ``client`` (a ``Redis`` or ``RedisCluster``).

    ``run_fields`` (run id, logical date, generation time) go into every document. With
    ``settings.fenced_writes`` the writes are fenced with ``generation_us`` (when the load took its lock;
    default: the server's time now). Returns ``{"written": acknowledged rows, "payload_bytes": JSON
    bytes, "replayed": rows replayed by cause}``. ``on_progress(acknowledged, total)`` is called as
    replies come in. No read-back and no ``WAIT``: :func:`recsys_tasks.store.durability.write_confirmed` adds them.
    """
    from .fence import fence_for
    from .source import count_rows

    fence = None
    if settings.fenced_writes:
        load_fenced_write(client)
        fence = fence_for(client, settings, run_fields["logical_date"], generation_us)
    writer = PipelinedWriter(client, settings, total=count_rows(path), on_progress=on_progress)
    try:
        if fence is not None:
            writer.claim(fence)
        _, payload_bytes = stream_documents(writer, path, settings, run_fields, fence=fence)
        written = writer.finish()
    finally:
        writer.close()
    return {"written": written, "payload_bytes": payload_bytes, "replayed": dict(writer.replayed)}
