"""The final order of each user's candidates: a blend of retrieval score, DLRM logit and popularity prior.

Its weights, and the popularity prior's half-life (all time, or time-decayed: :mod:`.popularity`), are
fitted once per run (``plan_shards``) on a sample of validation users: every order of a small grid, the
retrieval order and the DLRM order among them, is scored by recall@N of the lists it would publish, and
the best wins (the retrieval order on ties), so the published order never loses to the retrieval order on
validation. By default the best replaces the retrieval order only when a cross-validated check (chosen on
4/5 of the users, measured on the other fifth, for each fifth) puts its gain above 0 beyond the 95% interval
(``scoring.blend_requires_significant_gain``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime import InputDataError, get_logger

log = get_logger("score")

COMPONENTS = ("retrieval", "dlrm", "popularity")
LOGIT_CLIP = 1e-6
DLRM_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
POPULARITY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
CHECK_FOLDS = 5  # the fit's check: chosen on 4/5 of the users, measured on the other fifth, for each fifth


class BlendFitError(InputDataError):
    """The validation window gives nothing to fit the blend on (no validation click of a known user)."""


@dataclass(frozen=True)
class Blend:
    """``score = sum_c weights[c] * component_c / scales[c]``; the components are

    * ``retrieval``: the Two-Tower dot product of user and item embeddings;
    * ``dlrm``: the DLRM's logit of P(click | shown);
    * ``popularity``: ``log(1 + users who clicked the item in training)``, or with ``half_life_days`` > 0
      ``log(1 + training clicks weighted by 0.5 ** (days before the last training day / half_life_days))``.

    ``scales`` are each component's standard deviation over the fitting sample's candidates, so the
    weights are comparable.
    """

    weights: dict[str, float]
    scales: dict[str, float] = field(default_factory=lambda: {c: 1.0 for c in COMPONENTS})
    name: str = ""
    half_life_days: float = 0.0

    @property
    def uses_dlrm(self) -> bool:
        return self.weights.get("dlrm", 0.0) != 0.0

    def combine(self, retrieval: np.ndarray, dlrm_probability: np.ndarray | None, popularity: np.ndarray) -> np.ndarray:
        """The blended score of ``[users, k]`` candidates (``dlrm_probability`` may be None when unused)."""
        score = np.zeros(retrieval.shape, dtype=np.float64)
        parts = {"retrieval": retrieval, "popularity": popularity}
        if self.uses_dlrm:
            if dlrm_probability is None:
                raise ValueError("this blend weighs the DLRM but no DLRM scores were given")
            parts["dlrm"] = logit(dlrm_probability)
        for name, values in parts.items():
            weight = self.weights.get(name, 0.0)
            if weight:
                score += (weight / self.scales[name]) * np.asarray(values, dtype=np.float64)
        return score.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "weights": dict(self.weights), "scales": dict(self.scales),
                "half_life_days": self.half_life_days}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Blend:
        return cls(weights={c: float(data["weights"].get(c, 0.0)) for c in COMPONENTS},
                   scales={c: float(data["scales"].get(c, 1.0)) for c in COMPONENTS}, name=data.get("name", ""),
                   half_life_days=float(data.get("half_life_days", 0.0)))


RETRIEVAL_ORDER = Blend({"retrieval": 1.0, "dlrm": 0.0, "popularity": 0.0}, name="retrieval order")
DLRM_ORDER = Blend({"retrieval": 0.0, "dlrm": 1.0, "popularity": 0.0}, name="dlrm order")


def logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def grid(half_life_days: float = 0.0) -> list[Blend]:
    """The candidate orders with the popularity prior of ``half_life_days`` (0: all time). For the all-time
    prior: the retrieval order first (it wins ties), the DLRM order, then the blends; for a decayed prior
    only the blends that weigh it (the others do not depend on the prior)."""
    decayed = half_life_days != 0.0
    suffix = f" half-life {half_life_days:g}d" if decayed else ""
    blends = [] if decayed else [RETRIEVAL_ORDER, DLRM_ORDER]
    for dlrm in DLRM_WEIGHTS:
        for popularity in POPULARITY_WEIGHTS:
            if popularity or (dlrm and not decayed):
                blends.append(Blend({"retrieval": 1.0, "dlrm": dlrm, "popularity": popularity},
                                    name=f"blend r=1 d={dlrm:g} p={popularity:g}{suffix}",
                                    half_life_days=half_life_days))
    for popularity in POPULARITY_WEIGHTS[1:]:
        blends.append(Blend({"retrieval": 0.0, "dlrm": 1.0, "popularity": popularity},
                            name=f"blend r=0 d=1 p={popularity:g}{suffix}", half_life_days=half_life_days))
    # Popularity alone (under this prior) is an order too: the blend never loses to it on validation.
    blends.append(Blend({"retrieval": 0.0, "dlrm": 0.0, "popularity": 1.0}, name=f"popularity order{suffix}",
                        half_life_days=half_life_days))
    return blends


def order_metrics(hits: np.ndarray, order: np.ndarray, num_relevant: np.ndarray, top_n: int) -> dict[str, np.ndarray]:
    """Per-user recall@N and ndcg@N of the candidates reordered by ``order`` (``hits``: candidate is relevant)."""
    from ..evaluation.metrics import ndcg_per_user, recall_per_user

    ranked_hits = np.take_along_axis(hits, order[:, :top_n], axis=1)
    return {"recall": recall_per_user(ranked_hits, num_relevant, top_n),
            "ndcg": ndcg_per_user(ranked_hits, num_relevant, top_n)}


def score_orders(candidates: list[Blend], retrieval: np.ndarray, dlrm_probability: np.ndarray,
                 popularity: np.ndarray, hits: np.ndarray, num_relevant: np.ndarray, top_n: int,
                 valid: np.ndarray, candidate_rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Per-user recall@N and ndcg@N (``[orders, users]`` each) of every candidate order of the same candidates,
    and with ``candidate_rows`` each order's catalogue coverage (distinct items in the users' top N).

    ``valid`` marks real candidates (a -1 item row is never ranked above a real one).
    """
    recall, ndcg, coverage = [], [], []
    for blend in candidates:
        score = np.where(valid, blend.combine(retrieval, dlrm_probability, popularity), -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")
        per_user = order_metrics(hits, order, num_relevant, top_n)
        recall.append(per_user["recall"])
        ndcg.append(per_user["ndcg"])
        if candidate_rows is not None:
            listed = np.take_along_axis(candidate_rows, order[:, :top_n], axis=1)
            coverage.append(len(np.unique(listed[listed >= 0])))
    if candidate_rows is not None:
        return np.stack(recall), np.stack(ndcg), np.asarray(coverage, dtype=np.float64)
    return np.stack(recall), np.stack(ndcg)


def choose(candidates: list[Blend], retrieval: np.ndarray, dlrm_probability: np.ndarray, popularity: np.ndarray,
           hits: np.ndarray, num_relevant: np.ndarray, top_n: int, valid: np.ndarray,
           seed: int = 0) -> tuple[Blend, list[dict], dict[str, Any]]:
    """:func:`pick` among orders of one set of candidates."""
    recall, ndcg = score_orders(candidates, retrieval, dlrm_probability, popularity, hits, num_relevant, top_n, valid)
    return pick(candidates, recall, ndcg, top_n, seed)


def pick(candidates: list[Blend], recall_matrix: np.ndarray, ndcg_matrix: np.ndarray, top_n: int,
         seed: int = 0, coverage: np.ndarray | None = None, min_coverage_ratio: float = 0.0,
         require_significant_gain: bool = False) -> tuple[Blend, list[dict], dict[str, Any]]:
    """The order with the best mean recall@N (earliest on ties), every order's figures, and a cross-validated check.

    ``candidates[0]`` is the reference (the retrieval order). With ``coverage`` (distinct items each order lists)
    only orders covering at least ``min_coverage_ratio`` of the reference's catalogue are eligible: an order
    that wins recall by showing everyone the same popular items is not chosen. The check repeats the choice
    on some of the users and measures it on the others: an honest estimate of what choosing on validation
    gains over the retrieval order, free of the optimism of measuring on the fitting users (5 folds: each
    user is measured once, with the order chosen on the other 4/5).

    With ``require_significant_gain`` the retrieval order stays unless that check's 95% interval is above 0:
    among 40-120 orders the best on a few thousand users often wins by noise, and the blends that win so
    weigh popularity, which narrows what the lists show (``check["kept_retrieval_order"]`` says when).
    """
    from ..evaluation.metrics import mean_ci95

    means = recall_matrix.mean(axis=1)
    eligible = np.ones(len(candidates), dtype=bool) if coverage is None else \
        coverage >= min_coverage_ratio * coverage[0] - 1e-9
    eligible[0] = True
    best = int(np.flatnonzero(eligible & (means >= means[eligible].max() - 1e-12))[0])
    table = []
    for index, blend in enumerate(candidates):
        _, difference_ci = mean_ci95(recall_matrix[index] - recall_matrix[0])
        table.append({"name": blend.name, "weights": blend.weights, "half_life_days": blend.half_life_days,
                      f"recall@{top_n}": round(float(means[index]), 5),
                      f"ndcg@{top_n}": round(float(ndcg_matrix[index].mean()), 5),
                      **({} if coverage is None else {"coverage_vs_retrieval_order": round(
                          float(coverage[index] / max(coverage[0], 1.0)), 4), "eligible": bool(eligible[index])}),
                      "recall_minus_retrieval_order_ci95": [round(x, 5) for x in difference_ci]})
    # Cross-validated: every user is measured once, with the order chosen on the other folds' users.
    fold = np.random.default_rng(seed).permutation(recall_matrix.shape[1]) % CHECK_FOLDS
    gains = np.zeros(recall_matrix.shape[1])
    for part in range(CHECK_FOLDS):
        fitting, held_out = fold != part, fold == part
        if fitting.any() and held_out.any():
            fitted_means = recall_matrix[:, fitting].mean(axis=1)
            choice = int(np.flatnonzero(eligible & (fitted_means >= fitted_means[eligible].max() - 1e-12))[0])
            gains[held_out] = recall_matrix[choice, held_out] - recall_matrix[0, held_out]
    gain, gain_ci = mean_ci95(gains)
    check = {"what": f"recall@{top_n} gain over retrieval order of the order chosen on the other users "
                     f"({CHECK_FOLDS}-fold)", "mean": gain, "ci95": gain_ci, "kept_retrieval_order": False}
    if require_significant_gain and best != 0 and not gain_ci[0] > 0:
        best, check["kept_retrieval_order"] = 0, True
    return candidates[best], table, check


def fixed_blend(name: str) -> dict[str, Any]:
    """The plan's ``blend`` entry for ``scoring.blend=retrieval`` or ``dlrm`` (no fit)."""
    chosen = {"retrieval": RETRIEVAL_ORDER, "dlrm": DLRM_ORDER}.get(name)
    if chosen is None:
        raise ValueError(f"scoring.blend={name!r} is not a fixed order (retrieval or dlrm)")
    return {"chosen": chosen.to_json(), "reason": f"scoring.blend={name} (no fit)", "candidates": []}


def fit_blend(catalog: Any, ranker: Any, valid_dir: Path, settings: Any, kernel: str) -> dict[str, Any]:
    """Fit the blend on a seeded sample of validation users; the plan's ``blend`` entry.

    ``settings`` is the :class:`~recsys_tasks.config.ScoringConfig`; ``ranker`` maps
    ``(user_rows, candidate_rows)`` to DLRM click probabilities.
    """
    from ..evaluation.metrics import RowLookup, hits_csr
    from ..evaluation.validation_sample import read_sampled_validation, relevant_clicks
    from .candidates import retrieve, with_popular_candidates

    users = RowLookup(catalog.user_features["user_id_raw"])
    items = RowLookup(catalog.item_features["item_id_raw"])
    valid, sample = read_sampled_validation(valid_dir, users, items, settings.blend_sample_users,
                                            settings.blend_seed, [])
    if len(valid) == 0:
        raise BlendFitError(f"{valid_dir}: no validation row of a user known from training to fit the blend on")
    relevant = relevant_clicks(valid, catalog)
    if len(relevant.eval_users) == 0:
        raise BlendFitError(f"{valid_dir}: no validation click of a known user on an unseen known item to fit the "
                            "blend on; set scoring.blend=retrieval (or dlrm) to skip the fit")
    retrieved = retrieve(catalog, relevant.eval_users, settings.top_k, kernel)
    half_lives = [0.0, *(h for h in settings.popularity_half_lives_days if catalog.item_days is not None)]
    candidates, recall, ndcg, coverage = [], [], [], []
    for half_life in half_lives:
        prior_of_item = catalog.prior(half_life)
        candidate_rows, retrieval_scores = with_popular_candidates(catalog, relevant.eval_users, *retrieved,
                                                                   prior_of_item, settings.popular_candidates)
        is_candidate = candidate_rows >= 0
        retrieval_scores = np.where(is_candidate, retrieval_scores, 0.0)
        dlrm_probability = ranker(relevant.eval_users, candidate_rows)
        prior = prior_of_item[np.maximum(candidate_rows, 0)]
        scales = {name: float(np.std(values[is_candidate])) or 1.0
                  for name, values in (("retrieval", retrieval_scores), ("dlrm", logit(dlrm_probability)),
                                       ("popularity", prior))}
        orders = [Blend(b.weights, scales, b.name, b.half_life_days) for b in grid(half_life)]
        hits = hits_csr(candidate_rows, relevant.indptr, relevant.items)
        order_recall, order_ndcg, order_coverage = score_orders(orders, retrieval_scores, dlrm_probability, prior,
                                                                hits, relevant.counts, settings.top_n, is_candidate,
                                                                candidate_rows)
        candidates += orders
        recall.append(order_recall)
        ndcg.append(order_ndcg)
        coverage.append(order_coverage)
    best, table, check = pick(candidates, np.concatenate(recall), np.concatenate(ndcg), settings.top_n,
                              settings.blend_seed, np.concatenate(coverage), settings.min_coverage_ratio,
                              settings.blend_requires_significant_gain)
    n = settings.top_n
    by_name = {row["name"]: row for row in table}
    recall = {name: row[f"recall@{n}"] for name, row in by_name.items()}
    top = max((row for row in table if row.get("eligible", True)), key=lambda row: row[f"recall@{n}"])
    checked = (f"chosen on 4/5 of the users, measured on the other fifth (5-fold): {check['mean']:+.4f} "
               f"[{check['ci95'][0]:+.4f}, {check['ci95'][1]:+.4f}]")
    if check["kept_retrieval_order"]:
        reason = (f"retrieval order kept: the best of {len(table)} orders on {len(relevant.eval_users)} validation "
                  f"users, {top['name']} (recall@{n} {top[f'recall@{n}']:.4f} vs {recall[RETRIEVAL_ORDER.name]:.4f}), "
                  f"does not beat it beyond noise ({checked}; scoring.blend_requires_significant_gain)")
    else:
        reason = (f"best validation recall@{n} of {len(table)} orders on {len(relevant.eval_users)} users: "
                  f"{best.name} {recall[best.name]:.4f} vs retrieval order {recall[RETRIEVAL_ORDER.name]:.4f}, "
                  f"DLRM order {recall[DLRM_ORDER.name]:.4f}; {checked}")
    log.info("blend: %s", reason)
    return {"chosen": best.to_json(), "reason": reason, "users": int(len(relevant.eval_users)), "sample": sample,
            "check": check, "candidates": table}
