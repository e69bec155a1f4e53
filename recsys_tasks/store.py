"""Stage 6: RedisJSON documents, one per user, and the manifest that names the published run.

This module owns every Redis key name. A document lives at ``<key_prefix><raw user id>`` and holds
the notebook's fields (``user_id``, ``recommendations``) plus ``scores``, ``run_id``,
``logical_date`` and ``generated_at``. Writes go out in pipelined chunks (``transaction=False``),
each ``JSON.SET`` followed by an ``EXPIRE``; the popularity list for users with no document goes to
``fallback_key`` (``RECSYS:FALLBACK``) and the manifest is written only after the last document.
Nothing is written unless the run passes the quality gate (:mod:`recsys_tasks.quality`). Around the
write loop: the whole file is validated first, one load at a time holds a lock, a run older than the
published one is skipped unless forced (the rollback), connection faults are retried with bounded
backoff, and users who drop out keep a TTL. Functions take a redis-py client; they never build one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import quality
from .common import InputDataError, get_logger, read_summary, timed, write_summary
from .config import Config, StoreConfig
from .paths import RunPaths, require
from .report import summary_lines

log = get_logger("load_redis")

REQUIRED_COLUMNS = ("user_id", "recommendations", "scores")


def user_key(settings: StoreConfig, user_id: int) -> str:
    return f"{settings.key_prefix}{int(user_id)}"


def build_document(
    user_id: int, recommendations: list[int], scores: list[float], *, run_id: str, logical_date: str, generated_at: str
) -> dict[str, Any]:
    return {
        "user_id": int(user_id),
        "recommendations": [int(i) for i in recommendations],
        "scores": [round(float(s), 6) for s in scores],
        "run_id": run_id,
        "logical_date": logical_date,
        "generated_at": generated_at,
    }


def recommendation_files(path: Path) -> list[Path]:
    """The parquet parts of a recommendations directory (or a single parquet file)."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputDataError(f"{path}: no *.parquet parts (written by the 'score' stage)")
    return files


def iter_recommendation_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    """Stream every part of the recommendations as pyarrow RecordBatches, checking each part's schema first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in recommendation_files(path):
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{file}: not a readable parquet file ({exc})") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise InputDataError(f"{file}: missing column(s) {missing}; written by the 'score' stage")
        yield from parquet.iter_batches(batch_size=batch_rows, columns=list(REQUIRED_COLUMNS))


def check_recommendations(path: Path, settings: StoreConfig) -> Any:
    """Read everything once before anything is written: a bad file publishes nothing.

    Returns the sorted raw user ids. Refuses (naming the file, column and value): a missing or
    mistyped column, null or negative user or item ids, a user listed twice (also across parts),
    a list whose recommendations and scores differ in length, null or non-finite scores, no users.
    """
    import numpy as np

    from .validation import check_recommendation_batch, check_recommendation_schema, iter_checked_batches, open_parquet

    user_ids = []
    for file in recommendation_files(path):
        parquet = open_parquet(file, produced_by="score")
        check_recommendation_schema(file, parquet.schema_arrow)
        for batch in iter_checked_batches(file, parquet, list(REQUIRED_COLUMNS), "score"):
            user_ids.append(check_recommendation_batch(file, batch))
    ids = np.sort(np.concatenate(user_ids)) if user_ids else np.zeros(0, dtype=np.int64)
    if not len(ids):
        raise InputDataError(f"{path}: no users to publish")
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        raise InputDataError(f"{path}: column 'user_id' holds user {int(repeated[0])} twice")
    return ids


def _numpy(values: Any) -> Any:
    """A pyarrow array as numpy; zero-copy when there are no nulls (pyarrow's other path is ~1 us per value)."""
    return values.to_numpy(zero_copy_only=values.null_count == 0)


@functools.lru_cache(maxsize=1)
def _micro_spellings() -> Any:
    """``repr(m / 1e6)`` for every m in [0, 10**6], as a pyarrow string array: how ``json`` spells a
    probability rounded to 6 decimals. Built once per process (~0.5 s, ~10 MB)."""
    import pyarrow as pa

    return pa.array([repr(m / 1e6) for m in range(1_000_001)], type=pa.string())


def _score_spellings(values: Any) -> Any:
    """JSON spellings of ``round(float(v), 6)`` for float32 scores, as a pyarrow string array.

    For float32 v, v * 1e6 is exact in float64, so ``np.rint`` (half to even) rounds it exactly as
    ``round(v, 6)`` does, and ``m / 1e6`` is the same double as ``round(v, 6)``: the spelling is a
    table lookup. Scores outside [0, 1] (a sigmoid never gives one) take the plain per-value path.
    """
    import numpy as np
    import pyarrow as pa

    scores = _numpy(values)
    if scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 1)):
        micro = np.rint(scores.astype(np.float64) * 1e6).astype(np.int64)
        return _micro_spellings().take(pa.array(micro))
    return pa.array([json.dumps(round(float(v), 6)) for v in scores.tolist()], type=pa.string())


