"""The validation side of evaluation and of the blend fit: a seeded sample of validation users known from
training, their validation rows (streamed batch by batch), and the training clicks to mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import RowLookup

READ_BATCH_ROWS = 1 << 20


def iter_parquet(directory: Path, columns: list[str]) -> Any:
    """Record batches of the given columns from every parquet part of a directory."""
    import pyarrow.parquet as pq

    for file in sorted(directory.glob("*.parquet")):
        yield from pq.ParquetFile(file).iter_batches(batch_size=READ_BATCH_ROWS, columns=columns)


def column_values(batch: Any, name: str) -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False)


def seen_keys(catalog: Any) -> np.ndarray:
    """Sorted ``user_row * items + item_row`` of every training click (the catalog's seen CSR)."""
    users = np.repeat(np.arange(catalog.num_users, dtype=np.int64), np.diff(catalog.seen_indptr))
    return users * catalog.num_items + catalog.seen_items


def sample_user_rows(pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded sample (sorted) of ``size`` of the pool's user rows; the whole pool when ``size`` is 0 or larger."""
    pool = np.unique(pool)
    if size <= 0 or size >= len(pool):
        return pool
    return np.sort(np.random.default_rng(seed).choice(pool, size=size, replace=False))


def read_sampled_validation(valid_dir: Path, users: RowLookup, items: RowLookup, size: int, seed: int,
                            columns: list[str]) -> tuple[Any, dict[str, int]]:
    """Two streaming passes over validation: the known users in it, then the rows of a sample of them.

    Returns the sampled users' rows (``columns`` plus ``user_row`` and ``item_row``, -1 for unknown
    items) and the sample's counts.
    """
    import pandas as pd

    pool_parts = []
    for batch in iter_parquet(valid_dir, ["user_id_raw"]):
        rows = users.rows(column_values(batch, "user_id_raw"))
        pool_parts.append(np.unique(rows[rows >= 0]))
    pool = np.unique(np.concatenate([np.zeros(0, np.int64), *pool_parts]))
    sample = sample_user_rows(pool, size, seed)
    frames = []
    for batch in iter_parquet(valid_dir, sorted({*columns, "user_id_raw", "item_id_raw", "click"})):
        rows = users.rows(column_values(batch, "user_id_raw"))
        keep = np.isin(rows, sample)
        if keep.any():
            frame = batch.to_pandas()[keep]
            frame["user_row"] = rows[keep]
            frame["item_row"] = items.rows(frame["item_id_raw"].to_numpy())
            frames.append(frame)
    valid = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    counts = {"known_users_in_validation": int(len(pool)), "users_sampled": int(len(sample)),
              "sample_size_setting": int(size), "sample_seed": int(seed)}
    return valid, counts


def relevant_clicks(valid: Any, catalog: Any, seen: np.ndarray | None = None) -> Any:
    """The relevant items of :func:`read_sampled_validation`'s rows: each sampled user's validation clicks on
    known items, minus what the catalog excludes from their lists (``seen``: :func:`seen_keys`, computed
    when not given); a :class:`~recsys_tasks.evaluation.metrics.Relevant`."""
    from .metrics import relevant_items

    is_click = valid["click"].to_numpy() == 1
    click_items = valid["item_row"].to_numpy()[is_click]
    known = click_items >= 0
    return relevant_items(valid["user_row"].to_numpy()[is_click][known], click_items[known],
                          seen_keys(catalog) if seen is None else seen, catalog.num_items)
