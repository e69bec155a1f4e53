"""User and item feature tables (one row per encoded id) taken from the processed training data.

Shared by retrieval (to embed every user and item) and scoring (to build DLRM inputs for
(user, candidate) pairs). A user's or item's features are those of its first impression in train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .transform import ITEM_FEATURES, USER_FEATURES

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


def build_feature_tables(train_dir: Path) -> tuple[Any, Any]:
    frame = read_processed(train_dir, columns=sorted(set(USER_COLUMNS) | set(ITEM_COLUMNS)))
    return unique_by_id(frame, "user_id", USER_COLUMNS), unique_by_id(frame, "item_id", ITEM_COLUMNS)
