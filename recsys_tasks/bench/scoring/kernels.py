"""Ranking and retrieval kernels against their plain references and the machine's matrix-product ceiling."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...paths import RunPaths
from ...runtime import quiet_tensorflow
from ..common import BenchError, _rate


def measure_ranking(paths: RunPaths, sample_users: int, k: int, batch_rows: int) -> dict[str, Any]:
    """Our ranking step (the DLRM split, and the whole model per pair) vs batched ``model.predict``, same pairs.

    Also checks that the three agree: scores within float rounding, and the same top lists.
    """
    from ...scoring.candidates import retrieve
    from ...scoring.catalog import load_catalog
    from ...scoring.ranker import FactoredRanker, make_ranker, pair_features, rank_pairs
    from ...training.ranking import load_dlrm

    catalog = load_catalog(paths)
    model = load_dlrm(paths.dlrm)
    rows = np.arange(min(sample_users, catalog.num_users))
    candidates, _ = retrieve(catalog, rows, k)
    features = pair_features(catalog, rows, candidates)
    pairs = len(next(iter(features.values())))
    columns = {c: v.reshape(-1, 1) for c, v in features.items()}
    warm = {c: v[: min(batch_rows, pairs)] for c, v in features.items()}
    split = make_ranker(model, catalog, batch_rows)
    if not isinstance(split, FactoredRanker):
        raise BenchError("the DLRM could not be split (see the warning above): nothing to compare")
    warm_users = rows[: max(1, min(len(rows), batch_rows // max(k, 1)))]
    split(warm_users, candidates[: len(warm_users)])
    # The same split with its per-pair step in TensorFlow (what a GPU runs), when ours is the CPU kernel.
    split_tf = make_ranker(model, catalog, batch_rows, pair_kernel="tensorflow") if split.pair_kernel != "tensorflow" \
        else None
    if split_tf is not None:
        split_tf(warm_users, candidates[: len(warm_users)])
    rank_pairs(model, warm, batch_rows)
    model.predict({c: v.reshape(-1, 1) for c, v in warm.items()}, batch_size=batch_rows, verbose=0)
    started = time.perf_counter()
    factored = split(rows, candidates).reshape(-1)
    factored_s = time.perf_counter() - started
    tensorflow_s = None
    if split_tf is not None:
        started = time.perf_counter()
        split_tf(rows, candidates)
        tensorflow_s = time.perf_counter() - started
    started = time.perf_counter()
    whole = rank_pairs(model, features, batch_rows)
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    plain = np.asarray(model.predict(columns, batch_size=batch_rows, verbose=0)).reshape(-1)
    plain_s = time.perf_counter() - started
    if not np.allclose(whole, plain, rtol=1e-4, atol=1e-5):
        raise BenchError("our whole-model ranking step and model.predict disagree on the same pairs")
    difference = float(np.max(np.abs(factored - plain))) if pairs else 0.0
    if difference > 1e-4:
        raise BenchError(f"the split DLRM and model.predict disagree by up to {difference:.2e} on the same pairs")
    tensorflow = {} if tensorflow_s is None else {"tensorflow_pairs_per_s": _rate(pairs, tensorflow_s),
                                                  "tensorflow_fraction_of_predict": round(plain_s / tensorflow_s, 3)}
    return {"pairs": pairs, "batch_rows": batch_rows, "k": k, "pair_kernel": split.pair_kernel, **tensorflow,
            "ours_pairs_per_s": _rate(pairs, factored_s), "whole_model_pairs_per_s": _rate(pairs, whole_s),
            "predict_pairs_per_s": _rate(pairs, plain_s), "fraction_of_predict": round(plain_s / factored_s, 3),
            "whole_model_fraction_of_predict": round(plain_s / whole_s, 3),
            "max_abs_difference_vs_predict": difference,
            "identical_top_lists": _same_top_lists(factored, plain, candidates.shape, 20)}


def _same_top_lists(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], top_n: int) -> dict[str, int]:
    """Users whose top-N order by ``a`` equals that by ``b`` (positions where scores tie within 1e-6 forgiven)."""
    a, b = a.reshape(shape), b.reshape(shape)
    order_a = np.argsort(-a, axis=1, kind="stable")[:, :top_n]
    order_b = np.argsort(-b, axis=1, kind="stable")[:, :top_n]
    same = (order_a == order_b) | np.isclose(np.take_along_axis(b, order_a, 1), np.take_along_axis(b, order_b, 1),
                                             rtol=0, atol=1e-6)
    return {"users": int(shape[0]), "identical": int(same.all(axis=1).sum())}


def measure_retrieval(paths: RunPaths, sample_users: int, k: int, chunk_users: int) -> dict[str, Any]:
    """Our exact candidate generation (seen items left out) vs plain matmul + top-k (nothing masked).

    Also the kernel's matrix-product ceiling: the same tiles, BLAS (scipy's OpenBLAS, one thread per
    numba thread) and thread count as the kernel, doing only the matrix products (no top-k, no
    masking). No exact method built on that BLAS retrieves faster than that on this machine.
    """
    quiet_tensorflow()
    import tensorflow as tf

    from ...scoring.candidates import retrieve
    from ...scoring.catalog import load_catalog
    from ...scoring.kernels.topk import kernel_threads, matmul_only
    from ...scoring.stage import iter_user_chunks

    catalog = load_catalog(paths)
    count = min(sample_users, catalog.num_users)
    chunks = list(iter_user_chunks(count, chunk_users))

    def plain(rows: np.ndarray) -> Any:
        scores = tf.matmul(catalog.user_embeddings[rows], catalog.item_embeddings, transpose_b=True)
        top_scores, top_rows = tf.math.top_k(scores, k=min(k, catalog.num_items))
        return top_scores.numpy(), top_rows.numpy()

    def ceiling(rows: np.ndarray) -> None:
        matmul_only(catalog.user_embeddings[rows], catalog.packed_items)

    retrieve(catalog, chunks[0], k)
    plain(chunks[0])
    ceiling(chunks[0])
    timings = {}
    for name, fn in (("ours", lambda r: retrieve(catalog, r, k)), ("plain", plain), ("ceiling", ceiling)):
        started = time.perf_counter()
        for rows in chunks:
            fn(rows)
        timings[name] = time.perf_counter() - started
    dim = catalog.item_embeddings.shape[1]
    padded_items = catalog.packed_items.shape[0] * catalog.packed_items.shape[2]
    return {"users": count, "items": catalog.num_items, "k": k, "chunk_users": chunk_users,
            "ours_users_per_s": _rate(count, timings["ours"]),
            "plain_users_per_s": _rate(count, timings["plain"]),
            "fraction_of_plain": round(timings["plain"] / timings["ours"], 3),
            "sgemm_gflops": round(2 * count * dim * padded_items / timings["ceiling"] / 1e9, 1),
            "matmul_ceiling_users_per_s": _rate(count, timings["ceiling"]),
            "fraction_of_ceiling": round(timings["ceiling"] / timings["ours"], 3),
            "kernel_threads": kernel_threads()}
