"""Ranking and retrieval kernels against their plain references and the machine's matrix-product ceiling."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..common import quiet_tensorflow
from ..paths import RunPaths
from .common import BenchError, _rate


def measure_ranking(paths: RunPaths, sample_users: int, k: int, batch_rows: int) -> dict[str, Any]:
    """Our ranking step vs plain batched ``model.predict`` of the same DLRM on the same pairs."""
    from ..ranking import load_dlrm
    from ..scoring import load_catalog, pair_features, rank_pairs, retrieve

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

    from ..scoring import iter_user_chunks, load_catalog, retrieve

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

