"""Stage ``evaluate`` (between ``score`` and ``load_redis``): is today's model any good?

Writes ``report.json`` in the run directory (also the task's XCom), the PNG plots and
``evaluation/report.md`` (see :mod:`recsys_tasks.evaluation.report`) and the popularity list that ``load_redis``
publishes for unknown users. Protocol, chosen to match what is published:

* **Users.** A fixed-size, seeded sample of the validation users the model knows
  (``evaluate.sample_users``, 50,000 by default; every such user when there are fewer, so small runs
  are evaluated exhaustively): retrieval, ranking and the baselines are all scored on that same
  sample, so evaluation time and memory stop growing with the data. Each metric carries its 95%
  interval over the sampled users (see :mod:`recsys_tasks.evaluation.metrics`).
* Retrieval is scored over the **full catalog** on validation clicks. A user's relevant items are the
  distinct catalog items they clicked in validation outside their exclusion set (``scoring.exclude``:
  their training clicks, or every item shown to them in training); published lists never hold those
  items, so they are masked for every method, popularity included. Users absent from the
  training data (cold users) cannot be scored and are counted apart. recall@k = hits in the top k /
  relevant items; ndcg@k with binary gains; both averaged over users.
* Methods: the Two-Tower model (dot product of the exported embeddings), a popularity baseline
  (items by training clicks) and, on ``planted`` data, the oracle that ranks by the true expected
  clicks ``P(shown) x P(click | shown)`` from ``raw/truth.npz``.
* Ranking: exact AUC and log loss of the DLRM on every validation impression of the sampled users;
  the popularity score's (item training clicks) AUC as baseline.
* Published lists: shape checks over **every** list (the quality gate needs them all): shares of
  full/short/empty lists, lists with duplicates and lists holding a training click (must be 0),
  catalog coverage and Gini of item exposure; recall@N / ndcg@N of exactly the lists to be written (the
  fallback for sampled users without one) beside the retrieval order and popularity on the same users,
  with paired 95% intervals (the gate's figures); on planted data the counterfactual expected clicks.

Everything is vectorised over users (CSR arrays, sorted-key lookups); inputs are streamed from parquet
batch by batch and only the sampled users' validation rows are kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..paths import RunPaths, recommendation_files, require
from ..runtime import InputDataError, get_logger, quiet_tensorflow, read_summary, stage
from .counterfactual import TruthLookup, counterfactual_report
from .lists import (
    flat_lists,
    list_quality,
    published_list_metrics,
    read_lists,
    reproduced_share,
    training_days_lists,
)
from .live import save_sample
from .metrics import (  # noqa: F401  (re-exported: the metric functions' historical home)
    Relevant,
    RowLookup,
    auc,
    auc_ci95,
    catalog_coverage,
    gini,
    hits_csr,
    hits_matrix,
    log_loss,
    log_loss_per_row,
    mean_ci95,
    metrics_from_hits,
    ndcg_at_k,
    recall_at_k,
    relevant_items,
    retrieval_metrics,
    top_k_rows,
)
from .validation_sample import column_values, iter_parquet, read_sampled_validation, seen_keys

log = get_logger("evaluate")

SCORE_CHUNK_ELEMENTS = 1 << 24
"""Users x items scores held at once while ranking the catalog (64 MB in float32)."""
PRIOR_STAGES = ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score")


def recommendations_fingerprint(path: Path) -> str:
    """sha256 over every part of the recommendations, so the gate can tell a stale report."""
    digest = hashlib.sha256()
    for file in recommendation_files(path):
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Ranking the catalog for each method
# --------------------------------------------------------------------------------------------------


def mask_seen(scores: np.ndarray, catalog: Any, user_rows: np.ndarray) -> np.ndarray:
    """Set the training clicks of each row's user to -inf, in one scatter."""
    starts = catalog.seen_indptr[user_rows]
    counts = catalog.seen_indptr[user_rows + 1] - starts
    total = int(counts.sum())
    if total:
        rows = np.repeat(np.arange(len(user_rows)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        scores[rows, catalog.seen_items[np.repeat(starts, counts) + offsets]] = -np.inf
    return scores


def rank_catalog(score_fn: Any, catalog: Any, user_rows: np.ndarray, k: int) -> np.ndarray:
    """Top-k unseen item rows for each user, ``score_fn(chunk_user_rows) -> [chunk, items]``.

    Users go through in chunks of ``SCORE_CHUNK_ELEMENTS / items``, so memory does not grow with them.
    """
    chunk_rows = max(1, SCORE_CHUNK_ELEMENTS // max(catalog.num_items, 1))
    parts = [np.zeros((0, min(k, catalog.num_items)), dtype=np.int64)]
    for start in range(0, len(user_rows), chunk_rows):
        chunk = user_rows[start:start + chunk_rows]
        scores = np.array(score_fn(chunk), dtype=np.float64)
        parts.append(top_k_rows(mask_seen(scores, catalog, chunk), k))
    return np.concatenate(parts)


def rank_by_popularity(popularity: np.ndarray, catalog: Any, seen: np.ndarray, user_rows: np.ndarray,
                       k: int) -> np.ndarray:
    """The popularity order with each user's seen items skipped, without a users x catalog matrix.

    Every user's list is the first k unseen items of one global order, so only the first
    ``k + (most items any of these users has seen)`` items of that order are candidates.
    """
    order = np.argsort(-popularity, kind="stable")
    most_seen = int(np.diff(catalog.seen_indptr)[user_rows].max(initial=0))
    candidates = order[: min(len(order), k + most_seen)]
    is_seen = np.isin(user_rows[:, None] * catalog.num_items + candidates[None, :], seen)
    # Unseen candidates first, each group in popularity order (a stable sort on the flag).
    picked = np.argsort(is_seen, axis=1, kind="stable")[:, : min(k, len(candidates))]
    ranked = candidates[picked]
    ranked[np.take_along_axis(is_seen, picked, axis=1)] = -1
    return ranked


def popularity_scores(paths: RunPaths, items: RowLookup, num_items: int) -> np.ndarray:
    """Training clicks per catalog item, impressions as a tiny tie-breaker (streamed from parquet)."""
    clicks = np.zeros(num_items)
    shown = np.zeros(num_items)
    for batch in iter_parquet(require(paths.train, "transform"), ["item_id_raw", "click"]):
        rows = items.rows(column_values(batch, "item_id_raw"))
        known = rows >= 0
        clicks += np.bincount(rows[known], weights=column_values(batch, "click")[known], minlength=num_items)
        shown += np.bincount(rows[known], minlength=num_items)
    return clicks + 1e-6 * shown


def _fallback_popularity(catalog: Any, popularity: np.ndarray, blend: dict[str, Any] | None) -> np.ndarray:
    """What the fallback list is ranked by: training clicks, or with a time-decayed blend prior the decayed
    clicks (all-time clicks break ties)."""
    half_life = float(((blend or {}).get("chosen") or {}).get("half_life_days", 0.0))
    if not half_life:
        return popularity
    return np.expm1(catalog.prior(half_life)) + 1e-6 * popularity


def _predict_ranking(model: Any, valid: Any, features: list[str], batch_rows: int) -> np.ndarray:
    from ..scoring.ranker import rank_pairs

    inputs = {c: valid[c].to_numpy() for c in features}
    return rank_pairs(model, inputs, batch_rows)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@stage("evaluate")
def evaluate(config: Config, paths: RunPaths) -> dict[str, Any]:
    quiet_tensorflow()
    from ..scoring.catalog import load_catalog, with_history

    top_k, top_n = config.scoring.top_k, config.scoring.top_n
    cutoffs = sorted({*config.evaluate.cutoffs, top_k})
    source = read_summary(paths, "generate_data").get("source", config.data.source)
    ranking_features = read_summary(paths, "fit_ranking")["input_features"]
    catalog = load_catalog(paths, config.scoring.exclude)
    users = RowLookup(catalog.user_features["user_id_raw"])
    items = RowLookup(catalog.item_features["item_id_raw"])
    seen = seen_keys(catalog)
    require(paths.valid, "transform")
    valid, sample = read_sampled_validation(paths.valid, users, items, config.evaluate.sample_users,
                                            config.evaluate.sample_seed, ranking_features)
    if len(valid) == 0:
        raise InputDataError(f"{paths.valid}: no validation rows of a user known from training to evaluate on")
    paths.fresh(paths.evaluation)
    log.info("evaluating on %d of %d known validation users (%d validation rows)", sample["users_sampled"],
             sample["known_users_in_validation"], len(valid))

    # Validation clicks of the sampled users on known items, minus training clicks.
    is_click = valid["click"].to_numpy() == 1
    click_items = valid["item_row"].to_numpy()[is_click]
    known = click_items >= 0
    relevant = relevant_items(valid["user_row"].to_numpy()[is_click][known], click_items[known], seen,
                              catalog.num_items)
    if len(relevant.eval_users) == 0:
        raise InputDataError(f"{paths.valid}: no validation click of a known user on an unseen known item")

    popularity = popularity_scores(paths, items, catalog.num_items)
    ranked = {
        "model": rank_catalog(lambda rows: catalog.user_embeddings[rows] @ catalog.item_embeddings.T, catalog,
                              relevant.eval_users, max(cutoffs)),
        "popularity": rank_by_popularity(popularity, catalog, seen, relevant.eval_users, max(cutoffs)),
    }
    truth = TruthLookup(paths.truth, catalog) if paths.truth.exists() and source == "planted" else None
    if truth is not None:
        ranked["oracle"] = rank_catalog(truth.expected_clicks, catalog, relevant.eval_users, max(cutoffs))
    retrieval = {
        "cutoffs": cutoffs,
        "sample": sample,
        "confidence_interval": "95%, normal approximation over the evaluated users",
        "users_evaluated": int(len(relevant.eval_users)),
        "relevant_items": int(len(relevant.items)),
        "valid_clicks": int(is_click.sum()),
        "valid_clicks_unknown_user_or_item": int((~known).sum()),
        **{name: metrics_from_hits(hits_csr(rows, relevant.indptr, relevant.items), relevant.counts, cutoffs)
           for name, rows in ranked.items()},
    }
    retrieval.setdefault("oracle", None)

    # Ranking on every validation impression of the sampled users.
    from ..training.ranking import load_dlrm

    model = load_dlrm(require(paths.dlrm, "fit_ranking"))
    predictions = _predict_ranking(model, valid, ranking_features, config.scoring.rank_batch_rows)
    labels = valid["click"].to_numpy()
    item_rows = valid["item_row"].to_numpy()
    popularity_of_row = np.where(item_rows >= 0, popularity[np.maximum(item_rows, 0)], 0.0)
    model_auc, popularity_auc = auc(labels, predictions), auc(labels, popularity_of_row)
    loss, loss_ci = mean_ci95(log_loss_per_row(labels, predictions))
    ranking = {
        "rows": int(len(valid)),
        "users": sample["users_sampled"],
        "click_rate": float(labels.mean()),
        "auc": model_auc,
        "auc_ci95": auc_ci95(model_auc, labels),
        "log_loss": loss,
        "log_loss_ci95": loss_ci,
        "popularity_auc": popularity_auc,
        "popularity_auc_ci95": auc_ci95(popularity_auc, labels),
        "base_rate_log_loss": log_loss(labels, np.full(len(labels), labels.mean())),
        "confidence_interval": "95%: AUC by Hanley & McNeil's standard error, log loss normal over rows",
    }

    # Every published list's shape; the sampled users' lists against retrieval order alone.
    lists = read_lists(paths)
    quality, list_rows = list_quality(lists, catalog, users, items, seen, top_n)
    # The popularity list published for unknown users: under the blend's prior (time-decayed when it was chosen).
    fallback_popularity = _fallback_popularity(catalog, popularity, read_summary(paths, "score").get("blend"))
    popular_rows = np.argsort(-fallback_popularity, kind="stable")[:top_n]
    references = {"retrieval_order": ranked["model"], "popularity": ranked["popularity"]}
    judged = list_rows
    if config.scoring.history == "window":
        # The published lists also know the validation days; judged on them is what the same models and blend
        # publish from the training days alone (scoring.history). What is written must be what the same code
        # gives from the whole window: recomputed for these users and compared list by list.
        window = with_history(catalog, paths, config.scoring.exclude, "window")
        training_days, whole_window = training_days_lists(config, paths, [catalog, window], relevant.eval_users,
                                                          model)
        judged = {"user_rows": relevant.eval_users, "item_rows": training_days}
        quality["written_lists_reproduced"] = reproduced_share(list_rows, relevant.eval_users, whole_window)
    published, published_per_user = published_list_metrics(judged, relevant, references, popular_rows,
                                                            catalog.num_users, top_n)
    published["judged"] = ("the lists the run's models and blend publish from the training days (scoring.history="
                           "window: the published ones also exclude the validation days' items and count them in "
                           "the popularity prior)" if judged is not list_rows else "the published lists")
    quality.update(published)
    counterfactual = None
    if truth is not None:
        orders = {"published": published_per_user["rows"], **references, "oracle": ranked["oracle"],
                  "click_oracle": rank_catalog(truth.click_probability, catalog, relevant.eval_users, top_n)}
        counterfactual = counterfactual_report(truth, relevant.eval_users, orders, catalog.num_items, top_n)
    save_sample(paths, relevant, catalog.user_features["user_id_raw"], catalog.item_features["item_id_raw"],
                published_per_user, top_n)
    fallback = {
        "recommendations": [int(x) for x in catalog.item_features["item_id_raw"][popular_rows]],
        "scores": [round(float(fallback_popularity[r]) / max(float(fallback_popularity.sum()), 1e-12), 6)
                   for r in popular_rows],
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
        "blend": summaries.get("score", {}).get("blend"),
        "window_fold_in": summaries.get("score", {}).get("window_fold_in"),
        "counterfactual": counterfactual,
        "recommendations_sha256": recommendations_fingerprint(paths.recommendations),
        "fallback_list": str(paths.fallback_list),
        "data_window": summaries.get("generate_data", {}).get("window"),
    }
    paths.report_json.write_text(json.dumps(report, indent=2, sort_keys=True))
    if config.evaluate.plots:
        from .report import write_report

        scores, _ = flat_lists(lists.column("scores"))
        write_report(
            paths,
            report,
            losses={n: summaries.get(n, {}).get("loss_per_epoch", []) for n in ("fit_retrieval", "fit_ranking")},
            validation_scores=(labels, predictions),
            published_scores=scores.astype(np.float64),
            exposure=list_rows["exposure"],
        )
        report["report_md"] = str(paths.report_md)
    k = str(cutoffs[0])
    log.info("retrieval recall@%s on %d users: model %.4f, popularity %.4f, oracle %s", k,
             retrieval["users_evaluated"], retrieval["model"]["recall"][k], retrieval["popularity"]["recall"][k],
             "n/a" if retrieval["oracle"] is None else f"{retrieval['oracle']['recall'][k]:.4f}")
    log.info("ranking AUC %.4f (popularity %.4f), log loss %.4f",
             ranking["auc"], ranking["popularity_auc"], ranking["log_loss"])
    return {**report, "report_json": str(paths.report_json)}
