"""What scoring reads: the run's embeddings, feature tables and seen items, as aligned numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..features.lists import Column, as_column
from ..features.tables import read_processed
from ..paths import RunPaths, require
from ..runtime import InputDataError


@dataclass
class Catalog:
    """Everything scoring needs, as aligned numpy arrays (row i of a table is row i of its embeddings)."""

    user_features: dict[str, Column]
    """The user table's columns (id, declared features, raw id); a multi-valued feature as a ``ListColumn``."""
    item_features: dict[str, Column]
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    seen_indptr: np.ndarray
    """CSR over user rows: ``seen_items[seen_indptr[u]:seen_indptr[u + 1]]`` are the items excluded from user
    row u's lists (``scoring.exclude``: the user's training clicks, or every training impression)."""
    seen_items: np.ndarray
    item_clickers: np.ndarray | None = None
    """Distinct users who clicked each item row in training (None: count the seen CSR, i.e. clicks)."""
    item_days: Any = None
    """Training clicks per (item row, day) (:class:`~recsys_tasks.scoring.popularity.ItemDays`), for the
    time-decayed popularity prior; None when the source has no days."""
    ann_index: Any = None
    """The FAISS index of :mod:`recsys_tasks.scoring.kernels.ann` when scoring retrieves approximately."""

    @property
    def num_users(self) -> int:
        return len(self.user_embeddings)

    @property
    def num_items(self) -> int:
        return len(self.item_embeddings)

    @cached_property
    def popularity_prior(self) -> np.ndarray:
        """``log(1 + distinct users who clicked the item in training)`` per item row (the all-time prior)."""
        return self.prior(0.0)

    def prior(self, half_life_days: float) -> np.ndarray:
        """The blend's popularity prior per item row: all time (``half_life_days`` 0) or time-decayed
        (:func:`recsys_tasks.scoring.popularity.prior`); computed once per half-life."""
        from .popularity import prior

        cache = self.__dict__.setdefault("_priors", {})
        if half_life_days not in cache:
            clickers = self.item_clickers
            if clickers is None:
                clickers = np.bincount(self.seen_items, minlength=self.num_items)
            cache[half_life_days] = prior(clickers, self.item_days, half_life_days)
        return cache[half_life_days]

    @cached_property
    def packed_items(self) -> np.ndarray:
        """Item embeddings in the CPU retrieval kernel's tiled layout (built once per catalog)."""
        from .kernels.topk import pack_items

        return pack_items(self.item_embeddings)


def embedding_matrix(path: Path, id_column: str, ids: np.ndarray) -> np.ndarray:
    """The embedding columns of ``path`` as one float32 matrix (row i is ``ids[i]``), read batch by batch.

    A whole-table pandas read would hold the Arrow table, the frame, the frame without its id column
    and the matrix at once: for a million users that, not scoring, set the stage's peak memory.
    """
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = [c for c in parquet.schema_arrow.names if c != id_column]
    matrix = np.empty((parquet.metadata.num_rows, len(columns)), dtype=np.float32)
    mismatch = InputDataError(f"{path}: {id_column} values do not match the feature table's ids")
    if len(matrix) != len(ids):
        raise mismatch
    start = 0
    for batch in parquet.iter_batches(batch_size=65_536):
        stop = start + batch.num_rows
        if not np.array_equal(batch.column(id_column).to_numpy(zero_copy_only=False), ids[start:stop]):
            raise mismatch
        for position, column in enumerate(columns):
            matrix[start:stop, position] = batch.column(column).to_numpy(zero_copy_only=False)
        start = stop
    return matrix


def _row_lookup(ids: np.ndarray) -> np.ndarray:
    lookup = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    return lookup


