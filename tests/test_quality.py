"""Evaluation metrics on hand-made examples, the evaluate stage, the quality gate and the fallback list."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.config import QualityConfig
from recsys_tasks.evaluation.evaluate import (
    auc,
    catalog_coverage,
    gini,
    hits_matrix,
    log_loss,
    ndcg_at_k,
    recall_at_k,
    retrieval_metrics,
    top_k_rows,
)
from recsys_tasks.evaluation.gate import QualityGateError, run_checks

# --------------------------------------------------------------------------------------------------
# Metrics with known answers
# --------------------------------------------------------------------------------------------------


def test_recall_and_ndcg_on_a_hand_made_example():
    ranked = np.array([[5, 1, 7, -1], [2, 3, 4, 6]])
    relevant = [np.array([1, 9]), np.array([2, 4])]
    hits = hits_matrix(ranked, relevant)
    assert hits.tolist() == [[False, True, False, False], [True, False, True, False]]
    counts = np.array([2, 2])
    assert recall_at_k(hits, counts, 1) == pytest.approx((0 + 0.5) / 2)
    assert recall_at_k(hits, counts, 3) == pytest.approx((0.5 + 1.0) / 2)
    # user 0: hit at rank 2 -> 1/log2(3), ideal 1 + 1/log2(3); user 1: ranks 1 and 3 -> (1 + 1/2) / ideal.
    ideal = 1 + 1 / math.log2(3)
    expected = ((1 / math.log2(3)) / ideal + 1.5 / ideal) / 2
    assert ndcg_at_k(hits, counts, 3) == pytest.approx(expected)
    metrics = retrieval_metrics(ranked, relevant, [1, 3])
    assert metrics["recall"] == {"1": pytest.approx(0.25), "3": pytest.approx(0.75)}
    assert retrieval_metrics(np.array([[3, 2, 1]]), [np.array([3])], [1])["ndcg"]["1"] == 1.0


def test_auc_log_loss_gini_coverage_known_answers():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count one half
    assert auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1], [0.2, 0.3])
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert gini([5, 5, 5, 5]) == 0.0
    assert gini([0, 0, 0, 10]) == pytest.approx(0.75)  # (n - 1) / n for one item taking all
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)
    assert catalog_coverage([[1, 2], [2, 3]], 10) == pytest.approx(0.3)


def test_top_k_rows_orders_and_drops_masked():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5], [-np.inf, -np.inf, 0.2, -np.inf]])
    assert top_k_rows(scores, 3).tolist() == [[1, 3, 0], [2, -1, -1]]


# --------------------------------------------------------------------------------------------------
# The gate's checks on a hand-made report
# --------------------------------------------------------------------------------------------------


def hand_report(**lists_changes):
    lists = {
        "top_n": 5, "users_with_list": 100, "catalog_users": 100, "user_coverage": 1.0, "empty_lists": 0,
        "short_lists": 0, "duplicate_lists": 0, "lists_with_seen_item": 0, "users_evaluated": 80,
        "recall_at_n": 0.30, "retrieval_order_recall_at_n": 0.28, "popularity_recall_at_n": 0.10,
        "paired_difference": {"retrieval_order": {"recall_at_n": {"mean": 0.02, "ci95": [-0.01, 0.05]}},
                              "popularity": {"recall_at_n": {"mean": 0.20, "ci95": [0.15, 0.25]}}},
    }
    return {
        "retrieval": {
            "cutoffs": [10, 20],
            "model": {"recall": {"10": 0.30}},
            "popularity": {"recall": {"10": 0.10}},
        },
        "ranking": {"auc": 0.75, "popularity_auc": 0.55},
        "lists": {**lists, **lists_changes},
        "recommendations_sha256": "abc",
    }


def failed(report, settings=None, sha="abc"):
    settings = settings or QualityConfig()
    return {c["name"]: c["detail"] for c in run_checks(report, settings, sha) if not c["passed"]}


def test_gate_checks_each_failure_with_its_numbers():
    assert failed(hand_report()) == {}
    weak = hand_report()
    weak["retrieval"]["model"]["recall"]["10"] = 0.11
    assert "model recall@10 0.1100 vs popularity 0.1000 (needs >= 1.2x = 0.1200" in failed(weak)["retrieval_lift"]
    low_auc = hand_report()
    low_auc["ranking"]["auc"] = 0.52
    assert "DLRM validation AUC 0.5200 (floor 0.6" in failed(low_auc)["ranking_auc"]
    assert failed(hand_report(short_lists=3, lists_with_seen_item=1))["lists"].endswith(
        "short_lists=3, lists_with_seen_item=1"
    )
    assert "duplicate_lists=2" in failed(hand_report(duplicate_lists=2))["lists"]
    assert "empty_lists=1" in failed(hand_report(empty_lists=1))["lists"]
    assert "0.9000 of 100 known users" in failed(hand_report(user_coverage=0.9))["user_coverage"]
    assert "rerun the 'evaluate' stage" in failed(hand_report(), sha="other")["report_matches"]
    assert failed(weak, QualityConfig(min_recall_lift=1.05)) == {}


def test_gate_judges_the_published_lists_against_popularity_retrieval_order_and_live_lists():
    below_popularity = hand_report(popularity_recall_at_n=0.31, paired_difference={
        "retrieval_order": {"recall_at_n": {"mean": 0.02, "ci95": [-0.01, 0.05]}},
        "popularity": {"recall_at_n": {"mean": -0.01, "ci95": [-0.04, 0.02]}}})
    assert failed(below_popularity) == {"published_vs_popularity": (
        "published recall@5 0.3000 vs popularity 0.3100 on 80 validation users (paired difference -0.0100 "
        "[95% -0.0400, +0.0200]; must not be below)")}
    below_retrieval = hand_report(paired_difference={
        "retrieval_order": {"recall_at_n": {"mean": -0.03, "ci95": [-0.05, -0.01]}},
        "popularity": {"recall_at_n": {"mean": 0.2, "ci95": [0.15, 0.25]}}})
    assert "paired difference -0.0300 [95% -0.0500, -0.0100]" in failed(below_retrieval)[
        "published_vs_retrieval_order"]
    no_figures = hand_report()
    del no_figures["lists"]["paired_difference"]
    assert "rerun the 'evaluate' stage" in failed(no_figures)["published_vs_popularity"]

    def live(mean, low, high):
        return {"run_dir": "/runs/live", "live_recall_at_n": 0.33,
                "recall_at_n_difference": {"mean": mean, "ci95": [low, high]}}

    checks = {c["name"]: c for c in run_checks(hand_report(), QualityConfig(), "abc", live(-0.03, -0.06, -0.005))}
    assert not checks["published_vs_live"]["passed"]
    assert "vs the live lists 0.3300 of /runs/live" in checks["published_vs_live"]["detail"]
    checks = {c["name"]: c for c in run_checks(hand_report(), QualityConfig(), "abc", live(-0.01, -0.03, 0.01))}
    assert checks["published_vs_live"]["passed"]  # within the interval: not worse


# --------------------------------------------------------------------------------------------------
# The evaluate stage on the shared tiny run
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def evaluated_run(pipeline_run):
    from recsys_tasks.stages import run_stage

    config, paths, summaries = pipeline_run
    summary = run_stage("evaluate", config, paths.root)
    return config, paths, summary


def test_evaluate_writes_report_plots_and_xcom(evaluated_run):
    config, paths, summary = evaluated_run
    report = json.loads(paths.report_json.read_text())
    assert {k: summary[k] for k in report} == report  # the XCom carries the report
    retrieval = report["retrieval"]
    assert retrieval["cutoffs"] == sorted({10, 20, config.scoring.top_k})
    assert retrieval["oracle"] is not None  # planted data saves the truth
    for method in ("model", "popularity", "oracle"):
        recalls = [retrieval[method]["recall"][str(k)] for k in retrieval["cutoffs"]]
        assert all(0.0 <= r <= 1.0 for r in recalls) and recalls == sorted(recalls), method
    assert 0.0 <= report["ranking"]["auc"] <= 1.0
    lists = report["lists"]
    assert lists["lists_with_seen_item"] == 0 and lists["seen_item_share"] == 0.0
    assert lists["full_list_share"] == 1.0 and lists["user_coverage"] == 1.0
    assert set(report["stages"]) == {"generate_data", "transform", "fit_retrieval", "fit_ranking", "score"}
    for name in ("recall_at_k.png", "training_loss.png", "score_distribution.png", "item_exposure.png"):
        assert (paths.evaluation / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"({name})" in paths.report_md.read_text()


def test_popularity_recall_matches_a_brute_force_count(evaluated_run):
    """recall@10 of the popularity baseline recomputed with plain Python sets from the raw files."""
    config, paths, summary = evaluated_run
    train, valid = pd.read_parquet(paths.raw_train), pd.read_parquet(paths.raw_valid)
    catalog = set(pd.read_parquet(paths.item_features)["item_id_raw"].astype(int))
    users = set(pd.read_parquet(paths.user_features)["user_id_raw"].astype(int))
    clicks = train[train["click"] == 1]
    counts = clicks["item_id"].value_counts().to_dict()
    shown = train["item_id"].value_counts().to_dict()
    order = sorted(catalog, key=lambda i: (-(counts.get(i, 0) + 1e-6 * shown.get(i, 0)), i))
    seen = clicks.groupby("user_id")["item_id"].apply(set).to_dict()
    relevant = {}
    for user, item in zip(valid.loc[valid["click"] == 1, "user_id"], valid.loc[valid["click"] == 1, "item_id"]):
        if user in users and item in catalog and item not in seen.get(user, set()):
            relevant.setdefault(int(user), set()).add(int(item))
    recalls = []
    for user, items in relevant.items():
        top = [i for i in order if i not in seen.get(user, set())][:10]
        recalls.append(len(items & set(top)) / len(items))
    assert summary["retrieval"]["users_evaluated"] == len(relevant)
    assert summary["retrieval"]["popularity"]["recall"]["10"] == pytest.approx(np.mean(recalls))


# --------------------------------------------------------------------------------------------------
# The gate in load_redis, against a real Redis
# --------------------------------------------------------------------------------------------------


def redis_snapshot(client):
    return {key: (client.dump(key), client.ttl(key) > 0) for key in sorted(client.scan_iter("*"))}


@pytest.fixture(scope="session")
def broken_run(evaluated_run, tmp_path_factory):
    """A copy of the tiny run whose item embeddings are shuffled across items, rescored and re-evaluated."""
    from recsys_tasks.stages import run_stage

    config, paths, _ = evaluated_run
    root = tmp_path_factory.mktemp("broken") / "run"
    shutil.copytree(paths.root, root)
    embeddings = pd.read_parquet(root / "retrieval" / "item_embeddings.parquet")
    vectors = embeddings.drop(columns="item_id").to_numpy()
    embeddings.iloc[:, 1:] = vectors[np.random.default_rng(0).permutation(len(vectors))]
    embeddings.to_parquet(root / "retrieval" / "item_embeddings.parquet", index=False)
    run_stage("score", config, root)
    return config, root, run_stage("evaluate", config, root)


def test_good_run_passes_the_gate_and_publishes_the_fallback(evaluated_run, redis_client):
    from recsys_tasks.stages import run_stage
    from recsys_tasks.store import fetch

    config, paths, report = evaluated_run
    summary = run_stage("load_redis", config, paths.root, redis_client=redis_client, run_id="good")
    assert summary["quality_gate"]["passed"] is True and summary["quality_gate"]["forced"] is False
    known = int(pd.read_parquet(paths.user_features)["user_id_raw"].iloc[0])
    assert "fallback" not in fetch(redis_client, known, config.store)
    fallback = json.loads(paths.fallback_list.read_text())
    cold = fetch(redis_client, 10**9, config.store)
    assert cold["fallback"] is True and cold["user_id"] == 10**9 and cold["run_id"] == "good"
    assert cold["recommendations"] == fallback["recommendations"]
    assert len(cold["recommendations"]) == config.scoring.top_n
    # The fallback is the most clicked items of training.
    train = pd.read_parquet(paths.raw_train)
    top = train[train["click"] == 1]["item_id"].value_counts()
    assert cold["recommendations"][0] in set(top[top == top.iloc[0]].index)
    assert redis_client.ttl(config.store.fallback_key) > 0
    assert fetch(redis_client, 10**9, config.store, fallback=False) is None


def test_broken_model_is_refused_and_redis_is_untouched(evaluated_run, broken_run, redis_client):
    from recsys_tasks.stages import run_stage

    config, paths, _ = evaluated_run
    run_stage("load_redis", config, paths.root, redis_client=redis_client, run_id="good")
    before = redis_snapshot(redis_client)
    _, root, report = broken_run
    assert report["retrieval"]["model"]["recall"]["10"] < report["retrieval"]["popularity"]["recall"]["10"]
    with pytest.raises(QualityGateError, match=r"retrieval_lift: model recall@10 0\.\d+ vs popularity") as err:
        run_stage("load_redis", config, root, redis_client=redis_client, run_id="broken")
    assert "Redis was not touched" in str(err.value)
    assert redis_snapshot(redis_client) == before


def test_force_publish_overrides_the_gate_loudly(broken_run, redis_client, caplog):
    from recsys_tasks.stages import run_stage
    from recsys_tasks.store import read_manifest

    config, root, _ = broken_run
    forced = config.with_overrides({"quality.force_publish": True})
    with caplog.at_level(logging.INFO, logger="recsys_tasks"):
        summary = run_stage("load_redis", forced, root, redis_client=redis_client, run_id="forced")
    assert summary["quality_gate"] == {**summary["quality_gate"], "passed": False, "forced": True}
    manifest = read_manifest(redis_client, config.store)
    assert (manifest["run_id"], manifest["forced"], manifest["forced_by"]) == ("forced", True, ["quality"])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("PUBLISHING ANYWAY" in m for m in errors)
    assert any("failed retrieval_lift" in m for m in errors)
    assert any("RUN SUMMARY" in r.getMessage() for r in caplog.records)


def test_stale_report_is_refused(evaluated_run, tmp_path, redis_client):
    from recsys_tasks.stages import run_stage

    config, paths, _ = evaluated_run
    root = tmp_path / "run"
    shutil.copytree(paths.root, root)
    part = next((root / "scoring" / "recommendations").glob("*.parquet"))
    part.write_bytes(part.read_bytes())  # same content: still matches
    table = pd.read_parquet(part)
    # Recommendations changed after evaluate (same users, so the shard plan still matches).
    table.at[0, "recommendations"] = list(reversed(table.at[0, "recommendations"]))
    table.to_parquet(part, index=False)
    with pytest.raises(QualityGateError, match="report_matches"):
        run_stage("load_redis", config, root, redis_client=redis_client, run_id="stale")
    assert redis_client.dbsize() == 0


def shuffled_ranking_run(source_root, root, config):
    """A copy of a run whose final order is the top N of the K candidates by shuffled (random) scores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_tasks.cli import run_stage
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.scoring.candidates import retrieve
    from recsys_tasks.scoring.catalog import load_catalog
    from recsys_tasks.scoring.stage import recommendations_schema

    shutil.copytree(source_root, root)
    paths = RunPaths(root)
    catalog = load_catalog(paths)
    users = np.arange(catalog.num_users)
    candidates, _ = retrieve(catalog, users, config.scoring.top_k, "tiled")
    random_scores = np.random.default_rng(0).random(candidates.shape)
    picked = np.take_along_axis(candidates, np.argsort(-random_scores, axis=1)[:, :config.scoring.top_n], axis=1)
    part = paths.recommendation_part(0)
    table = pa.table({"user_id": catalog.user_features["user_id_raw"],
                      "recommendations": catalog.item_features["item_id_raw"][picked].tolist(),
                      "scores": np.sort(random_scores, axis=1)[:, ::-1][:, :config.scoring.top_n].tolist(),
                      "user_id_encoded": catalog.user_features["user_id"]}, schema=recommendations_schema())
    pq.write_table(table, part)
    return run_stage("evaluate", config, root)


