"""Scale-out: sharded scoring equals unsharded scoring; stale or missing parts never get published;
NVTabular on a real Dask LocalCluster gives the same processed data as the single process."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_tasks.paths import RunPaths


def scoring_inputs(paths: RunPaths, target: RunPaths) -> RunPaths:
    """A fresh run directory holding only what scoring reads, copied from the session run."""
    for directory in (paths.retrieval, paths.ranking, paths.retrieval_train, paths.retrieval_valid, paths.valid):
        shutil.copytree(directory, target.root / directory.relative_to(paths.root))
    return target


def by_user(directory) -> pd.DataFrame:
    frame = pq.read_table(directory).to_pandas()
    return frame.sort_values("user_id", kind="stable").reset_index(drop=True)


def assert_same_recommendations(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got["user_id"].tolist() == expected["user_id"].tolist()
    assert [list(r) for r in got["recommendations"]] == [list(r) for r in expected["recommendations"]]
    for a, b in zip(got["scores"], expected["scores"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def sharded_run(pipeline_run, tmp_path_factory):
    """The Airflow path: plan, then every shard as its own call in a shuffled order, then collect."""
    from recsys_tasks.scoring.stage import collect_shards, plan_shards, score_shard

    config, paths, _ = pipeline_run
    sharded = config.with_overrides({"scoring.num_shards": 3})
    target = scoring_inputs(paths, RunPaths(tmp_path_factory.mktemp("sharded")))
    plan = plan_shards(sharded, target.root)
    shard_summaries = {i: score_shard(sharded, target.root, i) for i in (2, 0, 1)}
    summary = collect_shards(sharded, target.root)
    return sharded, target, plan, shard_summaries, summary


def test_union_of_shards_equals_unsharded_scoring(pipeline_run, sharded_run):
    config, paths, summaries = pipeline_run
    sharded, target, plan, shard_summaries, summary = sharded_run
    assert summaries["score"]["num_shards"] == 1 and len(list(paths.recommendations.glob("*.parquet"))) == 1
    assert plan["shards"] == [0, 1, 2]
    assert sorted(p.name for p in target.recommendations.glob("*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"
    ]
    assert_same_recommendations(by_user(target.recommendations), by_user(paths.recommendations))
    assert summary["users"] == summaries["score"]["users"] == sum(s["users"] for s in shard_summaries.values())
    assert summary["num_shards"] == 3 and summary["stage"] == "score"
    assert json.loads(target.summary("score").read_text()) == summary


def test_shards_are_disjoint_contiguous_and_balanced(sharded_run):
    _, target, plan, _, _ = sharded_run
    users = pd.read_parquet(target.user_features)["user_id_raw"].to_numpy()
    sizes = []
    start = 0
    for shard in plan["shards"]:
        part = pq.read_table(target.recommendation_part(shard)).to_pandas()
        sizes.append(len(part))
        # Part i holds the next contiguous block of the user table, in table order.
        assert part["user_id"].tolist() == users[start:start + len(part)].tolist()
        start += len(part)
    assert start == len(users)
    assert max(sizes) - min(sizes) <= 1


def test_cli_score_with_shards_writes_the_same_parts(pipeline_run, sharded_run, tmp_path):
    from recsys_tasks.scoring.stage import score

    config, paths, _ = pipeline_run
    sharded, sharded_target, *_ = sharded_run
    target = scoring_inputs(paths, RunPaths(tmp_path / "cli"))
    summary = score(sharded, target.root)
    assert summary["num_shards"] == 3 and summary["users"] == pq.read_metadata(target.user_features).num_rows
    for shard in range(3):
        assert_same_recommendations(
            pq.read_table(target.recommendation_part(shard)).to_pandas(),
            pq.read_table(sharded_target.recommendation_part(shard)).to_pandas(),
        )


def test_a_rerun_shard_touches_only_its_own_part(sharded_run):
    from recsys_tasks.scoring.stage import score_shard

    sharded, target, *_ = sharded_run
    others = {i: target.recommendation_part(i).read_bytes() for i in (0, 2)}
    before = by_user(target.recommendations)
    score_shard(sharded, target.root, 1)
    assert {i: target.recommendation_part(i).read_bytes() for i in (0, 2)} == others
    assert_same_recommendations(by_user(target.recommendations), before)


def test_fewer_shards_after_more_leave_no_stale_part(pipeline_run, tmp_path):
    from recsys_tasks.scoring.stage import collect_shards, plan_shards, score_shard

    config, paths, _ = pipeline_run
    target = scoring_inputs(paths, RunPaths(tmp_path / "rerun"))
    three = config.with_overrides({"scoring.num_shards": 3})
    plan_shards(three, target.root)
    score_shard(three, target.root, 2)
    assert target.recommendation_part(2).exists()
    # The run is retried with fewer shards: planning clears the earlier pass, part-00002 cannot leak in.
    two = config.with_overrides({"scoring.num_shards": 2})
    plan_shards(two, target.root)
    assert list(target.recommendations.glob("*.parquet")) == []
    for shard in range(2):
        score_shard(two, target.root, shard)
    summary = collect_shards(two, target.root)
    assert sorted(p.name for p in target.recommendations.glob("*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet"
    ]
    assert_same_recommendations(by_user(target.recommendations), by_user(paths.recommendations))
    assert summary["num_shards"] == 2


def test_missing_or_foreign_parts_fail_and_publish_nothing(pipeline_run, tmp_path, redis_client):
    from recsys_tasks.scoring.stage import ShardError, collect_shards, plan_shards, score_shard
    from recsys_tasks.store import load_redis

    config, paths, _ = pipeline_run
    two = config.with_overrides({"scoring.num_shards": 2})
    target = scoring_inputs(paths, RunPaths(tmp_path / "partial"))
    shutil.copytree(paths.root / "summaries", target.root / "summaries")
    plan_shards(two, target.root)
    with pytest.raises(ShardError, match="outside 0..1"):
        score_shard(two, target.root, 2)
    score_shard(two, target.root, 1)
    with pytest.raises(ShardError, match=r"shard\(s\) \[0\] of 2 have no part yet"):
        collect_shards(two, target.root)
    with pytest.raises(ShardError, match=r"shard\(s\) \[0\] of 2"):
        load_redis(two, target.root, redis_client, run_id="partial", logical_date="")
    # A part of some earlier, wider pass put back by hand (other users, so the file itself is valid) is
    # refused by name.
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    stray = pq.read_table(target.recommendation_part(1))
    stray = stray.set_column(0, "user_id", pc.add(stray.column("user_id"), 10**6))
    pq.write_table(stray, target.recommendations / "part-00007.parquet")
    with pytest.raises(ShardError, match=r"part-00007.parquet"):
        load_redis(two, target.root, redis_client, run_id="partial", logical_date="")
    assert redis_client.dbsize() == 0


def test_transform_on_a_dask_local_cluster_matches_the_single_process(pipeline_run, tmp_path):
    from recsys_tasks.features.tables import read_processed
    from recsys_tasks.features.workflow import transform

    config, paths, _ = pipeline_run
    target = RunPaths(tmp_path / "dask")
    shutil.copytree(paths.raw, target.raw)
    on_dask = config.with_overrides({"transform.dask_cluster": "local", "transform.dask_workers": 1})
    summary = transform(on_dask, target.root)
    assert summary["dask_cluster"] == "local" and summary["dask_workers"] == 1
    # The cluster lived only for the stage: no client is left behind for later work.
    from merlin.core.utils import global_dask_client

    assert global_dask_client() is None
    for name in ("train", "valid", "retrieval_train"):
        got = read_processed(getattr(target, name))
        expected = read_processed(getattr(paths, name))
        key = list(expected.columns)
        pd.testing.assert_frame_equal(
            got.sort_values(key, kind="stable").reset_index(drop=True)[expected.columns],
            expected.sort_values(key, kind="stable").reset_index(drop=True),
            check_dtype=False,
        )


def test_dask_cluster_option_is_checked():
    from recsys_tasks.config import Config, ConfigError

    with pytest.raises(ConfigError, match="transform.dask_cluster must be one of none, local, local_cuda"):
        Config().with_overrides({"transform.dask_cluster": "yarn"})
    with pytest.raises(ConfigError, match="scoring.num_shards must be >= 1"):
        Config().with_overrides({"scoring.num_shards": 0})
