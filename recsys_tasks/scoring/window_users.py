"""Lists for users the models do not know but the window does: active only in the validation days.

The models train on the training days, so a user whose first interactions fall in the validation days has
no embedding. With ``scoring.history=window`` such a user still gets a document of their own rather than the
shared fallback: the popularity list under the blend's prior (time-decayed when the fit chose it), minus
the items they clicked (or, with ``exclude=interacted``, were shown) in those days. On MovieLens-100K's time
split, 10 of the 97 test users are such users and 13 of the 20 fallback slots held movies they had
already rated (docs/benchmark-quality.md). Written by ``plan_shards`` as one extra part,
``part-window.parquet``, beside the shards' parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..paths import RunPaths, require
from ..runtime import get_logger

log = get_logger("score")

WINDOW_PART = "part-window.parquet"


def window_part(paths: RunPaths) -> Path:
    return paths.recommendations / WINDOW_PART


def window_user_lists(catalog: Any, paths: RunPaths, exclude: str, blend: Any, top_n: int) -> dict[str, Any]:
    """The validation days' users absent from ``catalog`` (raw ids) with their lists and scores, as the columns
    of a recommendations part (``user_id_encoded`` -1: the models have no id for them)."""
    from ..evaluation.metrics import RowLookup, hits_csr
    from ..features.tables import read_processed
    from .popularity import first_unblocked

    source = paths.retrieval_valid if exclude == "clicked" else paths.valid
    rows = read_processed(require(source, "transform"), columns=["user_id_raw", "item_id_raw"])
    users = rows["user_id_raw"].to_numpy().astype(np.int64)
    new = RowLookup(catalog.user_features["user_id_raw"]).rows(users) < 0
    items = RowLookup(catalog.item_features["item_id_raw"]).rows(rows["item_id_raw"].to_numpy()[new])
    raw_ids, owner = np.unique(users[new], return_inverse=True)
    if len(raw_ids) == 0:
        return {"user_id": raw_ids, "recommendations": [], "scores": [], "user_id_encoded": raw_ids}
    known = items >= 0
    pairs = np.unique(np.stack([owner[known], items[known]], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=len(raw_ids))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    half_life = blend.half_life_days if blend is not None else 0.0
    prior = catalog.prior(half_life)
    pool = np.argsort(-prior, kind="stable")[: top_n + int(counts.max(initial=0))]
    offered = np.broadcast_to(pool, (len(raw_ids), len(pool)))
    chosen = first_unblocked(pool, hits_csr(offered, indptr, pairs[:, 1]), top_n)
    # The blend's popularity term (or the prior itself for a blend without one), squashed as scoring's scores.
    weight = (blend.weights.get("popularity", 0.0) / blend.scales["popularity"]) if blend is not None else 0.0
    values = 1.0 / (1.0 + np.exp(-(weight or 1.0) * prior))
    item_raw = np.asarray(catalog.item_features["item_id_raw"])
    recommendations = [item_raw[r[r >= 0]].tolist() for r in chosen]
    scores = [values[r[r >= 0]].astype(np.float32).tolist() for r in chosen]
    log.info("%d user(s) of the validation days unknown to the models get the popularity list minus their own "
             "items (half-life %s)", len(raw_ids), f"{half_life:g} days" if half_life else "all time")
    return {"user_id": raw_ids, "recommendations": recommendations, "scores": scores,
            "user_id_encoded": np.full(len(raw_ids), -1, dtype=np.int64)}


def write_window_part(catalog: Any, paths: RunPaths, exclude: str, blend: Any, top_n: int, schema: Any) -> int:
    """Write the window users' part (none when there are none); returns how many users it holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lists = window_user_lists(catalog, paths, exclude, blend, top_n)
    if len(lists["user_id"]) == 0:
        return 0
    target = window_part(paths)
    tmp = target.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pydict(lists, schema=schema), tmp)
    tmp.replace(target)
    return int(len(lists["user_id"]))
