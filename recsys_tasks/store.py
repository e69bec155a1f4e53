"""Stage 6: RedisJSON documents, one per user, and the manifest that names the published run.

This module owns every Redis key name. A document lives at ``<key_prefix><raw user id>`` and holds
the notebook's fields (``user_id``, ``recommendations``) plus ``scores``, ``run_id``,
``logical_date`` and ``generated_at``. Writes go out in pipelined chunks (``transaction=False``),
each ``JSON.SET`` followed by an ``EXPIRE``; the manifest is written only after the last document.
Functions take a redis-py client; they never build one.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import InputDataError, get_logger, read_summary, timed, write_summary
from .config import Config, StoreConfig
from .paths import RunPaths, require

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


def iter_recommendations(path: Path, batch_rows: int) -> Iterator[dict[str, list[Any]]]:
    """Stream every part of the recommendations in batches of Python lists, checking each part's schema first."""
    for batch in iter_recommendation_batches(path, batch_rows):
        yield batch.to_pydict()


def validate_recommendations(path: Path, settings: StoreConfig) -> int:
    """Read everything once before anything is written: a bad file publishes nothing."""
    seen: set[int] = set()
    for batch in iter_recommendations(path, settings.pipeline_chunk_keys):
        for user_id, recs, scores in zip(batch["user_id"], batch["recommendations"], batch["scores"]):
            if user_id is None or user_id < 0:
                raise InputDataError(f"{path}: column 'user_id' holds an invalid id {user_id!r}")
            if user_id in seen:
                raise InputDataError(f"{path}: column 'user_id' holds user {user_id} twice")
            seen.add(user_id)
            if recs is None or scores is None or len(recs) != len(scores):
                raise InputDataError(
                    f"{path}: user {user_id} has {len(recs or [])} recommendations but {len(scores or [])} scores"
                )
    if not seen:
        raise InputDataError(f"{path}: no users to publish")
    return len(seen)


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
    pending = 0
    try:
        for batch in iter_recommendation_batches(path, settings.pipeline_chunk_keys):
            payload, documents, document_bytes = encode_batch(batch, settings, document_tail)
            connection.send_packed_command([payload], check_health=False)
            # Replies of the previous chunk are read only now, so Redis worked while we encoded.
            _read_replies(connection, pending)
            pending = 2 * documents
            written += documents
            payload_bytes += document_bytes
            now = time.perf_counter()
            if now >= next_report:
                rate = written / max(now - started, 1e-9)
                log.info("loaded %d/%d documents (%.0f keys/s, %.0fs left)", written, total, rate,
                         (total - written) / max(rate, 1e-9))
                next_report = now + 10.0
        _read_replies(connection, pending)
    finally:
        pool.release(connection)
    return {"written": written, "payload_bytes": payload_bytes}


def write_manifest(client: Any, settings: StoreConfig, manifest: dict[str, Any]) -> None:
    client.execute_command("JSON.SET", settings.manifest_key, "$", json.dumps(manifest))


def publish(
    client: Any, path: Path, settings: StoreConfig, *, run_id: str, logical_date: str, generated_at: str
) -> dict[str, Any]:
    """Validate everything, write every user's document (pipelined, with TTL), then the manifest."""
    users = validate_recommendations(path, settings)
    started = time.perf_counter()
    run_fields = {"run_id": run_id, "logical_date": logical_date, "generated_at": generated_at}
    counts = write_documents(client, path, settings, run_fields)
    if counts["written"] != users:
        raise RuntimeError(f"{path}: wrote {counts['written']} documents, expected {users}")
    elapsed = time.perf_counter() - started
    manifest = {
        **run_fields,
        "users": users,
        "key_prefix": settings.key_prefix,
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_manifest(client, settings, manifest)
    log.info("loaded %d documents in %.1fs (%.0f keys/s)", users, elapsed, users / max(elapsed, 1e-9))
    return {
        "users": users,
        "keys_per_s": round(users / max(elapsed, 1e-9), 1),
        "avg_document_bytes": round(counts["payload_bytes"] / max(users, 1), 1),
        "manifest": manifest,
    }


def load_redis(config: Config, run_dir: str | Path, client: Any, *, run_id: str, logical_date: str) -> dict[str, Any]:
    """Stage 6: publish the run's recommendations to Redis. ``client`` is a redis-py client."""
    from .common import device

    paths = RunPaths(Path(run_dir))
    log.info("stage load_redis starting in %s", paths.root)
    generated_at = read_summary(paths, "score").get("generated_at", logical_date)
    recommendations = require(paths.recommendations, "score")
    with timed() as clock:
        result = publish(
            client, recommendations, config.store, run_id=run_id, logical_date=logical_date, generated_at=generated_at
        )
    summary = {"stage": "load_redis", "device": device(), "seconds": clock["seconds"], **result}
    log.info("stage load_redis done in %.1fs: %s", clock["seconds"], json.dumps(summary))
    return write_summary(paths, "load_redis", summary)


def fetch(client: Any, user_id: int, settings: StoreConfig | None = None) -> dict[str, Any] | None:
    """The published document of one user (by raw id), or None when there is none."""
    settings = settings or StoreConfig()
    raw = client.execute_command("JSON.GET", user_key(settings, user_id))
    return None if raw is None else json.loads(raw)


def read_manifest(client: Any, settings: StoreConfig | None = None) -> dict[str, Any] | None:
    settings = settings or StoreConfig()
    raw = client.execute_command("JSON.GET", settings.manifest_key)
    return None if raw is None else json.loads(raw)
