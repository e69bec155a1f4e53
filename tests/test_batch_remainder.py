"""No data size crashes a fit: click and impression counts whose remainder is 1..B-1 of the batch size B.

A last training batch smaller than the top-k cut-off (e.g. 20,997 clicks = 41 x 512 + 5) would fail a top-k
metric in training (``TopkMetric recall_at_10 cutoff (10) cannot be bigger than the number of predictions
per example``). The sweep runs both fits' training and validation code (the functions the stages call, on
the models the stages build) over datasets of 2B + r rows for every remainder r; the session run's
summaries show the stages train through the same function.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from recsys_tasks.features.tables import read_processed

BATCH = 12  # > the recall@10 cut-off, so every remainder 1..11 is a batch too small for it
REMAINDERS = list(range(1, BATCH))


def _subset_dirs(source_dir, target_root, name, frame):
    """One processed directory per remainder, 2 * BATCH + r rows each, with the source's Merlin schema."""
    dirs = {}
    for remainder in REMAINDERS:
        target = target_root / f"{name}-{remainder}"
        target.mkdir(parents=True)
        frame.head(2 * BATCH + remainder).to_parquet(target / "part_0.parquet", index=False)
        if (source_dir / "schema.pbtxt").exists():
            shutil.copy(source_dir / "schema.pbtxt", target / "schema.pbtxt")
        dirs[remainder] = target
    return dirs


@pytest.fixture(scope="module")
def remainder_dirs(pipeline_run, tmp_path_factory):
    _, paths, _ = pipeline_run
    root = tmp_path_factory.mktemp("remainders")
    clicks = read_processed(paths.retrieval_train)
    valid_clicks = read_processed(paths.retrieval_valid)
    impressions = read_processed(paths.train).sample(frac=1.0, random_state=0)  # both classes in every subset
    assert min(len(clicks), len(valid_clicks), len(impressions)) >= 3 * BATCH
    return {
        "clicks": _subset_dirs(paths.retrieval_train, root, "clicks", clicks),
        "valid_clicks": _subset_dirs(paths.retrieval_valid, root, "valid-clicks", valid_clicks),
        "impressions": _subset_dirs(paths.train, root, "impressions", impressions),
    }


def test_two_tower_trains_on_every_remainder_and_evaluates(pipeline_run, remainder_dirs):
    from merlin.schema.tags import Tags

    from recsys_tasks.features.tables import build_feature_tables
    from recsys_tasks.training.loader import fit_streaming, parquet_dataset
    from recsys_tasks.training.retrieval import (
        build_two_tower,
        embeddings_frame,
        encode,
        full_catalog_metrics,
        model_schema,
    )

    config, paths, _ = pipeline_run
    settings = config.retrieval
    first = parquet_dataset(remainder_dirs["clicks"][1], config.transform.part_size)
    schema = model_schema(first)
    model = build_two_tower(schema, settings)
    for remainder in REMAINDERS:
        train = parquet_dataset(remainder_dirs["clicks"][remainder], config.transform.part_size)
        train.schema = schema
        trained = fit_streaming(model, train, 2 * BATCH + remainder, batch_size_rows=BATCH, epochs=1,
                                what=f"remainder {remainder}")
        assert trained["rows_per_epoch"] == 2 * BATCH, remainder  # the short batch is dropped, not trained on
        assert np.isfinite(trained["loss_per_epoch"]).all(), remainder
    # The full-catalog evaluation keeps every validation row: here one short batch of 2B + 11 rows.
    _, items = build_feature_tables(paths.train)
    vectors = encode(model.candidate_encoder, items, schema.select_by_tag(Tags.ITEM).column_names, 1024)
    valid = parquet_dataset(remainder_dirs["valid_clicks"][BATCH - 1], config.transform.part_size)
    valid.schema = schema
    metrics = full_catalog_metrics(model, embeddings_frame(items["item_id"].to_numpy(), vectors, "item_id"),
                                   valid, schema, settings.eval_k)
    assert 0.0 <= metrics[f"recall_at_{settings.eval_k}"] <= 1.0


def test_dlrm_trains_and_evaluates_on_every_remainder(pipeline_run, remainder_dirs):
    from recsys_tasks.features.workflow import RAW_ID_COLUMNS
    from recsys_tasks.training.loader import fit_streaming, parquet_dataset
    from recsys_tasks.training.ranking import build_dlrm, validation_metrics

    config, _, _ = pipeline_run
    first = parquet_dataset(remainder_dirs["impressions"][1], config.transform.part_size)
    schema = first.schema.without(RAW_ID_COLUMNS)
    model = build_dlrm(schema, config.ranking)
    for remainder in REMAINDERS:
        data = parquet_dataset(remainder_dirs["impressions"][remainder], config.transform.part_size)
        data.schema = schema
        trained = fit_streaming(model, data, 2 * BATCH + remainder, batch_size_rows=BATCH, epochs=1,
                                what=f"remainder {remainder}")
        assert trained["rows_per_epoch"] == 2 * BATCH, remainder
        # Validation keeps every row, so its last batch has `remainder` rows (down to one).
        metrics = validation_metrics(model, data, BATCH)
        assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["auc"] <= 1.0, remainder


def test_the_stages_train_on_full_batches_only(pipeline_run):
    """Both stages go through the same streaming, full-batch training (their summaries say so)."""
    config, paths, summaries = pipeline_run
    from recsys_tasks.runtime import parquet_rows

    for stage, directory, batch in (
        ("fit_retrieval", paths.retrieval_train, config.retrieval.batch_size_rows),
        ("fit_ranking", paths.train, config.ranking.batch_size_rows),
    ):
        summary = summaries[stage]
        rows = parquet_rows(directory)
        assert summary["train_rows"] == rows and summary["batch_size_rows"] == min(batch, rows)
        assert summary["rows_per_epoch"] == rows // summary["batch_size_rows"] * summary["batch_size_rows"]
        assert summary["train_samples_per_s"] > 0
        assert summary["resources"]["peak_rss_bytes"] > 0
