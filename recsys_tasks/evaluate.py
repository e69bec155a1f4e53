"""Stage ``evaluate`` (between ``score`` and ``load_redis``): is today's model any good?

Writes ``report.json`` in the run directory (also the task's XCom), the PNG plots and
``evaluation/report.md`` (see :mod:`recsys_tasks.report`) and the popularity list that ``load_redis``
publishes for unknown users. Protocol, chosen to match what is published:

* Retrieval is scored over the **full catalog** on validation clicks. A user's relevant items are the
  distinct catalog items they clicked in validation and had **not** clicked in training (published
  lists never hold seen items, so seen items are masked for every method). Users absent from the
  training data (cold users) cannot be scored and are counted apart. recall@k = hits in the top k /
  relevant items; ndcg@k with binary gains; both averaged over users.
* Methods: the Two-Tower model (dot product of the exported embeddings), a popularity baseline
  (items by training clicks) and, on ``planted`` data, the oracle that ranks by the true expected
  clicks ``P(shown) x P(click | shown)`` from ``raw/truth.npz``.
* Ranking: exact AUC and log loss of the DLRM on every validation impression; the popularity
  score's (item training clicks) AUC as baseline.
* Published lists: recall@N / ndcg@N of the final (DLRM-ranked) lists and of the same users'
  retrieval order alone, catalog coverage, Gini of item exposure, shares of full/short/empty lists,
  lists with duplicates and lists holding a training click (must be 0).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .common import InputDataError, get_logger, quiet_tensorflow, read_summary, stage
from .config import Config
from .paths import RunPaths, recommendation_files, require

log = get_logger("evaluate")

USER_CHUNK_ROWS = 2048
PRIOR_STAGES = ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score")


# --------------------------------------------------------------------------------------------------
# Metrics (plain numpy, unit-tested on hand-made examples)
# --------------------------------------------------------------------------------------------------


def hits_matrix(ranked: np.ndarray, relevant: list[np.ndarray]) -> np.ndarray:
    """``hits[u, r]`` is True when the item at rank r of user u's list is one of u's relevant items.

    ``ranked`` is ``[users, k]`` of item ids (``-1`` pads short lists); ``relevant[u]`` holds u's items.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    lengths = np.array([len(r) for r in relevant], dtype=np.int64)
    relevant_items = np.concatenate([np.zeros(0, np.int64), *(np.asarray(r, dtype=np.int64) for r in relevant)])
    width = int(max(ranked.max(initial=0), relevant_items.max(initial=0))) + 2
    relevant_keys = np.repeat(np.arange(len(relevant)), lengths) * width + relevant_items
    ranked_keys = np.arange(len(ranked))[:, None] * width + ranked
    return np.isin(ranked_keys, relevant_keys) & (ranked >= 0)


def recall_at_k(hits: np.ndarray, num_relevant: np.ndarray, k: int) -> float:
    """Mean over users of (relevant items in the top k) / (relevant items)."""
    if len(hits) == 0:
        return 0.0
    return float(np.mean(hits[:, :k].sum(axis=1) / np.maximum(num_relevant, 1)))


def ndcg_at_k(hits: np.ndarray, num_relevant: np.ndarray, k: int) -> float:
    """Mean over users of DCG@k / ideal DCG@k, binary gains, discount 1/log2(rank + 1)."""
    if len(hits) == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(num_relevant, k)]
    return float(np.mean(dcg / np.maximum(ideal, 1e-12)))


def retrieval_metrics(
    ranked: np.ndarray, relevant: list[np.ndarray], cutoffs: list[int]
) -> dict[str, dict[str, float]]:
    """recall@k and ndcg@k for every cut-off: ``{"recall": {"10": ...}, "ndcg": {...}}``."""
    hits = hits_matrix(ranked, relevant)
    num_relevant = np.array([len(r) for r in relevant], dtype=np.int64)
    return {
        "recall": {str(k): recall_at_k(hits, num_relevant, k) for k in cutoffs},
        "ndcg": {str(k): ndcg_at_k(hits, num_relevant, k) for k in cutoffs},
    }


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes, got {positives} positives and {negatives} negatives")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 when all equal, -> 1 when one item takes everything."""
    values = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(values), values.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * values) / (n * total))


