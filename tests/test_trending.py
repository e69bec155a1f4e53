"""The popularity side of scoring: the time-decayed prior, popular candidates, lists that know the whole window,
the validation days' new users, and a gate that judges the training days' lists."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.config import Config
from recsys_tasks.scoring.popularity import ItemDays, add_popular_candidates, prior

DAY = 86_400
START = int(datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp())


def test_decayed_prior_weighs_recent_clicks_and_all_time_counts_clickers():
    days = ItemDays(item_rows=np.array([0, 0, 1, 2]), days=np.array([100, 100, 110, 90]),
                    clicks=np.array([3.0, 1.0, 2.0, 8.0]))
    clickers = np.array([4, 2, 8])
    np.testing.assert_allclose(prior(clickers, days, 0.0), np.log1p([4, 2, 8]))
    # Half-life 10 days, last day 110: item 0 has 4 clicks 10 days old (2.0), item 2 has 8 clicks 20 days old (2.0).
    np.testing.assert_allclose(prior(clickers, days, 10.0), np.log1p([2.0, 2.0, 2.0]))
    assert np.argmax(prior(clickers, days, 1.0)) == 1  # with a short half-life the newest item leads
    with pytest.raises(ValueError, match="needs the clicks' days"):
        prior(clickers, None, 7.0)


def test_popular_candidates_skip_seen_and_retrieved_items_and_score_by_dot_product():
    retrieved = np.array([[0, 1, -1], [2, 3, 4]])
    scores = np.array([[1.0, 0.5, -np.inf], [1.0, 1.0, 1.0]], dtype=np.float32)
    users, items = np.ones((2, 2), np.float32), np.arange(12, dtype=np.float32).reshape(6, 2)
    popularity = np.array([6, 5, 4, 3, 2, 1.0])
    seen_indptr, seen_items = np.array([0, 1, 2]), np.array([5, 0])  # user 0 saw item 5, user 1 item 0
    rows, values = add_popular_candidates(retrieved, scores, users, items, popularity, seen_indptr, seen_items,
                                          np.array([0, 1]), 2)
    np.testing.assert_array_equal(rows, [[0, 1, -1, 2, 3], [2, 3, 4, 1, 5]])
    np.testing.assert_allclose(values[:, 3:], [[4 + 5, 6 + 7], [2 + 3, 10 + 11]])
    same, _ = add_popular_candidates(retrieved, scores, users, items, popularity, seen_indptr, seen_items,
                                     np.array([0, 1]), 0)
    assert same is retrieved


def test_a_window_user_is_folded_in_by_the_items_they_clicked_and_never_gets_them_back():
    """A user the models do not know, who clicked item 0 of taste A and item 4 of taste B in the validation
    days, gets the other items of those tastes first; a user with no catalogue click keeps the list given."""
    from types import SimpleNamespace

    from recsys_tasks.scoring.blend import RETRIEVAL_ORDER, Blend
    from recsys_tasks.scoring.window_users import fold_in_lists

    taste_a, taste_b, taste_c = np.eye(3, dtype=np.float32)
    catalog = SimpleNamespace(item_embeddings=np.stack([taste_a, taste_a, taste_a * 0.9, taste_b, taste_b,
                                                        taste_c, taste_c, taste_c]))
    prior = np.array([0, 0, 0, 0, 0, 3.0, 2.0, 1.0])  # the taste nobody of the two clicked is the popular one
    clicked = np.array([[0, 0], [0, 4]])  # user 0 clicked items 0 and 4; user 1 clicked nothing in the catalogue
    given = np.array([[5, 6, 7, 1], [5, 6, 7, 1]])
    lists, scores = given.copy(), [np.ones(4), np.ones(4)]
    assert fold_in_lists(catalog, clicked, clicked, RETRIEVAL_ORDER, prior, 4, lists, scores) == 1
    assert set(lists[0, :3]) == {1, 2, 3} and lists[0, 3] in (5, 6, 7) and 0 not in lists[0] and 4 not in lists[0]
    assert lists[0, 0] in (1, 3) and (np.diff(scores[0]) <= 0).all() and ((scores[0] > 0) & (scores[0] < 1)).all()
    np.testing.assert_array_equal(lists[1], given[1])
    # A blend that weighs popularity heavily puts the popular taste first, still without the clicked items.
    trend = Blend({"retrieval": 1.0, "dlrm": 0.0, "popularity": 4.0}, scales={"retrieval": 1.0, "dlrm": 1.0,
                                                                               "popularity": 0.1})
    lists = given.copy()
    fold_in_lists(catalog, clicked, clicked, trend, prior, 4, lists, scores)
    assert list(lists[0, :3]) == [5, 6, 7] and 0 not in lists[0] and 4 not in lists[0]


def _trending_partitions(tmp_path, users=60, items=40, days=10, per_day=150):
    """Daily partitions where taste is weak and what is clicked drifts: each day a new block of items trends.
    Users 1..users click in every day; users above it appear only on the last (validation) day."""
    from recsys_tasks.data.importer import ImportSpec, import_interactions

    rng = np.random.default_rng(3)
    rows = []
    for day in range(days):
        trending = (np.arange(6) + 4 * day) % items
        for _ in range(per_day):
            hot = rng.random() < 0.7
            item = int(rng.choice(trending)) if hot else int(rng.integers(items))
            click = int(hot or rng.random() < 0.2)
            rows.append((int(rng.integers(users)) + 1, item + 100, click, START + day * DAY + int(rng.integers(DAY))))
    for user in range(users + 1, users + 6):  # new users of the validation day
        for item in rng.choice(items, 3, replace=False):
            rows.append((user, int(item) + 100, 1, START + (days - 1) * DAY + 60))
    inter = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["user", "item", "click", "ts"]).to_csv(inter, index=False)
    spec = ImportSpec(interactions=inter, root=tmp_path / "parts", user_col="user", item_col="item", time_col="ts",
                      label_col="click")
    import_interactions(spec)
    end = datetime.date(2026, 3, 1) + datetime.timedelta(days=days - 1)
    return rows, users, end.isoformat()


def test_trends_are_fitted_published_lists_know_the_window_and_the_gate_judges_the_training_days(tmp_path):
    from recsys_tasks.evaluation.lists import training_days_lists
    from recsys_tasks.evaluation.metrics import RowLookup
    from recsys_tasks.paths import RunPaths
    from recsys_tasks.scoring.catalog import load_catalog
    from recsys_tasks.scoring.stage import plan_blend, read_plan
    from recsys_tasks.stages import run_stage
    from recsys_tasks.training.ranking import load_dlrm

    rows, known_users, end = _trending_partitions(tmp_path)
    config = Config().with_overrides({
        "data.source": "parquet", "data.partition_root": str(tmp_path / "parts"), "data.end_date": end,
        "data.window_days": 10, "data.valid_days": 1, "data.user_features": "", "data.item_features": "",
        "retrieval.epochs": 2, "retrieval.batch_size_rows": 64, "ranking.epochs": 1, "ranking.batch_size_rows": 128,
        "scoring.top_k": 10, "scoring.top_n": 5, "scoring.popularity_half_lives_days": "1,7",
        "artifact_root": str(tmp_path / "artifacts"), "evaluate.plots": False})
    run = tmp_path / "run"
    for name in ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate"):
        run_stage(name, config, run)
    paths = RunPaths(run)

    # The blend fit saw the trend: a decayed prior beats the all-time one on the validation day's clicks, and
    # the order it gives replaces the retrieval order only when the cross-validated check puts its gain above 0.
    fit = read_plan(paths)["blend"]
    best = max((row for row in fit["candidates"] if row["eligible"]), key=lambda row: row["recall@5"])
    assert best["half_life_days"] in (1.0, 7.0), fit["reason"]
    blend = plan_blend(read_plan(paths))
    if fit["check"]["ci95"][0] > 0:
        assert blend.half_life_days in (1.0, 7.0) and not fit["check"]["kept_retrieval_order"], fit["reason"]
    else:
        assert blend.name == "retrieval order" and "retrieval order kept" in fit["reason"], fit["reason"]

    frame = pd.DataFrame(rows, columns=["user", "item", "click", "ts"])
    clicks = frame[frame["click"] == 1]
    clicked = set(zip(clicks["user"], clicks["item"]))  # every click of the window, validation day included
    published = pd.concat([pd.read_parquet(p) for p in sorted(paths.recommendations.glob("*.parquet"))])
    assert not any((u, i) in clicked for u, items in zip(published["user_id"], published["recommendations"])
                   for i in items)
    # The validation day's new users have documents of their own (folded in by their clicks), minus their clicks.
    new_users = set(range(known_users + 1, known_users + 6))
    assert new_users <= set(published["user_id"]) and read_plan(paths)["window_users"] == len(new_users)
    assert (published.set_index("user_id").loc[sorted(new_users), "recommendations"].map(len) == 5).all()
    fold_in = read_plan(paths)["window_fold_in"]  # fitted on known users treated as new (scoring.window_users)
    assert fold_in["candidates"][0]["name"] == "popularity list" and len(fold_in["candidates"]) == 9, fold_in
    assert (fold_in["chosen"] is None) == fold_in["check"]["kept_popularity_list"] or fold_in["check"]["ci95"][0] > 0

    # The gate's figures are those of the training days' lists, which may hold a validation-day click.
    train_view = load_catalog(paths, "clicked", "train")
    report = pd.read_json(paths.report_json, typ="series")
    assert "training days" in report["lists"]["judged"]
    users = RowLookup(train_view.user_features["user_id_raw"])
    sample_users = users.rows(np.array(sorted(frame["user"].unique()))[:20])
    (judged,) = training_days_lists(config, paths, [train_view], sample_users[sample_users >= 0],
                                    load_dlrm(paths.dlrm))
    assert (judged >= 0).all()
    window_view = load_catalog(paths, "clicked", "window")
    assert len(window_view.seen_items) > len(train_view.seen_items)