def _rows_or_missing(lookup: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of ``ids`` in a :func:`_row_lookup` table, -1 for ids outside it."""
    inside = (ids >= 0) & (ids < len(lookup))
    return np.where(inside, lookup[np.where(inside, ids, 0)], -1)


def seen_csr(user_rows: np.ndarray, item_rows: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated (user row, item row) clicks as CSR arrays."""
    pairs = np.unique(np.stack([user_rows, item_rows], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, pairs[:, 1].astype(np.int64)


EXCLUDE_POLICIES = ("clicked", "interacted")


HISTORIES = ("train", "window")


def load_catalog(paths: RunPaths, exclude: str = "clicked", history: str = "train") -> Catalog:
    """The run's catalog; ``exclude`` (``scoring.exclude``) names what a user's lists may not hold:
    ``clicked`` their clicks, ``interacted`` every item they were shown (or rated); ``history``
    (``scoring.history``) which days count: ``train`` the training days, ``window`` every day of the window
    (validation days included), see :func:`with_history`."""
    import pandas as pd

    users = pd.read_parquet(require(paths.user_features, "fit_retrieval"))
    items = pd.read_parquet(require(paths.item_features, "fit_retrieval"))
    user_ids = users["user_id"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    user_embeddings = embedding_matrix(require(paths.user_embeddings, "fit_retrieval"), "user_id", user_ids)
    item_embeddings = embedding_matrix(require(paths.item_embeddings, "fit_retrieval"), "item_id", item_ids)
    from ..validation import check_finite, check_unique_ids

    check_unique_ids(user_ids, "user_id", paths.user_features)
    check_unique_ids(item_ids, "item_id", paths.item_features)
    check_finite(user_embeddings, paths.user_embeddings)
    check_finite(item_embeddings, paths.item_embeddings)
    catalog = Catalog(
        # The tables' columns are the run's input contract (id, declared features, raw id).
        user_features={c: as_column(users[c].to_numpy()) for c in users.columns},
        item_features={c: as_column(items[c].to_numpy()) for c in items.columns},
        user_embeddings=user_embeddings,
        item_embeddings=item_embeddings,
        seen_indptr=np.zeros(len(user_ids) + 1, dtype=np.int64),
        seen_items=np.zeros(0, dtype=np.int64),
    )
    return with_history(catalog, paths, exclude, history)


def _has_column(directory: Path, column: str) -> bool:
    import pyarrow.parquet as pq

    files = sorted(directory.glob("*.parquet"))
    return bool(files) and column in pq.read_schema(files[0]).names


def with_history(catalog: Catalog, paths: RunPaths, exclude: str, history: str) -> Catalog:
    """The catalog (embeddings and tables shared) with the seen items and popularity of ``history``'s days.

    ``train``: what the models were validated with; the blend fit and the gate use it, since the
    validation days' clicks are what they are judged on. ``window``: what the published lists use, so an item
    a user rated in the validation days is not recommended to them again and the popularity prior includes
    the newest days.
    """
    if exclude not in EXCLUDE_POLICIES:
        raise ValueError(f"unknown exclusion policy {exclude!r} (clicked or interacted)")
    if history not in HISTORIES:
        raise ValueError(f"unknown history {history!r} (train or window)")
    import dataclasses

    from .popularity import read_item_days

    users, items = _row_lookup(catalog.user_features["user_id"]), _row_lookup(catalog.item_features["item_id"])
    days = {"train": [("retrieval_train", "train")], "window": [("retrieval_train", "train"),
                                                                ("retrieval_valid", "valid")]}[history]
    click_users, click_items, clicker_ids, shown_users, shown_items = [], [], [], [], []
    for clicks_dir, impressions_dir in days:
        directory = require(getattr(paths, clicks_dir), "transform")
        # Raw ids tell apart the clickers the models do not know (a copy without them: the encoded ids).
        clicker = "user_id_raw" if _has_column(directory, "user_id_raw") else "user_id"
        clicks = read_processed(directory, columns=sorted({"user_id", clicker, "item_id"}))
        click_users.append(_rows_or_missing(users, clicks["user_id"].to_numpy()))
        click_items.append(_rows_or_missing(items, clicks["item_id"].to_numpy()))
        clicker_ids.append(clicks[clicker].to_numpy().astype(np.int64))
        if exclude == "interacted":
            shown = read_processed(require(getattr(paths, impressions_dir), "transform"),
                                   columns=["user_id", "item_id"])
            shown_users.append(_rows_or_missing(users, shown["user_id"].to_numpy()))
            shown_items.append(_rows_or_missing(items, shown["item_id"].to_numpy()))
    user_rows, item_rows = np.concatenate(click_users), np.concatenate(click_items)
    clicker_raw = np.concatenate(clicker_ids)
    # Popularity counts every distinct clicker of a known item, users the models do not know included (a
    # validation day's new users: their ids are all Categorify's out-of-vocabulary one, their raw ids differ).
    item_known = item_rows >= 0
    pairs = np.unique(np.stack([clicker_raw[item_known], item_rows[item_known]], axis=1), axis=0)
    clickers = np.bincount(pairs[:, 1], minlength=catalog.num_items)
    known = (user_rows >= 0) & item_known
    user_rows, item_rows = user_rows[known], item_rows[known]
    indptr, seen_items = seen_csr(user_rows, item_rows, catalog.num_users)
    if exclude == "interacted":
        shown_user_rows, shown_item_rows = np.concatenate(shown_users), np.concatenate(shown_items)
        known = (shown_user_rows >= 0) & (shown_item_rows >= 0)
        indptr, seen_items = seen_csr(np.concatenate([user_rows, shown_user_rows[known]]),
                                      np.concatenate([item_rows, shown_item_rows[known]]), catalog.num_users)
    item_days = read_item_days(paths.item_days, catalog.item_features["item_id_raw"],
                               ("train",) if history == "train" else ("train", "valid"))
    return dataclasses.replace(catalog, seen_indptr=indptr, seen_items=seen_items, item_clickers=clickers,
                               item_days=item_days, ann_index=catalog.ann_index)
