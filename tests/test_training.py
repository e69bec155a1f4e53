"""Training pieces shared by both fits: the lazy Adam optimizer and the full-batch sizing."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_tasks.common import InputDataError, make_optimizer
from recsys_tasks.training import full_batch_size


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