def encode_batch(batch: Any, settings: StoreConfig, document_tail: str) -> tuple[bytes, int, int]:
    """RESP for one batch: ``JSON.SET key $ doc`` then ``EXPIRE key ttl`` per user, as one bytes object.

    ``batch`` is a pyarrow RecordBatch of the recommendations file. Each document is byte-for-byte
    ``json.dumps(build_document(...), separators=(",", ":"))`` (``document_tail`` holds the run
    fields, already encoded), built column-wise by Arrow's string kernels: no Python per user.
    Returns ``(payload, documents, document_bytes)``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def rebuilt(column: Any, values: Any) -> Any:
        # A batch may be a slice: offsets index the whole child array, flatten() holds only ours.
        offsets = pc.subtract(column.offsets, column.offsets[0])
        return pa.ListArray.from_arrays(offsets, values)

    def joined(*parts: Any) -> Any:
        return pc.binary_join_element_wise(*parts, "")

    def length(strings: Any) -> Any:
        return pc.cast(pc.binary_length(strings), pa.string())

    recs_column, scores_column = batch.column("recommendations"), batch.column("scores")
    recs = pc.binary_join(rebuilt(recs_column, pc.cast(recs_column.flatten(), pa.string())), ",")
    scores = pc.binary_join(rebuilt(scores_column, _score_spellings(scores_column.flatten())), ",")
    user_ids = pc.cast(batch.column("user_id"), pa.string())
    docs = joined('{"user_id":', user_ids, ',"recommendations":[', recs, '],"scores":[', scores, "],",
                  document_tail)
    keys = joined(settings.key_prefix, user_ids)
    key_lengths = length(keys)
    commands = joined(
        "*4\r\n$8\r\nJSON.SET\r\n$", key_lengths, "\r\n", keys, "\r\n$1\r\n$\r\n$", length(docs), "\r\n", docs,
        "\r\n*3\r\n$6\r\nEXPIRE\r\n$", key_lengths, "\r\n", keys, "\r\n",
        f"${len(str(int(settings.ttl_s)))}\r\n{int(settings.ttl_s)}\r\n",
    )
    if commands.null_count:
        raise InputDataError("a recommendations batch holds a null user id, list or score")
    # The string array's data buffer is every command back to back: the payload, without a copy per user.
    _, offsets_buffer, data = commands.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[commands.offset : commands.offset + len(commands) + 1]
    payload = data[int(offsets[0]) : int(offsets[-1])].to_pybytes()
    document_bytes = pc.sum(pc.binary_length(docs)).as_py() or 0
    return payload, len(commands), document_bytes


def _read_replies(connection: Any, count: int) -> None:
    """Read ``count`` replies; an error reply raises (and drops the connection, whose stream is now unusable)."""
    try:
        for _ in range(count):
            connection.read_response()
    except BaseException:
        connection.disconnect()
        raise


def _transient_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


_TRANSIENT = _transient_errors()


def _replay(connection: Any, chunks: list[tuple[bytes, int]], settings: StoreConfig, error: BaseException) -> None:
    """Resend chunks whose replies were lost, on a fresh connection, with bounded exponential backoff.

    ``JSON.SET`` and ``EXPIRE`` are idempotent, so a chunk Redis may already have applied is safe to
    send again. A wrong password is not transient and propagates at once; when the tries run out the
    last error propagates (the caller turns it into a clear failure and Airflow retries the task).
    """
    import redis

    delay = settings.retry_backoff_s
    for attempt in range(2, settings.retry_attempts + 1):
        if isinstance(error, redis.AuthenticationError):
            raise error
        log.warning("Redis %s while loading; retrying in %.1fs (try %d of %d, replaying %d chunk(s))",
                    type(error).__name__, delay, attempt, settings.retry_attempts, len(chunks))
        time.sleep(delay)
        delay = min(delay * 2, settings.retry_backoff_max_s)
        try:
            connection.disconnect()
            connection.connect()
            for payload, _ in chunks:
                connection.send_packed_command([payload], check_health=False)
            for _, replies in chunks:
                _read_replies(connection, replies)
            return
        except _TRANSIENT as exc:
            error = exc
    raise error


def write_documents(client: Any, path: Path, settings: StoreConfig, run_fields: dict[str, str]) -> dict[str, int]:
    """The hot loop: one pipelined round trip per chunk of ``JSON.SET`` + ``EXPIRE`` commands.

    ``run_fields`` (run id, logical date, generation time) go into every document. Commands are
    encoded to RESP here in bulk and sent on one connection of the client's pool; the next chunk is
    encoded while Redis executes the previous one, and every reply is read (an error reply raises).
    This is what ``client.pipeline(transaction=False)`` sends, without redis-py's per-command Python.
    """
    document_tail = ",".join(f"{json.dumps(n)}:{json.dumps(run_fields[n])}" for n in (
        "run_id", "logical_date", "generated_at")) + "}"
    import pyarrow.parquet as pq

    total = sum(pq.read_metadata(f).num_rows for f in recommendation_files(path))
    written, payload_bytes, started = 0, 0, time.perf_counter()
    next_report = started
    pool = client.connection_pool
    connection = pool.get_connection()
    in_flight: tuple[bytes, int] | None = None  # the chunk whose replies are still unread
    try:
        for batch in iter_recommendation_batches(path, settings.pipeline_chunk_keys):
            payload, documents, document_bytes = encode_batch(batch, settings, document_tail)
            chunk = (payload, 2 * documents)
            try:
                connection.send_packed_command([payload], check_health=False)
                # Replies of the previous chunk are read only now, so Redis worked while we encoded.
                if in_flight is not None:
                    _read_replies(connection, in_flight[1])
                in_flight = chunk
            except _TRANSIENT as exc:
                _replay(connection, [c for c in (in_flight, chunk) if c is not None], settings, exc)
                in_flight = None
            written += documents
            payload_bytes += document_bytes
            now = time.perf_counter()
            if now >= next_report:
                rate = written / max(now - started, 1e-9)
                log.info("loaded %d/%d documents (%.0f keys/s, %.0fs left)", written, total, rate,
                         (total - written) / max(rate, 1e-9))
                next_report = now + 10.0
        if in_flight is not None:
            try:
                _read_replies(connection, in_flight[1])
            except _TRANSIENT as exc:
                _replay(connection, [in_flight], settings, exc)
    finally:
        pool.release(connection)
    return {"written": written, "payload_bytes": payload_bytes}


# --- reliability around write_documents: retries, the load lock, the logical-date check, the manifest ---


class RedisUnavailableError(RuntimeError):
    """Redis stayed unreachable (refused, reset or timed out) through every retry inside the load."""


class LoadLockedError(RuntimeError):
    """Another load holds the load lock; nothing was written."""


class LockLostError(RuntimeError):
    """This load's lock expired or was taken over, so it did not write the manifest."""


