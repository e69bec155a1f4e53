"""User and item feature tables (one row per encoded id) taken from the processed training data.

Shared by retrieval (to embed every user and item) and scoring (to build DLRM inputs for
(user, candidate) pairs). A user's or item's features are those of its first impression in train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .workflow import ITEM_FEATURES, USER_FEATURES

USER_COLUMNS = ["user_id", *USER_FEATURES, "user_id_raw"]
ITEM_COLUMNS = ["item_id", *ITEM_FEATURES, "item_id_raw"]


def read_processed(directory: Path, columns: list[str] | None = None) -> Any:
    """All parquet parts of a processed directory as one pandas frame, in file order."""
    import pandas as pd

    files = sorted(directory.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


def unique_by_id(frame: Any, id_column: str, columns: list[str]) -> Any:
    """First row per id, sorted by id, so the table is the same on every rerun."""
    table = frame[columns].drop_duplicates(subset=[id_column], keep="first")
    return table.sort_values(id_column, kind="stable").reset_index(drop=True)


def build_feature_tables(train_dir: Path, batch_rows: int = 1 << 20, *, user_columns: list[str] | None = None,
                         item_columns: list[str] | None = None) -> tuple[Any, Any]:
    """The user and item tables, streamed from the processed training parts batch by batch.

    ``user_columns``/``item_columns`` (id first, raw id last): the run's contract; default Ali-CCP's.

    Each batch contributes the first rows of ids not met before (file order, as a whole-frame
    ``drop_duplicates(keep="first")`` would), so memory follows the number of users and items, not rows.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    user_columns = USER_COLUMNS if user_columns is None else user_columns
    item_columns = ITEM_COLUMNS if item_columns is None else item_columns
    columns = sorted(set(user_columns) | set(item_columns))
    found: dict[str, list[Any]] = {"user_id": [], "item_id": []}
    met: dict[str, np.ndarray] = {}
    for file in sorted(train_dir.glob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns):
            frame = batch.to_pandas()
            for id_column, table_columns in (("user_id", user_columns), ("item_id", item_columns)):
                first = frame[table_columns].drop_duplicates(subset=[id_column], keep="first")
                ids = first[id_column].to_numpy()
                known = met.get(id_column)
                fresh = ~np.isin(ids, known) if known is not None else np.ones(len(ids), dtype=bool)
                if fresh.any():
                    found[id_column].append(first[fresh])
                    met[id_column] = np.union1d(known, ids[fresh]) if known is not None else np.sort(ids)
    users = pd.concat(found["user_id"], ignore_index=True) if found["user_id"] else pd.DataFrame(columns=user_columns)
    items = pd.concat(found["item_id"], ignore_index=True) if found["item_id"] else pd.DataFrame(columns=item_columns)
    return unique_by_id(users, "user_id", user_columns), unique_by_id(items, "item_id", item_columns)


def table_columns(schema: Any) -> tuple[list[str], list[str]]:
    """The user and item table columns of a Merlin schema: the id, its USER/ITEM-tagged features, the raw id."""
    from merlin.schema.tags import Tags

    def side(tag: Any, id_column: str) -> list[str]:
        features = [c for c in schema.select_by_tag(tag).column_names if c not in (id_column, f"{id_column}_raw")]
        return [id_column, *features, f"{id_column}_raw"]

    return side(Tags.USER, "user_id"), side(Tags.ITEM, "item_id")
