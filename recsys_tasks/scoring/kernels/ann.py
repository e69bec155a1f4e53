"""Approximate top-k retrieval with a FAISS index (``scoring.retrieval_kernel`` ``ivf`` or ``hnsw``).

One index per run over the item embeddings as exported (the ``popularity_bias`` column included: the
user side carries 1.0 in that column, so the inner product is ``<user, item> + log Q(item)``), built by
the scoring plan step and read by every shard. Maximum inner product search is turned into nearest
neighbour search by the standard reduction (items get one more coordinate ``sqrt(R^2 - |x|^2)``, queries
0; then ``|q - x|^2 = |q|^2 + R^2 - 2<q, x>``, so L2 order is inner-product order), because both IVF's
k-means cells and HNSW's graph are built for a metric; the returned scores are then the exact inner
products of the returned items.

Seen items are removed by over-fetching: each query asks for ``k`` plus the largest seen count of the
chunk's ordinary users (99% of them, at most ``k``); users left short who have more seen items are
queried again for ``k`` plus the largest such count (so at least ``k`` of what comes back is unseen), and
a user the index still leaves short (an IVF probe that reached too few items) is answered by the exact
kernel, so every user gets ``min(k, unseen items)`` candidates, as with exact retrieval.

FAISS runs on OpenMP threads: ``scoring.ann_threads`` of them (0: the cores this process may use);
queries of a chunk are spread over them, and nothing else runs during a search, so there is no
oversubscription with numba's or TensorFlow's pools.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from ...runtime import get_logger
from .topk import _is_seen

log = get_logger("score")

APPROXIMATE_KERNELS = ("ivf", "hnsw")
OUTLIER_SEEN_QUANTILE = 0.99
"""Users above this quantile of the chunk's seen counts are re-queried on their own (one heavy clicker
must not make the whole chunk fetch thousands of neighbours)."""


class AnnIndexError(RuntimeError):
    """The approximate index could not be built or read (a missing FAISS, a corrupt or foreign file)."""


@dataclass(frozen=True)
class IndexSettings:
    """The index parameters (``scoring.ivf_*`` / ``scoring.hnsw_*``), with a stable file-name tag."""

    kind: str
    ivf_lists: int
    ivf_probe: int
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int

    @classmethod
    def from_config(cls, kind: str, scoring: Any) -> IndexSettings:
        return cls(kind, scoring.ivf_lists, scoring.ivf_probe, scoring.hnsw_m, scoring.hnsw_ef_construction,
                   scoring.hnsw_ef_search)

    def lists_for(self, num_items: int) -> int:
        """IVF cells: the configured number, or (0) 4 x sqrt(items), at most items / 39 (FAISS's minimum
        training points per cell)."""
        wanted = self.ivf_lists or int(round(4 * np.sqrt(num_items)))
        return max(1, min(wanted, num_items // 39 or 1))


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - the dev venv has it (extra `ann`)
        raise AnnIndexError(
            "scoring.retrieval_kernel ivf/hnsw needs FAISS: pip install -c constraints.txt faiss-cpu "
            "(this package's extra `ann`; the GPU image ships its own FAISS build)"
        ) from exc
    return faiss


def set_threads(threads: int) -> int:
    """FAISS's OpenMP threads: ``threads``, or (0) the cores this process may run on."""
    faiss = faiss_module()
    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    faiss.omp_set_num_threads(threads)
    return threads


def _augment_items(item_embeddings: np.ndarray) -> np.ndarray:
    """Items with the extra coordinate of the inner-product -> L2 reduction."""
    vectors = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    extra = np.sqrt(np.maximum(norms.max(initial=0.0) - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]))


def _augment_queries(queries: np.ndarray) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    return np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1), dtype=np.float32)]))


def build_index(item_embeddings: np.ndarray, settings: IndexSettings, threads: int = 0) -> Any:
    """A FAISS index over the items (reduced to L2), with the search parameters already set."""
    faiss = faiss_module()
    set_threads(threads)
    vectors = _augment_items(item_embeddings)
    items, dim = vectors.shape
    started = time.perf_counter()
    if settings.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        index.add(vectors)
    elif settings.kind == "ivf":
        lists = settings.lists_for(items)
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists)
        index.cp.seed = 1234  # k-means is seeded: the same items give the same cells
        # k-means on a sample of 64 items per cell (FAISS's default takes up to 256): 4x less training for
        # a 1M-item catalog, the cells are still well placed.
        index.cp.max_points_per_centroid = 64
        index.train(vectors)
        index.add(vectors)
    else:
        raise AnnIndexError(f"unknown approximate retrieval kernel {settings.kind!r} (one of {APPROXIMATE_KERNELS})")
    configure_search(index, settings)
    log.info("%s index over %d items x %d dims built in %.1fs", settings.kind, items, dim - 1,
             time.perf_counter() - started)
    return index