class _LoadBackoff:
    """Bounded exponential backoff (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``) that logs each wait."""

    def __init__(self, settings: StoreConfig) -> None:
        self.settings = settings

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        delay = min(self.settings.retry_backoff_max_s, self.settings.retry_backoff_s * 2 ** (failures - 1))
        log.warning("Redis connection failed (try %d of %d); retrying in %.1fs",
                    failures, self.settings.retry_attempts, delay)
        return delay


_retry_scope = threading.local()


def _load_retry(settings: StoreConfig) -> Any:
    from redis.exceptions import AuthenticationError
    from redis.retry import Retry

    from .redis_compat import call_with_filtered_retry

    class LoadRetry(Retry):
        """Retries connection errors and timeouts, never a refused password.

        redis-py nests a connect retry inside each command's retry; only the outermost one retries
        here, so an operation gets exactly ``retry_attempts`` tries.
        """

        def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[no-untyped-def]
            if getattr(_retry_scope, "active", False):
                return do()

            def retryable(error: Exception) -> bool:
                return not isinstance(error, AuthenticationError) and (is_retryable is None or is_retryable(error))

            _retry_scope.active = True
            try:
                return call_with_filtered_retry(super().call_with_retry, do, fail, retryable, with_failure_count)
            finally:
                _retry_scope.active = False

    return LoadRetry(_LoadBackoff(settings), settings.retry_attempts - 1)  # type: ignore[arg-type]