@pytest.mark.parametrize("history", ["train", "window"])
def test_shuffled_ranking_is_refused_with_nothing_written(evaluated_run, tmp_path, redis_client, history):
    """With ``scoring.history=train`` the gate's figures are the written lists' own: below the retrieval order.
    With ``window`` they are the training days' lists, so the written ones must reproduce from the window."""
    from recsys_tasks.cli import run_stage

    config, paths, _ = evaluated_run
    config = config.with_overrides({"scoring.history": history})
    report = shuffled_ranking_run(paths.root, tmp_path / "shuffled", config)
    if history == "train":
        assert report["lists"]["paired_difference"]["retrieval_order"]["recall_at_n"]["ci95"][1] < 0
        refusal = r"published_vs_retrieval_order: published recall@\d+ 0\.\d+ vs retrieval order"
    else:
        assert report["lists"]["written_lists_reproduced"]["share"] < 0.5
        refusal = r"written_lists_reproduced: 0\.\d+ of \d+ evaluated users' written lists"
    with pytest.raises(QualityGateError, match=refusal) as err:
        run_stage("load_redis", config, tmp_path / "shuffled", redis_client=redis_client, run_id="shuffled")
    assert "Redis was not touched" in str(err.value)
    assert redis_client.dbsize() == 0


def test_lists_worse_than_the_live_run_are_refused(evaluated_run, tmp_path, redis_client):
    """The live run (found through the manifest: its run id names a sibling run directory) is the yardstick.

    With ``scoring.history=train`` the shuffled written lists are the ones judged against the live ones."""
    from recsys_tasks.cli import run_stage

    config, paths, _ = evaluated_run
    config = config.with_overrides({"scoring.history": "train"})
    base = tmp_path / "base"
    shutil.copytree(paths.root, base)
    for name in ("score", "evaluate"):
        run_stage(name, config, base)
    shutil.copytree(base, tmp_path / "live")
    published = run_stage("load_redis", config, tmp_path / "live", redis_client=redis_client, run_id="live")
    assert published["quality_gate"]["live"] == {"skipped": "no run is published yet"}
    # Judged against the live lists, the same lists again are not worse (difference exactly 0).
    shutil.copytree(base, tmp_path / "same")
    again = run_stage("load_redis", config, tmp_path / "same", redis_client=redis_client, run_id="same")
    live = again["quality_gate"]["live"]
    assert live["run_dir"] == str(tmp_path / "live") and live["recall_at_n_difference"]["mean"] == 0.0
    before = redis_snapshot(redis_client)
    shuffled_ranking_run(base, tmp_path / "worse", config)
    relaxed = config.with_overrides({"quality.min_recall_lift": 0.0})
    with pytest.raises(QualityGateError, match=r"published_vs_live: published recall@\d+ 0\.\d+ vs the live lists "
                                               r"0\.\d+ of .*same") as err:
        run_stage("load_redis", relaxed, tmp_path / "worse", redis_client=redis_client, run_id="worse")
    assert "Redis was not touched" in str(err.value)
    assert redis_snapshot(redis_client) == before
