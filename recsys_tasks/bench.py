"""``python -m recsys_tasks bench``: our scoring and loading, side by side with the notebook's method and plain limits.

On one set of inputs (same models, users, candidate count and Redis server) it measures: scoring
(the notebook's per-user method on a sample of users vs our ``score`` stage on all users, at the
notebook's K=20 and at our default K), ranking (our step vs plain batched ``model.predict``),
retrieval (ours vs plain ``tf.matmul`` + ``tf.math.top_k``), Redis loading (the notebook's one
awaited ``JSON.SET`` per key vs ``store.write_documents`` vs ``redis-benchmark -P 64``), peak memory
of scoring at two user counts, and the end-to-end time of scoring + load. It prints a Markdown
table and writes the same numbers to a JSON file.

The inputs are synthetic at the requested scale (the data generator's output cannot reach a million
users on two cores in reasonable time, and random clicks carry no signal anyway): feature tables with
realistic cardinalities, Gaussian user and item embeddings of the Two-Tower's size (64), a few seen
clicks per user, and a DLRM built by the project's own ``build_dlrm`` and trained for one epoch on
random impressions. Speed does not depend on what the weights learnt; the shapes are those of a real
run. ``--run-dir`` benchmarks an existing pipeline run's trained models instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import get_logger, quiet_tensorflow
from .config import Config, RankingConfig, StoreConfig
from .features import ITEM_COLUMNS, USER_COLUMNS
from .paths import RunPaths
from .transform import ITEM_FEATURES, TARGET, USER_FEATURES

log = get_logger("bench")

EMBEDDING_DIM = 64
NOTEBOOK_K = 20
"""The notebook retrieves 20 candidates per user and ranks all 20."""
NOTEBOOK_USER_BATCH = 32
"""The notebook's user loader batch size for candidate retrieval."""
BENCH_KEY_PREFIX = "BENCH:USER:"
BENCH_MANIFEST_KEY = "BENCH:MANIFEST"
REDIS_BENCHMARK_PIPELINE = 64


class BenchError(RuntimeError):
    """The benchmark could not measure something it promised to (a missing tool, a failed child)."""


# --------------------------------------------------------------------------------------------- inputs


def feature_cardinalities(num_users: int, num_items: int) -> dict[str, int]:
    """Cardinalities of the synthetic inputs: ids at full scale, Ali-CCP-like sizes for the rest."""
    cards = {"user_id": num_users, "item_id": num_items}
    cards.update({c: max(2, min(num_items, 1000 if c == "item_category" else 10_000)) for c in ITEM_FEATURES})
    small = {"user_gender": 3, "user_age": 8, "user_group": 14, "user_is_occupied": 3, "user_consumption_2": 4,
             "user_geography": 5, "user_profile": 100}
    cards.update({c: small.get(c, max(2, min(num_users, 10_000))) for c in USER_FEATURES})
    return cards


def scale_schema(cardinalities: dict[str, int]) -> Any:
    """A Merlin schema tagged like the transform stage's output (ids, user/item features, binary target)."""
    from merlin.schema import ColumnSchema, Schema, Tags

    def column(name: str, tags: list[Any]) -> Any:
        domain = {"min": 0, "max": cardinalities[name] - 1, "name": name}
        return ColumnSchema(name, tags=tags, dtype=np.int32, properties={"domain": domain})

    columns = [
        column("user_id", [Tags.USER_ID, Tags.USER, Tags.CATEGORICAL, Tags.ID]),
        column("item_id", [Tags.ITEM_ID, Tags.ITEM, Tags.CATEGORICAL, Tags.ID]),
        *[column(c, [Tags.ITEM, Tags.CATEGORICAL]) for c in ITEM_FEATURES],
        *[column(c, [Tags.USER, Tags.CATEGORICAL]) for c in USER_FEATURES],
        ColumnSchema(TARGET, tags=[Tags.BINARY_CLASSIFICATION, Tags.TARGET], dtype=np.int32),
    ]
    return Schema(columns)


def _embeddings_table(ids: np.ndarray, vectors: np.ndarray, id_column: str) -> Any:
    import pyarrow as pa

    columns = {id_column: pa.array(ids)}
    columns.update({f"e{i}": pa.array(vectors[:, i]) for i in range(vectors.shape[1])})
    return pa.table(columns)