@contextlib.contextmanager
def resilient(client: Any, settings: StoreConfig) -> Iterator[Any]:
    """For the load's duration: bounded retries with backoff on ``client``, and socket timeouts if it has none.

    redis-py applies the retry policy to connecting and to every command and pipeline (a pipelined
    chunk of ``JSON.SET`` + ``EXPIRE`` is idempotent, so replaying it is safe). When the tries run
    out the error propagates and the task fails, which leaves the rest to Airflow's task retries.
    """
    previous_retry = client.get_retry()
    kwargs = client.connection_pool.connection_kwargs
    previous_timeouts = {k: kwargs.get(k) for k in ("socket_timeout", "socket_connect_timeout")}
    for name, value in previous_timeouts.items():
        if value is None:
            kwargs[name] = settings.socket_timeout_s
    client.set_retry(_load_retry(settings))
    try:
        yield client
    finally:
        if previous_retry is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client.set_retry(Retry(NoBackoff(), 0))  # what redis-py gives a connection without a policy
            kwargs["retry"] = None
        else:
            client.set_retry(previous_retry)
        kwargs.update(previous_timeouts)


_RENEW_LOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_SET_IF_OWNER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('JSON.SET', KEYS[2], '$', ARGV[2]) end return false"
)


class LoadLock:
    """One load at a time: ``SET lock_key token NX PX lock_ttl_s``, renewed by a watchdog thread.

    Only the owner (same token) renews or releases it; a worker that is killed stops renewing, so
    its lock expires after ``lock_ttl_s`` and the next load proceeds. The manifest is written by a
    script that checks the token in the same step, so a load whose lock was lost never publishes.
    """

    def __init__(self, client: Any, settings: StoreConfig, owner: str) -> None:
        self.client, self.settings = client, settings
        self.token = f"{owner} on {socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:12]}"
        self.lost: str | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def ttl_ms(self) -> int:
        return int(self.settings.lock_ttl_s * 1000)

    def acquire(self) -> None:
        key = self.settings.lock_key
        deadline = time.monotonic() + self.settings.lock_wait_s
        waiting_logged = False
        while not self.client.set(key, self.token, nx=True, px=self.ttl_ms):
            holder, remaining_ms = self.client.get(key), self.client.pttl(key)
            if time.monotonic() >= deadline:
                raise LoadLockedError(
                    f"{key} is held by {_text(holder)!r} "
                    f"(expires in {max(remaining_ms, 0) / 1000:.0f}s unless renewed): "
                    f"another load is running; waited {self.settings.lock_wait_s}s, wrote nothing"
                )
            if not waiting_logged:
                log.info("waiting up to %.0fs for %s, held by %r", self.settings.lock_wait_s, key, _text(holder))
                waiting_logged = True
            time.sleep(0.2)
        log.info("acquired %s (expires after %ds without renewal)", key, self.settings.lock_ttl_s)

    def renew(self) -> bool:
        return bool(self.client.eval(_RENEW_LOCK, 1, self.settings.lock_key, self.token, self.ttl_ms))

    def _watch(self) -> None:
        interval = self.settings.lock_ttl_s / 3
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    self.lost = f"{self.settings.lock_key} expired or was taken by another load"
            except Exception as exc:  # recorded, raised by ensure_held() in the loading thread
                self.lost = f"renewing {self.settings.lock_key} failed: {type(exc).__name__}: {exc}"
            if self.lost:
                log.error("load lock lost: %s", self.lost)
                return

    def ensure_held(self) -> None:
        if self.lost:
            raise LockLostError(f"{self.lost}; not writing the manifest (rerun the load)")

    def set_if_owner(self, key: str, document: str) -> None:
        """``JSON.SET key $ document`` only while this load still holds the lock (one atomic script)."""
        if not self.client.eval(_SET_IF_OWNER, 2, self.settings.lock_key, key, self.token, document):
            raise LockLostError(f"{self.settings.lock_key} is no longer held by this load; {key} not written")

    def release(self) -> None:
        self.client.eval(_RELEASE_LOCK, 1, self.settings.lock_key, self.token)

    def __enter__(self) -> LoadLock:
        self.acquire()
        self._watchdog = threading.Thread(target=self._watch, name="recsys-load-lock", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        try:
            self.release()
        except Exception as release_error:
            if exc is None:
                raise
            # The load's own error is the one to report; the lock expires by itself.
            log.error("could not release %s (%s); it expires within %ds",
                      self.settings.lock_key, release_error, self.settings.lock_ttl_s)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_logical_date(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} is not an ISO-8601 date/time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def publish_decision(manifest: dict[str, Any] | None, logical_date: str, settings: StoreConfig) -> tuple[bool, str]:
    """Whether a run of ``logical_date`` may replace what the manifest names, and why.

    A run never replaces a newer published run (a backfill or a late rerun of an older date is
    skipped) unless ``settings.force`` is set: forcing is the rollback.
    """
    published = (manifest or {}).get("logical_date") or ""
    if not published:
        return True, "no run with a logical date is published yet"
    if not logical_date:
        if settings.force:
            return True, f"forced over run {manifest['run_id']!r} ({published}) without a logical date"
        raise ValueError(
            f"this load has no logical date, but {settings.manifest_key} names run {manifest['run_id']!r} of "
            f"{published}; give the run's logical date (or force the load)"
        )
    ours = parse_logical_date(logical_date, "logical date")
    theirs = parse_logical_date(published, f"{settings.manifest_key} logical_date")
    if ours >= theirs:
        return True, f"logical date {logical_date} is not older than the published {published}"
    if settings.force:
        return True, f"FORCED: replacing newer run {manifest['run_id']!r} ({published}) with this run ({logical_date})"
    return False, (
        f"logical date {logical_date} is older than the published run {manifest['run_id']!r} ({published}); "
        "not publishing (set store.force / --force to roll back to this run)"
    )


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def sweep_leftovers(
    client: Any, settings: StoreConfig, user_ids: Any, logical_date: str, *, delete_newer: bool
) -> dict[str, int]:
    """Documents under the prefix that this run did not write (users who dropped out).

    Each keeps its TTL, so it expires at most ``ttl_s`` after it was last published; one without a
    TTL (e.g. written by an older version of this job) gets ``ttl_s``. After a forced load over a
    newer run (a rollback), documents written by runs newer than this one are deleted, so what
    applications read is exactly the rolled-back run. Only ``<key_prefix><integer>`` keys are touched.
    """
    import numpy as np

    ours = parse_logical_date(logical_date, "logical date") if delete_newer and logical_date else None
    counts = {"dropped_users": 0, "ttl_added": 0, "newer_deleted": 0}
    prefix = settings.key_prefix
    batch: list[bytes] = []

    def flush(keys: list[bytes]) -> None:
        ids, candidates = [], []
        for key in keys:
            suffix = _text(key)[len(prefix):]
            if suffix.isdigit() and str(int(suffix)) == suffix:
                ids.append(int(suffix))
                candidates.append(key)
        if not candidates:
            return
        where = np.searchsorted(user_ids, ids)
        known = (where < len(user_ids)) & (user_ids[np.minimum(where, len(user_ids) - 1)] == np.asarray(ids))
        leftovers = [k for k, mine in zip(candidates, known) if not mine]
        if not leftovers:
            return
        pipe = client.pipeline(transaction=False)
        for key in leftovers:
            pipe.ttl(key)
            pipe.execute_command("JSON.GET", key, "$.logical_date")
        replies = pipe.execute(raise_on_error=False)
        fix = client.pipeline(transaction=False)
        for key, ttl, dates in zip(leftovers, replies[0::2], replies[1::2]):
            if isinstance(ttl, Exception) or isinstance(dates, Exception):
                log.warning("left %s alone: not a JSON document (%s)", _text(key), dates)
                continue
            published = (json.loads(dates) or [""])[0] if dates else ""
            if ours is not None and published and parse_logical_date(published, f"{_text(key)} logical_date") > ours:
                fix.delete(key)
                counts["newer_deleted"] += 1
                continue
            counts["dropped_users"] += 1
            if ttl == -1:
                fix.expire(key, settings.ttl_s)
                counts["ttl_added"] += 1
        fix.execute()

    for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            flush(batch)
            batch = []
    flush(batch)
    return counts


def sample_memory(client: Any, settings: StoreConfig, user_ids: Any) -> dict[str, Any]:
    """Redis bytes per user: ``MEMORY USAGE`` of up to ``memory_sample_keys`` documents spread over the run."""
    import numpy as np

    count = min(settings.memory_sample_keys, len(user_ids))
    if count == 0:
        return {}
    picks = user_ids[np.linspace(0, len(user_ids) - 1, count).astype(np.int64)]
    pipe = client.pipeline(transaction=False)
    for user_id in picks:
        pipe.memory_usage(user_key(settings, int(user_id)), samples=0)
    sizes = [int(v) for v in pipe.execute() if v is not None]
    per_user = sum(sizes) / max(len(sizes), 1)
    return {
        "redis_bytes_per_user": round(per_user, 1),
        "redis_bytes_estimate": int(per_user * len(user_ids)),
        "memory_sampled_keys": len(sizes),
    }


def write_fallback(client: Any, settings: StoreConfig, fallback: dict[str, Any], run_fields: dict[str, str]) -> None:
    """The popularity list for users with no document, at ``settings.fallback_key`` (same TTL)."""
    doc = {"recommendations": [int(i) for i in fallback["recommendations"]],
           "scores": [round(float(s), 6) for s in fallback["scores"]], **run_fields, "fallback": True}
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("JSON.SET", settings.fallback_key, "$", json.dumps(doc, separators=(",", ":")))
    pipe.expire(settings.fallback_key, settings.ttl_s)
    pipe.execute()


def publish(
    client: Any, path: Path, settings: StoreConfig, *, run_id: str, logical_date: str, generated_at: str,
    fallback: dict[str, Any] | None = None, user_ids: Any = None,
) -> dict[str, Any]:
    """Validate everything, then, holding the load lock: compare logical dates, write every user's
    document (pipelined, with TTL), let dropped-out users expire, and write the manifest last.

    A run older than the published one is skipped (``published: false``) unless ``settings.force``.
    Connection errors and timeouts are retried with bounded backoff; when they persist the load
    fails with :class:`RedisUnavailableError` and the manifest still names the previous run.
    """
    import redis

    if user_ids is None:  # ``load_redis`` passes the ids it has already checked
        user_ids = check_recommendations(path, settings)
    users = len(user_ids)
    run_fields = {"run_id": run_id, "logical_date": logical_date, "generated_at": generated_at}
    identity = {"run_id": run_id, "logical_date": logical_date, "users": users}
    with resilient(client, settings):
        try:
            with LoadLock(client, settings, owner=run_id) as lock:
                current = read_manifest(client, settings)
                go, reason = publish_decision(current, logical_date, settings)
                if not go:
                    log.warning("SKIPPED publishing run %r: %s", run_id, reason)
                    return {**identity, "published": False, "reason": reason, "manifest": current}
                log.info("publishing run %r: %s", run_id, reason)
                started = time.perf_counter()
                counts = write_documents(client, path, settings, run_fields)
                lock.ensure_held()
                if counts["written"] != users:
                    raise RuntimeError(f"{path}: wrote {counts['written']} documents, expected {users}")
                if fallback is not None:
                    write_fallback(client, settings, fallback, run_fields)
                elapsed = time.perf_counter() - started
                leftovers = sweep_leftovers(client, settings, user_ids, logical_date,
                                            delete_newer=settings.force)
                memory = sample_memory(client, settings, user_ids)
                manifest = {
                    **run_fields,
                    "users": users,
                    "key_prefix": settings.key_prefix,
                    "forced": bool(settings.force and reason.startswith("FORCED")),
                    "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                lock.ensure_held()
                lock.set_if_owner(settings.manifest_key, json.dumps(manifest))
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailableError(
                f"Redis unreachable after {settings.retry_attempts} tries ({type(exc).__name__}: {exc}). "
                f"{settings.manifest_key} still names the previous run; the documents already written are "
                "whole documents of this run; rerunning the load completes it"
            ) from exc
    log.info("loaded %d documents in %.1fs (%.0f keys/s); %s", users, elapsed, users / max(elapsed, 1e-9),
             json.dumps({**leftovers, **memory}))
    return {
        **identity,
        "published": True,
        "reason": reason,
        "keys_per_s": round(users / max(elapsed, 1e-9), 1),
        "avg_document_bytes": round(counts["payload_bytes"] / max(users, 1), 1),
        **leftovers,
        **memory,
        "manifest": manifest,
    }


def load_redis(config: Config, run_dir: str | Path, client: Any, *, run_id: str, logical_date: str) -> dict[str, Any]:
    """Stage 6: publish the run's recommendations to Redis. ``client`` is a redis-py client.

    The summary is written in every outcome that is not an error, including a skipped publication.
    """
    from .common import device

    paths = RunPaths(Path(run_dir))
    log.info("stage load_redis starting in %s", paths.root)
    generated_at = read_summary(paths, "score").get("generated_at", logical_date)
    recommendations = require(paths.recommendations, "score")
    from .scoring import collect_parts

    with timed() as clock:
        # Nothing is written unless all of these pass: the file itself (bad input names file, column,
        # value), exactly the planned shard parts, and the quality gate.
        user_ids = check_recommendations(recommendations, config.store)
        collect_parts(config, paths)
        report, gate = quality.enforce(paths, config.quality)
        fallback = json.loads(require(paths.fallback_list, "evaluate").read_text())
        result = publish(
            client, recommendations, config.store, run_id=run_id, logical_date=logical_date, generated_at=generated_at,
            fallback=fallback, user_ids=user_ids,
        )
    summary = {"stage": "load_redis", "device": device(), "seconds": clock["seconds"], **result, "quality_gate": gate}
    log.info("stage load_redis done in %.1fs: %s", clock["seconds"], json.dumps(summary))
    for line in summary_lines(report, gate, result):
        log.info("%s", line)
    return write_summary(paths, "load_redis", summary)


def fetch(
    client: Any, user_id: int, settings: StoreConfig | None = None, *, fallback: bool = True
) -> dict[str, Any] | None:
    """The published document of one user (by raw id).

    A user with no document (cold or unknown) gets the popularity list published under
    ``settings.fallback_key``, with this ``user_id`` and ``"fallback": true``; None only when neither
    exists (or ``fallback=False``).
    """
    settings = settings or StoreConfig()
    raw = client.execute_command("JSON.GET", user_key(settings, user_id))
    if raw is not None:
        return json.loads(raw)
    if not fallback:
        return None
    raw = client.execute_command("JSON.GET", settings.fallback_key)
    return None if raw is None else {"user_id": int(user_id), **json.loads(raw), "fallback": True}


def read_manifest(client: Any, settings: StoreConfig | None = None) -> dict[str, Any] | None:
    settings = settings or StoreConfig()
    raw = client.execute_command("JSON.GET", settings.manifest_key)
    return None if raw is None else json.loads(raw)
