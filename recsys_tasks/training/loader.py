"""Training input shared by both fits: Merlin's ``Loader`` streaming parquet partitions, full batches only.

Why full batches: the Two-Tower model learns from in-batch negatives, so a batch of b rows gives each
example b candidates; with a last batch of fewer rows than the top-k cut-off, any top-k metric in
training fails (``TopkMetric ... cannot be bigger than the number of predictions per example``), and
a very short last batch is a poor, noisy gradient step for either model anyway. Merlin's loader drops
it (``drop_last=True``); reshuffling each epoch puts the dropped rows into other batches next time.
Top-k metrics are computed only at evaluation, over the full catalog, where the number of candidates
does not depend on the batch.

Why early stopping: ``epochs`` is a maximum. After each epoch the fit measures its loss on the validation
split and keeps the weights of the best epoch, stopping after ``patience`` epochs without improvement.
How many passes help before a model memorises depends on the data's size and shape, not on a constant
(with few clicks per user the Two-Tower memorises the user ids within a couple of epochs; the measurement
is in docs/decisions.md, "Early stopping").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..paths import require
from ..runtime import InputDataError, get_logger, parquet_rows, quiet_tensorflow, seed_everything

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
    step, so it is left out when there are later ones. An epoch's time is its training only: the
    validation pass at its end (early stopping) is timed apart, in ``validation_seconds``.
    """
    import tensorflow as tf

    class EpochThroughput(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch_seconds: list[float] = []
            self.validation_seconds: list[float] = []
            self._start = self._validation_start = 0.0
            self._validating = False

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start = time.perf_counter()
            self._validating = False

        def on_test_begin(self, logs: Any = None) -> None:
            self._validation_start = time.perf_counter()
            self._validating = True

        def on_test_end(self, logs: Any = None) -> None:
            self.validation_seconds.append(time.perf_counter() - self._validation_start)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            end = self._validation_start if self._validating else time.perf_counter()
            self.epoch_seconds.append(end - self._start)
            logs = logs or {}
            validation = (f", validation loss {float(logs['val_loss']):.5f} ({self.validation_seconds[-1]:.1f}s)"
                          if "val_loss" in logs and self.validation_seconds else "")
            log.info("%s epoch %d: %d rows in %.1fs (%.0f samples/s), loss %.5f%s", what, epoch + 1, rows_per_epoch,
                     self.epoch_seconds[-1], rows_per_epoch / max(self.epoch_seconds[-1], 1e-9),
                     float(logs.get("loss", float("nan"))), validation)

        def samples_per_s(self) -> float:
            steady = self.epoch_seconds[1:] or self.epoch_seconds
            return round(rows_per_epoch * len(steady) / max(sum(steady), 1e-9), 1)

    return EpochThroughput()


def validation_loader(dataset: Any, rows: int, batch_size_rows: int) -> Any:
    """The validation split in full batches of the training batch size (or all its rows when fewer), in order."""
    import merlin.models.tf as mm

    return mm.Loader(dataset, batch_size=min(batch_size_rows, rows), shuffle=False, drop_last=True)


class BestEpoch:
    """Early stopping on the validation loss that always ends with the best epoch's weights.

    Keras' ``EarlyStopping(restore_best_weights=True)`` restores them only when it stops early; when
    the last allowed epoch is not the best, this puts the best epoch's weights back as well.
    """

    def __init__(self, patience: int) -> None:
        import tensorflow as tf

        self.callback = tf.keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience,
                                                         restore_best_weights=True)

    def finish(self, model: Any, epochs_run: int) -> int:
        """Restore the best weights if the model does not hold them; returns the best epoch (1-based)."""
        stopper = self.callback
        if stopper.best_weights is not None and stopper.best_epoch != epochs_run - 1 and not stopper.stopped_epoch:
            model.set_weights(stopper.best_weights)
        return int(stopper.best_epoch) + 1


def fit_streaming(
    model: Any, dataset: Any, rows: int, *, batch_size_rows: int, epochs: int, what: str,
    validation: Any = None, validation_rows: int = 0, patience: int = 0,
) -> dict[str, Any]:
    """Train a compiled Merlin model on ``dataset`` (``rows`` rows) streamed in full, shuffled batches.

    With ``validation`` (a dataset of ``validation_rows`` rows) and ``patience`` > 0, ``epochs`` is a
    maximum: the validation loss is measured after every epoch, training stops after ``patience``
    epochs without improvement and the model ends with the best epoch's weights (module docstring).
    Returns the loss per epoch (and the validation loss per epoch, the best epoch), the batch size used,
    the rows of one epoch (full batches only) and the steady training rate in samples/s (training
    time only).
    """
    batch_rows = full_batch_size(rows, batch_size_rows, what)
    rows_per_epoch = rows // batch_rows * batch_rows
    throughput = throughput_callback(rows_per_epoch, what)
    callbacks: list[Any] = [throughput]
    early = None
    fit_kwargs: dict[str, Any] = {}
    if validation is not None and patience > 0 and validation_rows > 0:
        early = BestEpoch(patience)
        callbacks.append(early.callback)
        fit_kwargs["validation_data"] = validation_loader(validation, validation_rows, batch_rows)
    history = model.fit(training_loader(dataset, batch_rows), epochs=epochs, verbose=0, callbacks=callbacks,
                        **fit_kwargs)
    losses = history.history["loss"]
    result = {
        "loss_per_epoch": [round(float(v), 6) for v in losses],
        "batch_size_rows": batch_rows,
        "rows_per_epoch": rows_per_epoch,
        "train_samples_per_s": throughput.samples_per_s(),
    }
    if early is not None:
        best = early.finish(model, len(losses))
        result.update({
            "validation_loss_per_epoch": [round(float(v), 6) for v in history.history.get("val_loss", [])],
            "best_epoch": best,
            "epochs_run": len(losses),
            "validation_seconds": round(sum(throughput.validation_seconds), 2),
        })
        log.info("%s: best validation loss at epoch %d of %d run (max %d)", what, best, len(losses), epochs)
    return result


class FitData(NamedTuple):
    """A fit's train and validation datasets, both typed with the model's schema, and their row counts."""

    train: Any
    valid: Any
    schema: Any
    train_rows: int
    valid_rows: int


def fit_data(train_dir: Path, valid_dir: Path, part_size: str, model_schema: Callable[[Any], Any],
             seed: int) -> FitData:
    """The start of both fits: TensorFlow quiet and seeded, then the transform's train and validation parts
    as datasets carrying the schema the model is built from (``model_schema`` of the train set)."""
    quiet_tensorflow()
    seed_everything(seed)
    train = parquet_dataset(require(train_dir, "transform"), part_size)
    valid = parquet_dataset(require(valid_dir, "transform"), part_size)
    schema = model_schema(train)
    train.schema = schema
    valid.schema = schema
    return FitData(train, valid, schema, parquet_rows(train_dir), parquet_rows(valid_dir))


def fit_model(model: Any, data: FitData, settings: Any, what: str) -> dict[str, Any]:
    """:func:`fit_streaming` on a fit's data with its config section's batch size, epochs and patience."""
    return fit_streaming(model, data.train, data.train_rows, batch_size_rows=settings.batch_size_rows,
                         epochs=settings.epochs, what=what, validation=data.valid, validation_rows=data.valid_rows,
                         patience=settings.early_stopping_patience)
