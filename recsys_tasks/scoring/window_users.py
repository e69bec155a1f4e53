"""Lists for users the models do not know but the window does: active only in the validation days.

The models train on the training days, so a user whose first interactions fall in the validation days has
no embedding. With ``scoring.history=window`` such a user still gets a document of their own rather than the
shared fallback, by ``scoring.window_users``:

* ``fold_in`` (default): the user may be folded into the Two-Tower's item space. The query is the mean of
  the item embeddings of the items they clicked in those days; every catalogue item is scored by its dot
  product with it (over its spread among the user's best items) plus a weighted popularity prior. Whether
  to, and with which weight, is fitted per run on known users (:mod:`recsys_tasks.scoring.window_fit`);
  when the fit keeps the popularity list, or a user has no click on a catalogue item, the user gets:
* ``popularity``: the popularity list under the blend's prior (time-decayed when the fit chose it).

Either way the items they clicked (or, with ``exclude=interacted``, were shown) in those days are left out.
Measured in docs/quality-and-gate.md ("Users of the latest days"). On
MovieLens-100K's time split 10 of the 97 test users are such users (docs/benchmark-quality.md). Written by
``plan_shards`` as one extra part, ``part-window.parquet``, beside the shards' parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..paths import RunPaths, require
from ..runtime import get_logger

log = get_logger("score")

WINDOW_PART = "part-window.parquet"
FOLD_IN_CHUNK = 256  # users per similarity block: 256 x 100,000 items x 8 B = 205 MB at 1M users
FOLD_IN_SCALE_ITEMS = 100  # the fold-in score's spread is measured over each user's best this many items


def window_part(paths: RunPaths) -> Path:
    return paths.recommendations / WINDOW_PART


def window_user_lists(catalog: Any, paths: RunPaths, exclude: str, blend: Any, top_n: int,
                      fold_in: Any = None) -> dict[str, Any]:
    """The validation days' users absent from ``catalog`` (raw ids) with their lists and scores, as the columns
    of a recommendations part (``user_id_encoded`` -1: the models have no id for them). ``fold_in`` is the
    fitted fold-in order (a :class:`~recsys_tasks.scoring.blend.Blend`), None for the popularity lists, or a
    callable giving it, called only when there are such users (the fit costs seconds)."""
    from ..evaluation.metrics import RowLookup
    from ..features.tables import read_processed
    from .popularity import popular_unblocked

    source = paths.retrieval_valid if exclude == "clicked" else paths.valid
    rows = read_processed(require(source, "transform"), columns=["user_id_raw", "item_id_raw"])
    users = rows["user_id_raw"].to_numpy().astype(np.int64)
    item_lookup = RowLookup(catalog.item_features["item_id_raw"])
    new = RowLookup(catalog.user_features["user_id_raw"]).rows(users) < 0
    items = item_lookup.rows(rows["item_id_raw"].to_numpy()[new])
    raw_ids, owner = np.unique(users[new], return_inverse=True)
    if len(raw_ids) == 0:
        return {"user_id": raw_ids, "recommendations": [], "scores": [], "user_id_encoded": raw_ids}
    known = items >= 0
    pairs = np.unique(np.stack([owner[known], items[known]], axis=1), axis=0)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=len(raw_ids)))])
    half_life = blend.half_life_days if blend is not None else 0.0
    prior = catalog.prior(half_life)
    chosen = popular_unblocked(prior, indptr, pairs[:, 1], top_n)
    # The blend's popularity term (or the prior itself for a blend without one), squashed as scoring's scores.
    weight = (blend.weights.get("popularity", 0.0) / blend.scales["popularity"]) if blend is not None else 0.0
    squashed = 1.0 / (1.0 + np.exp(-(weight or 1.0) * prior))
    scores = [squashed[r[r >= 0]] for r in chosen]
    folded = 0
    fold_in = fold_in() if callable(fold_in) else fold_in
    if fold_in is not None:
        # The clicks are the pairs above when those were read from the clicks (exclude=clicked).
        clicked = pairs if exclude == "clicked" else _window_clicks(paths, item_lookup, raw_ids)
        folded = fold_in_lists(catalog, clicked, pairs, fold_in, prior, top_n, chosen, scores)
    item_raw = np.asarray(catalog.item_features["item_id_raw"])
    recommendations = [item_raw[r[r >= 0]].tolist() for r in chosen]
    scores = [v.astype(np.float32).tolist() for v in scores]
    log.info("%d user(s) of the validation days unknown to the models: %d folded into the item space, the "
             "rest get the popularity list minus their own items (half-life %s)", len(raw_ids), folded,
             f"{half_life:g} days" if half_life else "all time")
    return {"user_id": raw_ids, "recommendations": recommendations, "scores": scores,
            "user_id_encoded": np.full(len(raw_ids), -1, dtype=np.int64)}


def _window_clicks(paths: RunPaths, item_lookup: Any, raw_ids: np.ndarray) -> np.ndarray:
    """``[clicks, 2]`` (index into ``raw_ids``, item row): the window users' validation clicks on catalogue items."""
    from ..evaluation.metrics import RowLookup
    from ..features.tables import read_processed

    clicks = read_processed(require(paths.retrieval_valid, "transform"), columns=["user_id_raw", "item_id_raw"])
    owner = RowLookup(raw_ids).rows(clicks["user_id_raw"].to_numpy())
    items = item_lookup.rows(clicks["item_id_raw"].to_numpy())
    keep = (owner >= 0) & (items >= 0)
    return np.unique(np.stack([owner[keep], items[keep]], axis=1), axis=0).reshape(-1, 2)


