"""Approximate retrieval (FAISS ``ivf`` / ``hnsw``) against exact: speed, candidate recall, final-list overlap.

On the run's own embeddings (trained ones with ``--run-dir``): for each index kind, the time to build it,
retrieval users/s on a sample of users beside the exact CPU kernel's on the same users, candidate recall
(the share of the exact top-K candidates the index returns) and the overlap of the final top-N lists
after DLRM ranking. ``measure_large_catalog`` does the retrieval part on a synthetic catalog of any size
(1M items by default) whose vectors have the planted generator's structure (categories, brands, noise).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...config import Config, ScoringConfig
from ...paths import RunPaths
from ...runtime import get_logger
from ..common import _rate

log = get_logger("bench")

KINDS = ("ivf", "hnsw")


def _timed_retrieval(catalog: Any, rows: np.ndarray, k: int, kernel: str, chunk_users: int) -> tuple[np.ndarray, float]:
    from ...scoring.candidates import retrieve

    retrieve(catalog, rows[: min(len(rows), 64)], k, kernel)  # compile / warm caches outside the timing
    started = time.perf_counter()
    parts = [retrieve(catalog, rows[s:s + chunk_users], k, kernel)[0] for s in range(0, len(rows), chunk_users)]
    return np.concatenate(parts), time.perf_counter() - started


def candidate_recall(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean over users of |approximate top-K & exact top-K| / |exact top-K| (padding -1 ignored)."""
    shares = []
    for got, want in zip(approximate, exact):
        want = want[want >= 0]
        if len(want):
            shares.append(len(np.intersect1d(got[got >= 0], want)) / len(want))
    return float(np.mean(shares)) if shares else 1.0


def list_overlap(ranker: Any, rows: np.ndarray, approximate: np.ndarray, exact: np.ndarray, top_n: int) -> float:
    """Mean share of the exact pipeline's final top-N that the approximate pipeline's top-N also holds."""
    def top(candidates: np.ndarray) -> np.ndarray:
        scores = ranker(rows, candidates)
        scores[candidates < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]
        return np.take_along_axis(candidates, order, axis=1)

    ours, reference = top(approximate), top(exact)
    shares = [len(np.intersect1d(a[a >= 0], b[b >= 0])) / max(1, int((b >= 0).sum())) for a, b in zip(ours, reference)]
    return float(np.mean(shares))


def list_overlap_files(ours: Any, reference: Any) -> dict[str, Any]:
    """Mean share of each user's reference list (a recommendations directory) that our list also holds."""
    import pyarrow.parquet as pq

    def lists(directory: Any) -> dict[int, list[int]]:
        table = pq.read_table(directory, columns=["user_id", "recommendations"]).to_pydict()
        return dict(zip(table["user_id"], table["recommendations"]))

    mine, theirs = lists(ours), lists(reference)
    shares = [len(set(mine.get(user, [])) & set(items)) / len(items) for user, items in theirs.items() if items]
    return {"users": len(shares), "mean_overlap": round(float(np.mean(shares)), 4) if shares else 1.0,
            "identical_sets": int(sum(s == 1.0 for s in shares))}


def _index_settings(scoring: ScoringConfig) -> dict[str, Any]:
    return {"ivf_lists": scoring.ivf_lists, "ivf_probe": scoring.ivf_probe, "hnsw_m": scoring.hnsw_m,
            "hnsw_ef_construction": scoring.hnsw_ef_construction, "hnsw_ef_search": scoring.hnsw_ef_search,
            "ann_threads": scoring.ann_threads}


def measure_approximate(paths: RunPaths, sample_users: int, top_ks: tuple[int, ...], top_n: int,
                        chunk_users: int, rank_batch_rows: int, scoring: ScoringConfig | None = None) -> dict[str, Any]:
    """Each index kind vs exact on the same users: build time, users/s, candidate recall, final top-N overlap."""
    from ...scoring.candidates import attach_index
    from ...scoring.catalog import load_catalog
    from ...scoring.ranker import make_ranker
    from ...training.ranking import load_dlrm

    scoring = scoring or Config().scoring
    top_ks = tuple(dict.fromkeys(top_ks))  # K=20 and the default K may be the same
    catalog = load_catalog(paths)
    # Without a ranking model (a run stopped after fit_retrieval) only the candidates are compared.
    ranker = make_ranker(load_dlrm(paths.dlrm), catalog, rank_batch_rows) if paths.dlrm.exists() else None
    rows = np.arange(min(sample_users, catalog.num_users))
    results: dict[str, Any] = {"users": len(rows), "items": catalog.num_items, "top_n": top_n,
                               "settings": _index_settings(scoring), "by_k": {}}
    exact = {}
    for k in top_ks:
        candidates, seconds = _timed_retrieval(catalog, rows, k, "tiled", chunk_users)
        exact[k] = candidates
        results["by_k"][str(k)] = {"exact_users_per_s": _rate(len(rows), seconds)}
    for kind in KINDS:
        started = time.perf_counter()
        attach_index(catalog, kind, scoring)
        build_s = time.perf_counter() - started
        for k in top_ks:
            candidates, seconds = _timed_retrieval(catalog, rows, k, kind, chunk_users)
            entry = results["by_k"][str(k)]
            n = min(top_n, k)
            entry[kind] = {
                "build_seconds": round(build_s, 2),
                "users_per_s": _rate(len(rows), seconds),
                "speedup_vs_exact": round(len(rows) / seconds / entry["exact_users_per_s"], 2),
                "candidate_recall": round(candidate_recall(candidates, exact[k]), 4),
                "top_n_overlap": round(list_overlap(ranker, rows, candidates, exact[k], n), 4) if ranker else None,
                "top_n": n,
            }
            log.info("approximate %s K=%d: %s", kind, k, entry[kind])
        # The search-time parameter swept on the same trained embeddings (how the defaults were chosen).
        for k in top_ks:
            entry = results["by_k"][str(k)]
            entry[kind]["sweep"] = sweep_search(catalog, rows, kind, k, exact[k], entry["exact_users_per_s"],
                                                chunk_users)
    return results


