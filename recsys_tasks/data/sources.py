"""Stage 1: raw Ali-CCP-shaped impressions (train and valid parquet) in the run directory.

Three sources (``data.source``):

* ``planted`` (default) - synthetic data with a known, learnable signal (:mod:`recsys_tasks.data.planted`):
  users and items carry latent taste vectors tied to their features, clicks are drawn from a known
  probability model and item exposure has a long tail. The ground truth (latent vectors, exposure,
  click model) is saved to ``raw/truth.npz`` so the evaluation can score the oracle.
* ``merlin`` - Merlin's own ``generate_data("aliccp-raw", ...)`` as in the notebook. Its clicks are
  ``randint(0, 2)``: no model can learn from it, so it only proves the plumbing works (the quality
  gate refuses to publish it unless ``quality.force_publish`` is set).
* ``parquet`` - user-supplied raw Ali-CCP data, checked against the raw schema before anything is
  copied: either daily partitions (``data.partition_root``, a window ending at ``data.end_date`` split by
  time, see :mod:`recsys_tasks.data.partitions`) or fixed paths (``data.train_path`` / ``data.valid_path``, a
  parquet file or a directory of them).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, ConfigError, DataConfig
from ..paths import RunPaths
from ..runtime import InputDataError, get_logger, seed_everything, stage
from .contract import ALICCP_CONTRACT, input_contract
from .partitions import check_manifest
from .planted import planted_parts

log = get_logger("generate_data")

# Raw Ali-CCP columns (the planted and merlin sources' contract), with the dtype kind each must have.
RAW_COLUMNS: dict[str, str] = ALICCP_CONTRACT.raw_columns


def check_raw_frame(frame: Any, source: str, columns: dict[str, str] | None = None, *,
                    allow_empty: bool = False) -> None:
    """Refuse a raw frame that lacks a column, has a non-integer or null column, bad ids or clicks, or no rows
    (``allow_empty``: an empty frame is a valid day without interactions)."""
    columns = RAW_COLUMNS if columns is None else columns
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputDataError(f"{source}: missing column(s) {missing}; expected {_expected(columns)}")
    if len(frame) == 0 and not allow_empty:
        raise InputDataError(f"{source}: no rows")
    for column, kind in columns.items():
        values = frame[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputDataError(f"{source}: column {column!r} holds a null value (row {row})")
        if kind == "l":  # a multi-valued feature: a non-empty list of integers per row
            check_list_column(values, source, column)
        elif kind == "f":  # a continuous feature: any finite number
            finite = np.isfinite(values.to_numpy(dtype=np.float64)) if values.dtype.kind in "fiu" else None
            if finite is None:
                raise InputDataError(f"{source}: column {column!r} has dtype {values.dtype}, expected a number")
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise InputDataError(f"{source}: column {column!r} holds {values.iloc[row]} (row {row}), "
                                     "expected a finite number")
        elif values.dtype.kind not in (kind, "u"):
            raise InputDataError(
                f"{source}: column {column!r} has dtype {values.dtype}, expected an integer type"
            )
    for column in ("user_id", "item_id"):
        negative = frame[column].to_numpy() < 0
        if negative.any():
            row = int(np.flatnonzero(negative)[0])
            raise InputDataError(
                f"{source}: column {column!r} holds the negative id {int(frame[column].iloc[row])} (row {row})"
            )
    clicks = frame["click"].to_numpy()
    bad = (clicks != 0) & (clicks != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"{source}: column 'click' holds {int(clicks[row])} at row {row}; expected 0 or 1")


def check_list_column(values: Any, source: str, column: str) -> None:
    """Every row a non-empty list of integers (an item without genres needs a value such as ``unknown``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(values):  # an empty day (its file's type was checked from the parquet schema)
        return
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputDataError(f"{source}: column {column!r} is not a list of integers in every row ({exc})") from exc
    if not (pa.types.is_list(array.type) and pa.types.is_integer(array.type.value_type)):
        first = values.iloc[0]
        raise InputDataError(f"{source}: column {column!r} holds {first!r} (row 0, type {array.type}); expected a "
                             "list of integers (a multi-valued feature)")
    empty = pc.equal(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise InputDataError(f"{source}: column {column!r} holds an empty list at row {row}; a multi-valued "
                             "feature needs at least one value per row")


def _expected(columns: dict[str, str]) -> str:
    if columns == RAW_COLUMNS:
        return "the Ali-CCP raw schema (data.user_features/data.item_features = aliccp)"
    return f"the declared input contract {list(columns)} (docs/input-data.md)"


def split_rows(frame: Any, valid_fraction: float, seed: int, rng: Any = None) -> tuple[Any, Any]:
    """A seeded random row split, like Merlin's ``set_sizes``.

    Pass one ``rng`` (``default_rng(seed + 1)``) for consecutive parts: the parts of a frame then split
    exactly as the whole frame would.
    """
    rng = np.random.default_rng(seed + 1) if rng is None else rng
    is_valid = rng.random(len(frame)) < valid_fraction
    return frame[~is_valid].reset_index(drop=True), frame[is_valid].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def _merlin_frames(settings: DataConfig) -> tuple[Any, Any]:
    from merlin.datasets.synthetic import generate_data as merlin_generate

    train, valid = merlin_generate(
        "aliccp-raw",
        settings.num_rows,
        set_sizes=(1.0 - settings.valid_fraction, settings.valid_fraction),
    )
    return train.to_ddf().compute(), valid.to_ddf().compute()


def parquet_files(location: str, setting: str) -> list[Path]:
    """The parquet files named by ``data.train_path``/``data.valid_path`` (a file or a directory)."""
    if not location:
        raise InputDataError(f"data.source is 'parquet' but {setting} is empty; set it to a parquet file or directory")
    path = Path(location)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise InputDataError(f"{setting}={location}: the directory holds no *.parquet files")
        return files
    if not path.is_file():
        raise InputDataError(f"{setting}={location}: no such file or directory")
    return [path]


def check_parquet_file(file: Path, columns: dict[str, str] | None = None, *, allow_empty: bool = False) -> int:
    """Check one user-supplied raw file (schema, then values of the columns we use); returns its rows.

    Columns the contract does not name are ignored (and named in the log)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{file}: not a readable parquet file ({exc})") from exc
    columns = RAW_COLUMNS if columns is None else columns
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputDataError(f"{file}: missing column(s) {missing}; expected {_expected(columns)}")
    for column, kind in columns.items():
        kind_of_file = schema.field(column).type
        if kind == "f" and not (pa.types.is_integer(kind_of_file) or pa.types.is_floating(kind_of_file)):
            raise InputDataError(f"{file}: column {column!r} has type {kind_of_file}, expected a number")
        if kind == "l" and not (pa.types.is_list(kind_of_file) and pa.types.is_integer(kind_of_file.value_type)):
            raise InputDataError(f"{file}: column {column!r} has type {kind_of_file}, expected a list of integers")
        if kind == "i" and not pa.types.is_integer(kind_of_file):
            raise InputDataError(f"{file}: column {column!r} has type {kind_of_file}, expected an integer")
    ignored = [c for c in schema.names if c not in columns and c not in IGNORED_QUIETLY]
    if ignored:
        log.info("%s: columns %s are not in the input contract and are ignored", file, ignored)
    frame = pq.read_table(file, columns=list(columns)).to_pandas()
    check_raw_frame(frame, str(file), columns, allow_empty=allow_empty)
    return len(frame)


# Written by the importer beside the contract's columns; not used by the models (yet).
IGNORED_QUIETLY = frozenset({"timestamp", "rating", "weight"})


def _counts(frame: Any) -> dict[str, int]:
    return {
        "rows": int(len(frame)),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "clicks": int(frame["click"].sum()),
    }


def _write_parts(files: list[Path], rows_by_file: dict[Path, int], columns: list[str], target: Path,
                 part_rows: int) -> int:
    """The contract's columns of ``files`` (in order) as raw parts of up to ``part_rows`` rows (a file is never
    split): a window of many small days would otherwise cost NVTabular one partition per day. Returns the parts."""
    import pandas as pd

    groups: list[list[Path]] = [[]]
    for file in files:
        if groups[-1] and sum(rows_by_file[f] for f in groups[-1]) + rows_by_file[file] > part_rows:
            groups.append([])
        groups[-1].append(file)
    for index, group in enumerate(groups):
        frame = pd.concat([pd.read_parquet(f, columns=columns) for f in group], ignore_index=True)
        frame.to_parquet(target / f"part_{index}.parquet", index=False)
    return len(groups)


def _write_item_days(files: list[tuple[str, Any, Path]], target: Path) -> None:
    """Clicks per (raw item id, day) of each (split, day, file): what the time-decayed popularity prior of
    scoring needs to know about time (the models see no timestamp)."""
    import pandas as pd

    frames = [pd.DataFrame({"item_id": np.zeros(0, np.int64), "day": np.zeros(0, np.int32),
                            "split": np.zeros(0, object), "clicks": np.zeros(0, np.int64)})]
    for split, day, file in files:
        frame = pd.read_parquet(file, columns=["item_id", "click"])
        clicks = frame[frame["click"] == 1].groupby("item_id").size()
        frames.append(pd.DataFrame({"item_id": clicks.index.to_numpy(dtype=np.int64), "day": np.int32(day.toordinal()),
                                    "split": split, "clicks": clicks.to_numpy(dtype=np.int64)}))
    table = pd.concat(frames, ignore_index=True)
    table.groupby(["item_id", "day", "split"], as_index=False)["clicks"].sum().to_parquet(target, index=False)


def _read_partitions(settings: DataConfig, paths: RunPaths) -> dict[str, Any]:
    """The run's window of daily partitions: every file checked first, then copied (train days, then valid)
    as parts of up to ``data.part_rows`` rows; empty days are counted in the window summary."""
    import pandas as pd

    from .partitions import plan_window

    plan = plan_window(settings)
    columns = input_contract(settings).raw_columns
    rows_by_file = {f: check_parquet_file(f, columns, allow_empty=True) for fs in plan.files.values() for f in fs}
    rows_by_day = {day: sum(rows_by_file[f] for f in files) for day, files in plan.files.items()}
    for day, files in plan.files.items():
        check_manifest(files[0].parent, rows_by_day[day])
    splits = {}
    for name, days, target in (("train", plan.train_days, paths.raw_train),
                               ("valid", plan.valid_days, paths.raw_valid)):
        target.mkdir(parents=True, exist_ok=True)
        # An empty day (a valid partition: nothing happened) is counted, not copied: NVTabular reads rows.
        files = [(day, index, file) for day in days for index, file in enumerate(plan.files[day])
                 if rows_by_file[file]]
        if not files:
            raise InputDataError(f"{plan.root}: every {name} day of the window ({days[0]}..{days[-1]}) is empty")
        parts = _write_parts([file for _, _, file in files], rows_by_file, list(columns), target, settings.part_rows)
        users = pd.concat([pd.read_parquet(f, columns=["user_id"]) for _, _, f in files])["user_id"].nunique()
        splits[name] = {"rows": int(sum(rows_by_day[d] for d in days)), "files": len(files), "parts": parts,
                        "users": int(users)}
    _write_item_days([(split, day, file) for split, days in (("train", plan.train_days), ("valid", plan.valid_days))
                      for day in days for file in plan.files[day] if rows_by_file[file]], paths.item_days)
    window = {**plan.describe(), "rows": {name: split["rows"] for name, split in splits.items()},
              "rows_per_day": {d.isoformat(): int(r) for d, r in rows_by_day.items()},
              "empty_days": [d.isoformat() for d, r in rows_by_day.items() if r == 0]}
    log.info("window %s..%s: train %s, valid %s, %d empty day(s)", window["start_date"], window["end_date"],
             window["train_days"], window["valid_days"], len(window["empty_days"]))
    return {"splits": splits, "window": window}


def _write_planted(settings: DataConfig, paths: RunPaths) -> dict[str, Any]:
    """Planted impressions, ``data.part_rows`` at a time, each part split and written as it is drawn."""
    import time

    truth, parts = planted_parts(settings, settings.part_rows)
    split_rng = np.random.default_rng(settings.seed + 1)
    totals = {name: {"rows": 0, "clicks": 0} for name in ("train", "valid")}
    seen_users = {name: np.zeros(settings.num_users + 1, dtype=bool) for name in totals}
    seen_items = {name: np.zeros(settings.num_items + 1, dtype=bool) for name in totals}
    for directory in (paths.raw_train, paths.raw_valid):
        directory.mkdir(parents=True, exist_ok=True)
    started, done = time.perf_counter(), 0
    for index, frame in enumerate(parts):
        train, valid = split_rows(frame, settings.valid_fraction, settings.seed, rng=split_rng)
        for name, part, target in (("train", train, paths.raw_train), ("valid", valid, paths.raw_valid)):
            check_raw_frame(part, f"generated {name} data (part {index})")
            part.to_parquet(target / f"part_{index}.parquet", index=False)
            totals[name]["rows"] += len(part)
            totals[name]["clicks"] += int(part["click"].sum())
            seen_users[name][part["user_id"].to_numpy()] = True
            seen_items[name][part["item_id"].to_numpy()] = True
        done += len(frame)
        log.info("planted data: %d/%d impressions written (%.0f rows/s)", done, settings.num_rows,
                 done / max(time.perf_counter() - started, 1e-9))
    truth.save(paths.truth)
    splits = {
        name: {"rows": totals[name]["rows"], "users": int(seen_users[name].sum()),
               "items": int(seen_items[name].sum()), "clicks": totals[name]["clicks"]}
        for name in totals
    }
    return {"splits": splits, "parts": index + 1, "truth": str(paths.truth),
            "click_model": {"intercept": round(truth.intercept, 4), "signal_strength": truth.signal_strength}}


@stage("generate_data")
def generate_data(config: Config, paths: RunPaths) -> dict[str, Any]:
    """Write ``raw/train/`` and ``raw/valid/`` parquet (and ``raw/truth.npz`` for planted data)."""
    settings = config.data
    contract = input_contract(settings)
    if settings.source != "parquet" and contract != ALICCP_CONTRACT:
        raise ConfigError(f"data.source={settings.source} generates Ali-CCP columns: keep data.user_features and "
                          "data.item_features at 'aliccp' (or use data.source=parquet for your own data)")
    paths.fresh(paths.raw)
    summary: dict[str, Any] = {"source": settings.source, "contract": contract.describe()}
    if settings.source == "parquet" and settings.partition_root:
        summary.update(_read_partitions(settings, paths))
    elif settings.source == "parquet":
        counts = {}
        for name, location, setting, target in (
            ("train", settings.train_path, "data.train_path", paths.raw_train),
            ("valid", settings.valid_path, "data.valid_path", paths.raw_valid),
        ):
            files = parquet_files(location, setting)
            rows = [check_parquet_file(f, contract.raw_columns) for f in files]
            target.mkdir(parents=True, exist_ok=True)
            for index, file in enumerate(files):
                shutil.copyfile(file, target / f"part_{index}.parquet")
            counts[name] = {"rows": int(sum(rows)), "files": len(files)}
            import pandas as pd

            users = pd.concat([pd.read_parquet(f, columns=["user_id"]) for f in files])["user_id"].nunique()
            counts[name]["users"] = int(users)
        summary["splits"] = counts
    elif settings.source == "planted":
        summary.update(_write_planted(settings, paths))
    else:
        seed_everything(settings.seed)
        train, valid = _merlin_frames(settings)
        counts = {}
        for name, frame, target in (("train", train, paths.raw_train), ("valid", valid, paths.raw_valid)):
            check_raw_frame(frame, f"generated {name} data", contract.raw_columns)
            target.mkdir(parents=True, exist_ok=True)
            frame.reset_index(drop=True).to_parquet(target / "part_0.parquet", index=False)
            counts[name] = _counts(frame)
        summary["splits"] = counts
    summary.update({"train_dir": str(paths.raw_train), "valid_dir": str(paths.raw_valid)})
    return summary