def catalog_coverage(lists: list[list[int]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one list."""
    shown = {item for items in lists for item in items}
    return len(shown) / catalog_size if catalog_size else 0.0


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores per row, best first; ``-inf`` entries become ``-1``."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    rows[np.isneginf(np.take_along_axis(part_scores, order, axis=1))] = -1
    return rows


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def recommendations_fingerprint(path: Path) -> str:
    """sha256 over every part of the recommendations, so the gate can tell a stale report."""
    digest = hashlib.sha256()
    for file in recommendation_files(path):
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _lookup(ids: np.ndarray) -> dict[int, int]:
    return {int(v): i for i, v in enumerate(ids)}


def _relevant_by_user(
    user_rows: np.ndarray, item_rows: np.ndarray, catalog: Any
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validation clicks grouped by user row, minus items the user clicked in training."""
    pairs = np.unique(np.stack([user_rows, item_rows], axis=1), axis=0)
    users, relevant = [], []
    for user, start, stop in _groups(pairs[:, 0]):
        seen = catalog.seen_items[catalog.seen_indptr[user]:catalog.seen_indptr[user + 1]]
        items = np.setdiff1d(pairs[start:stop, 1], seen)
        if len(items):
            users.append(user)
            relevant.append(items)
    return np.asarray(users, dtype=np.int64), relevant


def _groups(sorted_keys: np.ndarray) -> list[tuple[int, int, int]]:
    if len(sorted_keys) == 0:
        return []
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(sorted_keys)]])
    return [(int(sorted_keys[s]), int(s), int(e)) for s, e in zip(starts, stops)]


def _mask_seen(scores: np.ndarray, catalog: Any, user_rows: np.ndarray) -> np.ndarray:
    for i, user in enumerate(user_rows):
        scores[i, catalog.seen_items[catalog.seen_indptr[user]:catalog.seen_indptr[user + 1]]] = -np.inf
    return scores


def rank_catalog(score_fn: Any, catalog: Any, user_rows: np.ndarray, k: int) -> np.ndarray:
    """Top-k unseen item rows for each user, ``score_fn(chunk_user_rows) -> [chunk, items]``."""
    parts = [np.zeros((0, min(k, catalog.num_items)), dtype=np.int64)]
    for start in range(0, len(user_rows), USER_CHUNK_ROWS):
        chunk = user_rows[start:start + USER_CHUNK_ROWS]
        scores = np.array(score_fn(chunk), dtype=np.float64)
        parts.append(top_k_rows(_mask_seen(scores, catalog, chunk), k))
    return np.concatenate(parts)