def fold_in_lists(catalog: Any, clicked: np.ndarray, blocked: np.ndarray, blend: Any, prior: np.ndarray,
                  top_n: int, lists: np.ndarray, scores: list[np.ndarray]) -> int:
    """Replace, in place, the ``lists`` and ``scores`` of the users with a click (``clicked``: (user, item
    row) pairs) by the fold-in order ``blend``'s (see the module: ``retrieval`` weighs the similarity,
    ``popularity`` the prior); ``blocked`` holds the (user, item row) pairs their lists may not hold.
    Returns how many users were folded in."""
    embeddings = np.asarray(catalog.item_embeddings, dtype=np.float32)
    folded_rows = np.unique(clicked[:, 0])
    retrieval_weight = blend.weights.get("retrieval", 0.0) or 1.0
    popularity_weight = blend.weights.get("popularity", 0.0) / blend.scales["popularity"]
    local = np.full(len(lists), -1)
    for start in range(0, len(folded_rows), FOLD_IN_CHUNK):
        rows = folded_rows[start:start + FOLD_IN_CHUNK]
        local[:] = -1
        local[rows] = np.arange(len(rows))
        mine = clicked[local[clicked[:, 0]] >= 0]
        query = np.zeros((len(rows), embeddings.shape[1]), dtype=np.float64)
        np.add.at(query, local[mine[:, 0]], embeddings[mine[:, 1]])
        query /= np.bincount(local[mine[:, 0]], minlength=len(rows))[:, None]
        similarity = (query.astype(np.float32) @ embeddings.T).astype(np.float64)
        # The similarity over its spread among the user's best FOLD_IN_SCALE_ITEMS items: comparable across users.
        count = min(FOLD_IN_SCALE_ITEMS, similarity.shape[1])
        best = -np.partition(-similarity, count - 1, axis=1)[:, :count]
        scale = np.std(best, axis=1, keepdims=True)
        score = retrieval_weight * similarity / np.where(scale > 0, scale, 1.0) + popularity_weight * prior[None, :]
        excluded = blocked[local[blocked[:, 0]] >= 0]
        score[local[excluded[:, 0]], excluded[:, 1]] = -np.inf
        count = min(top_n, score.shape[1])
        top = np.argpartition(-score, count - 1, axis=1)[:, :count]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable"),
                                 axis=1)
        top_scores = np.take_along_axis(score, top, axis=1)
        for i, user in enumerate(rows):
            keep = np.isfinite(top_scores[i])  # a prefix: the scores are sorted
            lists[user] = -1
            lists[user, : int(keep.sum())] = top[i][keep]
            scores[user] = 1.0 / (1.0 + np.exp(-top_scores[i][keep]))
    return int(len(folded_rows))


def write_window_part(catalog: Any, paths: RunPaths, exclude: str, blend: Any, top_n: int, schema: Any,
                      fold_in: Any = None) -> int:
    """Write the window users' part (none when there are none); returns how many users it holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lists = window_user_lists(catalog, paths, exclude, blend, top_n, fold_in)
    if len(lists["user_id"]) == 0:
        return 0
    target = window_part(paths)
    tmp = target.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pydict(lists, schema=schema), tmp)
    tmp.replace(target)
    return int(len(lists["user_id"]))
