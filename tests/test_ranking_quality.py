"""The final order's blend fit (scoring/blend.py) and the list comparisons of evaluation/lists.py, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_tasks.evaluation.lists import published_list_metrics
from recsys_tasks.evaluation.metrics import Relevant
from recsys_tasks.scoring.blend import DLRM_ORDER, RETRIEVAL_ORDER, Blend, choose, grid, logit


def hand_candidates(users=400, k=10, seed=0):
    """Users x k candidates in retrieval order; which candidates are relevant is planted per case."""
    rng = np.random.default_rng(seed)
    retrieval = np.sort(rng.normal(size=(users, k)), axis=1)[:, ::-1].copy()
    return rng, retrieval, np.ones((users, k), dtype=bool), np.zeros((users, k))


def test_an_uninformative_ranker_leaves_the_retrieval_order():
    rng, retrieval, valid, popularity = hand_candidates()
    hits = rng.random(retrieval.shape) < np.linspace(0.5, 0.05, retrieval.shape[1])  # retrieval order is right
    noise = rng.random(retrieval.shape)  # the DLRM knows nothing
    best, table, check = choose([Blend(b.weights, name=b.name) for b in grid()], retrieval, noise, popularity, hits,
                                hits.sum(axis=1), 3, valid)
    by_name = {row["name"]: row for row in table}
    assert by_name["dlrm order"]["recall@3"] < by_name["retrieval order"]["recall@3"]
    assert by_name[best.name]["recall@3"] >= by_name["retrieval order"]["recall@3"]
    assert best.name == "retrieval order" or best.weights["dlrm"] <= 0.5


def test_an_informative_ranker_is_chosen_and_the_cross_validated_check_sees_its_gain():
    rng, retrieval, valid, popularity = hand_candidates()
    hits = rng.random(retrieval.shape) < 0.2
    probability = np.where(hits, 0.8, 0.2) + 0.05 * rng.random(retrieval.shape)  # the DLRM knows the clicks
    best, table, check = choose([Blend(b.weights, name=b.name) for b in grid()], retrieval, probability,
                                popularity, hits, np.maximum(hits.sum(axis=1), 1), 3, valid)
    assert best.uses_dlrm
    assert check["ci95"][0] > 0


def test_ties_keep_the_retrieval_order_and_padding_is_never_ranked_first():
    _, retrieval, valid, popularity = hand_candidates(users=5, k=4)
    hits = np.zeros(retrieval.shape, dtype=bool)
    best, _, _ = choose([RETRIEVAL_ORDER, DLRM_ORDER], retrieval, np.full(retrieval.shape, 0.5), popularity, hits,
                        np.ones(5, dtype=np.int64), 2, valid)
    assert best is RETRIEVAL_ORDER
    assert RETRIEVAL_ORDER.combine(retrieval, None, popularity).dtype == np.float32
    with pytest.raises(ValueError, match="no DLRM scores"):
        DLRM_ORDER.combine(retrieval, None, popularity)
    assert Blend.from_json(DLRM_ORDER.to_json()) == DLRM_ORDER
    np.testing.assert_allclose(logit(np.array([0.5, 0.9])), [0.0, np.log(9.0)])


def test_published_lists_are_compared_on_the_same_users_with_the_fallback_for_those_without_one():
    # Users 0..2 evaluated; user 2 has no list and gets the fallback [5, 6].
    relevant = Relevant(eval_users=np.array([0, 1, 2]), indptr=np.array([0, 1, 2, 3]), items=np.array([1, 3, 5]))
    list_rows = {"user_rows": np.array([0, 1]), "item_rows": np.array([[1, 2], [4, 0]])}
    references = {"retrieval_order": np.array([[2, 1], [3, 4], [7, 8]]), "popularity": np.array([[5, 6]] * 3)}
    out, per_user = published_list_metrics(list_rows, relevant, references, np.array([5, 6]), 3, 2)
    assert out["users_with_fallback"] == 1
    np.testing.assert_allclose(per_user["recall"], [1.0, 0.0, 1.0])
    assert out["recall_at_n"] == pytest.approx(2 / 3)
    assert out["retrieval_order_recall_at_n"] == pytest.approx(2 / 3)
    assert out["popularity_recall_at_n"] == pytest.approx(1 / 3)
    assert out["paired_difference"]["popularity"]["recall_at_n"]["mean"] == pytest.approx(1 / 3)
    assert out["paired_difference"]["retrieval_order"]["recall_at_n"]["mean"] == pytest.approx(0.0)
    # ndcg: user 0 hit at rank 1 (1.0) vs rank 2 in retrieval order (1/log2(3)).
    assert out["paired_difference"]["retrieval_order"]["ndcg_at_n"]["mean"] == pytest.approx(
        (1.0 - 1 / np.log2(3) + 0.0 - 1.0 + 1.0) / 3)


def test_live_lists_are_judged_on_this_runs_users_with_the_fallback_for_users_without_a_document(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_tasks.evaluation.live import compare_with_live, live_run_dir, save_sample
    from recsys_tasks.paths import RunPaths

    this, live = RunPaths(tmp_path / "this"), RunPaths(tmp_path / "live")
    assert live_run_dir(this, {"run_id": "live"}, "this")[0] is None  # this run was not evaluated
    this.evaluation.mkdir(parents=True)
    # Raw ids: users 10, 11, 12 (rows 0..2), items 100.. (rows 0..); relevant: 10 -> 101, 11 -> 103, 12 -> 105.
    relevant = Relevant(eval_users=np.array([0, 1, 2]), indptr=np.array([0, 1, 2, 3]), items=np.array([1, 3, 5]))
    save_sample(this, relevant, np.array([10, 11, 12]), np.arange(100, 110), {"recall": np.array([1.0, 1.0, 0.0]),
                                                                              "ndcg": np.array([1.0, 1.0, 0.0])}, 2)
    assert live_run_dir(this, None, "this") == (None, "no run is published yet")
    assert live_run_dir(this, {"run_id": "this"}, "this")[0] is None
    assert "has no recommendations" in live_run_dir(this, {"run_id": "live"}, "this")[1]
    live.recommendations.mkdir(parents=True)
    # User 10's live list hits at rank 2, user 11's misses, user 12 has no document: fallback [105, 106] hits.
    pq.write_table(pa.table({"user_id": [10, 11], "recommendations": [[104, 101, 102], [100, 102]]}),
                   live.recommendation_part(0))
    assert live_run_dir(this, {"run_id": "live"}, "this")[0] == live.root
    out = compare_with_live(this, live.root, [105, 106])
    assert out["users_with_fallback"] == 1
    assert out["live_recall_at_n"] == pytest.approx(2 / 3)
    assert out["recall_at_n_difference"]["mean"] == pytest.approx((0.0 + 1.0 - 1.0) / 3)
    assert out["ndcg_at_n_difference"]["mean"] == pytest.approx((1.0 - 1 / np.log2(3) + 1.0 - 1.0) / 3)


def test_an_order_covering_too_little_of_the_catalogue_is_not_chosen():
    from recsys_tasks.scoring.blend import pick

    orders = [RETRIEVAL_ORDER, DLRM_ORDER, Blend({"retrieval": 1.0, "dlrm": 0.0, "popularity": 1.0}, name="p")]
    recall = np.array([[0.2, 0.3], [0.3, 0.4], [0.9, 0.9]])  # the popular order wins recall by far
    coverage = np.array([100.0, 60.0, 10.0])  # but lists only 10% of what the retrieval order lists
    best, table, _ = pick(orders, recall, recall, 20, coverage=coverage, min_coverage_ratio=0.25)
    assert best.name == DLRM_ORDER.name and [row["eligible"] for row in table] == [True, True, False]
    assert pick(orders, recall, recall, 20, coverage=coverage, min_coverage_ratio=0.0)[0].name == "p"


def test_a_winner_by_noise_keeps_the_retrieval_order_a_real_gain_replaces_it():
    from recsys_tasks.scoring.blend import pick

    rng = np.random.default_rng(3)
    users = 2000
    base = rng.binomial(1, 0.3, users).astype(float)
    # 40 orders that each differ from the retrieval order on a few users by chance: one of them is best.
    noisy = np.stack([base] + [np.where(rng.random(users) < 0.05, rng.binomial(1, 0.3, users), base)
                               for _ in range(40)])
    orders = [RETRIEVAL_ORDER] + [Blend({"retrieval": 1.0, "dlrm": 0.0, "popularity": 0.1 * i}, name=f"o{i}")
                                  for i in range(1, 41)]
    best, _, check = pick(orders, noisy, noisy, 20, seed=1)
    assert best.name != RETRIEVAL_ORDER.name  # without the rule a chance winner replaces the retrieval order
    best, _, check = pick(orders, noisy, noisy, 20, seed=1, require_significant_gain=True)
    assert best is RETRIEVAL_ORDER and check["kept_retrieval_order"] and check["ci95"][0] <= 0

    better = noisy.copy()
    better[7] = np.maximum(base, rng.binomial(1, 0.2, users))  # o7 finds what the retrieval order misses
    best, _, check = pick(orders, better, better, 20, seed=1, require_significant_gain=True)
    assert best.name == "o7" and not check["kept_retrieval_order"] and check["ci95"][0] > 0
