"""Training input shared by both fits: Merlin's ``Loader`` streaming parquet partitions, full batches only.

Why full batches: the Two-Tower model learns from in-batch negatives, so a batch of b rows gives each
example b candidates; with a last batch of fewer rows than the top-k cut-off, any top-k metric in
training fails (``TopkMetric ... cannot be bigger than the number of predictions per example``), and
a very short last batch is a poor, noisy gradient step for either model anyway. Merlin's loader drops
it (``drop_last=True``); reshuffling each epoch puts the dropped rows into other batches next time.
Top-k metrics are computed only at evaluation, over the full catalog, where the number of candidates
does not depend on the batch.
"""

from __future__ import annotations

import time
from typing import Any

from .common import InputDataError, get_logger

log = get_logger("training")


def parquet_dataset(directory: Any, part_size: str) -> Any:
    """A Merlin ``Dataset`` over a directory of parquet parts, read ``part_size`` at a time."""
    from merlin.io import Dataset

    return Dataset(str(directory / "*.parquet"), engine="parquet", part_size=part_size)


def full_batch_size(rows: int, batch_size_rows: int, what: str) -> int:
    """The batch size to train with: the configured one, or all rows when there are fewer (never 0 batches)."""
    if rows <= 0:
        raise InputDataError(f"{what}: no training rows")
    if rows < batch_size_rows:
        log.warning("%s: only %d training rows, fewer than the batch size %d: training on one batch of %d rows",
                    what, rows, batch_size_rows, rows)
        return rows
    return batch_size_rows


def training_loader(dataset: Any, batch_size_rows: int) -> Any:
    """Shuffled, streaming, full batches: Merlin's ``Loader`` with ``drop_last=True``.

    The loader reads one dataset partition at a time (``part_size`` bounds memory), shuffles within
    it and across partitions (numpy's global generator, seeded by the stage), and is re-iterated
    (reshuffled) every epoch by ``model.fit``.
    """
    import merlin.models.tf as mm

    return mm.Loader(dataset, batch_size=batch_size_rows, shuffle=True, drop_last=True)


def throughput_callback(rows_per_epoch: int, what: str) -> Any:
    """A Keras callback logging each epoch (rows, seconds, samples/s) and keeping the epoch times.

    ``callback.samples_per_s()`` is the steady rate: the first epoch includes tracing the training
    step, so it is left out when there are later ones.
    """
    import tensorflow as tf

    class EpochThroughput(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch_seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.epoch_seconds.append(time.perf_counter() - self._start)
            log.info("%s epoch %d: %d rows in %.1fs (%.0f samples/s), loss %.5f", what, epoch + 1, rows_per_epoch,
                     self.epoch_seconds[-1], rows_per_epoch / max(self.epoch_seconds[-1], 1e-9),
                     float((logs or {}).get("loss", float("nan"))))

        def samples_per_s(self) -> float:
            steady = self.epoch_seconds[1:] or self.epoch_seconds
            return round(rows_per_epoch * len(steady) / max(sum(steady), 1e-9), 1)

    return EpochThroughput()


def fit_streaming(
    model: Any, dataset: Any, rows: int, *, batch_size_rows: int, epochs: int, what: str
) -> dict[str, Any]:
    """Train a compiled Merlin model on ``dataset`` (``rows`` rows) streamed in full, shuffled batches.

    Returns the loss per epoch, the batch size used, the rows of one epoch (full batches only) and the
    steady training rate in samples/s.
    """
    batch_rows = full_batch_size(rows, batch_size_rows, what)
    rows_per_epoch = rows // batch_rows * batch_rows
    throughput = throughput_callback(rows_per_epoch, what)
    history = model.fit(training_loader(dataset, batch_rows), epochs=epochs, verbose=0,
                        callbacks=[throughput])
    return {
        "loss_per_epoch": [round(float(v), 6) for v in history.history["loss"]],
        "batch_size_rows": batch_rows,
        "rows_per_epoch": rows_per_epoch,
        "train_samples_per_s": throughput.samples_per_s(),
    }
