"""Counterfactual quality of lists on planted data, whose true click model is known (``raw/truth.npz``).

For each order: the expected clicks of a user's list if it were shown, ``sum of P(click | shown)`` under
the planted truth (mean per user, 95% interval), its catalogue coverage and the Gini of item exposure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..runtime import InputDataError
from .metrics import RowLookup, gini, mean_ci95


class TruthLookup:
    """The planted truth aligned with the run's catalog rows."""

    def __init__(self, truth_path: Path, catalog: Any) -> None:
        from ..data.planted import PlantedTruth

        self.truth = PlantedTruth.load(truth_path)
        self.items = RowLookup(self.truth.item_ids).rows(catalog.item_features["item_id_raw"])
        self.users = RowLookup(self.truth.user_ids).rows(catalog.user_features["user_id_raw"])
        if (self.items < 0).any() or (self.users < 0).any():
            raise InputDataError(f"{truth_path}: the planted truth lacks users or items of the catalog")

    def click_probability(self, user_rows: np.ndarray) -> np.ndarray:
        """``[len(user_rows), catalog items]``: P(click | shown) of every catalog item."""
        truth = self.truth
        logits = (truth.intercept + truth.signal_strength * truth.user_factors[self.users[user_rows]]
                  @ truth.item_factors[self.items].T + truth.item_bias[self.items][None, :])
        return 1.0 / (1.0 + np.exp(-logits))

    def expected_clicks(self, user_rows: np.ndarray) -> np.ndarray:
        """``[len(user_rows), catalog items]``: P(shown) x P(click | shown) (the logged-recall oracle's score)."""
        return self.truth.item_exposure[self.items][None, :] * self.click_probability(user_rows)


def counterfactual_report(lookup: TruthLookup, user_rows: np.ndarray, orders: dict[str, np.ndarray],
                          num_items: int, top_n: int) -> dict[str, Any]:
    """Each order's ``[users, >= N]`` item rows (-1 pads) scored under the truth, on the same users."""
    out: dict[str, Any] = {"users": int(len(user_rows)), "top_n": top_n,
                           "metric": f"expected clicks of a {top_n}-item list if shown: sum of P(click | shown) "
                                     "under the planted truth, mean over the evaluated users"}
    users = np.asarray(user_rows, dtype=np.int64)
    truth = lookup.truth
    for name, rows in orders.items():
        rows = np.asarray(rows, dtype=np.int64)[:, :top_n]
        valid = rows >= 0
        flat_users = lookup.users[np.repeat(users, rows.shape[1])].reshape(rows.shape)[valid]
        flat_items = lookup.items[rows[valid]]
        probability = np.zeros(rows.shape)
        probability[valid] = 1.0 / (1.0 + np.exp(-truth.click_logit(flat_users, flat_items)))
        mean, interval = mean_ci95(probability.sum(axis=1))
        exposure = np.bincount(rows[valid], minlength=num_items)
        out[name] = {"expected_clicks": mean, "expected_clicks_ci95": interval,
                     "catalog_coverage": float((exposure > 0).mean()) if num_items else 0.0,
                     "exposure_gini": gini(exposure)}
    return out
