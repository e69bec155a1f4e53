"""The pieces that keep memory bounded at scale, on small inputs with known answers (no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys_tasks.config import Config
from recsys_tasks.data.planted import generate_planted, planted_parts
from recsys_tasks.data.sources import generate_data, split_rows
from recsys_tasks.evaluation.evaluate import mask_seen, rank_by_popularity, rank_catalog
from recsys_tasks.evaluation.lists import list_quality
from recsys_tasks.evaluation.metrics import RowLookup, auc_ci95, mean_ci95, relevant_items, top_k_rows
from recsys_tasks.evaluation.validation_sample import sample_user_rows, seen_keys
from recsys_tasks.scoring.catalog import Catalog, seen_csr

SMALL = {"data.num_rows": 5_000, "data.num_users": 300, "data.num_items": 120}


def test_one_part_is_the_whole_frame_and_parts_cover_every_row():
    settings = Config().with_overrides(SMALL).data
    whole, truth = generate_planted(settings)
    truth_one, parts = planted_parts(settings, settings.num_rows)
    pd.testing.assert_frame_equal(next(parts), whole)
    assert truth_one.intercept == truth.intercept
    truth_many, parts = planted_parts(settings, 1_500)
    frames = list(parts)
    assert [len(f) for f in frames] == [1_500, 1_500, 1_500, 500]
    np.testing.assert_array_equal(truth_many.user_factors, truth.user_factors)  # same population
    assert abs(pd.concat(frames)["click"].mean() - settings.click_rate) < 0.03


def test_split_of_consecutive_parts_equals_the_split_of_the_whole():
    frame, _ = generate_planted(Config().with_overrides(SMALL).data)
    train, valid = split_rows(frame, 0.3, seed=5)
    rng = np.random.default_rng(6)
    pieces = [split_rows(frame.iloc[a:a + 1000].reset_index(drop=True), 0.3, seed=5, rng=rng)
              for a in range(0, len(frame), 1000)]
    pd.testing.assert_frame_equal(pd.concat([p[0] for p in pieces], ignore_index=True), train)
    pd.testing.assert_frame_equal(pd.concat([p[1] for p in pieces], ignore_index=True), valid)


def test_generate_data_writes_one_raw_part_per_drawn_part(tmp_path):
    config = Config().with_overrides({**SMALL, "data.part_rows": 2_000})
    summary = generate_data(config, tmp_path)
    train = sorted((tmp_path / "raw" / "train").glob("*.parquet"))
    assert [f.name for f in train] == ["part_0.parquet", "part_1.parquet", "part_2.parquet"]
    frame = pd.concat([pd.read_parquet(f) for f in train])
    split = summary["splits"]["train"]
    assert split["rows"] == len(frame) and split["users"] == frame["user_id"].nunique()
    assert split["clicks"] == int(frame["click"].sum()) and summary["parts"] == 3
    valid = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "raw" / "valid").glob("*.parquet"))])
    assert len(frame) + len(valid) == SMALL["data.num_rows"]


def _catalog(num_users, num_items, seen_pairs):
    users, items = (np.array(x, dtype=np.int64) for x in zip(*seen_pairs))
    indptr, seen = seen_csr(users, items, num_users)
    return Catalog(
        user_features={"user_id_raw": np.arange(100, 100 + num_users)},
        item_features={"item_id_raw": np.arange(500, 500 + num_items)},
        user_embeddings=np.zeros((num_users, 2), np.float32), item_embeddings=np.zeros((num_items, 2), np.float32),
        seen_indptr=indptr, seen_items=seen,
    )


def test_popularity_ranking_equals_the_dense_masked_ranking():
    rng = np.random.default_rng(0)
    catalog = _catalog(30, 25, [(u, i) for u in range(30) for i in rng.choice(25, rng.integers(0, 12), replace=False)])
    popularity = rng.permutation(25).astype(float)
    users = np.arange(30)
    dense = rank_catalog(lambda rows: np.tile(popularity, (len(rows), 1)), catalog, users, 10)
    np.testing.assert_array_equal(rank_by_popularity(popularity, catalog, seen_keys(catalog), users, 10), dense)


def test_mask_seen_and_relevant_items():
    catalog = _catalog(3, 4, [(0, 1), (0, 3), (2, 0)])
    scores = mask_seen(np.ones((2, 4)), catalog, np.array([0, 2]))
    assert np.isneginf(scores).tolist() == [[False, True, False, True], [True, False, False, False]]
    assert top_k_rows(scores, 3).tolist() == [[0, 2, -1], [1, 2, 3]]
    relevant = relevant_items(np.array([0, 0, 0, 2, 1]), np.array([1, 2, 2, 3, 0]), seen_keys(catalog), 4)
    assert relevant.eval_users.tolist() == [0, 1, 2]  # user 0 keeps item 2 only (item 1 was seen)
    assert relevant.items.tolist() == [2, 0, 3] and relevant.indptr.tolist() == [0, 1, 2, 3]


def test_list_checks_are_vectorised_and_exact():
    catalog = _catalog(4, 6, [(0, 1), (3, 5)])
    lists = pa.table({
        "user_id": [100, 101, 102, 999],
        "recommendations": [[500, 501, 502], [503, 503, 504], [505], [500, 9999, 501]],
        "scores": [[0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.5], [0.3, 0.2, 0.1]],
    })
    quality, rows = list_quality(lists, catalog, RowLookup(catalog.user_features["user_id_raw"]),
                                 RowLookup(catalog.item_features["item_id_raw"]), seen_keys(catalog), 3)
    assert quality["lists_with_seen_item"] == 1  # user 100 was shown item 501 it clicked in training
    assert quality["duplicate_lists"] == 1 and quality["short_lists"] == 1 and quality["empty_lists"] == 0
    assert quality["unknown_users"] == 1 and quality["unknown_items"] == 1
    assert quality["user_coverage"] == 0.75
    assert rows["item_rows"].tolist() == [[0, 1, 2], [3, 3, 4], [5, -1, -1], [0, 1, -1]]
    assert rows["exposure"].tolist() == [2, 2, 1, 2, 1, 1]


def test_sample_and_intervals():
    pool = np.arange(1000)
    sample = sample_user_rows(pool, 100, seed=3)
    assert len(sample) == 100 and (np.diff(sample) > 0).all()
    np.testing.assert_array_equal(sample, sample_user_rows(pool[::-1], 100, seed=3))  # same users, any order
    np.testing.assert_array_equal(sample_user_rows(pool, 0, seed=3), pool)
    np.testing.assert_array_equal(sample_user_rows(pool, 5000, seed=3), pool)
    mean, (low, high) = mean_ci95(np.array([0.0, 1.0] * 50))
    assert mean == 0.5 and high - low == pytest.approx(2 * 1.96 * 0.5025 / 10, rel=1e-3)
    low, high = auc_ci95(0.8, np.array([1] * 100 + [0] * 900))
    assert low < 0.8 < high and high - low < 0.15
    assert json.dumps({"ci": [low, high]})  # plain floats for report.json
