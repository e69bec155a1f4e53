"""Loading into Redis: the notebook's one awaited ``JSON.SET`` per key, our load, ``redis-benchmark``."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..config import StoreConfig
from .common import BENCH_KEY_PREFIX, BENCH_MANIFEST_KEY, REDIS_BENCHMARK_PIPELINE, BenchError, _rate


def measure_notebook_redis(url: str, documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The notebook's ``store_recommendations``: one awaited ``JSON.SET`` per key with redis.asyncio."""
    import redis.asyncio as aioredis
    from redis.commands.json.path import Path as JsonPath

    async def store() -> float:
        connection = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            started = time.perf_counter()
            for key, entry in documents:
                await connection.json().set(key, JsonPath.root_path(), entry)
            return time.perf_counter() - started
        finally:
            await connection.aclose()

    elapsed = asyncio.run(store())
    return {"keys": len(documents), "keys_per_s": _rate(len(documents), elapsed)}


def redis_benchmark_keys_per_s(args: list[str]) -> float:
    """Requests/s of one ``redis-benchmark ... --csv <command>`` run (``args`` without the binary)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise BenchError("redis-benchmark is not installed (apt-get install redis-tools)")
    result = subprocess.run([binary, *args], capture_output=True, text=True)
    # CSV: a header, then one row whose first field is the command line (quotes in the document are
    # not escaped), followed by the numeric fields; rps is the first of those.
    lines = [line for line in result.stdout.splitlines() if line.startswith('"')]
    numbers = []
    if len(lines) >= 2 and lines[0].startswith('"test"'):
        numeric = lines[0].count(",")
        numbers = re.findall(r"[0-9.]+", lines[-1].rsplit(",", numeric)[1])
    if result.returncode != 0 or not numbers:
        raise BenchError(f"redis-benchmark failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    return float(numbers[0])


def measure_redis_benchmark(url: str, document: str, requests: int) -> dict[str, Any]:
    """``redis-benchmark -P 64`` of ``JSON.SET`` with a document of our size: the server's ceiling."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    args = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379),
            "-P", str(REDIS_BENCHMARK_PIPELINE), "-n", str(requests), "-r", str(max(requests, 1)), "--csv"]
    if parsed.password:
        args += ["-a", parsed.password, "--no-auth-warning"]
    if parsed.path and parsed.path.strip("/"):
        args += ["--dbnum", parsed.path.strip("/")]
    args += ["JSON.SET", "BENCH:RB:__rand_int__", "$", document]
    return {"requests": requests, "pipeline": REDIS_BENCHMARK_PIPELINE, "clients": 50,
            "keys_per_s": redis_benchmark_keys_per_s(args), "document_bytes": len(document.encode())}


def delete_bench_keys(client: Any) -> None:
    for pattern in ("BENCH:*",):
        batch = []
        for key in client.scan_iter(match=pattern, count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)


def measure_redis(url: str, recommendations: Path, notebook_keys: int, benchmark_requests: int,
                  chunk_keys: int) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import redis

    from ..store import build_document, publish, user_key

    client = redis.Redis.from_url(url)
    # Its own lock (and so its own fences, ``<lock_key>:FENCE``): a server shared with real loads keeps theirs.
    settings = StoreConfig(key_prefix=BENCH_KEY_PREFIX, manifest_key=BENCH_MANIFEST_KEY, lock_key="BENCH:LOCK",
                           pipeline_chunk_keys=chunk_keys)
    run_fields = {"run_id": "bench__2026-01-01T00:00:00+00:00", "logical_date": "2026-01-01T00:00:00+00:00",
                  "generated_at": "2026-01-01T00:00:00+00:00"}
    try:
        delete_bench_keys(client)
        started = time.perf_counter()
        ours = publish(client, recommendations, settings, **run_fields)
        load_seconds = time.perf_counter() - started
        delete_bench_keys(client)

        head = pq.ParquetFile(next(iter(sorted(recommendations.glob("*.parquet"))))).iter_batches(
            batch_size=notebook_keys)
        sample = next(head).to_pydict()
        documents = [
            (user_key(settings, u), build_document(u, r, s, **run_fields))
            for u, r, s in zip(sample["user_id"], sample["recommendations"], sample["scores"])
        ]
        notebook = measure_notebook_redis(url, documents)
        delete_bench_keys(client)

        typical = json.dumps(documents[len(documents) // 2][1], separators=(",", ":"))
        ceiling = measure_redis_benchmark(url, typical, benchmark_requests)
    finally:
        delete_bench_keys(client)
        client.close()
    return {
        "ours_keys_per_s": ours["keys_per_s"],
        "ours_users": ours["users"],
        "ours_load_seconds": round(load_seconds, 3),
        "avg_document_bytes": ours["avg_document_bytes"],
        "notebook_keys_per_s": notebook["keys_per_s"],
        "notebook_keys": notebook["keys"],
        "redis_benchmark": ceiling,
        "fraction_of_redis_benchmark": round(ours["keys_per_s"] / ceiling["keys_per_s"], 3),
        "ratio_to_notebook": round(ours["keys_per_s"] / max(notebook["keys_per_s"], 1e-9), 1),
    }

