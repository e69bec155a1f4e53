"""Exact top-k unseen items by dot product on the CPU, without a chunk-sized score matrix.

The plain way (one matrix product into a ``[users, items]`` matrix, then top-k) writes and re-reads
400 kB per user for a 100k-item catalog, so on a CPU it is bound by memory traffic and by top-k.
Here each thread takes a tile of users, multiplies it by one cache-sized tile of items at a time
(single-threaded BLAS: ``np.dot`` inside numba calls scipy's ``sgemm``) and folds that tile into each
user's running top-k while it is still in cache, skipping the user's seen items as they come. The
answer is exactly the top-k of the masked scores, in ``tf.math.top_k``'s order (score descending,
lower item row first among equal scores); only the matrix product's rounding can differ from
TensorFlow's in the last bit. :mod:`recsys_tasks.scoring.stage` uses this on the CPU and TensorFlow on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numba import njit, prange

ITEM_TILE = 1024
"""Items per tile: a 512-user tile of scores is 2 MB, cache-resident while it is folded."""
USER_TILE = 512
"""Users per thread task; 4096 users give each of two cores several tasks to balance."""
_SCAN_BLOCK = 16
"""Scores compared at once against a user's current k-th best (one vector max, usually no branch)."""


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """BLAS limited to one thread while numba kernels run: their threads come from numba, one per core,
    and a BLAS call (``np.dot`` in numba calls scipy's ``sgemm``) that started its own would oversubscribe."""
    import scipy.linalg.cython_blas  # noqa: F401  (loaded before the limit below can see it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def pack_items(item_embeddings: np.ndarray, tile: int = ITEM_TILE) -> np.ndarray:
    """Item embeddings as ``[tiles, dim, tile]`` (each tile transposed and contiguous, zero-padded)."""
    items, dim = item_embeddings.shape
    tiles = -(-items // tile)
    padded = np.zeros((tiles * tile, dim), dtype=np.float32)
    padded[:items] = item_embeddings
    return np.ascontiguousarray(padded.reshape(tiles, tile, dim).transpose(0, 2, 1))


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _is_seen(seen: np.ndarray, item: int) -> bool:
    low, high = 0, len(seen)
    while low < high:
        middle = (low + high) // 2
        if seen[middle] < item:
            low = middle + 1
        else:
            high = middle
    return low < len(seen) and seen[low] == item


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _fold_row(scores: np.ndarray, valid: int, offset: int, seen: np.ndarray,
              best_scores: np.ndarray, best_items: np.ndarray) -> None:
    """Fold one user's scores of one item tile into its running top-k (kept sorted, best first)."""
    k = len(best_scores)
    threshold = best_scores[k - 1]
    for start in range(0, valid, _SCAN_BLOCK):
        stop = min(start + _SCAN_BLOCK, valid)
        block_max = scores[start]
        for j in range(start + 1, stop):
            block_max = max(block_max, scores[j])
        if not block_max > threshold:
            continue
        for j in range(start, stop):
            value = scores[j]
            # Strictly greater: items arrive in ascending order, so an equal score ranks after.
            if value > threshold and not _is_seen(seen, offset + j):
                position = k - 1
                while position > 0 and best_scores[position - 1] < value:
                    best_scores[position] = best_scores[position - 1]
                    best_items[position] = best_items[position - 1]
                    position -= 1
                best_scores[position] = value
                best_items[position] = offset + j
                threshold = best_scores[k - 1]


@njit(parallel=True, cache=True, nogil=True)
def _top_k_tiles(queries: np.ndarray, packed: np.ndarray, num_items: int, seen_indptr: np.ndarray,
                 seen_items: np.ndarray, catalog_rows: np.ndarray, user_tile: int,
                 best_scores: np.ndarray, best_items: np.ndarray) -> None:
    users = queries.shape[0]
    tiles, _, width = packed.shape
    for task in prange((users + user_tile - 1) // user_tile):
        first = task * user_tile
        last = min(first + user_tile, users)
        scores = np.empty((last - first, width), dtype=np.float32)
        block = queries[first:last]
        for tile in range(tiles):
            np.dot(block, packed[tile], scores)
            offset = tile * width
            valid = min(width, num_items - offset)
            for q in range(last - first):
                row = catalog_rows[first + q]
                seen = seen_items[seen_indptr[row]:seen_indptr[row + 1]]
                _fold_row(scores[q], valid, offset, seen, best_scores[first + q], best_items[first + q])


def top_k_unseen(queries: np.ndarray, packed_items: np.ndarray, num_items: int, k: int,
                 seen_indptr: np.ndarray, seen_items: np.ndarray, catalog_rows: np.ndarray,
                 user_tile: int = USER_TILE) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item rows by ``queries @ items.T``, each query's seen items left out.

    ``queries`` are the user embeddings of ``catalog_rows`` (row i of the one is user row i of the
    other); ``seen_items[seen_indptr[u]:seen_indptr[u + 1]]`` are user row u's seen item rows, sorted.
    Returns ``(item_rows, scores)``, both ``[len(queries), k]``; where fewer than k unseen items
    exist the tail holds item row -1 and score -inf.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_items = np.full((len(queries), k), -1, dtype=np.int64)
    if len(queries) == 0 or k == 0:
        return best_items, best_scores
    with single_thread_blas():
        _top_k_tiles(queries, packed_items, num_items, seen_indptr, seen_items,
                     np.asarray(catalog_rows, dtype=np.int64), user_tile, best_scores, best_items)
    return best_items, best_scores


@njit(parallel=True, cache=True, nogil=True)
def _matmul_tiles(queries: np.ndarray, packed: np.ndarray, user_tile: int) -> float:
    users = queries.shape[0]
    tiles, _, width = packed.shape
    total = 0.0
    for task in prange((users + user_tile - 1) // user_tile):
        first = task * user_tile
        last = min(first + user_tile, users)
        scores = np.empty((last - first, width), dtype=np.float32)
        block = queries[first:last]
        for tile in range(tiles):
            np.dot(block, packed[tile], scores)
        total += scores[0, 0]
    return total


def matmul_only(queries: np.ndarray, packed_items: np.ndarray, user_tile: int = USER_TILE) -> None:
    """The kernel's matrix products alone (same tiles, BLAS and threads, no top-k): the bench's ceiling."""
    with single_thread_blas():
        _matmul_tiles(np.ascontiguousarray(queries, dtype=np.float32), packed_items, user_tile)


def kernel_threads() -> dict[str, object]:
    """What the kernel runs on: numba's thread count and layer, and the BLAS its ``np.dot`` calls."""
    import numba
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas" and "scipy" in i.get("filepath", "")]
    info = blas[0] if blas else {}
    return {"numba_threads": numba.get_num_threads(), "numba_threading_layer": numba.config.THREADING_LAYER,
            "blas": f"{info.get('internal_api', '?')} {info.get('version', '')} ({info.get('architecture', '')}), "
                    "1 thread per numba thread"}
