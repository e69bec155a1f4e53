"""bench-quality: its parts on hand-made data, and a small real run (ML-100K sample, real pipeline, real Redis)."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pandas as pd
from scipy import sparse

from recsys_tasks.bench.quality.evaluation import evaluate_methods, relevant_clicks
from recsys_tasks.bench.quality.peers import ease, implicit_available, item_knn, popularity, top_n
from recsys_tasks.bench.quality.split import time_split
from recsys_tasks.cli import main as cli_main

CLICKS = sparse.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 1]], dtype=np.float64))


def test_ease_is_the_closed_form():
    l2 = 2.0
    gram = CLICKS.T.toarray() @ CLICKS.toarray() + l2 * np.eye(4)
    inverse = np.linalg.inv(gram)
    weights = np.eye(4) - inverse / np.diag(inverse)  # Steck (2019), eq. 8
    expected = CLICKS.toarray() @ weights
    assert np.allclose(ease(CLICKS, l2)(np.arange(4)), expected)


def test_item_knn_is_cosine_with_kept_neighbours():
    dense = CLICKS.toarray()
    cosine = dense.T @ dense / np.outer(np.linalg.norm(dense, axis=0), np.linalg.norm(dense, axis=0))
    np.fill_diagonal(cosine, 0)
    assert np.allclose(item_knn(CLICKS, neighbours=4)(np.array([0])), dense[[0]] @ cosine)
    one = item_knn(CLICKS, neighbours=1)(np.arange(4))
    strongest = cosine * (cosine == cosine.max(axis=0))
    assert np.allclose(one, dense @ strongest)


def test_top_n_never_lists_an_excluded_item():
    scores = popularity(CLICKS)(np.array([0, 1]))
    ranked = top_n(scores, CLICKS.indptr, CLICKS.indices, np.array([0, 1]), 3)
    assert ranked[0].tolist() == [2, 3, -1]  # user 0 rated items 0 and 1; only two items are left
    assert ranked[1].tolist() == [3, -1, -1]


def test_time_split_orders_whole_days():
    start = datetime.date(2026, 1, 1)
    days = np.array([start + datetime.timedelta(days=int(d)) for d in np.repeat(np.arange(10), 10)])
    split = time_split(days, valid_fraction=0.1, test_fraction=0.2)
    assert split.train == (start, start + datetime.timedelta(days=6))
    assert split.valid == (start + datetime.timedelta(days=7),) * 2
    assert split.test == (start + datetime.timedelta(days=8), start + datetime.timedelta(days=9))
    assert split.window_days == 8 and split.valid_days == 1
    assert {k: v["interactions"] for k, v in split.describe(days).items()} == {"train": 70, "valid": 10, "test": 20}


def test_relevant_clicks_are_new_items_of_known_users():
    history = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "rating": [5, 2, 4]})
    target = pd.DataFrame({"user_id": [1, 1, 1, 3, 2], "item_id": [11, 12, 13, 10, 12], "rating": [5, 4, 3, 5, 5]})
    users, relevant = relevant_clicks(history, target)
    # 11 was already rated by user 1, 13 is not a click (3 < 4), user 3 has no history.
    assert users.tolist() == [1, 2] and [r.tolist() for r in relevant] == [[12], [12]]


def test_paired_differences_are_against_the_published_lists():
    relevant = [np.array([1]), np.array([2, 3])]
    lists = {"published": np.array([[1, 9], [9, 9]]), "other": np.array([[9, 1], [2, 3]])}
    results = evaluate_methods(lists, relevant, catalog_size=10, cutoffs=[1, 2],
                               rated=[np.array([9]), np.array([4])])
    assert results["published"]["recall@2"]["mean"] == 0.5 and results["other"]["recall@2"]["mean"] == 1.0
    assert results["other"]["recall@2"]["vs_published"]["mean"] == 0.5
    assert results["other"]["recall@1"]["vs_published"]["mean"] == -0.25  # -1 for one user, +0.5 for the other
    assert results["published"]["coverage"] == 0.2 and "vs_published" not in results["published"]["recall@2"]
    # Item 9 was already rated by user 0: one of published's two slots there, none for user 1 (who rated 4).
    assert results["published"]["already_rated_share"] == 0.25 and results["other"]["already_rated_share"] == 0.25


def test_small_bench_quality_runs_the_pipeline_and_reads_redis(tmp_path, capsys):
    out = tmp_path / "quality"
    argv = ["bench-quality", "--out", str(out), "--users", "300", "--quick", "--set", "retrieval.epochs=2",
            "--set", "ranking.epochs=1"]
    assert cli_main(argv) == 0
    assert "| this project, published (read back from Redis) |" in capsys.readouterr().out
    result = json.loads((out / "quality.json").read_text())
    methods = {"published", "retrieval_order", "popularity", "recent_popularity", "item_knn", "ease"}
    methods |= {"als", "bpr"} if implicit_available() else set()
    assert set(result["results"]) == methods
    split = result["split"]
    assert split["train"]["last_day"] < split["valid"]["first_day"] <= split["valid"]["last_day"] \
        < split["test"]["first_day"]
    assert sum(split[p]["interactions"] for p in ("train", "valid", "test")) == result["data"]["ratings"]
    assert result["pipeline"]["settings"]["data"]["end_date"] == split["valid"]["last_day"]
    assert result["pipeline"]["settings"]["data"]["user_features"] == "age:continuous,gender,occupation"
    assert result["pipeline"]["settings"]["data"]["item_features"] == "release_year,genres:multi"
    assert result["protocol"]["test_users"] > 10
    assert set(result["pipeline"]["stage_seconds"]) >= {"transform", "fit_ranking", "load_redis"}
    for name, entry in result["results"].items():
        assert 0.0 <= entry["recall@20"]["mean"] <= 1.0 and 0.0 < entry["coverage"] <= 1.0, name
        low, high = entry["ndcg@10"]["ci95"]
        assert low <= entry["ndcg@10"]["mean"] <= high
    # Popularity on a sample of ML-100K lands somewhere above nothing: the lists and the clicks line up.
    assert result["results"]["popularity"]["recall@20"]["mean"] > 0.02
    assert result["results"]["published"]["recall@20"]["mean"] > 0.0
    assert set(result["peer_settings"]["ease"]["chosen"]) == {"l2"}
    assert result["results"]["ease"]["already_rated_share"] == 0.0  # peers exclude every rated item
    assert (out / "report.md").read_text().startswith("# bench-quality: MovieLens-100K")
