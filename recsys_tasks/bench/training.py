"""Training throughput for ``bench-pipeline``: each fit's streaming Merlin ``Loader`` against plain Keras.

The same model (built by the stage's own factory), optimizer, batch size, rows and epochs, trained once
through :func:`recsys_tasks.training.loader.fit_streaming` (parquet, Merlin's ``Loader``, full batches) and
once by ``model.fit`` on in-memory numpy arrays shaped like the loader's batches, so the ratio shows
whether the input pipeline holds training back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------


def _head_rows(source: Path, target: Path, rows: int) -> int:
    """The first ``rows`` rows of a processed directory, with its Merlin schema, as one parquet part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target.mkdir(parents=True, exist_ok=True)
    tables, taken = [], 0
    for file in sorted(source.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=65_536):
            tables.append(pa.Table.from_batches([batch.slice(0, rows - taken)]))
            taken += tables[-1].num_rows
            if taken >= rows:
                break
        if taken >= rows:
            break
    pq.write_table(pa.concat_tables(tables), target / "part_0.parquet")
    if (source / "schema.pbtxt").exists():
        shutil.copy(source / "schema.pbtxt", target / "schema.pbtxt")
    return taken


def _in_memory_like(loader: Any, frame: Any, rows: int, target: str) -> tuple[dict[str, Any], Any]:
    """The frame's columns as numpy arrays shaped and typed like the loader's batches (x, y); a single
    target tensor is the ``target`` column (the frame also holds raw id columns the model does not read)."""
    x_batch, y_batch = next(iter(loader))
    loader.stop()

    def like(name: str, tensor: Any) -> Any:
        return frame[name].to_numpy()[:rows].astype(tensor.dtype.as_numpy_dtype).reshape((rows, *tensor.shape[1:]))

    x = {name: like(name, tensor) for name, tensor in x_batch.items()}
    if y_batch is None:
        return x, None
    if isinstance(y_batch, dict):
        return x, {name: like(name, tensor) for name, tensor in y_batch.items()}
    return x, like(target, y_batch)


def training_throughput(run_dir: Path, config: Any, max_rows: int, epochs: int, work_dir: Path) -> dict[str, Any]:
    """samples/s of each fit's streaming training against plain ``model.fit`` on the same rows in memory.

    Same model, optimizer, batch size, rows and epochs; the first epoch (tracing) is left out of both
    rates when there are two or more. The ratio ``loader / plain`` is what the 70% target is about.
    """
    import pandas as pd

    from ..features.workflow import RAW_ID_COLUMNS, TARGET
    from ..paths import RunPaths
    from ..runtime import seed_everything
    from ..training.loader import fit_streaming, full_batch_size, parquet_dataset, throughput_callback, training_loader
    from ..training.ranking import build_dlrm
    from ..training.retrieval import build_two_tower, model_schema

    paths = RunPaths(run_dir)
    results = {}
    for name, source, settings, build, select in (
        ("fit_retrieval", paths.retrieval_train, config.retrieval, build_two_tower, model_schema),
        ("fit_ranking", paths.train, config.ranking, build_dlrm, lambda ds: ds.schema.without(RAW_ID_COLUMNS)),
    ):
        sample_dir = work_dir / name
        if sample_dir.exists():
            shutil.rmtree(sample_dir)
        rows = _head_rows(source, sample_dir, max_rows)
        dataset = parquet_dataset(sample_dir, config.transform.part_size)
        schema = select(dataset)
        dataset.schema = schema
        batch = full_batch_size(rows, settings.batch_size_rows, name)
        full_rows = rows // batch * batch
        print(f"[throughput] {name}: {rows} rows, batch {batch}, {epochs} epochs: Merlin Loader ...", flush=True)
        seed_everything(settings.seed)
        streamed = fit_streaming(build(schema, settings), dataset, rows, batch_size_rows=batch, epochs=epochs,
                                 what=f"{name} loader")
        frame = pd.read_parquet(sample_dir / "part_0.parquet")
        x, y = _in_memory_like(training_loader(dataset, batch), frame, full_rows, TARGET)
        print(f"[throughput] {name}: plain model.fit on in-memory arrays ...", flush=True)
        seed_everything(settings.seed)
        plain_model = build(schema, settings)
        callback = throughput_callback(full_rows, f"{name} plain")
        history = plain_model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                                  callbacks=[callback])
        plain = callback.samples_per_s()
        ratio = streamed["train_samples_per_s"] / max(plain, 1e-9)
        results[name] = {"rows": rows, "batch_size_rows": batch, "epochs": epochs,
                         "loader_samples_per_s": streamed["train_samples_per_s"], "plain_fit_samples_per_s": plain,
                         "ratio": round(ratio, 3), "loader_loss_per_epoch": streamed["loss_per_epoch"],
                         "plain_loss_per_epoch": [round(float(v), 6) for v in history.history["loss"]]}
        print(f"[throughput] {name}: loader {streamed['train_samples_per_s']:.0f} vs plain {plain:.0f} samples/s "
              f"({ratio:.0%})", flush=True)
    return results