def build_scale_run(
    root: Path, num_users: int, num_items: int, *, seed: int = 7, clicks_per_user: int = 3,
    train_rows: int = 50_000, ranking: RankingConfig | None = None,
) -> RunPaths:
    """Write everything the ``score`` stage reads, at the requested scale, into run directory ``root``."""
    quiet_tensorflow()
    import pandas as pd
    import pyarrow.parquet as pq

    from .ranking import build_dlrm

    paths = RunPaths(root)
    rng = np.random.default_rng(seed)
    cards = feature_cardinalities(num_users, num_items)
    started = time.perf_counter()
    paths.fresh(paths.retrieval)
    users = {"user_id": np.arange(num_users, dtype=np.int32)}
    users.update({c: rng.integers(0, cards[c], num_users, dtype=np.int32) for c in USER_FEATURES})
    # Raw ids differ from encoded ids, so a mix-up between the two cannot go unnoticed.
    users["user_id_raw"] = users["user_id"].astype(np.int64) * 7 + 1_000_003
    items = {"item_id": np.arange(num_items, dtype=np.int32)}
    items.update({c: rng.integers(0, cards[c], num_items, dtype=np.int32) for c in ITEM_FEATURES})
    items["item_id_raw"] = items["item_id"].astype(np.int64) * 3 + 500_009
    pq.write_table(pd.DataFrame(users)[USER_COLUMNS].pipe(_to_arrow), paths.user_features)
    pq.write_table(pd.DataFrame(items)[ITEM_COLUMNS].pipe(_to_arrow), paths.item_features)
    scale = np.float32(1.0 / np.sqrt(EMBEDDING_DIM))
    item_vectors = rng.standard_normal((num_items, EMBEDDING_DIM), dtype=np.float32) * scale
    pq.write_table(_embeddings_table(items["item_id"], item_vectors, "item_id"), paths.item_embeddings)
    with pq.ParquetWriter(paths.user_embeddings, _embeddings_table(
            users["user_id"][:1], item_vectors[:1], "user_id").schema) as writer:
        for start in range(0, num_users, 250_000):
            stop = min(start + 250_000, num_users)
            vectors = rng.standard_normal((stop - start, EMBEDDING_DIM), dtype=np.float32) * scale
            writer.write_table(_embeddings_table(users["user_id"][start:stop], vectors, "user_id"))

    paths.fresh(paths.retrieval_train)
    clicks = pd.DataFrame({
        "user_id": np.repeat(users["user_id"], clicks_per_user),
        "item_id": rng.integers(0, num_items, num_users * clicks_per_user, dtype=np.int32),
    })
    clicks.to_parquet(paths.retrieval_train / "part_0.parquet", index=False)

    import merlin.io

    schema = scale_schema(cards)
    rows = rng.integers(0, num_users, train_rows)
    impressions = {c: users[c][rows] for c in USER_COLUMNS if c != "user_id_raw"}
    picked = rng.integers(0, num_items, train_rows)
    impressions.update({c: items[c][picked] for c in ITEM_COLUMNS if c != "item_id_raw"})
    impressions[TARGET] = rng.integers(0, 2, train_rows, dtype=np.int32)
    dataset = merlin.io.Dataset(pd.DataFrame(impressions), schema=schema)
    settings = ranking or RankingConfig()
    model = build_dlrm(schema, settings)
    model.fit(dataset, batch_size=settings.batch_size_rows, epochs=1, verbose=0)
    paths.fresh(paths.ranking)
    model.save(str(paths.dlrm))
    log.info("synthetic inputs: %d users x %d items in %s (%.0fs)", num_users, num_items, root,
             time.perf_counter() - started)
    return paths


