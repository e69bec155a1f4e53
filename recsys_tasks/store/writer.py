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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..common import get_logger
from ..config import StoreConfig
from . import keys
from .errors import RedisJSONMissingError, RedisUnavailableError, StoreError, StoreOutOfMemoryError, json_module_hint
from .resilience import transient_errors, wait_before_retry
from .topology import key_slots, route_for

log = get_logger("load_redis")

ProgressCallback = Callable[[int, int], None]
MAX_REDIRECT_ROUNDS = 64


@dataclass
class Part:
    """Rows bound for one node: one RESP string per user (both commands) and the users' slots."""

    commands: Any
    slots: Any
    asking: bool = False

    def __len__(self) -> int:
        return len(self.commands)

    def take(self, indices: Any) -> Part:
        import pyarrow as pa

        if indices is None:
            return self
        return Part(self.commands.take(pa.array(indices)), self.slots[indices], self.asking)

    @property
    def replies_per_row(self) -> int:
        return 4 if self.asking else 2

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

    def __bool__(self) -> bool:
        return bool(self.transient or self.moved or self.ask)

    def rows(self) -> int:
        return sum(len(p) for p in (*self.transient, *self.moved, *(p for ps in self.ask.values() for p in ps)))


class PipelinedWriter:
    """Writes chunks of documents; :meth:`finish` waits for every reply and returns the counts."""

    def __init__(self, client: Any, settings: StoreConfig, *, total: int,
                 on_progress: ProgressCallback | None = None) -> None:
        import redis.exceptions as rex

        self.settings, self.total, self.on_progress = settings, total, on_progress
        self.route = route_for(client)
        self.queues: dict[str, collections.deque[Part]] = collections.defaultdict(collections.deque)
        self.acknowledged = 0
        self.replayed = {"moved": 0, "ask": 0, "lost_or_busy": 0}
        self.started = self.next_report = time.perf_counter()
        self._transient = transient_errors()
        self._cluster_retry = (rex.ClusterDownError, rex.TryAgainError, rex.BusyLoadingError, rex.ReadOnlyError)
        self._rex = rex
        self._down: set[str] = set()  # nodes whose connection failed in the current round

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
        self.route.drop(name)

    def _read(self, name: str, outcome: Outcome) -> None:
        """Read the replies of the oldest part sent to ``name``: a tight loop, rows looked at only on an error reply."""
        part = self.queues[name].popleft()
        connection = self.route.connection(name)
        rex = self._rex
        per_row = part.replies_per_row
        total = len(part) * per_row
        verdicts: dict[int, Any] = {}  # row -> why it must be sent again
        index = 0
        while index < total:
            position = index  # the reply being read when an exception comes
            try:
                for position in range(index, total):  # noqa: B007 - read by the except clauses
                    connection.read_response()
                index = total
            except self._transient as exc:
                row = position // per_row
                if isinstance(exc, rex.ResponseError):  # CLUSTERDOWN, TRYAGAIN, LOADING: the stream is intact
                    verdicts.setdefault(row, ("transient", exc))
                    index = position + 1
                    continue
                if isinstance(exc, rex.AuthenticationError):
                    raise
                # The connection is gone: rows before this one are answered, this one and the rest are not.
                self._count(row - sum(1 for r in verdicts if r < row))
                self._lose_node(name, outcome, exc, [part.take(list(range(row, len(part))))])
                self._collect(part, verdicts, outcome)
                return
            except rex.ResponseError as exc:
                verdict = self._classify(name, exc, connection)
                if verdict is not None:
                    verdicts[position // per_row] = verdict
                index = position + 1
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
            elif kind == "moved":
                outcome.moved.append(part.take(rows))
            else:
                target = part.take(rows)
                outcome.ask.setdefault(kind[1], []).append(Part(target.commands, target.slots, asking=True))

    def _count(self, rows: int) -> None:
        if not rows:
            return
        self.acknowledged += rows
        if self.on_progress is not None:
            self.on_progress(self.acknowledged, self.total)
        now = time.perf_counter()
        if now >= self.next_report:
            rate = self.acknowledged / max(now - self.started, 1e-9)
            log.info("loaded %d/%d documents, acknowledged (%.0f keys/s, %.0fs left)", self.acknowledged, self.total,
                     rate, (self.total - self.acknowledged) / max(rate, 1e-9))
            self.next_report = now + 10.0

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
                except (*self._transient, self._rex.RedisClusterException) as exc:
                    if isinstance(exc, self._rex.AuthenticationError):
                        raise
                    outcome.error = exc
                    outcome.transient.extend(outcome.moved)
                    outcome.moved = []
                    continue
            pending = Outcome()
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


def write_documents(client: Any, path: Any, settings: StoreConfig, run_fields: dict[str, str], *,
                    on_progress: ProgressCallback | None = None) -> dict[str, int]:
    """Write every user's document of ``path`` (pipelined, with TTL) to ``client`` (a ``Redis`` or ``RedisCluster``).

    ``run_fields`` (run id, logical date, generation time) go into every document. Returns
    ``{"written": acknowledged rows, "payload_bytes": JSON bytes, "replayed": rows replayed by cause}``.
    ``on_progress(acknowledged, total)`` is called as replies come in.
    """
    from .source import count_rows, iter_recommendation_batches

    tail = keys.document_tail(run_fields)
    writer = PipelinedWriter(client, settings, total=count_rows(path), on_progress=on_progress)
    payload_bytes = 0
    try:
        for batch in iter_recommendation_batches(path, settings.pipeline_chunk_keys):
            commands, key_names, document_bytes = keys.encode_commands(batch, settings, tail)
            slots = key_slots(key_names) if writer.route.cluster else _zeros(len(commands))
            writer.submit(Part(commands, slots))
            payload_bytes += document_bytes
        written = writer.finish()
    finally:
        writer.close()
    return {"written": written, "payload_bytes": payload_bytes, "replayed": dict(writer.replayed)}


def _zeros(count: int) -> Any:
    import numpy as np

    return np.zeros(count, dtype=np.int64)