def _read_lists(paths: RunPaths) -> Any:
    import pyarrow.parquet as pq

    files = recommendation_files(require(paths.recommendations, "score"))
    frames = [pq.read_table(f, columns=["user_id", "recommendations", "scores"]).to_pandas() for f in files]
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def list_quality(lists: Any, catalog: Any, top_n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shape checks of every published list, and the data the metrics need (user rows, item rows)."""
    user_lookup = _lookup(catalog.user_features["user_id_raw"])
    item_lookup = _lookup(catalog.item_features["item_id_raw"])
    lengths = lists["recommendations"].map(len).to_numpy()
    user_rows = np.array([user_lookup.get(int(u), -1) for u in lists["user_id"]], dtype=np.int64)
    unknown_users = int((user_rows < 0).sum())
    item_rows = np.full((len(lists), top_n), -1, dtype=np.int64)
    duplicates = seen_lists = unknown_items = 0
    exposure = np.zeros(catalog.num_items, dtype=np.int64)
    for i, items in enumerate(lists["recommendations"]):
        rows = np.array([item_lookup.get(int(x), -1) for x in items], dtype=np.int64)
        unknown_items += int((rows < 0).sum())
        rows = rows[rows >= 0]
        duplicates += int(len(np.unique(rows)) != len(rows))
        np.add.at(exposure, rows, 1)
        item_rows[i, : min(len(rows), top_n)] = rows[:top_n]
        user = user_rows[i]
        if user >= 0 and len(rows):
            seen = catalog.seen_items[catalog.seen_indptr[user]:catalog.seen_indptr[user + 1]]
            seen_lists += int(np.isin(rows, seen).any())
    users = max(len(lists), 1)
    quality = {
        "top_n": top_n,
        "users_with_list": int(len(lists)),
        "catalog_users": int(catalog.num_users),
        "user_coverage": len(np.unique(user_rows[user_rows >= 0])) / max(catalog.num_users, 1),
        "full_list_share": float(np.mean(lengths >= top_n)) if len(lists) else 0.0,
        "empty_lists": int((lengths == 0).sum()),
        "short_lists": int(((lengths > 0) & (lengths < top_n)).sum()),
        "duplicate_lists": int(duplicates),
        "lists_with_seen_item": int(seen_lists),
        "seen_item_share": seen_lists / users,
        "unknown_users": unknown_users,
        "unknown_items": int(unknown_items),
        "catalog_coverage": float((exposure > 0).mean()) if catalog.num_items else 0.0,
        "exposure_gini": gini(exposure),
    }
    return quality, {"user_rows": user_rows, "item_rows": item_rows, "exposure": exposure}


def popularity_scores(catalog: Any, train: Any) -> np.ndarray:
    """Training clicks per catalog item, impressions as a tiny tie-breaker."""
    item_lookup = _lookup(catalog.item_features["item_id_raw"])
    rows = np.array([item_lookup.get(int(x), -1) for x in train["item_id_raw"]], dtype=np.int64)
    known = rows >= 0
    clicks = np.bincount(rows[known], weights=train["click"].to_numpy()[known], minlength=catalog.num_items)
    shown = np.bincount(rows[known], minlength=catalog.num_items)
    return clicks + 1e-6 * shown


def _predict_ranking(paths: RunPaths, valid: Any, features: list[str], batch_rows: int) -> np.ndarray:
    from .ranking import load_dlrm
    from .scoring import rank_pairs

    model = load_dlrm(require(paths.dlrm, "fit_ranking"))
    inputs = {c: valid[c].to_numpy() for c in features}
    return rank_pairs(model, inputs, batch_rows)


@stage("evaluate")
def evaluate(config: Config, paths: RunPaths) -> dict[str, Any]:
    quiet_tensorflow()
    from .features import read_processed
    from .scoring import load_catalog

    top_k, top_n = config.scoring.top_k, config.scoring.top_n
    cutoffs = sorted({*config.evaluate.cutoffs, top_k})
    source = read_summary(paths, "generate_data").get("source", config.data.source)
    catalog = load_catalog(paths)
    train = read_processed(require(paths.train, "transform"), columns=["item_id_raw", "click"])
    valid = read_processed(require(paths.valid, "transform"))
    if len(valid) == 0:
        raise InputDataError(f"{paths.valid}: no validation rows to evaluate on")
    paths.fresh(paths.evaluation)

    # Validation clicks on known users and items, minus training clicks.
    user_lookup = _lookup(catalog.user_features["user_id_raw"])
    item_lookup = _lookup(catalog.item_features["item_id_raw"])
    clicks = valid[valid["click"] == 1]
    click_users = np.array([user_lookup.get(int(u), -1) for u in clicks["user_id_raw"]], dtype=np.int64)
    click_items = np.array([item_lookup.get(int(i), -1) for i in clicks["item_id_raw"]], dtype=np.int64)
    known = (click_users >= 0) & (click_items >= 0)
    eval_users, relevant = _relevant_by_user(click_users[known], click_items[known], catalog)
    if len(eval_users) == 0:
        raise InputDataError(f"{paths.valid}: no validation click of a known user on an unseen known item")

    popularity = popularity_scores(catalog, train)
    methods = {
        "model": lambda rows: catalog.user_embeddings[rows] @ catalog.item_embeddings.T,
        "popularity": lambda rows: np.tile(popularity, (len(rows), 1)),
    }
    if paths.truth.exists() and source == "planted":
        from .data import PlantedTruth

        truth = PlantedTruth.load(paths.truth)
        truth_users = _lookup(truth.user_ids)
        truth_items = np.array([_lookup(truth.item_ids)[int(i)] for i in catalog.item_features["item_id_raw"]])
        user_to_truth = np.array([truth_users[int(u)] for u in catalog.user_features["user_id_raw"]])

        def oracle(rows: np.ndarray) -> np.ndarray:
            return truth.expected_clicks(user_to_truth[rows])[:, truth_items]

        methods["oracle"] = oracle
    ranked = {name: rank_catalog(fn, catalog, eval_users, max(cutoffs)) for name, fn in methods.items()}
    retrieval = {
        "cutoffs": cutoffs,
        "users_evaluated": int(len(eval_users)),
        "relevant_items": int(sum(len(r) for r in relevant)),
        "valid_clicks": int(len(clicks)),
        "valid_clicks_unknown_user_or_item": int((~known).sum()),
        **{name: retrieval_metrics(rows, relevant, cutoffs) for name, rows in ranked.items()},
    }
    if "oracle" not in retrieval:
        retrieval["oracle"] = None

    # Ranking on every validation impression.
    ranking_features = read_summary(paths, "fit_ranking")["input_features"]
    predictions = _predict_ranking(paths, valid, ranking_features, config.scoring.rank_batch_rows)
    labels = valid["click"].to_numpy()
    valid_item_rows = np.array([item_lookup.get(int(i), -1) for i in valid["item_id_raw"]], dtype=np.int64)
    popularity_of_row = np.where(valid_item_rows >= 0, popularity[np.maximum(valid_item_rows, 0)], 0.0)
    ranking = {
        "rows": int(len(valid)),
        "click_rate": float(labels.mean()),
        "auc": auc(labels, predictions),
        "log_loss": log_loss(labels, predictions),
        "popularity_auc": auc(labels, popularity_of_row),
        "base_rate_log_loss": log_loss(labels, np.full(len(labels), labels.mean())),
    }

    # The published lists against retrieval order alone, for the same users.
    lists = _read_lists(paths)
    quality, list_rows = list_quality(lists, catalog, top_n)
    position = {int(u): i for i, u in enumerate(list_rows["user_rows"]) if u >= 0}
    with_list = np.array([u in position for u in eval_users])
    final_rows = [list_rows["item_rows"][position[int(u)]] for u in eval_users[with_list]]
    final_ranked = np.array(final_rows, dtype=np.int64).reshape(-1, top_n)
    relevant_with_list = [r for r, keep in zip(relevant, with_list) if keep]
    final = retrieval_metrics(final_ranked, relevant_with_list, [top_n])
    retrieval_only = retrieval_metrics(ranked["model"][with_list][:, :top_n], relevant_with_list, [top_n])
    quality.update({
        "users_evaluated": int(with_list.sum()),
        "recall_at_n": final["recall"][str(top_n)],
        "ndcg_at_n": final["ndcg"][str(top_n)],
        "retrieval_order_recall_at_n": retrieval_only["recall"][str(top_n)],
        "retrieval_order_ndcg_at_n": retrieval_only["ndcg"][str(top_n)],
    })

    # The popularity list published for unknown users.
    popular_rows = np.argsort(-popularity, kind="stable")[:top_n]
    fallback = {
        "recommendations": [int(x) for x in catalog.item_features["item_id_raw"][popular_rows]],
        "scores": [round(float(popularity[r]) / max(float(popularity.sum()), 1e-12), 6) for r in popular_rows],
    }
    paths.fallback_list.write_text(json.dumps(fallback))

    summaries = {name: read_summary(paths, name) for name in PRIOR_STAGES if paths.summary(name).exists()}
    report = {
        "source": source,
        "retrieval": retrieval,
        "ranking": ranking,
        "lists": quality,
        "stages": {name: {"seconds": s.get("seconds"), "device": s.get("device")} for name, s in summaries.items()},
        "processed": {
            "rows": summaries.get("transform", {}).get("rows", {}),
            "users_scored": summaries.get("score", {}).get("users"),
            "items": int(catalog.num_items),
        },
        "recommendations_sha256": recommendations_fingerprint(paths.recommendations),
        "fallback_list": str(paths.fallback_list),
        "data_window": summaries.get("generate_data", {}).get("window"),
    }
    paths.report_json.write_text(json.dumps(report, indent=2, sort_keys=True))
    if config.evaluate.plots:
        from .report import write_report

        write_report(
            paths,
            report,
            losses={n: summaries.get(n, {}).get("loss_per_epoch", []) for n in ("fit_retrieval", "fit_ranking")},
            validation_scores=(labels, predictions),
            published_scores=np.concatenate([np.zeros(0), *(np.asarray(s, dtype=np.float64) for s in lists["scores"])]),
            exposure=list_rows["exposure"],
        )
        report["report_md"] = str(paths.report_md)
    log.info("retrieval recall@%d: model %.4f, popularity %.4f, oracle %s", cutoffs[0],
             retrieval["model"]["recall"][str(cutoffs[0])], retrieval["popularity"]["recall"][str(cutoffs[0])],
             "n/a" if retrieval["oracle"] is None else f"{retrieval['oracle']['recall'][str(cutoffs[0])]:.4f}")
    log.info("ranking AUC %.4f (popularity %.4f), log loss %.4f",
             ranking["auc"], ranking["popularity_auc"], ranking["log_loss"])
    return {**report, "report_json": str(paths.report_json)}
