"""The classic recommenders the published lists are judged against, each tuned on validation only:
popularity (all time and time-decayed), item-kNN (cosine), EASE (closed form, numpy) and, with the ``peers``
extra, implicit's ALS and BPR.

Every peer but the time-decayed popularity (which needs each click's age) fits a binary user x item click
matrix and returns a scorer ``user rows -> item scores``;
ranking and exclusion of already-rated items are shared (:func:`top_n`), so every peer excludes the same.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]


def popularity(clicks: Any) -> Scorer:
    counts = np.asarray(clicks.sum(axis=0), dtype=np.float64).ravel()
    return lambda rows: np.tile(counts, (len(rows), 1))


def recent_popularity(click_ages: tuple[np.ndarray, np.ndarray, int], half_life_days: float) -> Scorer:
    """Clicks weighted by ``0.5 ** (days before the last day / half_life_days)``: ``click_ages`` is each click's
    item column, its age in days and the number of items (the pipeline's time-decayed prior, as a peer)."""
    columns, ages, num_items = click_ages
    counts = np.bincount(columns, weights=np.power(0.5, ages / half_life_days), minlength=num_items)
    return lambda rows: np.tile(counts, (len(rows), 1))


def item_knn(clicks: Any, neighbours: int) -> Scorer:
    """Cosine similarity between item click columns, each item keeping its ``neighbours`` most similar."""
    matrix = clicks.astype(np.float64)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel())
    similarity = (matrix.T @ matrix).toarray() / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(similarity, 0.0)
    if neighbours < similarity.shape[0]:
        weakest = np.argpartition(-similarity, neighbours, axis=0)[neighbours:]
        np.put_along_axis(similarity, weakest, 0.0, axis=0)
    return lambda rows: np.asarray(matrix[rows] @ similarity)


def ease(clicks: Any, l2: float) -> Scorer:
    """Steck's EASE^R: ``B = I - P diagMat(1/diag(P))`` with ``P = (X'X + l2 I)^-1``, zero diagonal."""
    matrix = clicks.astype(np.float64)
    gram = (matrix.T @ matrix).toarray()
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return lambda rows: np.asarray(matrix[rows] @ weights)


def _factor_scorer(model: Any) -> Scorer:
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda rows: users[rows] @ items.T


def _fit_single_thread(make: Callable[[], Any], clicks: Any) -> Scorer:
    # implicit's own loops are the parallel part; a BLAS thread pool under them only oversubscribes (implicit
    # warns when it sees one at construction, hence both inside the limit).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        model = make()
        model.fit(clicks.tocsr().astype(np.float32), show_progress=False)
    return _factor_scorer(model)


def als(clicks: Any, factors: int, regularization: float, alpha: float, iterations: int, seed: int = 42) -> Scorer:
    from implicit.als import AlternatingLeastSquares

    return _fit_single_thread(lambda: AlternatingLeastSquares(
        factors=factors, regularization=regularization, alpha=alpha, iterations=iterations, random_state=seed,
        num_threads=1), clicks)


def bpr(clicks: Any, factors: int, learning_rate: float, regularization: float, iterations: int,
        seed: int = 42) -> Scorer:
    from implicit.bpr import BayesianPersonalizedRanking

    return _fit_single_thread(lambda: BayesianPersonalizedRanking(
        factors=factors, learning_rate=learning_rate, regularization=regularization, iterations=iterations,
        random_state=seed, num_threads=1), clicks)


def _grid(**axes: list[Any]) -> list[dict[str, Any]]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def peer_grids(quick: bool) -> dict[str, tuple[Callable[..., Scorer], list[dict[str, Any]]]]:
    """Each peer's fit function and its (small) grid; ``quick`` is the test suite's smaller variant."""
    grids: dict[str, tuple[Callable[..., Scorer], list[dict[str, Any]]]] = {
        "popularity": (popularity, [{}]),
        "recent_popularity": (recent_popularity, _grid(half_life_days=[7.0, 28.0] if quick else
                                                       [3.0, 7.0, 14.0, 28.0, 56.0])),
        "item_knn": (item_knn, _grid(neighbours=[20, 100] if quick else [10, 20, 50, 100, 200, 400])),
        "ease": (ease, _grid(l2=[50.0, 500.0] if quick else [10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0])),
    }
    if implicit_available():
        grids["als"] = (als, _grid(factors=[32] if quick else [16, 32, 64, 128],
                                   regularization=[0.05] if quick else [0.01, 0.1, 1.0],
                                   alpha=[1.0, 10.0] if quick else [1.0, 5.0, 20.0],
                                   iterations=[10] if quick else [15]))
        grids["bpr"] = (bpr, _grid(factors=[32] if quick else [32, 64, 128],
                                   learning_rate=[0.05] if quick else [0.01, 0.05],
                                   regularization=[0.01] if quick else [0.001, 0.01],
                                   iterations=[50] if quick else [100]))
    return grids


def implicit_available() -> bool:
    """The ``peers`` extra (``implicit``) is installed."""
    return importlib.util.find_spec("implicit") is not None


def top_n(scores: np.ndarray, exclude_indptr: np.ndarray, exclude_items: np.ndarray, rows: np.ndarray,
          n: int) -> np.ndarray:
    """The ``n`` best item columns per row of ``scores`` (user ``rows[i]``), excluded items never listed."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    for position, row in enumerate(rows):
        scores[position, exclude_items[exclude_indptr[row]:exclude_indptr[row + 1]]] = -np.inf
    best = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    # A user who rated nearly everything may have fewer than n listable items: pad with -1.
    listable = np.take_along_axis(np.isfinite(scores), best, axis=1)
    return np.where(listable, best, -1)
