"""The popularity side of scoring: the blend's popularity prior (all-time or time-decayed) and the popular
candidates added to each user's retrieved ones.

Why time-decayed: what people click next follows what is being clicked now (new releases, trends) more
than what was clicked months ago. On MovieLens-100K's time split, popularity of the training days'
clicks halved every 7 days ranks the test days' clicks with recall@20 0.262 against 0.137 for all-time
popularity of the same clicks (docs/benchmark-quality.md). Which half-life, if any, is fitted with the
blend on validation (:mod:`recsys_tasks.scoring.blend`), so data without such a trend keeps the all-time prior.

Why popular candidates: the Two-Tower retrieves by taste, and a trending item can miss a user's top K.
The blend can only promote what is among the candidates, so the ``scoring.popular_candidates`` most popular
unseen items under the blend's prior are appended to each user's K retrieved ones (their retrieval score is
the same dot product; duplicates are dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALL_TIME = 0.0
"""``half_life_days`` of the all-time prior (distinct users who clicked the item in training)."""


@dataclass(frozen=True)
class ItemDays:
    """Training clicks per (item row, day): ``clicks[i]`` clicks of ``item_rows[i]`` on day ordinal ``days[i]``."""

    item_rows: np.ndarray
    days: np.ndarray
    clicks: np.ndarray

    @property
    def last_day(self) -> int:
        return int(self.days.max(initial=0))

    def decayed_clicks(self, half_life_days: float, num_items: int) -> np.ndarray:
        """Each item's clicks weighted by ``0.5 ** (days before the last training day / half_life_days)``."""
        weights = self.clicks * np.power(0.5, (self.last_day - self.days) / float(half_life_days))
        return np.bincount(self.item_rows, weights=weights, minlength=num_items)


def read_item_days(path: Path, item_raw_ids: np.ndarray, splits: tuple[str, ...] = ("train",)) -> ItemDays | None:
    """The run's ``raw/item_days.parquet`` (the days of ``splits``) on the catalog's item rows (None when the
    source has no days: planted and ``merlin`` data, or parquet without daily partitions). Items outside the
    catalog are dropped."""
    if not path.exists():
        return None
    import pandas as pd

    table = pd.read_parquet(path)
    table = table[table["split"].isin(list(splits))]
    order = np.argsort(item_raw_ids, kind="stable")
    sorted_raw = item_raw_ids[order]
    raw = table["item_id"].to_numpy()
    position = np.minimum(np.searchsorted(sorted_raw, raw), max(len(sorted_raw) - 1, 0))
    known = (sorted_raw[position] == raw) if len(sorted_raw) else np.zeros(len(raw), dtype=bool)
    return ItemDays(item_rows=order[position[known]], days=table["day"].to_numpy()[known].astype(np.int64),
                    clicks=table["clicks"].to_numpy()[known].astype(np.float64))


def prior(item_clickers: np.ndarray, item_days: ItemDays | None, half_life_days: float) -> np.ndarray:
    """``log(1 + popularity)`` per item row: distinct training clickers (``half_life_days`` 0, all time) or
    time-decayed training clicks."""
    if half_life_days == ALL_TIME:
        return np.log1p(item_clickers.astype(np.float64))
    if item_days is None:
        raise ValueError(f"a popularity half-life of {half_life_days:g} days needs the clicks' days "
                         "(daily partitions: raw/item_days.parquet), which this run does not have")
    return np.log1p(item_days.decayed_clicks(half_life_days, len(item_clickers)))


def first_unblocked(pool: np.ndarray, blocked: np.ndarray, count: int) -> np.ndarray:
    """``[users, count]``: per row of ``blocked`` (``[users, len(pool)]``), the first ``count`` items of ``pool``
    (most popular first) not blocked for that user, in pool order; -1 where fewer remain."""
    picked = np.argsort(blocked, axis=1, kind="stable")[:, :count]
    return np.where(np.take_along_axis(blocked, picked, axis=1), -1, pool[picked])


def popular_unblocked(prior: np.ndarray, indptr: np.ndarray, blocked: np.ndarray, count: int) -> np.ndarray:
    """``[users, count]``: each user's ``count`` most popular items under ``prior`` that are not among their
    ``blocked[indptr[u]:indptr[u + 1]]`` item rows (-1 where fewer remain)."""
    from ..evaluation.metrics import hits_csr

    users = len(indptr) - 1
    pool = np.argsort(-prior, kind="stable")[: count + int(np.diff(indptr).max(initial=0))]
    return first_unblocked(pool, hits_csr(np.broadcast_to(pool, (users, len(pool))), indptr, blocked), count)


def user_seen(seen_indptr: np.ndarray, seen_items: np.ndarray, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seen CSR of ``user_rows`` alone, in their order: ``(indptr, items)``."""
    starts, counts = seen_indptr[user_rows], seen_indptr[user_rows + 1] - seen_indptr[user_rows]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
    return indptr, seen_items[gather]


def add_popular_candidates(
    candidate_rows: np.ndarray, retrieval_scores: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray,
    popularity: np.ndarray, seen_indptr: np.ndarray, seen_items: np.ndarray, user_rows: np.ndarray, count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``[users, K + count]`` candidates: the retrieved K, then up to ``count`` of the most popular items
    (under ``popularity``) that the user has not seen and that were not retrieved (-1 where fewer remain).
    Their retrieval score is the dot product of the user's and item's embeddings, as for the retrieved ones.
    """
    if count <= 0:
        return candidate_rows, retrieval_scores
    from ..evaluation.metrics import hits_csr

    # Enough of the most popular items to fill ``count`` slots after dropping seen and retrieved ones.
    pool = np.argsort(-popularity, kind="stable")[: count * 3 + candidate_rows.shape[1]]
    offered = np.broadcast_to(pool, (len(user_rows), len(pool)))
    seen = hits_csr(offered, *user_seen(seen_indptr, seen_items, user_rows))
    width = candidate_rows.shape[1]
    retrieved = hits_csr(offered, np.arange(0, len(user_rows) * width + 1, width), candidate_rows.ravel())
    extra = first_unblocked(pool, seen | retrieved, count)
    vectors = item_vectors[np.maximum(extra, 0)]
    extra_scores = np.einsum("ud,ukd->uk", user_vectors[user_rows], vectors).astype(retrieval_scores.dtype)
    extra_scores[extra < 0] = -np.inf
    return np.concatenate([candidate_rows, extra], axis=1), np.concatenate([retrieval_scores, extra_scores], axis=1)

