"""The published lists, checked as the quality gate needs them: every list, vectorised.

Shapes (full, short, empty lists, duplicates, items the user clicked in training, unknown ids),
catalog coverage and Gini of exposure over **every** list; recall@N / ndcg@N of the final lists against
retrieval order alone on the evaluated sample of users. Used by :mod:`recsys_tasks.evaluation.evaluate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..paths import RunPaths, recommendation_files, require
from .metrics import Relevant, RowLookup, gini, hits_csr, metrics_from_hits


def read_lists(paths: RunPaths) -> Any:
    """Every part's ``user_id``, ``recommendations`` and ``scores`` as one Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = recommendation_files(require(paths.recommendations, "score"))
    return pa.concat_tables([pq.read_table(f, columns=["user_id", "recommendations", "scores"]) for f in files])


def flat_lists(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (values, offsets) numpy arrays."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    return array.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]


def list_quality(lists: Any, catalog: Any, users: RowLookup, items: RowLookup, seen: np.ndarray,
                 top_n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shape checks of every published list, and the data the metrics need (user rows, item rows).

    Items unknown to the catalog are counted and dropped; ``item_rows`` holds each list's known items,
    in order, in its first ``top_n`` columns (-1 pads).
    """
    count = lists.num_rows
    values, offsets = flat_lists(lists.column("recommendations"))
    lengths = np.diff(offsets)
    user_rows = users.rows(lists.column("user_id").to_numpy())
    value_rows = items.rows(values)
    known = value_rows >= 0
    owner = np.repeat(np.arange(count), lengths)[known]
    value_rows = value_rows[known]
    known_counts = np.bincount(owner, minlength=count)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(known_counts) - known_counts, known_counts)
    width = max(top_n, int(known_counts.max(initial=0)))
    matrix = np.full((count, width), -1, dtype=np.int64)
    matrix[owner, position] = value_rows
    ordered = np.sort(matrix, axis=1)
    duplicates = int(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1).sum())
    owner_user = user_rows[owner]
    is_seen = (owner_user >= 0) & np.isin(np.maximum(owner_user, 0) * catalog.num_items + value_rows, seen)
    seen_lists = int(len(np.unique(owner[is_seen])))
    exposure = np.bincount(value_rows, minlength=catalog.num_items)
    listed = max(count, 1)
    quality = {
        "top_n": top_n,
        "users_with_list": int(count),
        "catalog_users": int(catalog.num_users),
        "user_coverage": len(np.unique(user_rows[user_rows >= 0])) / max(catalog.num_users, 1),
        "full_list_share": float(np.mean(lengths >= top_n)) if count else 0.0,
        "empty_lists": int((lengths == 0).sum()),
        "short_lists": int(((lengths > 0) & (lengths < top_n)).sum()),
        "duplicate_lists": duplicates,
        "lists_with_seen_item": seen_lists,
        "seen_item_share": seen_lists / listed,
        "unknown_users": int((user_rows < 0).sum()),
        "unknown_items": int((~known).sum()),
        "catalog_coverage": float((exposure > 0).mean()) if catalog.num_items else 0.0,
        "exposure_gini": gini(exposure),
    }
    return quality, {"user_rows": user_rows, "item_rows": matrix[:, :top_n], "exposure": exposure}


def published_list_metrics(list_rows: dict[str, Any], relevant: Relevant, model_ranked: np.ndarray,
                           num_users: int, top_n: int) -> dict[str, Any]:
    """recall@N / ndcg@N of the published lists and of retrieval order alone, for sampled users with a list."""
    position = np.full(num_users, -1, dtype=np.int64)
    known = list_rows["user_rows"] >= 0
    position[list_rows["user_rows"][known]] = np.flatnonzero(known)
    where = position[relevant.eval_users]
    with_list = where >= 0
    indptr = np.concatenate([[0], np.cumsum(relevant.counts[with_list])]).astype(np.int64)
    starts = relevant.indptr[:-1][with_list]
    counts = relevant.counts[with_list]
    items = relevant.items[np.repeat(starts, counts) + np.arange(int(counts.sum())) - np.repeat(indptr[:-1], counts)]
    final = metrics_from_hits(hits_csr(list_rows["item_rows"][where[with_list]], indptr, items), counts, [top_n])
    order = metrics_from_hits(hits_csr(model_ranked[with_list][:, :top_n], indptr, items), counts, [top_n])
    n = str(top_n)
    return {
        "users_evaluated": int(with_list.sum()),
        "recall_at_n": final["recall"][n],
        "ndcg_at_n": final["ndcg"][n],
        "recall_at_n_ci95": final["recall_ci95"][n],
        "ndcg_at_n_ci95": final["ndcg_ci95"][n],
        "retrieval_order_recall_at_n": order["recall"][n],
        "retrieval_order_ndcg_at_n": order["ndcg"][n],
        "retrieval_order_recall_at_n_ci95": order["recall_ci95"][n],
        "retrieval_order_ndcg_at_n_ci95": order["ndcg_ci95"][n],
    }
