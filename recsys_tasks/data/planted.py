"""The planted generator: synthetic Ali-CCP impressions whose clicks follow a known, learnable model.

Users and items carry latent taste vectors tied to their features; the truth behind the clicks
(:class:`PlantedTruth`) is saved beside the data so the evaluation can score the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig

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
