"""Multi-valued (list) feature columns as flat values and row offsets: the ``<name>__values`` /
``<name>__offsets`` pair Merlin's loader feeds the models, so scoring and the embedding export feed them alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ListColumn:
    """Row ``r`` holds ``values[offsets[r]:offsets[r + 1]]``; gathers and slices without a Python loop."""

    values: np.ndarray
    offsets: np.ndarray
    """int64, one more than the rows; starts at 0."""

    @classmethod
    def from_lists(cls, lists: Sequence[Any]) -> ListColumn:
        """From a sequence of arrays (a pandas object column read from a parquet list column)."""
        lengths = np.fromiter((len(row) for row in lists), dtype=np.int64, count=len(lists))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.concatenate([np.asarray(row) for row in lists]) if len(lists) else np.zeros(0, np.int32)
        return cls(values=values, offsets=offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, rows: slice | np.ndarray) -> ListColumn:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                offsets = self.offsets[start:stop + 1]
                return ListColumn(self.values[offsets[0]:offsets[-1]], offsets - offsets[0])
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Position j of the output row r reads values[starts[r] + j].
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return ListColumn(self.values[gather], offsets)

    def model_inputs(self, name: str) -> dict[str, np.ndarray]:
        """The two inputs a Merlin model takes for this feature."""
        return {f"{name}__values": self.values, f"{name}__offsets": self.offsets}


Column = np.ndarray | ListColumn


def as_column(values: Any) -> Column:
    """A list column (an object array of arrays, as pandas reads a parquet list) as a :class:`ListColumn`;
    any other array unchanged."""
    values = np.asarray(values) if not isinstance(values, ListColumn) else values
    if isinstance(values, np.ndarray) and values.dtype == object:
        return ListColumn.from_lists(values)
    return values


def model_batch(columns: Mapping[str, Column], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of every column as model inputs: a scalar feature ``[rows, 1]``, a list feature its
    values and offsets."""
    batch: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        if isinstance(column, ListColumn):
            batch.update(column[start:stop].model_inputs(name))
        else:
            batch[name] = column[start:stop].reshape(-1, 1)
    return batch


def model_signature(columns: Mapping[str, Column]) -> dict[str, Any]:
    """``tf.TensorSpec`` of each input :func:`model_batch` makes, with an open batch dimension."""
    import tensorflow as tf

    signature: dict[str, Any] = {}
    for name, column in columns.items():
        if isinstance(column, ListColumn):
            signature[f"{name}__values"] = tf.TensorSpec([None], tf.as_dtype(column.values.dtype),
                                                         name=f"{name}__values")
            signature[f"{name}__offsets"] = tf.TensorSpec([None], tf.int64, name=f"{name}__offsets")
        else:
            signature[name] = tf.TensorSpec([None, 1], tf.as_dtype(column.dtype), name=name)
    return signature


def dtype_key(column: Column) -> str:
    """A column's input dtypes as text (a traced model is reused only for the same ones)."""
    if isinstance(column, ListColumn):
        return f"list[{column.values.dtype.str}]"
    return column.dtype.str
