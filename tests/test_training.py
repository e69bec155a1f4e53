"""Training pieces shared by both fits: the lazy Adam optimizer, the full-batch sizing and early stopping."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_tasks.runtime import InputDataError, parquet_rows
from recsys_tasks.training.loader import full_batch_size
from recsys_tasks.training.optimizers import make_optimizer


def _train(optimizer_name, lookups, steps=5):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(size=(6, 3)).astype(np.float32))
    dense = tf.Variable(rng.normal(size=(3,)).astype(np.float32))
    optimizer = make_optimizer(optimizer_name, 0.1)
    for step in range(steps):
        with tf.GradientTape() as tape:
            rows = tf.nn.embedding_lookup(table, tf.constant(lookups[step % len(lookups)]))
            loss = tf.reduce_sum((rows * dense - 1.0) ** 2)
        grads = tape.gradient(loss, [table, dense])
        assert isinstance(grads[0], tf.IndexedSlices)
        optimizer.apply_gradients(zip(grads, [table, dense]))
    return table.numpy(), dense.numpy()


def test_lazy_adam_equals_adam_when_every_row_is_looked_up():
    every_row = [[0, 1, 2, 3, 4, 5, 2]]  # duplicates are summed, as Adam's sparse path does
    lazy, adam = _train("lazy_adam", every_row), _train("adam", every_row)
    # Same arithmetic in another order: equal up to float32 rounding.
    np.testing.assert_allclose(lazy[0], adam[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lazy[1], adam[1], rtol=1e-4, atol=1e-5)


def test_lazy_adam_leaves_rows_outside_the_batch_alone():
    start, _ = _train("lazy_adam", [[0]], steps=0)
    lazy, _ = _train("lazy_adam", [[0, 1], [1, 2]])
    adam, _ = _train("adam", [[0, 1], [1, 2]])
    np.testing.assert_array_equal(lazy[3:], start[3:])  # never looked up: untouched
    assert not np.allclose(adam[0], lazy[0])  # Adam keeps moving row 0 on its stale momentum; lazy does not
    assert not np.allclose(lazy[:3], start[:3])


def test_full_batch_size():
    assert full_batch_size(1000, 512, "x") == 512
    assert full_batch_size(100, 512, "x") == 100  # fewer rows than a batch: one batch of all of them
    with pytest.raises(InputDataError, match="no training rows"):
        full_batch_size(0, 512, "x")


def _flipped_validation(paths, target):
    """The run's training impressions with every click flipped: the better a model fits the training
    clicks, the worse its loss here, so the validation loss is lowest after the first epoch."""
    import shutil

    from recsys_tasks.features.tables import read_processed

    frame = read_processed(paths.train)
    frame["click"] = 1 - frame["click"]
    target.mkdir(parents=True)
    frame.to_parquet(target / "part_0.parquet", index=False)
    shutil.copy(paths.train / "schema.pbtxt", target / "schema.pbtxt")
    return target, len(frame)


@pytest.mark.parametrize("patience", [1, 5])
def test_early_stopping_ends_with_the_best_epochs_weights(pipeline_run, tmp_path, patience):
    """patience 1: Keras stops after the first epoch without improvement and restores the best weights;
    patience 5 > the 3 epochs allowed: training runs to the end and the best (first) epoch is restored."""
    from recsys_tasks.features.workflow import RAW_ID_COLUMNS
    from recsys_tasks.training.loader import fit_streaming, parquet_dataset, validation_loader
    from recsys_tasks.training.ranking import build_dlrm

    config, paths, _ = pipeline_run
    train = parquet_dataset(paths.train, config.transform.part_size)
    schema = train.schema.without(RAW_ID_COLUMNS)
    train.schema = schema
    valid_dir, valid_rows = _flipped_validation(paths, tmp_path / "flipped")
    valid = parquet_dataset(valid_dir, config.transform.part_size)
    valid.schema = schema
    rows = parquet_rows(paths.train)
    model = build_dlrm(schema, config.ranking)
    trained = fit_streaming(model, train, rows, batch_size_rows=config.ranking.batch_size_rows, epochs=3,
                            what="early stopping", validation=valid, validation_rows=valid_rows, patience=patience)
    losses = trained["validation_loss_per_epoch"]
    assert trained["best_epoch"] == int(np.argmin(losses)) + 1 == 1
    assert trained["epochs_run"] == len(losses) == (2 if patience == 1 else 3)
    assert len(trained["loss_per_epoch"]) == trained["epochs_run"]
    # The model holds the best epoch's weights: its validation loss is that epoch's, not the last one's.
    loader = validation_loader(valid, valid_rows, trained["batch_size_rows"])
    now = model.evaluate(loader, return_dict=True, verbose=0)["loss"]
    assert now == pytest.approx(losses[0], rel=1e-4)
    assert now < losses[-1]


def test_no_validation_trains_every_epoch(pipeline_run):
    from recsys_tasks.features.workflow import RAW_ID_COLUMNS
    from recsys_tasks.training.loader import fit_streaming, parquet_dataset
    from recsys_tasks.training.ranking import build_dlrm

    config, paths, _ = pipeline_run
    train = parquet_dataset(paths.train, config.transform.part_size)
    train.schema = train.schema.without(RAW_ID_COLUMNS)
    trained = fit_streaming(build_dlrm(train.schema, config.ranking), train, parquet_rows(paths.train),
                            batch_size_rows=100, epochs=2, what="no validation")
    assert len(trained["loss_per_epoch"]) == 2 and "best_epoch" not in trained
