"""Stage 6: RedisJSON documents, one per user, and the manifest that names the published run.

This module owns every Redis key name. A document lives at ``<key_prefix><raw user id>`` and holds
the notebook's fields (``user_id``, ``recommendations``) plus ``scores``, ``run_id``,
``logical_date`` and ``generated_at``. Writes go out in pipelined chunks (``transaction=False``),
each ``JSON.SET`` followed by an ``EXPIRE``; the popularity list for users with no document goes to
``fallback_key`` (``RECSYS:FALLBACK``) and the manifest is written only after the last document.
Nothing is written unless the run passes the quality gate (:mod:`recsys_tasks.quality`).
Functions take a redis-py client; they never build one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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


def iter_recommendations(path: Path, batch_rows: int) -> Iterator[dict[str, list[Any]]]:
    """Stream every part of the recommendations in batches, checking each part's schema first."""
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
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(REQUIRED_COLUMNS)):
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


def write_documents(client: Any, path: Path, settings: StoreConfig, run_fields: dict[str, str]) -> dict[str, int]:
    """The hot loop: one pipelined round trip per chunk of ``JSON.SET`` + ``EXPIRE`` commands.

    ``run_fields`` (run id, logical date, generation time) go into every document.
    """
    written, payload_bytes, started = 0, 0, time.perf_counter()
    next_report = started
    for batch in iter_recommendations(path, settings.pipeline_chunk_keys):
        pipe = client.pipeline(transaction=False)
        for user_id, recs, scores in zip(batch["user_id"], batch["recommendations"], batch["scores"]):
            doc = json.dumps(build_document(user_id, recs, scores, **run_fields), separators=(",", ":"))
            payload_bytes += len(doc)
            key = user_key(settings, user_id)
            pipe.execute_command("JSON.SET", key, "$", doc)
            pipe.expire(key, settings.ttl_s)
        pipe.execute()
        written += len(batch["user_id"])
        now = time.perf_counter()
        if now >= next_report:
            log.info("loaded %d documents (%.0f keys/s)", written, written / max(now - started, 1e-9))
            next_report = now + 10.0
    return {"written": written, "payload_bytes": payload_bytes}


def write_manifest(client: Any, settings: StoreConfig, manifest: dict[str, Any]) -> None:
    client.execute_command("JSON.SET", settings.manifest_key, "$", json.dumps(manifest))


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
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate everything, write every user's document (pipelined, with TTL), then the manifest."""
    users = validate_recommendations(path, settings)
    started = time.perf_counter()
    run_fields = {"run_id": run_id, "logical_date": logical_date, "generated_at": generated_at}
    counts = write_documents(client, path, settings, run_fields)
    if counts["written"] != users:
        raise RuntimeError(f"{path}: wrote {counts['written']} documents, expected {users}")
    if fallback is not None:
        write_fallback(client, settings, fallback, run_fields)
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
        # The quality gate runs before anything is written; it raises unless the run is good enough.
        report, gate = quality.enforce(paths, config.quality)
        fallback = json.loads(require(paths.fallback_list, "evaluate").read_text())
        result = publish(
            client, recommendations, config.store, run_id=run_id, logical_date=logical_date, generated_at=generated_at,
            fallback=fallback,
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