def configure_search(index: Any, settings: IndexSettings) -> None:
    if settings.kind == "hnsw":
        index.hnsw.efSearch = settings.hnsw_ef_search
    else:
        index.nprobe = min(settings.ivf_probe, index.nlist)


def write_index(index: Any, path: Path) -> None:
    faiss = faiss_module()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def read_index(path: Path, settings: IndexSettings, num_items: int) -> Any:
    faiss = faiss_module()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise AnnIndexError(f"{path}: not a readable FAISS index ({exc}); plan the scoring pass again") from exc
    if index.ntotal != num_items:
        raise AnnIndexError(f"{path}: the index holds {index.ntotal} items, the catalog {num_items}; "
                          "fit_retrieval was rerun after planning, so plan and score again")
    configure_search(index, settings)
    return index


def _search(index: Any, queries: np.ndarray, fetch: int) -> np.ndarray:
    fetch = min(fetch, index.ntotal)
    _, labels = index.search(_augment_queries(queries), fetch)
    return labels


@njit(parallel=True, cache=True, nogil=True)
def _unseen_scored(labels: np.ndarray, queries: np.ndarray, items: np.ndarray, seen_indptr: np.ndarray,
                   seen_items: np.ndarray, catalog_rows: np.ndarray, best_items: np.ndarray,
                   best_scores: np.ndarray, lengths: np.ndarray) -> None:
    """Per query: the first k returned items that are not seen, their exact inner products, sorted."""
    k = best_items.shape[1]
    for q in prange(labels.shape[0]):
        row = catalog_rows[q]
        seen = seen_items[seen_indptr[row]:seen_indptr[row + 1]]
        count = 0
        for j in range(labels.shape[1]):
            item = labels[q, j]
            if item < 0 or _is_seen(seen, item):
                continue
            value = np.float32(0.0)
            for d in range(queries.shape[1]):
                value += queries[q, d] * items[item, d]
            # Insertion into the sorted prefix: score descending, lower item row first among ties.
            position = count
            while position > 0 and (best_scores[q, position - 1] < value or (
                    best_scores[q, position - 1] == value and best_items[q, position - 1] > item)):
                best_scores[q, position] = best_scores[q, position - 1]
                best_items[q, position] = best_items[q, position - 1]
                position -= 1
            best_scores[q, position] = value
            best_items[q, position] = item
            count += 1
            if count == k:
                break
        lengths[q] = count


def top_k_unseen_approximate(
    index: Any, queries: np.ndarray, item_embeddings: np.ndarray, k: int, seen_indptr: np.ndarray,
    seen_items: np.ndarray, catalog_rows: np.ndarray, exact_fallback: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k unseen item rows by inner product; same shapes and conventions as the exact kernel.

    ``exact_fallback(positions)`` returns the exact ``(item_rows, scores)`` of the queries at ``positions``
    (used only for users the index leaves short). Scores are the exact inner products of the returned
    items; rows are ordered by score descending, lower item row first among equal scores.
    """
    users = len(queries)
    num_items = len(item_embeddings)
    best_items = np.full((users, k), -1, dtype=np.int64)
    best_scores = np.full((users, k), -np.inf, dtype=np.float32)
    if users == 0 or k == 0:
        return best_items, best_scores
    starts, stops = seen_indptr[catalog_rows], seen_indptr[catalog_rows + 1]
    seen_counts = stops - starts
    wanted = np.minimum(k, num_items - seen_counts)  # what exact retrieval would return
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    items = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    rows = np.asarray(catalog_rows, dtype=np.int64)
    lengths = np.zeros(users, dtype=np.int64)
    # The first search asks everyone for k + the seen count of all but the heaviest clickers (at most 2k).
    ordinary = min(int(np.quantile(seen_counts, OUTLIER_SEEN_QUANTILE, method="higher")), k)
    _unseen_scored(_search(index, queries, k + ordinary), queries, items, seen_indptr, seen_items, rows,
                   best_items, best_scores, lengths)
    # Heavy clickers whose seen items crowded the unseen ones out: again, asking for k + their own count.
    again = np.flatnonzero((lengths < wanted) & (seen_counts > ordinary))
    if len(again):
        labels = _search(index, queries[again], k + int(seen_counts[again].max()))
        again_items, again_scores = best_items[again], best_scores[again]
        again_lengths = lengths[again]
        again_items[:], again_scores[:] = -1, -np.inf
        _unseen_scored(labels, queries[again], items, seen_indptr, seen_items, rows[again], again_items,
                       again_scores, again_lengths)
        best_items[again], best_scores[again], lengths[again] = again_items, again_scores, again_lengths
    fallback = np.flatnonzero(lengths < wanted)
    if len(fallback):
        log.info("%d of %d users left short by the index: answered by the exact kernel", len(fallback), users)
        rows, values = exact_fallback(fallback)
        best_items[fallback], best_scores[fallback] = rows, values
    return best_items, best_scores
