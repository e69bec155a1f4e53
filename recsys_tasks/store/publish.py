"""Stage 7, ``load_redis``: validate -> quality gate -> skip/force decision -> capacity -> write -> confirm -> manifest.

Nothing is written unless the whole recommendations directory is valid, the run passes the quality
gate (:mod:`recsys_tasks.evaluation.gate`) and the capacity pre-flight finds room. Holding the load lock, a
run older than the published one is skipped unless forced (the rollback); then every user's
document (pipelined, with TTL; :mod:`.writer`), the popularity fallback list, a TTL for users who
dropped out, and the manifest last. Functions take a redis-py client (``Redis`` or ``RedisCluster``);
they never build one.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import Config, StoreConfig
from ..evaluation import gate as quality
from ..evaluation.report import summary_lines
from ..paths import RunPaths, require
from ..runtime import get_logger, read_summary, stage_run
from . import keys
from .capacity import check_capacity, check_evictions, memory_of_masters, require_json_module, sample_memory
from .connect import require_single_node
from .durability import write_confirmed, write_manifest
from .errors import (
    DurabilityError,
    EvictionError,
    LockLostError,
    RedisUnavailableError,
    StoreOutOfMemoryError,
    SupersededError,
)
from .fence import parse_logical_date
from .lock import LoadLock
from .reader import read_manifest
from .resilience import covering_failover, resilient, transient_errors, with_tries
from .source import check_recommendations, iter_recommendation_batches
from .writer import ProgressCallback

log = get_logger("load_redis")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
            return True, f"FORCED over run {manifest['run_id']!r} ({published}) without a logical date"
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


def sweep_leftovers(
    client: Any, settings: StoreConfig, user_ids: Any, logical_date: str, *, delete_newer: bool
) -> dict[str, int]:
    """Documents under the prefix that this run did not write (users who dropped out).

    Each keeps its TTL, so it expires at most ``ttl_s`` after it was last published; one without a
    TTL (e.g. written by an older version of this job) gets ``ttl_s``. After a forced load over a
    newer run (a rollback), documents written by runs newer than this one are deleted, so what
    applications read is exactly the rolled-back run. Only ``<key_prefix><integer>`` keys are touched.
    On a cluster every master is scanned.
    """
    import numpy as np

    ours = parse_logical_date(logical_date, "logical date") if delete_newer and logical_date else None
    counts = {"dropped_users": 0, "ttl_added": 0, "newer_deleted": 0}
    prefix = settings.key_prefix
    batch: list[bytes] = []

    def flush(found: list[bytes]) -> None:
        ids, candidates = [], []
        for key in found:
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

    for key in client.scan_iter(match=keys.document_key_pattern(settings), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            flush(batch)
            batch = []
    flush(batch)
    return counts


def write_fallback(client: Any, settings: StoreConfig, fallback: dict[str, Any], run_fields: dict[str, str]) -> None:
    """The popularity list for users with no document, at ``settings.fallback_key`` (same TTL)."""
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("JSON.SET", settings.fallback_key, "$", keys.fallback_document(fallback, run_fields))
    pipe.expire(settings.fallback_key, settings.ttl_s)
    pipe.execute()


PROBE_DOCUMENTS = 2000


def sample_documents(path: Path, settings: StoreConfig, run_fields: dict[str, str]) -> list[str]:
    """The capacity probe: ``max(memory_sample_keys, 200)`` documents of this run as they will be stored, spread
    over its first rows (fewer bring allocator noise of +-15%)."""
    import numpy as np

    wanted = max(settings.memory_sample_keys, PROBE_DOCUMENTS)
    batch = next(iter_recommendation_batches(path, max(settings.pipeline_chunk_keys, wanted)))
    rows = batch.to_pylist()
    picks = np.linspace(0, len(rows) - 1, min(wanted, len(rows))).astype(int)
    return [json.dumps(keys.build_document(rows[i]["user_id"], rows[i]["recommendations"], rows[i]["scores"],
                                           **run_fields), separators=(",", ":")) for i in sorted(set(picks))]


def _memory_or_none(client: Any) -> dict[str, dict[str, Any]] | None:
    """Every master's memory figures, or None (logged) when the user may not run INFO."""
    from .errors import StoreError

    try:
        return memory_of_masters(client)
    except StoreError as exc:
        log.warning("not checking evictions: %s", exc)
        return None


