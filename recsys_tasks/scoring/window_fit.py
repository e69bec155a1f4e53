"""How much popularity the validation days' new users' fold-in lists weigh, fitted on known users.

A user active only in the validation days has no embedding; :mod:`recsys_tasks.scoring.window_users` folds
them into the item space by the mean embedding of the items they clicked. Whether that beats the plain
popularity list, and with how much popularity beside it, depends on the data: on planted data the fold-in
alone was far below popularity and the best weight moved between sizes (docs/quality-and-gate.md). So
``plan_shards`` fits it as it fits the blend: on a seeded sample of known validation users, each treated as
a new user whose only history is their training clicks, every fold-in weight of :data:`POPULARITY_WEIGHTS`
and the popularity list are scored by recall@N on their validation clicks. The best fold-in replaces the
popularity list only when the 5-fold check puts its gain above 0 beyond the 95% interval
(``scoring.blend_requires_significant_gain``), as for the blend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..paths import RunPaths, require
from ..runtime import get_logger

log = get_logger("score")

POPULARITY_WEIGHTS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)
"""Fold-in orders tried: ``similarity / its spread + w * prior / std(prior)`` for each ``w``."""
FIT_USERS = 2_000
"""Known validation users the fit samples (each costs one similarity row over the catalogue per weight)."""
POPULARITY_LIST = "popularity list"


def fit_fold_in(catalog: Any, paths: RunPaths, valid_dir: Path, half_life_days: float, top_n: int, seed: int,
                require_significant_gain: bool) -> dict[str, Any]:
    """The plan's ``window_fold_in`` entry: the chosen order (``chosen``: a blend of ``retrieval`` (the
    fold-in similarity) and ``popularity``, or None for the popularity list), ``reason``, every order's
    figures and the check. ``catalog`` is the training days' view."""
    from ..evaluation.metrics import RowLookup, hits_csr, ndcg_per_user, recall_per_user
    from ..evaluation.validation_sample import read_sampled_validation, relevant_clicks
    from ..features.tables import read_processed
    from .blend import Blend, pick
    from .popularity import popular_unblocked, user_seen
    from .window_users import fold_in_lists

    users = RowLookup(catalog.user_features["user_id_raw"])
    items = RowLookup(catalog.item_features["item_id_raw"])
    valid, _ = read_sampled_validation(valid_dir, users, items, FIT_USERS, seed, [])
    relevant = relevant_clicks(valid, catalog)
    if len(relevant.eval_users) == 0:
        return {"chosen": None, "reason": "popularity list: no validation click of a known user to fit the fold-in on",
                "candidates": []}
    # Each sampled user as a new user: their training clicks are their history, their exclusions stay.
    train = read_processed(require(paths.retrieval_train, "transform"), columns=["user_id", "item_id"])
    train_users = RowLookup(relevant.eval_users).rows(RowLookup(catalog.user_features["user_id"]).rows(
        train["user_id"].to_numpy()))
    train_items = RowLookup(catalog.item_features["item_id"]).rows(train["item_id"].to_numpy())
    mine = (train_users >= 0) & (train_items >= 0)
    clicked = np.unique(np.stack([train_users[mine], train_items[mine]], axis=1), axis=0).reshape(-1, 2)
    seen_indptr, seen_items = user_seen(catalog.seen_indptr, catalog.seen_items, relevant.eval_users)
    blocked = np.stack([np.repeat(np.arange(len(relevant.eval_users)), np.diff(seen_indptr)), seen_items], axis=1)
    prior = catalog.prior(half_life_days)
    popular = popular_unblocked(prior, seen_indptr, seen_items, top_n)
    scale = {"retrieval": 1.0, "dlrm": 1.0, "popularity": float(np.std(prior)) or 1.0}
    orders = [Blend({"retrieval": 0.0, "dlrm": 0.0, "popularity": 1.0}, scale, POPULARITY_LIST, half_life_days)]
    orders += [Blend({"retrieval": 1.0, "dlrm": 0.0, "popularity": w}, scale, f"fold-in p={w:g}", half_life_days)
               for w in POPULARITY_WEIGHTS]
    recall, ndcg = [], []
    for order in orders:
        lists = popular.copy()
        if order.name != POPULARITY_LIST:
            fold_in_lists(catalog, clicked, blocked, order, prior, top_n, lists, [np.zeros(0)] * len(lists))
        hits = hits_csr(lists, relevant.indptr, relevant.items)
        recall.append(recall_per_user(hits, relevant.counts, top_n))
        ndcg.append(ndcg_per_user(hits, relevant.counts, top_n))
    best, table, check = pick(orders, np.stack(recall), np.stack(ndcg), top_n, seed,
                              require_significant_gain=require_significant_gain)
    for row in table:
        row["recall_minus_popularity_list_ci95"] = row.pop("recall_minus_retrieval_order_ci95")
    check["what"] = check["what"].replace("retrieval order", POPULARITY_LIST)
    check["kept_popularity_list"] = check.pop("kept_retrieval_order")
    n = top_n
    top = max(table, key=lambda row: row[f"recall@{n}"])
    verdict = "popularity list kept" if best.name == POPULARITY_LIST else f"{best.name} chosen"
    versus = (f"{top['name']} {top[f'recall@{n}']:.4f} vs popularity list {table[0][f'recall@{n}']:.4f}"
              if top is not table[0] else f"the popularity list {table[0][f'recall@{n}']:.4f}")
    reason = (f"{verdict}: best validation recall@{n} of {len(orders)} orders on {len(relevant.eval_users)} known "
              f"users treated as new: {versus}; chosen on 4/5 of the users, measured on the other fifth: "
              f"{check['mean']:+.4f} [{check['ci95'][0]:+.4f}, {check['ci95'][1]:+.4f}]")
    log.info("window users' fold-in: %s", reason)
    return {"chosen": None if best.name == POPULARITY_LIST else best.to_json(), "reason": reason,
            "users": int(len(relevant.eval_users)), "check": check, "candidates": table}
