"""The recommendations a load publishes: the 'score' stage's parquet parts, validated, then streamed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..paths import recommendation_files
from ..runtime import InputDataError

REQUIRED_COLUMNS = ("user_id", "recommendations", "scores")


def iter_recommendation_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    """Stream every part of the recommendations as pyarrow RecordBatches, checking each part's schema first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in recommendation_files(path):
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{file}: not a readable parquet file ({exc})") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise InputDataError(f"{file}: missing column(s) {missing}; written by the 'score' stage")
        yield from parquet.iter_batches(batch_size=batch_rows, columns=list(REQUIRED_COLUMNS))


def count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in recommendation_files(path))


def check_recommendations(path: Path, settings: Any = None) -> Any:
    """Read everything once before anything is written: a bad file publishes nothing.

    ``settings`` is accepted for callers of the earlier signature and not used. Returns the sorted
    raw user ids. Refuses (naming the file, column and value): a missing or
    mistyped column, null or negative user or item ids, a user listed twice (also across parts),
    a list whose recommendations and scores differ in length, null or non-finite scores, no users.
    """
    import numpy as np

    from ..validation import check_recommendation_batch, check_recommendation_schema, iter_checked_batches, open_parquet

    user_ids = []
    for file in recommendation_files(path):
        parquet = open_parquet(file, produced_by="score")
        check_recommendation_schema(file, parquet.schema_arrow)
        for batch in iter_checked_batches(file, parquet, list(REQUIRED_COLUMNS), "score"):
            user_ids.append(check_recommendation_batch(file, batch))
    ids = np.sort(np.concatenate(user_ids)) if user_ids else np.zeros(0, dtype=np.int64)
    if not len(ids):
        raise InputDataError(f"{path}: no users to publish")
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        raise InputDataError(f"{path}: column 'user_id' holds user {int(repeated[0])} twice")
    return ids
