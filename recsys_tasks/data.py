"""Stage 1: raw Ali-CCP-shaped impressions (train and valid parquet) in the run directory.

The ``merlin`` source is Merlin's own synthetic ``aliccp-raw`` generator, exactly as the notebook
uses it; its clicks are random, so models trained on it only prove the plumbing works.
"""

from __future__ import annotations

from typing import Any

from .common import InputDataError, get_logger, seed_everything, stage
from .config import Config
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


def check_raw_frame(frame: Any, source: str) -> None:
    """Refuse a raw frame that lacks a column, has a non-integer column, or is empty."""
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise InputDataError(f"{source}: missing column(s) {missing}; expected the Ali-CCP raw schema")
    if len(frame) == 0:
        raise InputDataError(f"{source}: no rows")
    for column, kind in RAW_COLUMNS.items():
        if frame[column].dtype.kind not in (kind, "u"):
            raise InputDataError(
                f"{source}: column {column!r} has dtype {frame[column].dtype}, expected an integer type"
            )


@stage("generate_data")
def generate_data(config: Config, paths: RunPaths) -> dict[str, Any]:
    """Write ``raw/train/part_0.parquet`` and ``raw/valid/part_0.parquet``."""
    settings = config.data
    seed_everything(settings.seed)
    from merlin.datasets.synthetic import generate_data as merlin_generate

    train, valid = merlin_generate(
        "aliccp-raw",
        settings.num_rows,
        set_sizes=(1.0 - settings.valid_fraction, settings.valid_fraction),
    )
    counts = {}
    for name, dataset, target in (("train", train, paths.raw_train), ("valid", valid, paths.raw_valid)):
        frame = dataset.to_ddf().compute()
        check_raw_frame(frame, f"generated {name} data")
        paths.fresh(target)
        frame.reset_index(drop=True).to_parquet(target / "part_0.parquet", index=False)
        counts[name] = {"rows": int(len(frame)), "users": int(frame["user_id"].nunique())}
    return {
        "source": settings.source,
        "splits": counts,
        "train_dir": str(paths.raw_train),
        "valid_dir": str(paths.raw_valid),
    }
