"""A global time-based split by whole days: the oldest days train, the next validate, the newest test.

Whole days, because the pipeline reads daily partitions: its window is exactly train + validation, so
the test days are never seen by training, early stopping or tuning.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TimeSplit:
    """Inclusive day ranges of the three parts."""

    train: tuple[datetime.date, datetime.date]
    valid: tuple[datetime.date, datetime.date]
    test: tuple[datetime.date, datetime.date]

    def part_of(self, days: np.ndarray) -> np.ndarray:
        """``"train"``/``"valid"``/``"test"`` for each day."""
        out = np.full(len(days), "test", dtype=object)
        out[days <= self.valid[1]] = "valid"
        out[days <= self.train[1]] = "train"
        return out

    @property
    def window_days(self) -> int:
        return (self.valid[1] - self.train[0]).days + 1

    @property
    def valid_days(self) -> int:
        return (self.valid[1] - self.valid[0]).days + 1

    def describe(self, days: np.ndarray) -> dict[str, Any]:
        parts = self.part_of(days)
        return {
            name: {"first_day": span[0].isoformat(), "last_day": span[1].isoformat(),
                   "days": (span[1] - span[0]).days + 1, "interactions": int((parts == name).sum())}
            for name, span in (("train", self.train), ("valid", self.valid), ("test", self.test))
        }


def time_split(days: np.ndarray, valid_fraction: float, test_fraction: float) -> TimeSplit:
    """Cut the day range so that about ``test_fraction`` of interactions fall in the test days and
    ``valid_fraction`` in the validation days just before them (at least one day each)."""
    ordered = np.sort(np.asarray(days))
    first, last = ordered[0], ordered[-1]

    def day_at(fraction: float) -> datetime.date:
        return ordered[min(int(round(len(ordered) * (1.0 - fraction))), len(ordered) - 1)]

    test_start = max(day_at(test_fraction), first + datetime.timedelta(days=2))
    valid_start = min(day_at(test_fraction + valid_fraction), test_start - datetime.timedelta(days=1))
    valid_start = max(valid_start, first + datetime.timedelta(days=1))
    if test_start > last:
        raise ValueError(f"the data spans {first}..{last}: too few days for a train/validation/test split")
    one = datetime.timedelta(days=1)
    return TimeSplit(train=(first, valid_start - one), valid=(valid_start, test_start - one), test=(test_start, last))
