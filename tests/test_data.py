"""Stage 1's sources: the planted generator (determinism, Merlin's schema, learnable signal) and parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.config import Config
from recsys_tasks.data.planted import ALICCP_RAW_DTYPES, PlantedTruth, generate_planted
from recsys_tasks.data.sources import RAW_COLUMNS, generate_data, split_rows
from recsys_tasks.evaluation.evaluate import auc
from recsys_tasks.runtime import InputDataError

SMALL = {"data.num_rows": 20_000, "data.num_users": 400, "data.num_items": 200}


def planted(**overrides):
    return generate_planted(Config().with_overrides({**SMALL, **overrides}).data)


def test_planted_generator_is_deterministic_under_its_seed():
    first, truth = planted()
    again, truth_again = planted()
    pd.testing.assert_frame_equal(first, again)
    np.testing.assert_array_equal(truth.user_factors, truth_again.user_factors)
    other, _ = planted(**{"data.seed": 7})
    assert not first.equals(other)


def test_planted_schema_is_merlins_aliccp_raw():
    from merlin.datasets.synthetic import generate_data as merlin_generate

    merlin = merlin_generate("aliccp-raw", 200).to_ddf().compute()
    ours, _ = planted()
    assert list(ours.columns) == list(merlin.columns) == list(ALICCP_RAW_DTYPES)
    assert {c: str(t) for c, t in ours.dtypes.items()} == {c: str(t) for c, t in merlin.dtypes.items()}


def test_planted_shape_click_rate_and_long_tail():
    frame, truth = planted(**{"data.click_rate": 0.2})
    assert len(frame) == SMALL["data.num_rows"]
    assert abs(frame["click"].mean() - 0.2) < 0.02
    assert frame["user_id"].nunique() <= 400 and frame["item_id"].nunique() <= 200
    # Each user's and item's features are constant (first-occurrence feature tables rely on it).
    assert (frame.groupby("user_id")["user_categories"].nunique() == 1).all()
    assert (frame.groupby("item_id")["item_brand"].nunique() == 1).all()
    shown = frame["item_id"].value_counts()
    assert shown.iloc[:20].sum() > 3 * shown.iloc[-20:].sum()  # a head and a tail
    assert np.isclose(truth.item_exposure.sum(), 1.0)
    assert (frame["conversion"] <= frame["click"]).all()


def _logistic_regression(x, y, steps=500, lr=0.5):
    """Plain batch gradient descent on the log loss; returns weights with the intercept last."""
    x = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        w -= lr * x.T @ (p - y) / len(y)
    return w


def _two_features(frame):
    return np.column_stack(
        [
            (frame["user_categories"] == frame["item_category"]).astype(float),
            (frame["user_brands"] == frame["item_brand"]).astype(float),
        ]
    )


def test_planted_signal_is_learnable_from_two_features():
    frame, _ = planted()
    train, valid = split_rows(frame, 0.3, seed=1)
    w = _logistic_regression(_two_features(train), train["click"].to_numpy())
    scores = np.column_stack([_two_features(valid), np.ones(len(valid))]) @ w
    assert w[0] > 1.0  # a favourite-category match raises the odds of a click
    assert auc(valid["click"].to_numpy(), scores) > 0.62
    # The same regression on labels shuffled across rows finds (next to) nothing.
    shuffled = np.random.default_rng(0).permutation(train["click"].to_numpy())
    assert np.abs(_logistic_regression(_two_features(train), shuffled)[:2]).max() < 0.3


def test_truth_round_trips_and_explains_the_clicks(tmp_path):
    frame, truth = planted()
    truth.save(tmp_path / "truth.npz")
    loaded = PlantedTruth.load(tmp_path / "truth.npz")
    np.testing.assert_array_equal(loaded.item_exposure, truth.item_exposure)
    assert loaded.intercept == truth.intercept
    users = frame["user_id"].to_numpy() - 1
    items = frame["item_id"].to_numpy() - 1
    assert auc(frame["click"].to_numpy(), loaded.click_logit(users, items)) > 0.8


def _write(frame, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def raw_frames():
    frame, _ = planted(**{"data.num_rows": 2000})
    return split_rows(frame, 0.3, seed=1)


def test_parquet_source_copies_checked_files(tmp_path, raw_frames):
    train, valid = raw_frames
    _write(train.iloc[:700], tmp_path / "in" / "train" / "a.parquet")
    _write(train.iloc[700:], tmp_path / "in" / "train" / "b.parquet")
    _write(valid, tmp_path / "in" / "valid.parquet")
    config = Config().with_overrides(
        {"data.source": "parquet", "data.train_path": str(tmp_path / "in" / "train"),
         "data.valid_path": str(tmp_path / "in" / "valid.parquet")}
    )
    summary = generate_data(config, tmp_path / "run")
    assert summary["splits"]["train"] == {"rows": len(train), "files": 2, "users": train["user_id"].nunique()}
    copied = pd.read_parquet(tmp_path / "run" / "raw" / "train")
    assert len(copied) == len(train) and set(RAW_COLUMNS) <= set(copied.columns)
    assert not (tmp_path / "run" / "raw" / "truth.npz").exists()


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda f: f.drop(columns=["item_brand"]), r"bad.parquet: missing column\(s\) \['item_brand'\]"),
        (lambda f: f.assign(user_age=f["user_age"] + 0.5), r"bad.parquet: column 'user_age' has type double"),
        (lambda f: f.assign(click=np.where(f.index == 3, 2, f["click"])), r"column 'click' holds 2 at row 3"),
        (lambda f: f.assign(item_id=np.where(f.index == 5, -9, f["item_id"])), r"'item_id' holds the negative id -9"),
    ],
)
def test_parquet_source_names_the_file_column_and_value(tmp_path, raw_frames, breakage, message):
    train, valid = raw_frames
    bad = _write(breakage(train.copy()), tmp_path / "bad.parquet")
    good = _write(valid, tmp_path / "valid.parquet")
    config = Config().with_overrides(
        {"data.source": "parquet", "data.train_path": str(bad), "data.valid_path": str(good)}
    )
    with pytest.raises(InputDataError, match=message):
        generate_data(config, tmp_path / "run")


def test_parquet_source_needs_its_paths(tmp_path):
    config = Config().with_overrides({"data.source": "parquet"})
    with pytest.raises(InputDataError, match="data.train_path is empty"):
        generate_data(config, tmp_path / "run")
    config = config.with_overrides({"data.train_path": str(tmp_path / "nowhere")})
    with pytest.raises(InputDataError, match="data.train_path=.*nowhere: no such file or directory"):
        generate_data(config, tmp_path / "run")


def test_unknown_source_is_refused():
    from recsys_tasks.config import ConfigError

    with pytest.raises(ConfigError, match="data.source must be one of"):
        Config().with_overrides({"data.source": "csv"})
