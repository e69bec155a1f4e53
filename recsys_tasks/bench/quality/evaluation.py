"""The benchmark's judging: which users and clicks count, the peers tuned and ranked, and every method's
per-user metrics with paired 95% intervals against the published lists (metric definitions from
:mod:`recsys_tasks.evaluation.metrics`, the same as the pipeline's own evaluate stage).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...evaluation.metrics import hits_matrix, mean_ci95, ndcg_per_user, recall_per_user
from ...runtime import get_logger
from .peers import peer_grids, recent_popularity, top_n

log = get_logger("bench_quality")

RATING_THRESHOLD = 4.0
TUNE_METRIC = ("ndcg", 10)


class Index:
    """Dense rows for raw ids (users or items known before a cut-off)."""

    def __init__(self, raw_ids: np.ndarray):
        self.raw = np.sort(np.unique(raw_ids))

    def rows(self, raw_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.raw, raw_ids)


def csr(frame: Any, users: Index, items: Index) -> Any:
    """A binary users x items matrix of the frame's (user, item) pairs."""
    from scipy import sparse

    matrix = sparse.csr_matrix(
        (np.ones(len(frame)), (users.rows(frame["user_id"].to_numpy()), items.rows(frame["item_id"].to_numpy()))),
        shape=(len(users.raw), len(items.raw)))
    matrix.data[:] = 1.0  # duplicates summed: back to binary
    return matrix


def click_ages(frame: Any, items: Index) -> tuple[np.ndarray, np.ndarray, int]:
    """Each click's item column and age in days before the frame's last day (for the time-decayed popularity)."""
    clicks = frame[frame["rating"] >= RATING_THRESHOLD]
    days = np.array([d.toordinal() for d in clicks["day"]], dtype=np.float64)
    last = max(d.toordinal() for d in frame["day"])
    return items.rows(clicks["item_id"].to_numpy()), last - days, len(items.raw)


def relevant_clicks(history: Any, target: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users with a rating in ``history`` and a click in ``target`` on an item they had not rated, and those items."""
    rated = set(zip(history["user_id"].to_numpy().tolist(), history["item_id"].to_numpy().tolist()))
    known = set(history["user_id"].unique().tolist())
    clicks = target[target["rating"] >= RATING_THRESHOLD]
    fresh: dict[int, list[int]] = {}
    for user, item in zip(clicks["user_id"].to_numpy().tolist(), clicks["item_id"].to_numpy().tolist()):
        if user in known and (user, item) not in rated:
            fresh.setdefault(user, []).append(item)
    users = np.array(sorted(fresh), dtype=np.int64)
    return users, [np.unique(np.array(fresh[u], dtype=np.int64)) for u in users]


def per_user(ranked: np.ndarray, relevant: list[np.ndarray], cutoffs: list[int]) -> dict[str, np.ndarray]:
    hits = hits_matrix(ranked, relevant)
    counts = np.array([len(r) for r in relevant], dtype=np.int64)
    out = {}
    for k in cutoffs:
        out[f"recall@{k}"] = recall_per_user(hits, counts, k)
        out[f"ndcg@{k}"] = ndcg_per_user(hits, counts, k)
    return out


def tune_and_rank_peers(ratings: Any, n: int, quick: bool, seed: int) -> dict[str, Any]:
    """Each peer tuned on the validation days (fit on train), refit on train + validation, ranked for the test users."""
    train = ratings[ratings["part"] == "train"]
    before_test = ratings[ratings["part"] != "test"]
    users, items = Index(before_test["user_id"].to_numpy()), Index(before_test["item_id"].to_numpy())
    valid_users, valid_relevant = relevant_clicks(train, ratings[ratings["part"] == "valid"])
    test_users, test_relevant = relevant_clicks(before_test, ratings[ratings["part"] == "test"])
    stages = {
        "valid": (csr(train[train["rating"] >= RATING_THRESHOLD], users, items), csr(train, users, items),
                  users.rows(valid_users), click_ages(train, items)),
        "test": (csr(before_test[before_test["rating"] >= RATING_THRESHOLD], users, items),
                 csr(before_test, users, items), users.rows(test_users), click_ages(before_test, items)),
    }

    def ranked(fit: Any, params: dict[str, Any], stage: str) -> np.ndarray:
        clicks, rated, rows, ages = stages[stage]
        scorer = fit(ages if fit is recent_popularity else clicks, **params)
        best = top_n(scorer(rows), rated.indptr, rated.indices, rows, n)
        return np.where(best >= 0, items.raw[np.maximum(best, 0)], -1)

    lists, settings = {}, {}
    for name, (fit, grid) in peer_grids(quick).items():
        tried = []
        for params in grid:
            metrics = per_user(ranked(fit, params, "valid"), valid_relevant, [10, 20])
            tried.append({**params, "valid_ndcg@10": round(float(metrics["ndcg@10"].mean()), 4),
                          "valid_recall@20": round(float(metrics["recall@20"].mean()), 4)})
        chosen = max(range(len(grid)), key=lambda i: (tried[i]["valid_ndcg@10"], -i))
        log.info("%s: validation NDCG@10 per setting %s; chosen %s", name, tried, grid[chosen])
        lists[name] = ranked(fit, grid[chosen], "test")
        settings[name] = {"chosen": grid[chosen], "grid": tried, "tuned_on": f"{len(valid_users)} validation users"}
    rated = before_test.groupby("user_id")["item_id"].apply(np.unique)
    return {"lists": lists, "settings": settings, "test_users": test_users, "relevant": test_relevant,
            "rated": [rated[u] for u in test_users], "catalog_size": int(len(items.raw))}


def published_lists(documents: dict[int, Any], users: np.ndarray, n: int) -> np.ndarray:
    """The read-back documents as an ``users x n`` array of raw item ids (``-1`` pads a short list)."""
    lists = np.full((len(users), n), -1, dtype=np.int64)
    for position, user in enumerate(users):
        document = documents.get(int(user))
        items = (document or {}).get("recommendations", [])[:n]
        lists[position, :len(items)] = items
    return lists


def evaluate_methods(lists: dict[str, np.ndarray], relevant: list[np.ndarray], catalog_size: int,
                     cutoffs: list[int], rated: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Every method's means with 95% intervals, catalogue coverage, the paired difference to ``published`` and,
    given each user's ``rated`` items, the share of list slots spent on items the user had already rated."""
    values = {name: per_user(ranked, relevant, cutoffs) for name, ranked in lists.items()}
    results = {}
    for name, ranked in lists.items():
        top = ranked[:, :max(cutoffs)]
        entry: dict[str, Any] = {"coverage": round(len(np.unique(top[top >= 0])) / max(catalog_size, 1), 4)}
        if rated is not None:
            entry["already_rated_share"] = round(float(hits_matrix(top, rated)[top >= 0].mean()), 4)
        for metric, per in values[name].items():
            mean, interval = mean_ci95(per)
            entry[metric] = {"mean": round(mean, 4), "ci95": [round(x, 4) for x in interval]}
            if name != "published":
                diff, diff_interval = mean_ci95(per - values["published"][metric])
                entry[metric]["vs_published"] = {"mean": round(diff, 4), "ci95": [round(x, 4) for x in diff_interval]}
        results[name] = entry
    return results
