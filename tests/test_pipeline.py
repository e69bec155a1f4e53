"""The five compute stages, run for real at tiny size (NVTabular, TensorFlow, Merlin Models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_tasks.data.sources import RAW_COLUMNS
from recsys_tasks.features.tables import read_processed


def raw_clicks(paths, splits=("train",)) -> set[tuple[int, int]]:
    raw = pd.concat([pd.read_parquet(paths.raw_train if s == "train" else paths.raw_valid) for s in splits])
    clicked = raw[raw["click"] == 1]
    return set(zip(clicked["user_id"].astype(int), clicked["item_id"].astype(int)))


def test_generate_data_writes_the_raw_aliccp_schema(pipeline_run):
    config, paths, summaries = pipeline_run
    train, valid = pd.read_parquet(paths.raw_train), pd.read_parquet(paths.raw_valid)
    assert set(RAW_COLUMNS) <= set(train.columns)
    assert len(train) + len(valid) == config.data.num_rows
    assert summaries["generate_data"]["splits"]["train"]["rows"] == len(train)
    from recsys_tasks.runtime import device

    assert summaries["generate_data"]["device"] == device()  # "gpu" on a GPU worker, "cpu" here


def test_transform_outputs_and_reusable_workflow(pipeline_run):
    import nvtabular as nvt
    from merlin.io import Dataset

    _, paths, summaries = pipeline_run
    train = read_processed(paths.train)
    for column in ("user_id", "item_id", "user_id_raw", "item_id_raw", "click", "item_brand", "user_age"):
        assert column in train.columns
    assert train.isna().sum().sum() == 0
    clicks = read_processed(paths.retrieval_train)
    assert len(clicks) > 0 and (clicks["click"] == 1).all()
    assert len(clicks) == int((train["click"] == 1).sum())
    assert summaries["transform"]["rows"]["train"] == len(train)

    # The saved workflow reproduces the processed validation data from the raw files.
    workflow = nvt.Workflow.load(str(paths.workflow))
    again = workflow.transform(Dataset(str(paths.raw_valid / "*.parquet"))).to_ddf().compute()
    stored = read_processed(paths.valid)
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True)[stored.columns], stored, check_dtype=False
    )


def test_fit_retrieval_exports(pipeline_run):
    _, paths, summaries = pipeline_run
    summary = summaries["fit_retrieval"]
    for name, value in summary["metrics"].items():
        assert 0.0 <= value <= 1.0, name
    assert set(summary["metrics"]) == {"tower_recall_at_10_per_click_unmasked", "tower_ndcg_at_10_per_click_unmasked"}
    users = pd.read_parquet(paths.user_features)
    items = pd.read_parquet(paths.item_features)
    user_emb = pd.read_parquet(paths.user_embeddings)
    item_emb = pd.read_parquet(paths.item_embeddings)
    assert len(users) == read_processed(paths.train)["user_id"].nunique() == summary["users"]
    assert (user_emb["user_id"].to_numpy() == users["user_id"].to_numpy()).all()
    assert (item_emb["item_id"].to_numpy() == items["item_id"].to_numpy()).all()
    # 64 tower dimensions plus the popularity (logQ) correction column: 1 for users, log Q(item) for items.
    assert user_emb.shape[1] - 1 == item_emb.shape[1] - 1 == 65
    assert (user_emb["popularity_bias"] == 1.0).all() and (item_emb["popularity_bias"] < 0).all()
    assert np.isfinite(user_emb.drop(columns="user_id").to_numpy()).all()
    assert (paths.query_tower / "saved_model.pb").exists()


def test_query_tower_reloads_and_reproduces_user_embeddings(pipeline_run):
    import merlin.models.tf  # noqa: F401
    import tensorflow as tf

    _, paths, _ = pipeline_run
    tower = tf.keras.models.load_model(str(paths.query_tower))
    users = pd.read_parquet(paths.user_features).head(16)
    inputs = {c: tf.constant(users[c].to_numpy().reshape(-1, 1)) for c in users.columns if c != "user_id_raw"}
    reloaded = np.asarray(tower(inputs, training=False))
    stored = pd.read_parquet(paths.user_embeddings).head(16).drop(columns=["user_id", "popularity_bias"]).to_numpy()
    np.testing.assert_allclose(reloaded, stored, rtol=1e-4, atol=1e-5)


def test_fit_ranking_reports_auc_and_exports(pipeline_run):
    _, paths, summaries = pipeline_run
    metrics = summaries["fit_ranking"]["metrics"]
    assert 0.0 <= metrics["keras_auc_all_validation_rows"] <= 1.0
    assert metrics["loss"] > 0
    assert (paths.dlrm / "saved_model.pb").exists()
    assert "user_id_raw" not in summaries["fit_ranking"]["input_features"]


def test_score_covers_every_user_with_valid_lists(pipeline_run):
    config, paths, summaries = pipeline_run
    recs = pq.read_table(paths.recommendations).to_pandas()
    users = pd.read_parquet(paths.user_features)
    catalog = set(pd.read_parquet(paths.item_features)["item_id_raw"].astype(int))
    assert sorted(recs["user_id"]) == sorted(users["user_id_raw"])
    assert summaries["score"]["users"] == len(users)
    seen = raw_clicks(paths)
    for user_id, items, scores in zip(recs["user_id"], recs["recommendations"], recs["scores"]):
        assert len(items) == config.scoring.top_n
        assert len(set(items)) == len(items)
        assert set(items) <= catalog
        assert not any((int(user_id), int(i)) in seen for i in items)
        assert list(scores) == sorted(scores, reverse=True)
        assert all(np.isfinite(scores))


def test_score_matches_a_per_user_reference(pipeline_run):
    """Brute force per user (numpy retrieval, one DLRM call per user, the plan's blend) gives the same lists.

    The published lists know the whole window (``scoring.history=window``): every click of the training and
    validation days is excluded and counted in the popularity prior, whose most popular unseen items join the
    retrieved candidates (``scoring.popular_candidates``).
    """
    import tensorflow as tf

    from recsys_tasks.scoring.stage import plan_blend, read_plan
    from recsys_tasks.training.ranking import load_dlrm

    config, paths, _ = pipeline_run
    assert config.scoring.history == "window" and config.scoring.popular_candidates > 0
    blend = plan_blend(read_plan(paths))
    seen = raw_clicks(paths, ("train", "valid"))
    clickers = pd.DataFrame(sorted(seen), columns=["user", "item"])["item"].value_counts()
    users = pd.read_parquet(paths.user_features)
    items = pd.read_parquet(paths.item_features)
    user_emb = pd.read_parquet(paths.user_embeddings).drop(columns="user_id").to_numpy()
    item_emb = pd.read_parquet(paths.item_embeddings).drop(columns="item_id").to_numpy()
    recs = pq.read_table(paths.recommendations).to_pandas().set_index("user_id")
    model = load_dlrm(paths.dlrm)
    k, n = config.scoring.top_k, config.scoring.top_n
    item_prior = np.log1p(items["item_id_raw"].map(clickers).fillna(0).to_numpy())
    popular_order = np.argsort(-item_prior, kind="stable")
    for row in range(0, len(users), max(1, len(users) // 12)):
        user = users.iloc[row]
        raw_uid = int(user["user_id_raw"])
        affinity = item_emb @ user_emb[row]
        affinity[[i for i, raw in enumerate(items["item_id_raw"]) if (raw_uid, int(raw)) in seen]] = -np.inf
        retrieved = np.argsort(-affinity, kind="stable")[:k]
        popular = [i for i in popular_order if np.isfinite(affinity[i]) and i not in set(retrieved)]
        candidates = np.concatenate([retrieved, popular[:config.scoring.popular_candidates]]).astype(int)
        frame = items.iloc[candidates].reset_index(drop=True)
        inputs = {c: np.full(len(candidates), user[c]) for c in users.columns if c != "user_id_raw"}
        inputs.update({c: frame[c].to_numpy() for c in items.columns if c != "item_id_raw"})
        probabilities = np.asarray(
            model({c: tf.constant(v.reshape(-1, 1)) for c, v in inputs.items()}, training=False)
        ).reshape(-1)
        prior = np.log1p(frame["item_id_raw"].map(clickers).fillna(0).to_numpy())
        blended = blend.combine(affinity[candidates][None, :], probabilities[None, :], prior[None, :])[0]
        scores = 1.0 / (1.0 + np.exp(-blended.astype(np.float64)))  # what scoring writes: sigmoid, order kept
        expected = frame["item_id_raw"].to_numpy()[np.argsort(-scores, kind="stable")[:n]]
        got = np.asarray(recs.loc[raw_uid, "recommendations"])
        # Same candidates and same order, up to float ties between near-equal scores.
        assert set(got) == set(expected), raw_uid
        np.testing.assert_allclose(np.sort(scores)[::-1][:n], recs.loc[raw_uid, "scores"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_scoring_does_not_depend_on_chunk_size(pipeline_run, chunk_size):
    from recsys_tasks.scoring.catalog import load_catalog
    from recsys_tasks.scoring.stage import iter_user_chunks, plan_blend, read_plan, score_chunk
    from recsys_tasks.training.ranking import load_dlrm

    config, paths, _ = pipeline_run
    catalog = load_catalog(paths, config.scoring.exclude, config.scoring.history)
    model = load_dlrm(paths.dlrm)
    blend = plan_blend(read_plan(paths))
    count = min(40, catalog.num_users)
    results = [
        score_chunk(catalog, model, rows, config.scoring.top_k, config.scoring.top_n, 333, blend=blend,
                    popular_candidates=config.scoring.popular_candidates)
        for rows in iter_user_chunks(count, chunk_size)
    ]
    got = [r for chunk in results for r in chunk["recommendations"]]
    stored = pq.read_table(paths.recommendations).to_pandas()["recommendations"].head(count)
    assert got == [list(r) for r in stored]


def test_exclude_interacted_keeps_every_training_impression_out_of_the_lists(pipeline_run):
    from recsys_tasks.scoring.candidates import retrieve
    from recsys_tasks.scoring.catalog import load_catalog

    config, paths, _ = pipeline_run
    clicked, interacted = load_catalog(paths, "clicked"), load_catalog(paths, "interacted")
    raw = pd.read_parquet(paths.raw_train)
    users = {int(u): r for r, u in enumerate(interacted.user_features["user_id_raw"])}
    items = {int(i): r for r, i in enumerate(interacted.item_features["item_id_raw"])}
    shown = {(users[u], items[i]) for u, i in zip(raw["user_id"], raw["item_id"]) if u in users and i in items}
    pairs = {(u, int(i)) for u in range(interacted.num_users)
             for i in interacted.seen_items[interacted.seen_indptr[u]:interacted.seen_indptr[u + 1]]}
    assert pairs == shown and len(interacted.seen_items) > len(clicked.seen_items)
    # The popularity prior still counts clicks, whatever is excluded.
    np.testing.assert_array_equal(interacted.popularity_prior, clicked.popularity_prior)
    rows, _ = retrieve(interacted, np.arange(interacted.num_users), config.scoring.top_k, "tiled")
    assert not any((u, int(i)) in shown for u, row in enumerate(rows) for i in row if i >= 0)
    with pytest.raises(ValueError, match="unknown exclusion policy 'rated'"):
        load_catalog(paths, "rated")