def _with_real_growth(capacity: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The pre-flight's estimate beside what ``used_memory`` really grew by during the load, and their ratio."""
    real = sum(after[n]["used_memory"] - before[n]["used_memory"] for n in after if n in before)
    estimate = capacity.get("estimate_bytes")
    return {**capacity, "real_growth_bytes": real,
            "estimate_vs_real": round(estimate / real, 3) if estimate and real > 0 else None}


def _written(acknowledged: int, users: int) -> str:
    if not acknowledged:
        return f"0 of {users} documents of this run were written"
    return (f"{acknowledged} of {users} documents acknowledged, each a whole document of this run (the rest "
            "keep the previous run's)")


def _named(manifest: dict[str, Any] | None) -> str:
    if not manifest:
        return "no run (nothing was published before)"
    return f"run {manifest.get('run_id')!r} ({manifest.get('logical_date') or 'no logical date'})"


def publish(
    client: Any, path: Path, settings: StoreConfig, *, run_id: str, logical_date: str, generated_at: str,
    fallback: dict[str, Any] | None = None, user_ids: Any = None, quality_forced: bool = False,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Validate everything, then, holding the load lock: compare logical dates, check capacity, write every
    user's document (pipelined, with TTL), let dropped-out users expire, and write the manifest last.

    A run older than the published one is skipped (``status: "skipped"``, ``published: false``)
    unless ``settings.force``. Connection errors and timeouts get ``settings.retry_attempts`` tries;
    when they persist the load fails with :class:`RedisUnavailableError` and the manifest still
    names the previous run. ``quality_forced`` records that the quality gate was overridden.
    ``on_progress(acknowledged, total)`` is called as document writes are acknowledged.
    """
    import redis

    if user_ids is None:  # ``load_redis`` passes the ids it has already checked
        user_ids = check_recommendations(path)
    users = len(user_ids)
    run_fields = {"run_id": run_id, "logical_date": logical_date, "generated_at": generated_at}
    identity = {"run_id": run_id, "logical_date": logical_date, "users": users}
    current: dict[str, Any] | None = None
    acknowledged = [0]

    def progress(done: int, total: int) -> None:
        acknowledged[0] = done
        if on_progress is not None:
            on_progress(done, total)

    with resilient(client, settings):
        try:
            settings = with_tries(settings, "reaching Redis", lambda: covering_failover(client, settings))
            with_tries(settings, "reaching Redis", lambda: (require_single_node(client),
                                                            require_json_module(client, settings)))
            with LoadLock(client, settings, owner=run_id) as lock:
                current = read_manifest(client, settings)
                go, reason = publish_decision(current, logical_date, settings)
                if not go:
                    log.warning("SKIPPED publishing run %r: %s", run_id, reason)
                    return {**identity, "published": False, "status": "skipped", "reason": reason,
                            "manifest": current}
                log.info("publishing run %r: %s", run_id, reason)
                capacity = (check_capacity(client, settings, user_ids, sample_documents(path, settings, run_fields))
                            if settings.capacity_check else {"skipped": "store.capacity_check is false"})
                memory_before = _memory_or_none(client)

                def no_evictions() -> None:
                    if memory_before is not None:
                        check_evictions(memory_before, memory_of_masters(client))

                started = time.perf_counter()
                counts = write_confirmed(client, path, settings, run_fields, total=users, on_progress=progress,
                                         check_lock=lock.check, after_write=no_evictions,
                                         generation_us=lock.generation_us)
                lock.ensure_held()
                if counts["written"] != users:
                    raise RuntimeError(f"{path}: wrote {counts['written']} documents, expected {users}")
                if fallback is not None:
                    write_fallback(client, settings, fallback, run_fields)
                elapsed = time.perf_counter() - started
                leftovers = sweep_leftovers(client, settings, user_ids, logical_date, delete_newer=settings.force)
                memory = sample_memory(client, settings, user_ids)
                memory_after = _memory_or_none(client) if memory_before is not None else None
                if memory_after is not None:
                    check_evictions(memory_before, memory_after)
                    capacity = _with_real_growth(capacity, memory_before, memory_after)
                forced_by = ["date"] if settings.force and reason.startswith("FORCED") else []
                forced_by += ["quality"] if quality_forced else []
                manifest = keys.manifest_document(
                    run_fields, users=users, settings=settings, forced_by=forced_by,
                    completed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                lock.ensure_held()
                manifest_replicas = with_tries(settings, "writing the manifest",
                                               lambda: write_manifest(client, lock, settings, json.dumps(manifest)))
        except (StoreOutOfMemoryError, redis.exceptions.OutOfMemoryError) as exc:
            raise StoreOutOfMemoryError(
                f"Redis ran out of memory after {acknowledged[0]} of {users} documents of run {run_id!r} ({exc}). "
                f"{settings.manifest_key} still names {_named(current)}; {_written(acknowledged[0], users)}. "
                "Free memory or raise maxmemory, then rerun the load: it completes the run"
            ) from exc
        except (DurabilityError, EvictionError, SupersededError, LockLostError) as exc:
            raise type(exc)(f"{exc}. {_written(acknowledged[0], users)}; {settings.manifest_key} was not written by "
                            f"this load (it named {_named(current)} when the load began)") from exc
        except redis.AuthenticationError:
            raise
        except (RedisUnavailableError, *transient_errors()) as exc:
            cause = str(exc) if isinstance(exc, RedisUnavailableError) else (
                f"Redis unreachable after {settings.retry_attempts} tries ({type(exc).__name__}: {exc})")
            raise RedisUnavailableError(
                f"{cause}; {_written(acknowledged[0], users)}. {settings.manifest_key} still names "
                f"{_named(current)}; rerunning the load completes it"
            ) from exc
    log.info("loaded %d documents in %.1fs (%.0f keys/s); %s", users, elapsed, users / max(elapsed, 1e-9),
             json.dumps({**leftovers, **memory}))
    return {
        **identity,
        "published": True,
        "status": "published",
        "reason": reason,
        "keys_per_s": round(users / max(elapsed, 1e-9), 1),
        "avg_document_bytes": round(counts["payload_bytes"] / max(users, 1), 1),
        "replayed": counts["replayed"],
        "read_back_replayed": counts["read_back_replayed"],
        "verified": counts["verified"],
        "replicas": counts["replicas"],
        "manifest_replicas": manifest_replicas,
        **leftovers,
        **memory,
        "capacity": capacity,
        "manifest": manifest,
    }


def load_redis(config: Config, run_dir: str | Path, client: Any, *, run_id: str, logical_date: str,
               on_progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Stage 7: publish the run's recommendations to Redis. ``client`` is a redis-py client (or cluster client).

    The summary is written in every outcome that is not an error, including a skipped publication
    (``status: "skipped"``).
    """
    from ..scoring.stage import collect_parts

    paths = RunPaths(Path(run_dir))
    generated_at = read_summary(paths, "score").get("generated_at", logical_date)
    recommendations = require(paths.recommendations, "score")

    with stage_run("load_redis", paths) as summary:
        # Nothing is written unless all of these pass: the file itself (bad input names file, column,
        # value), exactly the planned shard parts, and the quality gate.
        user_ids = check_recommendations(recommendations)
        collect_parts(config, paths)
        # The gate compares with the lists live now (the manifest's run); read with the load's retries.
        with resilient(client, config.store):
            live = with_tries(config.store, "reading the manifest", lambda: read_manifest(client, config.store))
        report, gate = quality.enforce(paths, config.quality, live, run_id)
        fallback = json.loads(require(paths.fallback_list, "evaluate").read_text())
        result = publish(
            client, recommendations, config.store, run_id=run_id, logical_date=logical_date, generated_at=generated_at,
            fallback=fallback, user_ids=user_ids, quality_forced=bool(gate.get("forced")), on_progress=on_progress,
        )
        summary.update({**result, "quality_gate": gate})
    published = result if result["status"] == "published" else None
    lines = summary_lines(report, gate, published)
    if published is None:
        lines.insert(-1, f"NOT published ({result['status']}): {result['reason']}; the manifest still names "
                         f"{_named(result.get('manifest'))}")
    for line in lines:
        log.info("%s", line)
    return summary
