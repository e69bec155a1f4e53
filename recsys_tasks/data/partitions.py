"""Daily input partitions: the ``<root>/dt=YYYY-MM-DD/`` layout, a run's window and its time-based split.

A run reads the ``data.window_days`` partitions ending at ``data.end_date`` (the DAG sets it to the run's
logical date); the last ``data.valid_days`` of them are validation data, the earlier ones training data.
:func:`write_partitions` writes such a layout from one frame (``python -m recsys_tasks make-partitions``).
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..runtime import InputDataError, get_logger

log = get_logger("generate_data")

PARTITION_PREFIX = "dt="
MANIFEST_NAME = "_manifest.json"
"""Beside each partition's parquet: its rows (and who wrote it); a reader refuses a partition whose
parquet rows differ from its manifest (a day replaced by hand, half copied)."""


class MissingPartitionError(InputDataError):
    """A day of the window has no partition (no directory, or no parquet file in it)."""


def partition_dir(root: str | Path, day: datetime.date) -> Path:
    return Path(root) / f"{PARTITION_PREFIX}{day.isoformat()}"


def window(end_date: str, window_days: int) -> list[datetime.date]:
    """The ``window_days`` days ending at ``end_date`` (inclusive), oldest first."""
    end = datetime.date.fromisoformat(end_date)
    return [end - datetime.timedelta(days=back) for back in range(window_days - 1, -1, -1)]


@dataclass(frozen=True)
class WindowPlan:
    """What one run reads: the parquet files of each day, split by time."""

    root: Path
    train_days: list[datetime.date]
    valid_days: list[datetime.date]
    files: dict[datetime.date, list[Path]]

    def describe(self) -> dict[str, Any]:
        """The window as JSON (dates as ``YYYY-MM-DD``), for the summaries and ``report.json``."""
        days = [*self.train_days, *self.valid_days]
        return {
            "partition_root": str(self.root),
            "start_date": days[0].isoformat(),
            "end_date": days[-1].isoformat(),
            "days": len(days),
            "train_days": [d.isoformat() for d in self.train_days],
            "valid_days": [d.isoformat() for d in self.valid_days],
        }


def plan_window(settings: DataConfig) -> WindowPlan:
    """The partitions of the run's window; fails naming every missing partition path."""
    if not settings.end_date:
        raise InputDataError(
            "data.partition_root is set but data.end_date is empty: give the last day of the window "
            "(YYYY-MM-DD); the DAG sets it from the run's logical date"
        )
    root = Path(settings.partition_root)
    if not root.is_dir():
        raise MissingPartitionError(f"data.partition_root={root}: no such directory")
    days = window(settings.end_date, settings.window_days)
    files: dict[datetime.date, list[Path]] = {}
    missing: list[str] = []
    for day in days:
        directory = partition_dir(root, day)
        found = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        if not found:
            missing.append(f"{directory} ({'no *.parquet files' if directory.is_dir() else 'no such directory'})")
        files[day] = found
    if missing:
        raise MissingPartitionError(
            f"the window {days[0]}..{days[-1]} (data.window_days={settings.window_days}, ending at data.end_date) "
            f"lacks {len(missing)} of its {len(days)} daily partition(s): {'; '.join(missing)}"
        )
    cut = len(days) - settings.valid_days
    return WindowPlan(root=root, train_days=days[:cut], valid_days=days[cut:], files=files)


def check_manifest(directory: Path, rows: int) -> None:
    """Refuse a partition whose ``_manifest.json`` names another row count than its parquet files hold."""
    import json

    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return
    try:
        expected = json.loads(manifest.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{manifest}: not a partition manifest with a 'rows' field ({exc})") from exc
    if expected != rows:
        raise InputDataError(f"{directory}: the parquet files hold {rows} rows but {manifest} says {expected}; "
                             "the partition was changed after it was written: write it again")


def write_partition(part: Any, root: str | Path, day: datetime.date, manifest: dict[str, Any] | None = None, *,
                    schema: Any = None) -> dict:
    """One day's rows (possibly none) as ``<root>/dt=<day>/part-0.parquet`` plus its manifest (``schema``: the
    arrow schema to write, e.g. so an empty day keeps a list column's type).

    Written to a temporary directory and renamed into place, so a reader never sees half a day; an
    existing partition of the same day is replaced. Returns ``{dt, path, rows}``.
    """
    import json

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = partition_dir(root, day)
    staging = root / f".{target.name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    part = part.reset_index(drop=True)
    part.to_parquet(staging / "part-0.parquet", index=False, schema=schema)
    entry = {"dt": day.isoformat(), "path": str(target), "rows": int(len(part))}
    (staging / MANIFEST_NAME).write_text(json.dumps({**entry, **(manifest or {})}, indent=1))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    log.info("partition %s: %d rows", target, len(part))
    return entry


def write_partitions(frame: Any, root: str | Path, start_date: str, days: int) -> list[dict[str, Any]]:
    """Split ``frame``'s rows into ``days`` consecutive daily partitions from ``start_date`` on.

    Returns one ``{dt, path, rows}`` per day (see :func:`write_partition`).
    """
    import numpy as np

    first = datetime.date.fromisoformat(start_date)
    bounds = np.linspace(0, len(frame), days + 1).astype(np.int64)
    return [
        write_partition(frame.iloc[bounds[index]:bounds[index + 1]], root, first + datetime.timedelta(days=index),
                        {"written_by": "make-partitions"})
        for index in range(days)
    ]
