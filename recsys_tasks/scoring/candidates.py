"""Top-K unseen candidates per user: the kernel ``scoring.retrieval_kernel`` names, and the dispatch to it.

Exact: :mod:`recsys_tasks.scoring.kernels.topk` on a CPU, one TensorFlow matrix product + ``tf.math.top_k`` on a GPU.
Approximate: a FAISS index of :mod:`recsys_tasks.scoring.kernels.ann`. All return the same shapes and order conventions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog


def exact_kernel() -> str:
    """The exact retrieval implementation for this device: ``tensorflow`` on a GPU, ``tiled`` on a CPU."""
    from ..runtime import device

    return "tensorflow" if device() != "cpu" else "tiled"


def retrieval_kernel(requested: str, num_items: int = 0, settings: Any = None) -> str:
    """The retrieval implementation to use for ``scoring.retrieval_kernel=requested``.

    ``auto``: :func:`exact_kernel`, except on a CPU for catalogs of ``settings.ann_min_items`` or more,
    where it is ``settings.ann_kernel`` (approximate).
    """
    if requested != "auto":
        return requested
    exact = exact_kernel()
    if exact == "tiled" and settings is not None and num_items >= settings.ann_min_items:
        return settings.ann_kernel
    return exact


def attach_index(catalog: Catalog, kind: str, settings: Any, path: Path | None = None) -> None:
    """Give the catalog its approximate index: read from ``path`` when given, else built in memory."""
    from .kernels.ann import IndexSettings, build_index, read_index, set_threads

    index_settings = IndexSettings.from_config(kind, settings)
    set_threads(settings.ann_threads)
    if path is not None:
        catalog.ann_index = read_index(path, index_settings, catalog.num_items)
    else:
        catalog.ann_index = build_index(catalog.item_embeddings, index_settings, settings.ann_threads)


def retrieve(catalog: Catalog, user_rows: np.ndarray, k: int, kernel: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Top-k unseen item rows per user by dot product over the whole catalog.

    Returns ``(item_rows, scores)``, both ``[len(user_rows), k]``; where a user has fewer than k
    unseen items the tail holds item row -1 and score -inf. The order is ``tf.math.top_k``'s
    (score descending, lower item row first among equal scores). ``kernel`` (see
    :func:`retrieval_kernel`): ``tiled`` is :mod:`recsys_tasks.scoring.kernels.topk` (CPU), ``tensorflow`` one matrix
    product, seen items set to -inf, ``tf.math.top_k`` (what a GPU does fastest). Both give the same lists.
    ``ivf`` and ``hnsw`` search ``catalog.ann_index`` (:mod:`recsys_tasks.scoring.kernels.ann`): approximate candidates,
    exact scores, the same conventions.
    """
    k = min(k, catalog.num_items)
    kernel = retrieval_kernel(kernel)
    if kernel in ("ivf", "hnsw"):
        from .kernels.ann import AnnIndexError, top_k_unseen_approximate

        if catalog.ann_index is None:
            raise AnnIndexError(f"retrieval kernel {kernel!r} needs the run's index (candidates.attach_index)")
        user_rows = np.asarray(user_rows, dtype=np.int64)
        return top_k_unseen_approximate(
            catalog.ann_index, catalog.user_embeddings[user_rows], catalog.item_embeddings, k,
            catalog.seen_indptr, catalog.seen_items, user_rows,
            lambda positions: retrieve(catalog, user_rows[positions], k, "tiled"),
        )
    if kernel == "tiled":
        from .kernels.topk import top_k_unseen

        return top_k_unseen(catalog.user_embeddings[user_rows], catalog.packed_items, catalog.num_items, k,
                            catalog.seen_indptr, catalog.seen_items, user_rows)
    import tensorflow as tf

    scores = tf.matmul(catalog.user_embeddings[user_rows], catalog.item_embeddings, transpose_b=True)
    starts = catalog.seen_indptr[user_rows]
    counts = catalog.seen_indptr[user_rows + 1] - starts
    if counts.sum():
        chunk_rows = np.repeat(np.arange(len(user_rows)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        seen = catalog.seen_items[np.repeat(starts, counts) + offsets]
        scores = tf.tensor_scatter_nd_update(
            scores, np.stack([chunk_rows, seen], axis=1), tf.fill([len(seen)], tf.constant(-np.inf, scores.dtype))
        )
    top_scores, top_rows = (t.numpy() for t in tf.math.top_k(scores, k=k, sorted=True))
    top_rows = top_rows.astype(np.int64)
    top_rows[np.isneginf(top_scores)] = -1
    return top_rows, top_scores


def with_popular_candidates(catalog: Catalog, user_rows: np.ndarray, candidate_rows: np.ndarray,
                            retrieval_scores: np.ndarray, prior: np.ndarray,
                            count: int) -> tuple[np.ndarray, np.ndarray]:
    """The retrieved candidates followed by up to ``count`` popular ones under ``prior`` that the user has not seen
    and that were not retrieved (:func:`recsys_tasks.scoring.popularity.add_popular_candidates`)."""
    from .popularity import add_popular_candidates

    return add_popular_candidates(candidate_rows, retrieval_scores, catalog.user_embeddings, catalog.item_embeddings,
                                  prior, catalog.seen_indptr, catalog.seen_items, np.asarray(user_rows), count)