def planted_like_vectors(rng: np.random.Generator, count: int, centers: np.ndarray, dim: int) -> np.ndarray:
    """Vectors with the planted generator's shape: a brand centre plus noise, scaled like tower outputs."""
    picked = centers[rng.integers(0, len(centers), count)]
    return ((picked + 0.6 * rng.standard_normal((count, dim), dtype=np.float32)) / np.sqrt(dim)).astype(np.float32)


def measure_large_catalog(items: int, sample_users: int, k: int, chunk_users: int, seed: int = 11,
                          scoring: ScoringConfig | None = None, dim: int = 64,
                          kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Retrieval only, on a synthetic ``items``-item catalog: exact kernel vs each index kind."""
    from ...scoring.candidates import attach_index
    from ...scoring.catalog import Catalog

    scoring = scoring or Config().scoring
    rng = np.random.default_rng(seed)
    brands = rng.standard_normal((100, dim), dtype=np.float32)
    started = time.perf_counter()
    item_vectors = planted_like_vectors(rng, items, brands, dim)
    user_vectors = planted_like_vectors(rng, sample_users, brands, dim)
    # The popularity_bias column as exported: log Q(item) on the item side, 1.0 on the user side.
    popularity = rng.zipf(1.6, items).astype(np.float64)
    item_vectors = np.hstack([item_vectors, np.log(popularity / popularity.sum())[:, None].astype(np.float32)])
    user_vectors = np.hstack([user_vectors, np.ones((sample_users, 1), dtype=np.float32)])
    seen = np.sort(rng.integers(0, items, (sample_users, 3)), axis=1)
    indptr = np.arange(0, 3 * sample_users + 1, 3, dtype=np.int64)
    catalog = Catalog({}, {}, user_vectors, item_vectors, indptr, seen.reshape(-1).astype(np.int64))
    log.info("synthetic %d-item catalog in %.1fs", items, time.perf_counter() - started)
    rows = np.arange(sample_users)
    exact, seconds = _timed_retrieval(catalog, rows, k, "tiled", chunk_users)
    results: dict[str, Any] = {"items": items, "users": sample_users, "k": k, "settings": _index_settings(scoring),
                               "exact_users_per_s": _rate(sample_users, seconds)}
    for kind in kinds:
        started = time.perf_counter()
        attach_index(catalog, kind, scoring)
        build_s = time.perf_counter() - started
        candidates, seconds = _timed_retrieval(catalog, rows, k, kind, chunk_users)
        results[kind] = {"build_seconds": round(build_s, 1), "users_per_s": _rate(sample_users, seconds),
                         "speedup_vs_exact": round(sample_users / seconds / results["exact_users_per_s"], 2),
                         "candidate_recall": round(candidate_recall(candidates, exact), 4)}
        log.info("large catalog %s: %s", kind, results[kind])
        # The search-time parameter swept on the same index (how the defaults were chosen).
        results[kind]["sweep"] = sweep_search(catalog, rows, kind, k, exact, results["exact_users_per_s"], chunk_users)
        catalog.ann_index = None
    return results


SWEEP = {"ivf": (16, 32, 64, 128), "hnsw": (64, 128, 256)}
"""Search-time values swept on each index (the defaults are ``scoring.ivf_probe`` and ``hnsw_ef_search``)."""
SWEEP_PARAMETER = {"ivf": "ivf_probe", "hnsw": "hnsw_ef_search"}


def sweep_search(catalog: Any, rows: np.ndarray, kind: str, k: int, exact: np.ndarray, exact_users_per_s: float,
                 chunk_users: int) -> dict[str, Any]:
    """Users/s, speedup over exact and candidate recall at each ``SWEEP`` value of the catalog's index.

    Leaves the index at the last value swept.
    """
    points = []
    for value in SWEEP[kind]:
        setattr_search(catalog.ann_index, kind, value)
        candidates, seconds = _timed_retrieval(catalog, rows, k, kind, chunk_users)
        points.append({"value": value, "users_per_s": _rate(len(rows), seconds),
                       "speedup_vs_exact": round(len(rows) / seconds / exact_users_per_s, 2),
                       "candidate_recall": round(candidate_recall(candidates, exact), 4)})
        log.info("%s K=%d %s=%d: %s", kind, k, SWEEP_PARAMETER[kind], value, points[-1])
    return {"parameter": SWEEP_PARAMETER[kind], "points": points}


def setattr_search(index: Any, kind: str, value: int) -> None:
    if kind == "ivf":
        index.nprobe = min(value, index.nlist)
    else:
        index.hnsw.efSearch = value
