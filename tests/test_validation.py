"""Bad input at every stage: one clear error naming the file, column or value, and nothing published.

Each case feeds a real stage function a broken input and checks that the stage refuses it before
writing anything: earlier outputs in the run directory, and what Redis holds, are left as they were.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_tasks.config import Config, ConfigError, StoreConfig, load_config
from recsys_tasks.data.sources import RAW_COLUMNS
from recsys_tasks.paths import MissingArtifactError, RunPaths
from recsys_tasks.runtime import InputDataError, write_summary
from recsys_tasks.scoring.stage import recommendations_schema
from recsys_tasks.store import load_redis, read_manifest


def raw_frame(rows=40, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({column: rng.integers(0, 30, rows) for column in RAW_COLUMNS})
    frame["click"] = rng.integers(0, 2, rows)
    return frame


def good_parquet_bytes(tmp_path):
    path = tmp_path / "good.parquet"
    raw_frame(2000).to_parquet(path, index=False)
    return path.read_bytes()


def corrupt_middle(data: bytes) -> bytes:
    broken = bytearray(data)
    broken[len(data) // 3: len(data) // 3 + 2000] = os.urandom(2000)
    return bytes(broken)


RAW_CASES = {
    "missing column": (lambda f: f.drop(columns=["item_brand"]), r"missing column\(s\) \['item_brand'\]"),
    "empty dataset": (lambda f: f.iloc[0:0], "the dataset is empty"),
    "all-null ids": (lambda f: f.assign(user_id=pd.array([None] * len(f), dtype="Int64")),
                     "column 'user_id' is null in all 40 rows"),
    "negative ids": (lambda f: f.assign(item_id=f["item_id"].where(f.index != 3, -4)),
                     "column 'item_id' holds the negative id -4"),
    "float column": (lambda f: f.assign(user_age=f["user_age"] + 0.5),
                     "column 'user_age' has type double, expected an integer"),
    "string ids": (lambda f: f.assign(item_id=f["item_id"].astype(str)),
                   "column 'item_id' has type string, expected an integer"),
    "bad target": (lambda f: f.assign(click=f["click"].where(f.index != 5, 2)),
                   "column 'click' holds 2; expected 0 or 1"),
}


@pytest.fixture
def raw_run(tmp_path):
    """A run directory with good raw data in valid/ and an earlier transform output that must survive."""
    paths = RunPaths(tmp_path / "run")
    paths.raw_train.mkdir(parents=True)
    paths.raw_valid.mkdir(parents=True)
    raw_frame(seed=1).to_parquet(paths.raw_valid / "part_0.parquet", index=False)
    paths.train.mkdir(parents=True)
    (paths.train / "earlier.parquet").write_text("an earlier run's output")
    return paths


def transform_fails(paths, message):
    from recsys_tasks.features.workflow import transform

    with pytest.raises(InputDataError, match=message):
        transform(Config(), paths.root)
    assert (paths.train / "earlier.parquet").read_text() == "an earlier run's output"  # nothing overwritten
    assert not paths.workflow.exists() and not paths.summary("transform").exists()


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_transform_refuses_bad_raw_data(raw_run, case):
    change, message = RAW_CASES[case]
    target = raw_run.raw_train / "part_0.parquet"
    change(raw_frame()).to_parquet(target, index=False)
    transform_fails(raw_run, f"{target}: {message}" if case != "empty dataset" else message)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: b"PAR1 definitely not parquet", "not a readable parquet file, corrupt or truncated"),
        (lambda data: data[: len(data) // 2], "not a readable parquet file, corrupt or truncated"),
        (corrupt_middle, "corrupt parquet data"),
    ],
    ids=["garbage", "truncated", "corrupt pages"],
)
def test_transform_refuses_corrupt_or_truncated_parquet(raw_run, tmp_path, damage, message):
    target = raw_run.raw_train / "part_0.parquet"
    target.write_bytes(damage(good_parquet_bytes(tmp_path)))
    transform_fails(raw_run, f"{target}: {message}")


def test_missing_artifacts_name_the_file_and_the_stage(tmp_path):
    from recsys_tasks.features.workflow import transform
    from recsys_tasks.training.ranking import fit_ranking

    empty = RunPaths(tmp_path / "empty")
    with pytest.raises(MissingArtifactError, match=r"raw/train is missing: it is written by the 'generate_data'"):
        transform(Config(), empty.root)
    with pytest.raises(MissingArtifactError, match=r"processed/train is missing: it is written by the 'transform'"):
        fit_ranking(Config(), empty.root)
    with pytest.raises(MissingArtifactError, match=r"summaries/score.json is missing: it is written by the 'score'"):
        load_redis(Config(), empty.root, client=None, run_id="r", logical_date="")


def copy_scoring_inputs(pipeline_run, tmp_path, *, with_ranking=True):
    _, source, _ = pipeline_run
    paths = RunPaths(tmp_path / "run")
    shutil.copytree(source.retrieval, paths.retrieval)
    shutil.copytree(source.retrieval_train, paths.retrieval_train)
    shutil.copytree(source.retrieval_valid, paths.retrieval_valid)
    if with_ranking:
        shutil.copytree(source.ranking, paths.ranking)
    return paths


def test_score_refuses_a_missing_model(pipeline_run, tmp_path):
    from recsys_tasks.scoring.stage import score

    config, _, _ = pipeline_run
    paths = copy_scoring_inputs(pipeline_run, tmp_path, with_ranking=False)
    with pytest.raises(MissingArtifactError, match=r"ranking/dlrm is missing: it is written by the 'fit_ranking'"):
        score(config, paths.root)
    assert not paths.scoring.exists()


@pytest.mark.parametrize("case", ["nan embedding", "duplicate user"])
def test_score_refuses_broken_feature_tables(pipeline_run, tmp_path, case):
    from recsys_tasks.scoring.stage import score

    config, _, _ = pipeline_run
    paths = copy_scoring_inputs(pipeline_run, tmp_path)
    if case == "nan embedding":
        frame = pd.read_parquet(paths.user_embeddings)
        frame.loc[2, "e5"] = np.nan
        frame.to_parquet(paths.user_embeddings, index=False)
        message = "user_embeddings.parquet: row 2, column 5 holds nan; embeddings must be finite"
    else:
        # The same user twice, consistently in the feature table and the embeddings.
        for table in (paths.user_features, paths.user_embeddings):
            frame = pd.read_parquet(table)
            pd.concat([frame, frame.iloc[[0]]], ignore_index=True).to_parquet(table, index=False)
        message = "user_features.parquet: column 'user_id' holds id .* 2 times"
    with pytest.raises(InputDataError, match=message):
        score(config, paths.root)
    assert not paths.scoring.exists()


def recs_table(**columns):
    base = {"user_id": [1, 2], "recommendations": [[1, 2], [3, 4]], "scores": [[0.5, 0.25], [0.5, 0.25]],
            "user_id_encoded": [0, 1]}
    base.update(columns)
    return pa.table(base)


LOAD_CASES = {
    "nan score": (lambda: pa.Table.from_pydict(
        {"user_id": [1, 2], "recommendations": [[1, 2], [3, 4]], "scores": [[0.5, float("nan")], [0.5, 0.25]],
         "user_id_encoded": [0, 1]}, schema=recommendations_schema()), "user 1 has a null or non-finite score"),
    "string user id": (lambda: recs_table(user_id=["1", "2"]), "column 'user_id' has type string, expected an integer"),
    "float items": (lambda: recs_table(recommendations=[[1.5], [2.5]], scores=[[0.5], [0.5]]),
                    "column 'recommendations' has type list<item: double>, expected a list of integers"),
    "null list": (lambda: pa.Table.from_pydict(
        {"user_id": [1, 2], "recommendations": [[1], None], "scores": [[0.5], [0.5]], "user_id_encoded": [0, 1]},
        schema=recommendations_schema()), "user 2 has a null 'recommendations' list"),
    "null user": (lambda: pa.Table.from_pydict(
        {"user_id": [1, None], "recommendations": [[1], [2]], "scores": [[0.5], [0.5]], "user_id_encoded": [0, 1]},
        schema=recommendations_schema()), "column 'user_id' holds 1 null id"),
    "truncated": (None, "not a readable parquet file, corrupt or truncated"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_refuses_bad_recommendations_and_redis_keeps_the_published_run(tmp_path, redis_client, case):
    make, message = LOAD_CASES[case]
    store = StoreConfig()
    published = {"user_id": 1, "recommendations": [9], "scores": [0.9], "run_id": "good", "logical_date": "",
                 "generated_at": ""}
    redis_client.execute_command("JSON.SET", "USER:1", "$", json.dumps(published))
    redis_client.execute_command("JSON.SET", store.manifest_key, "$", json.dumps({"run_id": "good", "users": 1}))
    before = {k: redis_client.execute_command("JSON.GET", k) for k in (b"USER:1", store.manifest_key.encode())}

    paths = RunPaths(tmp_path / "run")
    part = paths.recommendation_part(0)
    part.parent.mkdir(parents=True)
    if make is None:
        pq.write_table(recs_table(), part)
        part.write_bytes(part.read_bytes()[:-40])
    else:
        pq.write_table(make(), part)
    write_summary(paths, "score", {"stage": "score", "generated_at": "g"})
    with pytest.raises(InputDataError, match=message):
        load_redis(Config(), paths.root, redis_client, run_id="bad", logical_date="2026-12-01")
    assert {k: redis_client.execute_command("JSON.GET", k) for k in before} == before
    assert redis_client.dbsize() == 2 and read_manifest(redis_client)["run_id"] == "good"
    assert not paths.summary("load_redis").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"store.force": "maybe"}, "config key 'store.force' expects bool, got 'maybe'"),
        ({"store.retry_attempts": 0}, "store.retry_attempts must be >= 1"),
        ({"store.lock_key": "USER:lock"}, "must differ and lie outside store.key_prefix"),
        ({"store.lock_ttl_s": -5}, "store.lock_ttl_s must be > 0"),
    ],
)
def test_bad_store_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(overrides)


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "prod.yaml"
    path.write_text("store:\n  ttl: 60\n")
    with pytest.raises(ConfigError, match=r"prod.yaml: unknown config key 'store.ttl'"):
        load_config(path, environ={})