def _to_arrow(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def subset_run(source: RunPaths, root: Path, num_users: int) -> RunPaths:
    """A run directory holding the first ``num_users`` users of ``source`` (same items and models)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    paths = RunPaths(root)
    paths.fresh(paths.retrieval)
    paths.fresh(paths.retrieval_train)
    users = pq.read_table(source.user_features).slice(0, num_users)
    pq.write_table(users, paths.user_features)
    pq.write_table(pq.read_table(source.user_embeddings).slice(0, num_users), paths.user_embeddings)
    clicks = pa.concat_tables(
        pq.read_table(f, columns=["user_id", "item_id"]) for f in sorted(source.retrieval_train.glob("*.parquet"))
    )
    clicks = clicks.filter(pc.is_in(clicks["user_id"], value_set=users["user_id"]))
    pq.write_table(clicks, paths.retrieval_train / "part_0.parquet")
    for name in ("item_features", "item_embeddings"):
        getattr(paths, name).symlink_to(getattr(source, name).resolve())
    if paths.ranking.exists():
        shutil.rmtree(paths.ranking)
    paths.ranking.mkdir(parents=True)
    paths.dlrm.symlink_to(source.dlrm.resolve(), target_is_directory=True)
    return paths


# ------------------------------------------------------------------------------- the notebook's method


@dataclass
class NotebookInputs:
    """The notebook's offline "feature stores" (pandas frames) and the retrieval embeddings."""

    user_fs: Any
    item_fs: Any
    clicks: Any
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray


def load_notebook_inputs(paths: RunPaths) -> NotebookInputs:
    import pandas as pd

    from .features import read_processed

    user_fs = pd.read_parquet(paths.user_features)
    item_fs = pd.read_parquet(paths.item_features)
    return NotebookInputs(
        user_fs=user_fs,
        item_fs=item_fs,
        clicks=read_processed(paths.retrieval_train, columns=["user_id", "item_id"]),
        user_embeddings=pd.read_parquet(paths.user_embeddings).drop(columns="user_id").to_numpy(np.float32),
        item_embeddings=pd.read_parquet(paths.item_embeddings).drop(columns="item_id").to_numpy(np.float32),
    )


def notebook_recommendations(
    inputs: NotebookInputs, dlrm: Any, user_rows: Sequence[int], k: int = NOTEBOOK_K, top_n: int | None = None,
    batch_size: int = NOTEBOOK_USER_BATCH,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The notebook's ``generate_recommendations_batch`` (sections 4.3-4.4), re-implemented.

    Candidates come a batch of users at a time (the notebook's ``topk_model``: dot products with
    every item, top-k); then, for each user on its own: a pandas filter of the user feature table,
    the row repeated once per candidate, an ``isin`` filter of the item feature table, a Merlin
    ``Dataset`` and ``Loader`` over that frame and one eager DLRM call; candidates ordered by the
    softmax of the scores. One difference, so the answers can be compared with ours: items the user
    clicked in training are masked before the top-k (found with a per-user pandas filter too).
    Yields ``(raw user id, raw item ids best first, scores)`` with ``top_n`` (default k) items.
    """
    import merlin.models.tf as mm
    import pandas as pd
    import tensorflow as tf
    from merlin.io import Dataset

    user_fs, item_fs = inputs.user_fs, inputs.item_fs
    item_ids = item_fs["item_id"].to_numpy()
    top_n = top_n or k
    for start in range(0, len(user_rows), batch_size):
        batch_rows = np.asarray(user_rows[start : start + batch_size])
        scores = tf.matmul(inputs.user_embeddings[batch_rows], inputs.item_embeddings, transpose_b=True).numpy()
        batch_users = user_fs["user_id"].to_numpy()[batch_rows]
        for i, user_id in enumerate(batch_users):
            seen = inputs.clicks[inputs.clicks.user_id == user_id].item_id.to_numpy()
            scores[i, np.searchsorted(item_ids, seen)] = -np.inf
        top_scores, top_rows = tf.math.top_k(scores, k=min(k, len(item_ids)))
        candidate_lists = np.where(np.isneginf(top_scores.numpy()), -1, item_ids[top_rows.numpy()])
        for user_id, candidates in zip(batch_users, candidate_lists):
            candidates = candidates[candidates >= 0]
            num_recs = len(candidates)
            user_features = user_fs[user_fs.user_id == user_id]
            raw_user_id = int(user_features.user_id_raw.to_numpy()[0])
            user_features = pd.concat([user_features] * num_recs, ignore_index=True)
            item_features = item_fs[item_fs.item_id.isin(candidates)].reset_index(drop=True)
            raw_item_ids = item_features.item_id_raw.to_numpy()
            item_features[user_features.columns] = user_features
            dataset = Dataset(item_features.drop(columns=["user_id_raw", "item_id_raw"]))
            batch = next(iter(mm.Loader(dataset, batch_size=num_recs, shuffle=False)))
            user_scores = dlrm(batch[0]).numpy().reshape(-1)
            probabilities = np.exp(user_scores) / sum(np.exp(user_scores))
            order = (-probabilities).argsort()[:top_n]
            yield raw_user_id, raw_item_ids[order], user_scores[order]


# ---------------------------------------------------------------------------------------- measuring


def _rate(count: float, seconds: float) -> float:
    return round(count / max(seconds, 1e-9), 1)


def measure_notebook_scoring(paths: RunPaths, sample_users: int) -> dict[str, Any]:
    from .ranking import load_dlrm

    inputs = load_notebook_inputs(paths)
    dlrm = load_dlrm(paths.dlrm)
    rows = np.arange(min(sample_users, len(inputs.user_fs)))
    # One user first, so TensorFlow's one-off start-up is not billed to the method.
    next(notebook_recommendations(inputs, dlrm, rows[:1]))
    started = time.perf_counter()
    results = list(notebook_recommendations(inputs, dlrm, rows))
    elapsed = time.perf_counter() - started
    return {
        "users": len(rows), "seconds": round(elapsed, 3), "users_per_s": _rate(len(rows), elapsed),
        "lists": {uid: (recs.tolist(), scores.tolist()) for uid, recs, scores in results},
    }


def compare_lists(notebook: dict[int, tuple[list[int], list[float]]], recommendations: Path) -> dict[str, Any]:
    """How many of the notebook's lists our stage reproduced (same items, same order up to score ties)."""
    import pyarrow.parquet as pq

    ours = pq.read_table(recommendations, columns=["user_id", "recommendations", "scores"]).to_pandas()
    ours = ours[ours["user_id"].isin(list(notebook))].set_index("user_id")
    same = 0
    for user_id, (items, scores) in notebook.items():
        if user_id in ours.index and lists_agree(items, scores, list(ours.loc[user_id, "recommendations"]),
                                                 list(ours.loc[user_id, "scores"])):
            same += 1
    return {"users_compared": len(notebook), "identical_lists": same}


def lists_agree(items_a: list[int], scores_a: list[float], items_b: list[int], scores_b: list[float],
                tolerance: float = 1e-5) -> bool:
    """Same length, same scores (within tolerance) and same items except where neighbouring scores tie."""
    if len(items_a) != len(items_b) or not np.allclose(scores_a, scores_b, rtol=0, atol=tolerance):
        return False
    for position, (a, b) in enumerate(zip(items_a, items_b)):
        if a == b:
            continue
        tied = [p for p in range(len(scores_a)) if abs(scores_a[p] - scores_a[position]) <= tolerance]
        if b not in [items_a[p] for p in tied]:
            return False
    return True


def measure_ranking(paths: RunPaths, sample_users: int, k: int, batch_rows: int) -> dict[str, Any]:
    """Our ranking step vs plain batched ``model.predict`` of the same DLRM on the same pairs."""
    from .ranking import load_dlrm
    from .scoring import load_catalog, pair_features, rank_pairs, retrieve

    catalog = load_catalog(paths)
    model = load_dlrm(paths.dlrm)
    rows = np.arange(min(sample_users, catalog.num_users))
    candidates, _ = retrieve(catalog, rows, k)
    features = pair_features(catalog, rows, candidates)
    pairs = len(next(iter(features.values())))
    columns = {c: v.reshape(-1, 1) for c, v in features.items()}
    warm = {c: v[: min(batch_rows, pairs)] for c, v in features.items()}
    rank_pairs(model, warm, batch_rows)
    model.predict({c: v.reshape(-1, 1) for c, v in warm.items()}, batch_size=batch_rows, verbose=0)
    started = time.perf_counter()
    ours = rank_pairs(model, features, batch_rows)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    plain = np.asarray(model.predict(columns, batch_size=batch_rows, verbose=0)).reshape(-1)
    plain_s = time.perf_counter() - started
    if not np.allclose(ours, plain, rtol=1e-4, atol=1e-5):
        raise BenchError("our ranking step and model.predict disagree on the same pairs")
    return {"pairs": pairs, "batch_rows": batch_rows, "ours_pairs_per_s": _rate(pairs, ours_s),
            "predict_pairs_per_s": _rate(pairs, plain_s), "fraction_of_predict": round(plain_s / ours_s, 3)}


def measure_retrieval(paths: RunPaths, sample_users: int, k: int, chunk_users: int) -> dict[str, Any]:
    """Our candidate generation (seen items left out) vs plain matmul + top-k (nothing masked).

    Also the machine's matrix-product ceiling for exact retrieval: the best ``sgemm`` rate on
    cache-resident tiles of these embeddings (all cores, OpenBLAS), turned into users/s as
    ``rate / (2 x dim x items)``. No exact method retrieves faster than that on this machine.
    """
    quiet_tensorflow()
    import tensorflow as tf

    from .scoring import iter_user_chunks, load_catalog, retrieve

    catalog = load_catalog(paths)
    count = min(sample_users, catalog.num_users)
    chunks = list(iter_user_chunks(count, chunk_users))

    def plain(rows: np.ndarray) -> Any:
        scores = tf.matmul(catalog.user_embeddings[rows], catalog.item_embeddings, transpose_b=True)
        top_scores, top_rows = tf.math.top_k(scores, k=min(k, catalog.num_items))
        return top_scores.numpy(), top_rows.numpy()

    retrieve(catalog, chunks[0], k)
    plain(chunks[0])
    timings = {}
    for name, fn in (("ours", lambda r: retrieve(catalog, r, k)), ("plain", plain)):
        started = time.perf_counter()
        for rows in chunks:
            fn(rows)
        timings[name] = time.perf_counter() - started
    gflops = matmul_gflops(catalog.user_embeddings[:chunk_users], catalog.item_embeddings)
    dim = catalog.item_embeddings.shape[1]
    return {"users": count, "items": catalog.num_items, "k": k, "chunk_users": chunk_users,
            "ours_users_per_s": _rate(count, timings["ours"]),
            "plain_users_per_s": _rate(count, timings["plain"]),
            "fraction_of_plain": round(timings["plain"] / timings["ours"], 3),
            "sgemm_gflops": round(gflops, 1),
            "matmul_ceiling_users_per_s": round(gflops * 1e9 / (2 * dim * catalog.num_items), 1)}


def matmul_gflops(users: np.ndarray, items: np.ndarray, seconds: float = 3.0) -> float:
    """The best float32 matrix-product rate (GFLOP/s) numpy's BLAS reaches on these shapes.

    Tiles of 256-4096 users x 512-4096 items (the output in or near cache, so memory traffic does
    not hide the arithmetic), each timed for a fraction of ``seconds``; the best one counts.
    """
    best = 0.0
    items_t = np.ascontiguousarray(items.T)
    for rows, cols in ((256, 512), (512, 1024), (1024, 2048), (4096, 4096)):
        a = np.ascontiguousarray(users[:rows])
        b = np.ascontiguousarray(items_t[:, :cols])
        out = np.empty((len(a), b.shape[1]), dtype=np.float32)
        np.matmul(a, b, out=out)
        repeats, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 4:
            np.matmul(a, b, out=out)
            repeats += 1
        best = max(best, 2 * a.shape[0] * a.shape[1] * b.shape[1] * repeats / (time.perf_counter() - started) / 1e9)
    return best


def run_scoring_child(run_dir: Path, top_k: int, top_n: int, chunk_users: int, rank_batch_rows: int,
                      out: Path) -> dict[str, Any]:
    """Run the real ``score`` stage in a fresh process and return its summary plus its peak RSS."""
    command = [sys.executable, "-m", "recsys_tasks.bench", "--child-score", str(run_dir), "--child-out", str(out),
               "--top-k", str(top_k), "--top-n", str(top_n), "--chunk-users", str(chunk_users),
               "--rank-batch-rows", str(rank_batch_rows)]
    log.info("scoring %s at K=%d N=%d in a child process", run_dir, top_k, top_n)
    # The child's log (progress: users done, rate, time left) goes straight to ours.
    result = subprocess.run(command)
    if result.returncode != 0:
        raise BenchError(f"scoring child for {run_dir} failed with exit code {result.returncode} (its log is above)")
    return json.loads(out.read_text())


def _child_score(run_dir: Path, top_k: int, top_n: int, chunk_users: int, rank_batch_rows: int, out: Path) -> None:
    from .scoring import score

    config = Config().with_overrides({"scoring.top_k": top_k, "scoring.top_n": top_n,
                                      "scoring.user_chunk_size": chunk_users,
                                      "scoring.rank_batch_rows": rank_batch_rows})
    summary = score(config, run_dir)
    summary["peak_rss_mb"] = peak_rss_mb()
    out.write_text(json.dumps(summary))


def peak_rss_mb() -> float:
    """This process's own peak resident memory, MB.

    Linux's ``VmHWM``, not ``getrusage``'s ``ru_maxrss``: the latter survives ``exec``, so in a child
    of a large parent it reports the parent's size at ``fork`` (a child started by a bench holding a
    million users' catalog read 3.5 GB while its own peak was 2.4 GB).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    # Elsewhere: ru_maxrss (KiB on Linux, bytes on macOS), an upper bound for a child process.
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


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


def measure_redis_benchmark(url: str, document: str, requests: int) -> dict[str, Any]:
    """``redis-benchmark -P 64`` of ``JSON.SET`` with a document of our size: the server's ceiling."""
    from urllib.parse import urlparse

    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise BenchError("redis-benchmark is not installed (apt-get install redis-tools)")
    parsed = urlparse(url)
    command = [binary, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379),
               "-P", str(REDIS_BENCHMARK_PIPELINE), "-n", str(requests), "-r", str(max(requests, 1)), "--csv"]
    if parsed.password:
        command += ["-a", parsed.password, "--no-auth-warning"]
    if parsed.path and parsed.path.strip("/"):
        command += ["--dbnum", parsed.path.strip("/")]
    command += ["JSON.SET", "BENCH:RB:__rand_int__", "$", document]
    result = subprocess.run(command, capture_output=True, text=True)
    # CSV: a header, then one row whose first field is the command line (quotes in the document are
    # not escaped), followed by the numeric fields; rps is the first of those.
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    numbers = []
    if len(lines) >= 2 and lines[0].startswith('"test"'):
        numeric = lines[0].count(",")
        numbers = re.findall(r"[0-9.]+", lines[-1].rsplit(",", numeric)[1])
    if result.returncode != 0 or not numbers:
        raise BenchError(f"redis-benchmark failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    return {"requests": requests, "pipeline": REDIS_BENCHMARK_PIPELINE, "clients": 50,
            "keys_per_s": float(numbers[-1]), "document_bytes": len(document.encode())}


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

    from .store import build_document, publish, user_key

    client = redis.Redis.from_url(url)
    settings = StoreConfig(key_prefix=BENCH_KEY_PREFIX, manifest_key=BENCH_MANIFEST_KEY,
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


# ------------------------------------------------------------------------------------------ the report


TARGETS = {"scoring_ratio": 1000.0, "ranking_fraction": 0.7, "retrieval_fraction": 0.7,
           "redis_fraction": 0.5, "redis_ratio": 10.0, "memory_ratio": 1.5}


def markdown_table(results: dict[str, Any]) -> str:
    s, r, rk, rt, m = (results[k] for k in ("scoring", "redis", "ranking", "retrieval", "memory"))
    users, items = results["inputs"]["users"], results["inputs"]["items"]

    def ok(passed: bool) -> str:
        return "yes" if passed else "**no**"

    rows = [
        ("| measure | ours | reference | ours / reference | target | met |"),
        ("|---|---|---|---|---|---|"),
        (f"| scoring, K=N=20 (users/s) | {s['ours_k20']['users_per_s']:,.0f} ({s['ours_k20']['users']:,} users) | "
         f"{s['notebook']['users_per_s']:,.2f} (notebook method, {s['notebook']['users']} users) | "
         f"{s['ratio_k20']:,.0f}x | >= 1000x | {ok(s['ratio_k20'] >= TARGETS['scoring_ratio'])} |"),
        (f"| scoring, K={s['ours_default']['top_k']} N={s['ours_default']['top_n']} (users/s) | "
         f"{s['ours_default']['users_per_s']:,.0f} | {s['notebook']['users_per_s']:,.2f} (notebook, K=20) | "
         f"{s['ratio_default']:,.0f}x | | |"),
        (f"| ranking (pairs/s) | {rk['ours_pairs_per_s']:,.0f} | {rk['predict_pairs_per_s']:,.0f} "
         f"(batched model.predict) | {rk['fraction_of_predict']:.0%} | >= 70% | "
         f"{ok(rk['fraction_of_predict'] >= TARGETS['ranking_fraction'])} |"),
        (f"| retrieval, K={rt['k']} (users/s) | {rt['ours_users_per_s']:,.0f} | {rt['plain_users_per_s']:,.0f} "
         f"(matmul + top_k) | {rt['fraction_of_plain']:.0%} | >= 70% | "
         f"{ok(rt['fraction_of_plain'] >= TARGETS['retrieval_fraction'])} |"),
        (f"| retrieval vs the matrix-product ceiling (users/s) | {rt['ours_users_per_s']:,.0f} | "
         f"{rt['matmul_ceiling_users_per_s']:,.0f} (best sgemm here, {rt['sgemm_gflops']:,.0f} GFLOP/s, "
         f"no top-k) | {rt['ours_users_per_s'] / rt['matmul_ceiling_users_per_s']:.0%} | | |"),
        (f"| Redis load vs ceiling (keys/s) | {r['ours_keys_per_s']:,.0f} | "
         f"{r['redis_benchmark']['keys_per_s']:,.0f} (redis-benchmark -P 64 JSON.SET) | "
         f"{r['fraction_of_redis_benchmark']:.0%} | >= 50% | "
         f"{ok(r['fraction_of_redis_benchmark'] >= TARGETS['redis_fraction'])} |"),
        (f"| Redis load vs notebook (keys/s) | {r['ours_keys_per_s']:,.0f} | {r['notebook_keys_per_s']:,.0f} "
         f"(one awaited JSON.SET per key) | {r['ratio_to_notebook']:,.1f}x | >= 10x | "
         f"{ok(r['ratio_to_notebook'] >= TARGETS['redis_ratio'])} |"),
        (f"| peak RSS of scoring (MB) | {m['large']['peak_rss_mb']:,.0f} ({m['large']['users']:,} users) | "
         f"{m['small']['peak_rss_mb']:,.0f} ({m['small']['users']:,} users) | {m['ratio']:.2f}x | <= 1.5x | "
         f"{ok(m['ratio'] <= TARGETS['memory_ratio'])} |"),
    ]
    e2e = results["end_to_end"]
    rows.append(f"\nEnd to end, {users:,} users x {items:,} items: scoring {e2e['score_seconds']:,.0f}s + "
                f"load {e2e['load_seconds']:,.0f}s = {e2e['total_seconds']:,.0f}s. "
                f"Notebook lists reproduced by ours: {s['agreement']['identical_lists']}/"
                f"{s['agreement']['users_compared']}.")
    return "\n".join(rows)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    quiet_tensorflow()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.run_dir:
        # A copy of the run's user side (items and models linked), so scoring never touches the run itself.
        source = RunPaths(Path(args.run_dir).resolve())
        import pyarrow.parquet as pq

        main_run = subset_run(source, work / "main_run", pq.read_metadata(source.user_features).num_rows)
    elif args.resume and RunPaths(work / "scale_run").dlrm.exists():
        main_run = RunPaths(work / "scale_run")
    else:
        main_run = build_scale_run(work / "scale_run", args.users, args.items, seed=args.seed)
    import pyarrow.parquet as pq

    num_users = pq.read_metadata(main_run.user_features).num_rows
    num_items = pq.read_metadata(main_run.item_features).num_rows
    small_users = min(args.memory_users, num_users)
    def subset(name: str, users: int) -> RunPaths:
        # --resume reuses a subset an interrupted run already made (its models are links to the main run's).
        done = RunPaths(work / name)
        if args.resume and done.user_features.exists() and pq.read_metadata(done.user_features).num_rows == users:
            return done
        return subset_run(main_run, work / name, users)

    small_run = subset("small_run", small_users)
    results: dict[str, Any] = {"inputs": {"users": num_users, "items": num_items, "synthetic": not args.run_dir,
                                          "cpu_count": os.cpu_count(), "chunk_users": args.chunk_users,
                                          "rank_batch_rows": args.rank_batch_rows}}

    out = Path(args.out)

    def checkpoint() -> None:
        # Partial results survive a long run that is interrupted (and --resume picks them up).
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))

    def child(run: RunPaths, top_k: int, top_n: int, name: str) -> dict[str, Any]:
        target = work / f"score_{name}.json"
        if args.resume and target.exists():
            return json.loads(target.read_text())
        return run_scoring_child(run.root, top_k, top_n, args.chunk_users, args.rank_batch_rows, target)

    # Scoring at the notebook's K and at ours, each a real `score` run in a child process (the child's
    # peak RSS is the memory figure); the K=20 run's lists are compared with the notebook method's.
    # The longest run (all users at our K) goes last, so everything else is measured by then.
    k20_users = min(args.k20_users or num_users, num_users)
    k20_run = subset("k20_run", k20_users)
    ours_k20 = child(k20_run, NOTEBOOK_K, NOTEBOOK_K, "k20")
    small = child(small_run, args.top_k, args.top_n, "small")
    notebook = measure_notebook_scoring(main_run, args.notebook_users)
    agreement = compare_lists(notebook.pop("lists"), k20_run.recommendations)
    results["scoring"] = {"notebook": notebook, "ours_k20": ours_k20, "agreement": agreement,
                          "ratio_k20": round(ours_k20["users_per_s"] / notebook["users_per_s"], 1)}
    results["ranking"] = measure_ranking(main_run, args.ranking_users, args.top_k, args.rank_batch_rows)
    results["retrieval"] = measure_retrieval(main_run, args.retrieval_users, args.top_k, args.chunk_users)
    results["memory"] = {"small": {"users": small_users, "peak_rss_mb": small["peak_rss_mb"]}}
    checkpoint()

    ours_default = child(main_run, args.top_k, args.top_n, "default")
    results["scoring"]["ours_default"] = ours_default
    results["scoring"]["ratio_default"] = round(ours_default["users_per_s"] / notebook["users_per_s"], 1)
    results["memory"]["large"] = {"users": num_users, "peak_rss_mb": ours_default["peak_rss_mb"]}
    results["memory"]["ratio"] = round(ours_default["peak_rss_mb"] / small["peak_rss_mb"], 3)
    checkpoint()

    server = None
    url = args.redis_url
    if not url:
        from .local_redis import LocalRedis, free_port

        server = LocalRedis(free_port(), work / "redis").start()
        url = server.url
    try:
        results["redis"] = measure_redis(url, main_run.recommendations, args.notebook_keys,
                                         args.redis_benchmark_requests, args.pipeline_chunk_keys)
    finally:
        if server is not None:
            server.stop()
    results["end_to_end"] = {
        "score_seconds": ours_default["seconds"],
        "load_seconds": results["redis"]["ours_load_seconds"],
        "total_seconds": round(ours_default["seconds"] + results["redis"]["ours_load_seconds"], 1),
    }
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="synthetic users (all are scored)")
    parser.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    parser.add_argument("--run-dir", help="benchmark this pipeline run's models and tables instead of synthetic ones")
    parser.add_argument("--work-dir", default="bench_work", help="synthetic inputs and outputs go here")
    parser.add_argument("--out", default="bench.json", help="the JSON results file")
    parser.add_argument("--redis-url", default="", help="Redis with RedisJSON (default: start a local one)")
    parser.add_argument("--memory-users", type=int, default=100_000, help="the smaller user count for peak memory")
    parser.add_argument("--k20-users", type=int, default=0,
                        help="users our stage scores at the notebook's K=20 (default: all; the rate is per user)")
    parser.add_argument("--notebook-users", type=int, default=200, help="users scored by the notebook's method")
    parser.add_argument("--notebook-keys", type=int, default=20_000, help="keys written by the notebook's method")
    parser.add_argument("--ranking-users", type=int, default=4096, help="users whose K pairs the ranking test scores")
    parser.add_argument("--retrieval-users", type=int, default=16_384, help="users in the retrieval comparison")
    parser.add_argument("--redis-benchmark-requests", type=int, default=1_000_000)
    parser.add_argument("--top-k", type=int, default=defaults.scoring.top_k)
    parser.add_argument("--top-n", type=int, default=defaults.scoring.top_n)
    parser.add_argument("--chunk-users", type=int, default=defaults.scoring.user_chunk_size)
    parser.add_argument("--rank-batch-rows", type=int, default=defaults.scoring.rank_batch_rows)
    parser.add_argument("--pipeline-chunk-keys", type=int, default=defaults.store.pipeline_chunk_keys)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resume", action="store_true",
                        help="reuse the work directory's inputs and finished scoring runs from an interrupted run")
    parser.add_argument("--child-score", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child_score:
        _child_score(Path(args.child_score), args.top_k, args.top_n, args.chunk_users, args.rank_batch_rows,
                     Path(args.child_out))
        return 0
    results = run_bench(args)
    table = markdown_table(results)
    results["markdown"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(table)
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
