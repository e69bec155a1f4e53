"""The published lists, checked as the quality gate needs them: every list, vectorised.

Shapes (full, short, empty lists, duplicates, items the user clicked in training, unknown ids),
catalog coverage and Gini of exposure over **every** list; recall@N / ndcg@N of exactly the lists that
would be published (the fallback for users without one) against the retrieval order, popularity and the
live run's lists on the evaluated sample of users, with paired 95% intervals.
Used by :mod:`recsys_tasks.evaluation.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..paths import RunPaths, recommendation_files, require
from .metrics import Relevant, RowLookup, gini, hits_csr, mean_ci95, ndcg_per_user, recall_per_user


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


def published_list_metrics(list_rows: dict[str, Any], relevant: Relevant, references: dict[str, np.ndarray],
                           fallback_rows: np.ndarray, num_users: int,
                           top_n: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """recall@N / ndcg@N of exactly what would be published, beside each reference order, with paired intervals.

    Every sampled user is evaluated: with their list, or with the fallback list (``fallback_rows``, what
    applications show a user without a document) when they have none. ``references`` maps a name
    (``retrieval_order``, ``popularity``, ``live``) to item rows ``[eval users, >= N]`` ranked for the same users.
    The paired difference ``published - reference`` is averaged over the same users, with its 95% interval.
    Also returns the published lists' per-user recall and ndcg (for the gate's comparison with live lists)
    and, under ``"rows"``, the published item rows of each evaluated user.
    """
    position = np.full(num_users, -1, dtype=np.int64)
    known = list_rows["user_rows"] >= 0
    position[list_rows["user_rows"][known]] = np.flatnonzero(known)
    where = position[relevant.eval_users]
    with_list = where >= 0
    published = np.full((len(where), top_n), -1, dtype=np.int64)
    published[with_list] = list_rows["item_rows"][where[with_list]][:, :top_n]
    fallback = np.full(top_n, -1, dtype=np.int64)
    fallback[:len(fallback_rows[:top_n])] = fallback_rows[:top_n]
    published[~with_list] = fallback
    per_user = {"published": _per_user(published, relevant, top_n)}
    per_user.update({name: _per_user(rows[:, :top_n], relevant, top_n) for name, rows in references.items()})
    n = str(top_n)
    out: dict[str, Any] = {
        "users_evaluated": int(len(where)),
        "users_with_fallback": int((~with_list).sum()),
        "recall_at_n": per_user["published"]["recall"][0],
        "ndcg_at_n": per_user["published"]["ndcg"][0],
        "recall_at_n_ci95": per_user["published"]["recall"][1],
        "ndcg_at_n_ci95": per_user["published"]["ndcg"][1],
        "paired_difference": {},
        "metric": f"recall@{n} and ndcg@{n} (binary gains) of each sampled validation user's list against their "
                  "validation clicks on items outside the exclusion set, averaged over users; paired 95% intervals",
    }
    for name, figures in per_user.items():
        if name == "published":
            continue
        out[f"{name}_recall_at_n"], out[f"{name}_recall_at_n_ci95"] = figures["recall"][:2]
        out[f"{name}_ndcg_at_n"], out[f"{name}_ndcg_at_n_ci95"] = figures["ndcg"][:2]
        differences = {}
        for metric in ("recall", "ndcg"):
            mean, interval = mean_ci95(per_user["published"][metric][2] - figures[metric][2])
            differences[f"{metric}_at_n"] = {"mean": mean, "ci95": interval}
        out["paired_difference"][name] = differences
    return out, {**{metric: per_user["published"][metric][2] for metric in ("recall", "ndcg")}, "rows": published}


def _per_user(rows: np.ndarray, relevant: Relevant, top_n: int) -> dict[str, tuple[float, list[float], np.ndarray]]:
    hits = hits_csr(rows, relevant.indptr, relevant.items)
    out = {}
    for metric, function in (("recall", recall_per_user), ("ndcg", ndcg_per_user)):
        values = function(hits, relevant.counts, top_n)
        mean, interval = mean_ci95(values)
        out[metric] = (mean, interval, values)
    return out


def training_days_lists(config: Any, paths: RunPaths, catalogs: Sequence[Any], user_rows: np.ndarray,
                        model: Any) -> list[np.ndarray]:
    """For each catalog, ``[users, top_n]`` item rows (-1 pads): what scoring publishes for ``user_rows`` with that
    catalog's history, the run's plan (kernel, blend) and ``model`` (the DLRM), through the same
    :func:`score_chunk`. The catalogs differ only in history, so they share one ranker and one index."""
    from ..scoring.candidates import attach_index
    from ..scoring.ranker import make_ranker
    from ..scoring.stage import plan_blend, read_plan, score_chunk

    settings = config.scoring
    plan = read_plan(paths)
    blend, kernel = plan_blend(plan), plan.get("retrieval_kernel", "auto")
    first = catalogs[0]
    if kernel in ("ivf", "hnsw") and first.ann_index is None:
        attach_index(first, kind=kernel, settings=settings, path=require(paths.ann_index(kernel), "score"))
    ranker = make_ranker(model, first, settings.rank_batch_rows, settings.factored_ranking) \
        if blend is None or blend.uses_dlrm else None
    items = RowLookup(first.item_features["item_id_raw"])
    results = []
    for catalog in catalogs:
        catalog.ann_index = catalog.ann_index if catalog.ann_index is not None else first.ann_index
        out = np.full((len(user_rows), settings.top_n), -1, dtype=np.int64)
        for start in range(0, len(user_rows), settings.user_chunk_size):
            chunk = np.asarray(user_rows[start:start + settings.user_chunk_size])
            lists = score_chunk(catalog, ranker, chunk, settings.top_k, settings.top_n, settings.rank_batch_rows,
                                kernel, blend, settings.popular_candidates)["recommendations"]
            for offset, items_raw in enumerate(lists):
                out[start + offset, :len(items_raw)] = items.rows(np.asarray(items_raw, dtype=np.int64))
        results.append(out)
    return results


def reproduced_share(list_rows: dict[str, Any], user_rows: np.ndarray, recomputed: np.ndarray) -> dict[str, Any]:
    """How many of ``user_rows``' written lists hold exactly the items recomputed for them (as sets: two items
    of equal score may swap places), and the first user row whose list differs."""
    position = np.full(int(max(list_rows["user_rows"].max(initial=-1), user_rows.max(initial=-1))) + 1, -1)
    known = list_rows["user_rows"] >= 0
    position[list_rows["user_rows"][known]] = np.flatnonzero(known)
    where = position[user_rows]
    written = np.full(recomputed.shape, -1, dtype=np.int64)
    written[where >= 0] = list_rows["item_rows"][where[where >= 0]][:, :recomputed.shape[1]]
    same = (np.sort(written, axis=1) == np.sort(recomputed, axis=1)).all(axis=1) & (where >= 0)
    return {"users": int(len(user_rows)), "share": float(same.mean()) if len(same) else 1.0,
            "first_different_user_row": int(user_rows[~same][0]) if (~same).any() else None}
