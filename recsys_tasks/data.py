"""Stage 1: raw Ali-CCP-shaped impressions (train and valid parquet) in the run directory.

Three sources (``data.source``):

* ``planted`` (default) - synthetic data with a known, learnable signal: users and items carry latent
  taste vectors tied to their features, clicks are drawn from a known probability model and item
  exposure has a long tail. The ground truth (latent vectors, exposure, click model) is saved to
  ``raw/truth.npz`` so the evaluation can score the oracle.
* ``merlin`` - Merlin's own ``generate_data("aliccp-raw", ...)`` as in the notebook. Its clicks are
  ``randint(0, 2)``: no model can learn from it, so it only proves the plumbing works (the quality
  gate refuses to publish it unless ``quality.force_publish`` is set).
* ``parquet`` - user-supplied raw Ali-CCP data, checked against the raw schema before anything is
  copied: either daily partitions (``data.partition_root``, a window ending at ``data.end_date`` split by
  time, see :mod:`recsys_tasks.partitions`) or fixed paths (``data.train_path`` / ``data.valid_path``, a
  parquet file or a directory of them).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import InputDataError, get_logger, seed_everything, stage
from .config import Config, DataConfig
from .paths import RunPaths

log = get_logger("generate_data")

# Raw Ali-CCP columns the NVTabular workflow reads, with the dtype kind each must have.
RAW_COLUMNS: dict[str, str] = {
    "user_id": "i",
    "item_id": "i",
    "item_category": "i",
    "item_shop": "i",
    "item_brand": "i",
    "user_shops": "i",
    "user_profile": "i",
    "user_group": "i",
    "user_gender": "i",
    "user_age": "i",
    "user_consumption_2": "i",
    "user_is_occupied": "i",
    "user_geography": "i",
    "user_intentions": "i",
    "user_brands": "i",
    "user_categories": "i",
    "click": "i",
}

# Every column of Merlin's ``aliccp-raw`` synthetic output, in its order, with its numpy dtype.
ALICCP_RAW_DTYPES: dict[str, str] = {
    "user_id": "int32",
    "user_shops": "int32",
    "user_profile": "int32",
    "user_group": "int32",
    "user_gender": "int32",
    "user_age": "int32",
    "user_consumption_1": "int32",
    "user_consumption_2": "int32",
    "user_is_occupied": "int32",
    "user_geography": "int32",
    "user_intentions": "int32",
    "user_brands": "int32",
    "user_categories": "int32",
    "item_id": "int32",
    "item_category": "int32",
    "item_shop": "int32",
    "item_brand": "int32",
    "item_intention": "int32",
    "user_item_categories": "int32",
    "user_item_shops": "int32",
    "user_item_brands": "int32",
    "user_item_intentions": "int32",
    "position": "int32",
    "click": "int64",
    "conversion": "int64",
}


def check_raw_frame(frame: Any, source: str) -> None:
    """Refuse a raw frame that lacks a column, has a non-integer or null column, bad ids or clicks, or no rows."""
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise InputDataError(f"{source}: missing column(s) {missing}; expected the Ali-CCP raw schema")
    if len(frame) == 0:
        raise InputDataError(f"{source}: no rows")
    for column, kind in RAW_COLUMNS.items():
        values = frame[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputDataError(f"{source}: column {column!r} holds a null value (row {row})")
        if values.dtype.kind not in (kind, "u"):
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


# --------------------------------------------------------------------------------------------------
# The planted generator
# --------------------------------------------------------------------------------------------------


@dataclass
class PlantedTruth:
    """What the oracle needs: the click model, in raw ids. Saved as ``raw/truth.npz``."""

    user_ids: np.ndarray
    """Raw user ids, row u of ``user_factors``."""
    item_ids: np.ndarray
    user_factors: np.ndarray
    """``[users, latent_dim]`` unit-norm taste vectors."""
    item_factors: np.ndarray
    item_bias: np.ndarray
    item_exposure: np.ndarray
    """Probability that an impression shows item i (long tail); sums to 1."""
    signal_strength: float
    intercept: float

    def click_logit(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        affinity = np.einsum("ij,ij->i", self.user_factors[user_rows], self.item_factors[item_rows])
        return self.intercept + self.signal_strength * affinity + self.item_bias[item_rows]

    def expected_clicks(self, user_rows: np.ndarray) -> np.ndarray:
        """``[len(user_rows), items]``: P(item shown) x P(click | shown): the oracle's ranking score."""
        logits = (
            self.intercept
            + self.signal_strength * self.user_factors[user_rows] @ self.item_factors.T
            + self.item_bias[None, :]
        )
        return self.item_exposure[None, :] / (1.0 + np.exp(-logits))

    def save(self, path: Path) -> None:
        np.savez(
            path,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            user_factors=self.user_factors,
            item_factors=self.item_factors,
            item_bias=self.item_bias,
            item_exposure=self.item_exposure,
            signal_strength=np.float64(self.signal_strength),
            intercept=np.float64(self.intercept),
        )

    @classmethod
    def load(cls, path: Path) -> PlantedTruth:
        with np.load(path) as data:
            return cls(
                **{k: data[k] for k in ("user_ids", "item_ids", "user_factors", "item_factors", "item_bias",
                                        "item_exposure")},
                signal_strength=float(data["signal_strength"]),
                intercept=float(data["intercept"]),
            )


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _calibrate_intercept(scores: np.ndarray, click_rate: float) -> float:
    """The intercept a such that mean(sigmoid(a + scores)) == click_rate (bisection; monotone in a)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + scores)))) < click_rate:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def generate_planted(settings: DataConfig) -> tuple[Any, PlantedTruth]:
    """All impressions (one frame, Merlin's ``aliccp-raw`` columns and dtypes) and the truth behind them.

    See :func:`planted_parts` for the click model; this is its single-part case.
    """
    truth, parts = planted_parts(settings, settings.num_rows)
    return next(parts), truth


def planted_parts(settings: DataConfig, part_rows: int) -> tuple[PlantedTruth, Iterator[Any]]:
    """The truth, and the impressions as frames of at most ``part_rows`` rows (Merlin's ``aliccp-raw``
    columns and dtypes), generated one after another so memory follows the part size, not ``num_rows``.

    The click model: ``P(click | user u shown item i) = sigmoid(a + s * <u, v_i> + b_i)`` where

    * item i belongs to a category (sizes have a mild long tail) and a brand within it; its taste
      vector ``v_i`` is its brand's vector plus noise, a brand's vector its category's plus noise;
    * user u has a favourite category (``user_categories``), a favourite brand in it (``user_brands``),
      an age and gender segment (``user_age``, ``user_gender``, ``user_profile``); ``u`` mixes the
      favourite category's, the favourite brand's and the segment's vectors plus a little personal noise;
    * ``s`` is ``data.signal_strength``, ``b_i`` a small item quality bias, and ``a`` is calibrated so
      the mean click rate is ``data.click_rate``.

    Impressions pick users by a log-normal activity weight and items by a Zipf-like exposure
    (``data.popularity_exponent``), independently of taste: clicks alone carry the preference.

    The intercept is calibrated on the first part (all rows when there is one part), so ``truth`` is
    complete once the first part has been drawn. One part of ``num_rows`` rows is exactly
    :func:`generate_planted`'s frame.
    """
    import pandas as pd

    rng = np.random.default_rng(settings.seed)
    n_users, n_items, dim = settings.num_users, settings.num_items, settings.latent_dim
    n_categories = settings.num_categories
    brands_per_category, shops_per_category, n_segments = 5, 3, 14  # 7 ages x 2 genders

    category_vectors = _unit(rng.normal(size=(n_categories, dim)))
    brand_category = np.repeat(np.arange(n_categories), brands_per_category)
    brand_vectors = _unit(category_vectors[brand_category] + 0.5 * _unit(rng.normal(size=(len(brand_category), dim))))
    segment_vectors = _unit(rng.normal(size=(n_segments, dim)))

    # Items: category sizes with a mild long tail, a brand of that category, a shop of that category.
    category_weights = 1.0 / np.arange(1, n_categories + 1) ** 0.5
    category_weights /= category_weights.sum()
    item_category = rng.choice(n_categories, size=n_items, p=category_weights)
    item_brand = item_category * brands_per_category + rng.integers(0, brands_per_category, n_items)
    item_shop = item_category * shops_per_category + rng.integers(0, shops_per_category, n_items)
    item_factors = _unit(brand_vectors[item_brand] + 0.35 * _unit(rng.normal(size=(n_items, dim))))
    item_bias = 0.25 * rng.normal(size=n_items)
    exposure = 1.0 / np.arange(1, n_items + 1) ** settings.popularity_exponent
    item_exposure = rng.permutation(exposure / exposure.sum())

    # Users: favourite category and brand, age/gender segment, personal noise.
    user_category = rng.choice(n_categories, size=n_users, p=category_weights)
    user_brand = user_category * brands_per_category + rng.integers(0, brands_per_category, n_users)
    user_age = rng.integers(1, 8, n_users)
    user_gender = rng.integers(1, 3, n_users)
    segment = (user_age - 1) * 2 + (user_gender - 1)
    user_factors = _unit(
        1.0 * category_vectors[user_category]
        + 0.6 * brand_vectors[user_brand]
        + 0.45 * segment_vectors[segment]
        + 0.25 * _unit(rng.normal(size=(n_users, dim)))
    )
    activity = rng.lognormal(0.0, 1.0, n_users)

    truth = PlantedTruth(
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        item_ids=np.arange(1, n_items + 1, dtype=np.int64),
        user_factors=user_factors,
        item_factors=item_factors,
        item_bias=item_bias,
        item_exposure=item_exposure,
        signal_strength=settings.signal_strength,
        intercept=0.0,
    )
    user_weights = activity / activity.sum()

    def part(rows: int, calibrate: bool) -> Any:
        # Impressions, independent of taste; clicks from the click model.
        user_rows = rng.choice(n_users, size=rows, p=user_weights)
        item_rows = rng.choice(n_items, size=rows, p=item_exposure)
        # Without the intercept: it is calibrated on these logits (first part) and added below.
        raw_logits = truth.click_logit(user_rows, item_rows) - truth.intercept
        if calibrate:
            truth.intercept = _calibrate_intercept(raw_logits, settings.click_rate)
        click_probability = 1.0 / (1.0 + np.exp(-(truth.intercept + raw_logits)))
        click = (rng.random(rows) < click_probability).astype(np.int64)
        conversion = click * (rng.random(rows) < 0.1)

        # Per-user and per-item attributes (raw values start at 1, as in Merlin's generator).
        user_ids = truth.user_ids[user_rows]
        item_ids = truth.item_ids[item_rows]
        u_cat, u_brand = user_category[user_rows] + 1, user_brand[user_rows] + 1
        i_cat, i_brand, i_shop = item_category[item_rows] + 1, item_brand[item_rows] + 1, item_shop[item_rows] + 1
        u_age, u_gender = user_age[user_rows], user_gender[user_rows]
        user_shop = (user_category * shops_per_category + (np.arange(n_users) % shops_per_category))[user_rows] + 1
        consumption = (np.arange(n_users) % 3 + 1)[user_rows]
        columns = {
            "user_id": user_ids,
            "user_shops": user_shop,
            "user_profile": segment[user_rows] + 1,
            "user_group": (segment[user_rows] // 2) + 1,
            "user_gender": u_gender,
            "user_age": u_age,
            "user_consumption_1": consumption,
            "user_consumption_2": consumption,
            "user_is_occupied": (np.arange(n_users) % 2 + 1)[user_rows],
            "user_geography": (np.arange(n_users) % 4 + 1)[user_rows],
            "user_intentions": u_cat,
            "user_brands": u_brand,
            "user_categories": u_cat,
            "item_id": item_ids,
            "item_category": i_cat,
            "item_shop": i_shop,
            "item_brand": i_brand,
            "item_intention": i_cat,
            "user_item_categories": (u_cat - 1) * n_categories + i_cat,
            "user_item_shops": user_shop * 1000 + i_shop,
            "user_item_brands": (u_brand - 1) * len(brand_category) + i_brand,
            "user_item_intentions": (u_cat - 1) * n_categories + i_cat,
            "position": rng.integers(0, 4, rows),
            "click": click,
            "conversion": conversion,
        }
        return pd.DataFrame({c: np.asarray(columns[c]).astype(d) for c, d in ALICCP_RAW_DTYPES.items()})

    def parts() -> Iterator[Any]:
        for start in range(0, settings.num_rows, part_rows):
            yield part(min(part_rows, settings.num_rows - start), calibrate=start == 0)

    return truth, parts()


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


def check_parquet_file(file: Path) -> int:
    """Check one user-supplied raw file (schema, then values of the columns we use); returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{file}: not a readable parquet file ({exc})") from exc
    missing = [c for c in RAW_COLUMNS if c not in schema.names]
    if missing:
        raise InputDataError(f"{file}: missing column(s) {missing}; expected the Ali-CCP raw schema")
    for column in RAW_COLUMNS:
        if not pa.types.is_integer(schema.field(column).type):
            raise InputDataError(f"{file}: column {column!r} has type {schema.field(column).type}, expected an integer")
    frame = pq.read_table(file, columns=list(RAW_COLUMNS)).to_pandas()
    check_raw_frame(frame, str(file))
    return len(frame)


def _counts(frame: Any) -> dict[str, int]:
    return {
        "rows": int(len(frame)),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "clicks": int(frame["click"].sum()),
    }


def _read_partitions(settings: DataConfig, paths: RunPaths) -> dict[str, Any]:
    """The run's window of daily partitions: every file checked first, then copied (train days, then valid)."""
    import pandas as pd

    from .partitions import plan_window

    plan = plan_window(settings)
    rows_by_day = {day: sum(check_parquet_file(f) for f in files) for day, files in plan.files.items()}
    splits = {}
    for name, days, target in (("train", plan.train_days, paths.raw_train),
                               ("valid", plan.valid_days, paths.raw_valid)):
        target.mkdir(parents=True, exist_ok=True)
        files = [(day, index, file) for day in days for index, file in enumerate(plan.files[day])]
        for day, index, file in files:
            shutil.copyfile(file, target / f"dt={day.isoformat()}-part_{index}.parquet")
        users = pd.concat([pd.read_parquet(f, columns=["user_id"]) for _, _, f in files])["user_id"].nunique()
        splits[name] = {"rows": int(sum(rows_by_day[d] for d in days)), "files": len(files), "users": int(users)}
    window = {**plan.describe(), "rows": {name: split["rows"] for name, split in splits.items()},
              "rows_per_day": {d.isoformat(): int(r) for d, r in rows_by_day.items()}}
    log.info("window %s..%s: train %s, valid %s", window["start_date"], window["end_date"],
             window["train_days"], window["valid_days"])
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
    paths.fresh(paths.raw)
    summary: dict[str, Any] = {"source": settings.source}
    if settings.source == "parquet" and settings.partition_root:
        summary.update(_read_partitions(settings, paths))
    elif settings.source == "parquet":
        counts = {}
        for name, location, setting, target in (
            ("train", settings.train_path, "data.train_path", paths.raw_train),
            ("valid", settings.valid_path, "data.valid_path", paths.raw_valid),
        ):
            files = parquet_files(location, setting)
            rows = [check_parquet_file(f) for f in files]
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
            check_raw_frame(frame, f"generated {name} data")
            target.mkdir(parents=True, exist_ok=True)
            frame.reset_index(drop=True).to_parquet(target / "part_0.parquet", index=False)
            counts[name] = _counts(frame)
        summary["splits"] = counts
    summary.update({"train_dir": str(paths.raw_train), "valid_dir": str(paths.raw_valid)})
    return summary
