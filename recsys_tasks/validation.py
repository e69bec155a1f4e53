"""Input checks shared by the stages: a bad file fails at once, naming the file, column and value.

Each check runs before its stage writes anything, so bad input publishes nothing and leaves the
previous outputs (and Redis) untouched. Raw impressions may legitimately repeat (a user can see the
same item twice), so duplicate rows are refused only where one row per id is the contract: the user
and item tables and embeddings, and the recommendations (one list per user).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .runtime import InputDataError

RAW_ID_COLUMNS = ("user_id", "item_id")
RAW_TARGET = "click"
CHECK_BATCH_ROWS = 262_144


def open_parquet(file: Path, *, produced_by: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile``, or an error naming a corrupt or truncated file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(
            f"{file}: not a readable parquet file, corrupt or truncated ({exc}); written by the {produced_by!r} stage"
        ) from exc


def parquet_files(directory: Path, *, produced_by: str) -> list[Path]:
    from .paths import require

    files = sorted(require(directory, produced_by).glob("*.parquet"))
    if not files:
        raise InputDataError(f"{directory}: no *.parquet files (written by the {produced_by!r} stage)")
    return files


def iter_checked_batches(
    file: Path, parquet: Any, columns: list[str], produced_by: str, batch_rows: int = CHECK_BATCH_ROWS
) -> Iterable[Any]:
    """Every batch of the file (decoding all pages, so damage in the middle of a file is found here)."""
    import pyarrow as pa

    try:
        yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(
            f"{file}: corrupt parquet data ({exc}); written by the {produced_by!r} stage"
        ) from exc


def check_raw_parquet(directory: Path, columns: Mapping[str, str], *, produced_by: str = "generate_data") -> list[Path]:
    """Raw Ali-CCP impressions: every file readable to the end, every column present and integer,
    ids non-negative and not all null, ``click`` 0 or 1, and at least one row in the directory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    files = parquet_files(directory, produced_by=produced_by)
    total_rows = 0
    for file in files:
        parquet = open_parquet(file, produced_by=produced_by)
        schema = parquet.schema_arrow
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise InputDataError(f"{file}: missing column(s) {missing}; expected the Ali-CCP raw schema")
        for column in columns:
            if not pa.types.is_integer(schema.field(column).type):
                raise InputDataError(
                    f"{file}: column {column!r} has type {schema.field(column).type}, expected an integer"
                )
        id_columns = [c for c in RAW_ID_COLUMNS if c in columns]
        id_nulls = dict.fromkeys(id_columns, 0)
        rows = 0
        for batch in iter_checked_batches(file, parquet, list(columns), produced_by):
            rows += batch.num_rows
            for column in id_columns:
                values = batch.column(column)
                id_nulls[column] += values.null_count
                smallest = pc.min(values).as_py()
                if smallest is not None and smallest < 0:
                    raise InputDataError(
                        f"{file}: column {column!r} holds the negative id {smallest}; ids must be >= 0"
                    )
            if RAW_TARGET not in columns:
                continue
            clicks = pc.drop_null(batch.column(RAW_TARGET))
            bad = pc.filter(clicks, pc.invert(pc.is_in(clicks, pa.array([0, 1], clicks.type))))
            if len(bad):
                raise InputDataError(f"{file}: column {RAW_TARGET!r} holds {bad[0].as_py()}; expected 0 or 1")
        for column, nulls in id_nulls.items():
            if rows and nulls == rows:
                raise InputDataError(f"{file}: column {column!r} is null in all {rows} rows")
        total_rows += rows
    if total_rows == 0:
        raise InputDataError(f"{directory}: the dataset is empty (0 rows in {len(files)} parquet file(s))")
    return files


def check_recommendation_schema(file: Path, schema: Any) -> None:
    """``user_id`` integer, ``recommendations`` a list of integers, ``scores`` a list of floats."""
    import pyarrow as pa

    def list_of(kind: Any, value_ok: Any) -> bool:
        return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and value_ok(kind.value_type)

    expected = {
        "user_id": ("an integer", pa.types.is_integer),
        "recommendations": ("a list of integers", lambda t: list_of(t, pa.types.is_integer)),
        "scores": ("a list of floats", lambda t: list_of(t, pa.types.is_floating)),
    }
    missing = [c for c in expected if c not in schema.names]
    if missing:
        raise InputDataError(f"{file}: missing column(s) {missing}; written by the 'score' stage")
    for column, (wanted, ok) in expected.items():
        kind = schema.field(column).type
        if not ok(kind):
            raise InputDataError(f"{file}: column {column!r} has type {kind}, expected {wanted}")


def check_recommendation_batch(file: Path, batch: Any) -> Any:
    """One batch of recommendations; returns its user ids (numpy) for the duplicate check."""
    import numpy as np
    import pyarrow.compute as pc

    users = batch.column("user_id")
    if users.null_count:
        raise InputDataError(f"{file}: column 'user_id' holds {users.null_count} null id(s)")
    user_ids = users.to_numpy().astype(np.int64)
    if len(user_ids) and user_ids.min() < 0:
        raise InputDataError(f"{file}: column 'user_id' holds an invalid id {int(user_ids.min())}")
    recs, scores = batch.column("recommendations"), batch.column("scores")
    for name, values in (("recommendations", recs), ("scores", scores)):
        if values.null_count:
            row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputDataError(f"{file}: user {int(user_ids[row])} has a null {name!r} list")
    rec_lengths = pc.list_value_length(recs).to_numpy()
    score_lengths = pc.list_value_length(scores).to_numpy()
    if (rec_lengths != score_lengths).any():
        row = int(np.flatnonzero(rec_lengths != score_lengths)[0])
        raise InputDataError(
            f"{file}: user {int(user_ids[row])} has {rec_lengths[row]} recommendations but {score_lengths[row]} scores"
        )
    items = pc.list_flatten(recs)
    if items.null_count or (len(items) and pc.min(items).as_py() < 0):
        raise InputDataError(f"{file}: column 'recommendations' holds a null or negative item id")
    flat_scores = pc.list_flatten(scores).to_numpy(zero_copy_only=False)
    if len(flat_scores) and not np.isfinite(flat_scores).all():
        row = int(np.searchsorted(np.cumsum(score_lengths), np.flatnonzero(~np.isfinite(flat_scores))[0], "right"))
        raise InputDataError(
            f"{file}: user {int(user_ids[row])} has a null or non-finite score in column 'scores'"
        )
    return user_ids


def check_unique_ids(values: Any, column: str, source: Path) -> None:
    """One row per id: refuse the first id that appears twice."""
    import numpy as np

    ids = np.asarray(values)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputDataError(f"{source}: column {column!r} holds id {unique[counts > 1][0]} {counts.max()} times; "
                             "expected one row per id")


def check_finite(matrix: Any, source: Path) -> None:
    """Embeddings must be finite numbers (a NaN would silently poison every dot product)."""
    import numpy as np

    bad = ~np.isfinite(matrix)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise InputDataError(f"{source}: row {row}, column {col} holds {matrix[row, col]}; embeddings must be finite")
