"""Your own interactions in: a delimited or parquet file and a column mapping become the daily partitions
the ``parquet`` source reads (``python -m recsys_tasks import-interactions``, see ``docs/input-data.md``).

Every day from the first to the last is written, a day without interactions as a valid empty partition;
optional user and item tables contribute declared categorical, continuous and multi-valued features,
joined onto each row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..runtime import InputDataError, get_logger
from .contract import RESERVED, declared_features
from .partitions import write_partition

log = get_logger("import_interactions")

SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".inter": "\t", ".user": "\t", ".item": "\t"}


@dataclass(frozen=True)
class FeatureTable:
    """A user or item table: its file, the id column and the declared columns (source -> ``name[:kind]``)."""

    path: Path
    key: str
    features: dict[str, str]
    list_sep: str = " "
    """Separates the values of a multi-valued (``:multi``) text cell; RecBole's ``token_seq`` uses a space.
    A parquet list column needs none."""


@dataclass(frozen=True)
class ImportSpec:
    """Where the interactions are, what each column means, and which time zone defines a day."""

    interactions: Path
    root: Path
    user_col: str
    item_col: str
    time_col: str
    label_col: str = ""
    rating_col: str = ""
    rating_threshold: float | None = None
    weight_col: str = ""
    time_unit: str = "s"
    timezone: str = "UTC"
    sep: str | None = None
    start: str = ""
    end: str = ""
    users: FeatureTable | None = None
    items: FeatureTable | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_table(path: Path, sep: str | None = None) -> Any:
    """A parquet file, or a delimited text file read as strings (the separator from the suffix unless given)."""
    import pandas as pd

    if not path.is_file():
        raise InputDataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise InputDataError(f"{path}: not a readable parquet file ({exc})") from exc
    sep = sep or SEPARATORS.get(path.suffix)
    if sep is None:
        raise InputDataError(f"{path}: unknown suffix {path.suffix!r}; give the separator (--sep ',' or --sep tab)")
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: not a readable {sep!r}-separated file ({exc})") from exc


def _column(frame: Any, path: Path, column: str, role: str) -> Any:
    if column not in frame.columns:
        raise InputDataError(f"{path}: no column {column!r} ({role}); the file has {list(frame.columns)}")
    values = frame[column]
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise InputDataError(f"{path}: column {column!r} ({role}) is empty at row {row}")
    return values


def _bad(path: Path, column: str, values: Any, ok: np.ndarray, expected: str) -> InputDataError:
    row = int(np.flatnonzero(~ok)[0])
    return InputDataError(f"{path}: column {column!r} holds {values.iloc[row]!r} at row {row}; expected {expected}")


def numbers(frame: Any, path: Path, column: str, role: str) -> np.ndarray:
    """The column as float64; an error names the first value that is not a finite number."""
    import pandas as pd

    values = _column(frame, path, column, role)
    parsed = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(parsed)
    if not ok.all():
        raise _bad(path, column, values, ok, "a number")
    return parsed


def ids(frame: Any, path: Path, column: str, role: str) -> np.ndarray:
    """Non-negative integer ids (they become the Redis keys ``USER:<id>``)."""
    values = _column(frame, path, column, role)
    parsed = numbers(frame, path, column, role)
    ok = (parsed >= 0) & (parsed == np.floor(parsed)) & (parsed < 2**63)
    if not ok.all():
        raise _bad(path, column, values, ok, "a non-negative integer id")
    return parsed.astype(np.int64)


def day_of(frame: Any, path: Path, spec: ImportSpec) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (UTC) and the day each row falls on in ``spec.timezone``."""
    from zoneinfo import ZoneInfo

    import pandas as pd

    try:
        zone = datetime.timezone.utc if spec.timezone == "UTC" else ZoneInfo(spec.timezone)
    except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ConfigError(f"--timezone {spec.timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from exc
    if spec.time_unit in ("s", "ms"):
        seconds = numbers(frame, path, spec.time_col, "timestamp") / (1000.0 if spec.time_unit == "ms" else 1.0)
        stamps = pd.to_datetime(seconds, unit="s", utc=True)
    elif spec.time_unit == "iso":
        values = _column(frame, path, spec.time_col, "timestamp")
        stamps = pd.to_datetime(values, errors="coerce", utc=False)
        ok = ~stamps.isna().to_numpy()
        if not ok.all():
            raise _bad(path, spec.time_col, values, ok, "a date-time such as 2026-01-31T12:00:00")
        stamps = pd.DatetimeIndex(stamps)
        stamps = stamps.tz_localize(zone) if stamps.tz is None else stamps
        stamps = stamps.tz_convert("UTC")
    else:
        raise ConfigError(f"--time-unit must be s, ms or iso, got {spec.time_unit!r}")
    index = pd.DatetimeIndex(stamps)
    local = index.tz_convert(zone)
    epoch = (index.asi8 // 1_000_000_000).astype(np.int64)
    return epoch, local.date


def labels(frame: Any, path: Path, spec: ImportSpec) -> dict[str, np.ndarray]:
    """``click`` (0/1) from a label column, or from ``rating >= threshold`` (every rating an impression)."""
    if bool(spec.label_col) == bool(spec.rating_col):
        raise ConfigError("give exactly one of --label-col (a 0/1 click) and --rating-col (with --rating-threshold)")
    out: dict[str, np.ndarray] = {}
    if spec.label_col:
        values = _column(frame, path, spec.label_col, "click label")
        parsed = numbers(frame, path, spec.label_col, "click label")
        ok = (parsed == 0) | (parsed == 1)
        if not ok.all():
            raise _bad(path, spec.label_col, values, ok, "0 or 1")
        out["click"] = parsed.astype(np.int64)
    else:
        if spec.rating_threshold is None:
            raise ConfigError("--rating-col needs --rating-threshold (a rating >= it counts as a click)")
        rating = numbers(frame, path, spec.rating_col, "rating")
        out["click"] = (rating >= spec.rating_threshold).astype(np.int64)
        out["rating"] = rating
    if spec.weight_col:
        values = _column(frame, path, spec.weight_col, "weight")
        weight = numbers(frame, path, spec.weight_col, "weight")
        ok = weight >= 0
        if not ok.all():
            raise _bad(path, spec.weight_col, values, ok, "a weight >= 0")
        out["weight"] = weight
    return out


def _codes(tokens: Any) -> np.ndarray:
    """Integer codes: non-negative integers stay themselves, anything else one code per distinct value
    (sorted, so the same table gives the same codes)."""
    import pandas as pd

    parsed = pd.to_numeric(tokens, errors="coerce")
    if not parsed.isna().any() and (parsed == np.floor(parsed)).all() and (parsed >= 0).all():
        return parsed.to_numpy().astype(np.int64)
    return pd.Categorical(tokens.astype(str)).codes.astype(np.int64)


def multi_codes(frame: Any, path: Path, column: str, name: str, sep: str) -> np.ndarray:
    """A multi-valued column (text split on ``sep``, or a parquet list) as one array of integer codes per row,
    coded like a categorical column over all the rows' values; an empty row or value is an error."""
    import pandas as pd

    values = _column(frame, path, column, f"multi-valued feature {name}")
    rows = [[t.strip() for t in v.split(sep) if t.strip()] if isinstance(v, str) else list(v) for v in values]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if (lengths == 0).any():
        raise _bad(path, column, values, lengths > 0, f"at least one value, separated by {sep!r} (multi-valued)")
    flat = pd.Series([t for r in rows for t in r], dtype=object)
    if flat.isna().any():
        row = int(np.searchsorted(np.cumsum(lengths), int(np.flatnonzero(flat.isna().to_numpy())[0]), "right"))
        raise _bad(path, column, values, np.arange(len(rows)) != row, "a list without empty values")
    coded = np.empty(len(rows), dtype=object)  # one array per row (np.array would stack equal lengths)
    for row, codes in enumerate(np.split(_codes(flat), np.cumsum(lengths)[:-1])):
        coded[row] = codes
    return coded


def feature_codes(table: FeatureTable, id_column: str) -> Any:
    """The table's declared columns as integer codes (strings: sorted-value codes), numbers (continuous) or
    arrays of codes (multi-valued), indexed by id."""
    import pandas as pd

    frame = read_table(table.path)
    keys = ids(frame, table.path, table.key, f"{id_column} key")
    duplicated = pd.Series(keys).duplicated().to_numpy()
    if duplicated.any():
        raise InputDataError(f"{table.path}: column {table.key!r} holds the id {keys[duplicated][0]} twice")
    ignored = [c for c in frame.columns if c != table.key and c not in table.features]
    if ignored:
        log.info("%s: columns %s are not declared and are ignored", table.path, ignored)
    coded = {}
    for source, declared in table.features.items():
        name, _, kind = declared.partition(":")
        if kind == "continuous":
            coded[name] = numbers(frame, table.path, source, f"continuous feature {name}")
        elif kind == "multi":
            coded[name] = multi_codes(frame, table.path, source, name, table.list_sep)
        else:
            coded[name] = _codes(_column(frame, table.path, source, f"feature {name}"))
    return pd.DataFrame(coded, index=pd.Index(keys, name=id_column))


def join_features(rows: dict[str, np.ndarray], table: FeatureTable, id_column: str, path: Path) -> None:
    """Add the table's features to every row; an interaction whose id the table lacks is an error."""
    codes = feature_codes(table, id_column)
    position = codes.index.get_indexer(rows[id_column])
    if (position < 0).any():
        missing = rows[id_column][position < 0][0]
        raise InputDataError(f"{path}: {id_column} {missing} has no row in {table.path} (column {table.key!r})")
    for name in codes.columns:
        rows[name] = codes[name].to_numpy()[position]


def _day(value: str, option: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} must be a day written YYYY-MM-DD, got {value!r}") from None


def import_interactions(spec: ImportSpec) -> dict[str, Any]:
    """Write ``<root>/dt=YYYY-MM-DD/`` for every day from the first to the last; returns the summary."""
    import pandas as pd
    import pyarrow as pa

    path = spec.interactions
    frame = read_table(path, spec.sep)
    if len(frame) == 0:
        raise InputDataError(f"{path}: no rows")
    rows: dict[str, np.ndarray] = {
        "user_id": ids(frame, path, spec.user_col, "user id"),
        "item_id": ids(frame, path, spec.item_col, "item id"),
    }
    rows.update(labels(frame, path, spec))
    epoch, days = day_of(frame, path, spec)
    rows["timestamp"] = epoch
    used = {spec.user_col, spec.item_col, spec.time_col, spec.label_col, spec.rating_col, spec.weight_col}
    ignored = [c for c in frame.columns if c not in used]
    if ignored:
        log.info("%s: columns %s are not mapped and are ignored", path, ignored)
    declared = {}
    for table, id_column, key in ((spec.users, "user_id", "user_features"), (spec.items, "item_id", "item_features")):
        if table is not None:
            join_features(rows, table, id_column, path)
            declared[key] = ",".join(table.features.values())
    first = _day(spec.start, "--start") if spec.start else min(days)
    last = _day(spec.end, "--end") if spec.end else max(days)
    if last < first:
        raise ConfigError(f"--end {last} is before --start {first}")
    data = pd.DataFrame(rows)
    data["_day"] = days
    inside = (data["_day"] >= first) & (data["_day"] <= last)
    data = data[inside].sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    # One arrow schema for every day: an empty day's list column would otherwise be written untyped (null).
    schema = pa.Schema.from_pandas(data.drop(columns="_day"), preserve_index=False)
    by_day = dict(tuple(data.groupby("_day", sort=True)))
    empty = data.iloc[:0].drop(columns="_day")
    written, empty_days = [], []
    day = first
    while day <= last:
        part = by_day[day].drop(columns="_day") if day in by_day else empty
        if not len(part):
            empty_days.append(day.isoformat())
        manifest = {"written_by": "import-interactions", "source": str(path), "timezone": spec.timezone,
                    "clicks": int(part["click"].sum())}
        written.append(write_partition(part, spec.root, day, manifest, schema=schema))
        day += datetime.timedelta(days=1)
    settings = {"data.source": "parquet", "data.partition_root": str(spec.root.resolve()),
                "data.user_features": declared.get("user_features", ""),
                "data.item_features": declared.get("item_features", "")}
    if spec.rating_col:
        # Every rating is an impression the user chose to make: an item they rated, liked or not, is not
        # recommended to them again (docs/quality-and-gate.md, "What is excluded from a list").
        settings["scoring.exclude"] = "interacted"
    return {
        "root": str(spec.root.resolve()), "source": str(path), "timezone": spec.timezone,
        "first_day": first.isoformat(), "last_day": last.isoformat(), "days": len(written),
        "empty_days": empty_days, "rows": int(len(data)), "rows_outside_days": int((~inside).sum()),
        "clicks": int(data["click"].sum()), "users": int(data["user_id"].nunique()),
        "items": int(data["item_id"].nunique()), "columns": [c for c in data.columns if c != "_day"],
        "settings": settings,
    }


def parse_features(value: str, option: str) -> dict[str, str]:
    """``"age:token=age:continuous,gender"`` -> ``{"age:token": "age:continuous", "gender": "gender"}``:
    source column -> the name it gets (and its kind: categorical unless ``:continuous`` or ``:multi``)."""
    features = {}
    for entry in (e.strip() for e in value.split(",") if e.strip()):
        if "=" in entry:
            source, _, name = entry.rpartition("=")
        else:  # "genre" or "age:continuous": the column keeps its name
            source = entry.rsplit(":", 1)[0] if entry.endswith((":continuous", ":categorical", ":multi")) else entry
            name = entry
        features[source] = name
    declared_features(",".join(features.values()), (), option)
    clash = sorted({name.partition(":")[0] for name in features.values()} & RESERVED)
    if clash:
        raise ConfigError(f"{option}: {clash} are reserved names")
    return features


def _table(path: Path | None, key: str, features: str, option: str, list_sep: str) -> FeatureTable | None:
    if path is None:
        return None
    if not features:
        raise ConfigError(f"{option} is needed with its table: the columns to use (SOURCE[=NAME],...)")
    if not list_sep:
        raise ConfigError("--list-sep must not be empty")
    return FeatureTable(path=path, key=key, features=parse_features(features, option), list_sep=list_sep)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks import-interactions", description=__doc__)
    parser.add_argument("interactions", type=Path, help="a .csv/.tsv/.inter or .parquet file of interactions")
    parser.add_argument("--root", type=Path, required=True, help="directory that receives dt=YYYY-MM-DD/ partitions")
    parser.add_argument("--user-col", default="user_id", help="integer user id column (user_id)")
    parser.add_argument("--item-col", default="item_id", help="integer item id column (item_id)")
    parser.add_argument("--time-col", default="timestamp", help="time of the interaction (timestamp)")
    parser.add_argument("--time-unit", default="s", choices=["s", "ms", "iso"], help="epoch s, ms, or ISO text")
    parser.add_argument("--timezone", default="UTC", help="IANA zone whose midnight starts a day (UTC)")
    parser.add_argument("--label-col", default="", help="a 0/1 click column (impression logs)")
    parser.add_argument("--rating-col", default="", help="a rating column: every rating is an impression ...")
    parser.add_argument("--rating-threshold", type=float, help="... and a rating >= this is a click")
    parser.add_argument("--weight-col", default="", help="optional non-negative weight column (kept, not used yet)")
    parser.add_argument("--sep", help="separator of a text file (default from the suffix; 'tab' for a tab)")
    parser.add_argument("--start", default="", help="first day to write, YYYY-MM-DD (default: the first in the data)")
    parser.add_argument("--end", default="", help="last day to write, YYYY-MM-DD (default: the last in the data)")
    parser.add_argument("--users", type=Path, help="optional user table (one row per user)")
    parser.add_argument("--user-key", default="user_id", help="the user table's id column")
    parser.add_argument("--user-features", default="",
                        help="its feature columns, SOURCE[=NAME[:continuous|:multi]],... (categorical unless "
                             ":continuous, a number, or :multi, several values per cell)")
    parser.add_argument("--items", type=Path, help="optional item table (one row per item)")
    parser.add_argument("--item-key", default="item_id", help="the item table's id column")
    parser.add_argument("--item-features", default="", help="as --user-features, for the item table")
    parser.add_argument("--list-sep", default=" ",
                        help="separates the values of a :multi text cell (default a space, as RecBole's token_seq)")
    args = parser.parse_args(argv)
    spec = ImportSpec(
        interactions=args.interactions, root=args.root, user_col=args.user_col, item_col=args.item_col,
        time_col=args.time_col, label_col=args.label_col, rating_col=args.rating_col,
        rating_threshold=args.rating_threshold, weight_col=args.weight_col, time_unit=args.time_unit,
        timezone=args.timezone, sep="\t" if args.sep == "tab" else args.sep, start=args.start, end=args.end,
        users=_table(args.users, args.user_key, args.user_features, "--user-features", args.list_sep),
        items=_table(args.items, args.item_key, args.item_features, "--item-features", args.list_sep),
    )
    try:
        summary = import_interactions(spec)
    except InputDataError as exc:  # one line naming file, column and value; nothing more to show
        print(f"input error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
