"""The quality gate ``load_redis`` runs before it writes anything to Redis.

It reads the run's ``report.json`` (written by ``evaluate``) and refuses to publish, raising
:class:`QualityGateError` naming each failed check and its numbers, when

* ``retrieval_lift``: the model's retrieval recall@10 is below ``quality.min_recall_lift`` x the
  popularity baseline's (or is zero);
* ``ranking_auc``: the DLRM's validation AUC is below ``quality.min_ranking_auc``;
* ``lists``: any published list is empty, short, holds a duplicate or an item the user already clicked;
* ``user_coverage``: fewer than ``quality.min_user_coverage`` of the known users have a list;
* ``published_vs_popularity``: the lists about to be written (the fallback for sampled users without
  one) have a lower validation recall@N than popularity under the same exclusion, on the same users;
* ``published_vs_retrieval_order``: they are below the retrieval order they re-rank beyond the paired
  95% interval;
* ``published_vs_live``: they are below the lists that are live now (the manifest's run, read from its
  run directory, on this run's validation users and clicks) beyond the paired 95% interval: the
  blessing of TFX's Evaluator. Skipped, with the reason recorded, when nothing comparable is live;
* ``written_lists_reproduced``: with ``scoring.history=window`` the figures above are those of the lists the
  run's models and blend give from the training days; the lists actually written (which also know the
  validation days) must then be what the same code gives from the whole window, recomputed for the
  evaluated users: refused when fewer than 99% of them match;
* ``report_matches``: the report was computed on other recommendations than those about to be
  published (``score`` ran again after ``evaluate``).

``quality.force_publish`` is the operator's override: failed checks are then logged as errors and
recorded in the ``load_redis`` summary, and the run publishes anyway. On the ``merlin`` source (random
clicks) the model cannot beat popularity, so the gate refuses by design; use the override to run the
plumbing end to end on that data.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import QualityConfig
from ..paths import RunPaths, require
from ..runtime import get_logger

log = get_logger("load_redis")

RECALL_CUTOFF = "10"
REPRODUCED_SHARE = 0.99
"""Written lists that must equal their recomputation (not 1.0: two items of equal score at the N-th place)."""


class QualityGateError(RuntimeError):
    """The run's model or lists failed the quality gate; nothing was published."""

    def __init__(self, failed: list[dict[str, Any]]):
        self.failed = failed
        details = "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
        super().__init__(
            f"quality gate refused to publish ({len(failed)} failed check(s)): {details}. Redis was not "
            "touched. Set quality.force_publish=true to publish anyway."
        )


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _paired(difference: dict[str, Any]) -> str:
    low, high = difference["ci95"]
    return f"paired difference {difference['mean']:+.4f} [95% {low:+.4f}, {high:+.4f}]"


def published_checks(lists: dict[str, Any], live: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The checks on the lists about to be written: vs popularity, the retrieval order and the live lists."""
    paired = lists.get("paired_difference")
    n = lists.get("top_n")
    if not paired:
        return [_check("published_vs_popularity", False, "report.json has no validation figures of the published "
                       "lists (written by an older version?); rerun the 'evaluate' stage")]
    popularity = paired["popularity"]["recall_at_n"]
    ranked = paired["retrieval_order"]["recall_at_n"]
    checks = [
        _check("published_vs_popularity", popularity["mean"] >= 0,
               f"published recall@{n} {lists['recall_at_n']:.4f} vs popularity {lists['popularity_recall_at_n']:.4f} "
               f"on {lists['users_evaluated']} validation users ({_paired(popularity)}; must not be below)"),
        _check("published_vs_retrieval_order", ranked["ci95"][1] >= 0,
               f"published recall@{n} {lists['recall_at_n']:.4f} vs retrieval order "
               f"{lists['retrieval_order_recall_at_n']:.4f} ({_paired(ranked)}; must reach 0)"),
    ]
    if live is not None:
        difference = live["recall_at_n_difference"]
        checks.append(_check("published_vs_live", difference["ci95"][1] >= 0,
                             f"published recall@{n} {lists['recall_at_n']:.4f} vs the live lists "
                             f"{live['live_recall_at_n']:.4f} of {live['run_dir']} ({_paired(difference)}; "
                             "must reach 0)"))
    return checks


def run_checks(
    report: dict[str, Any], settings: QualityConfig, recommendations_sha256: str | None = None,
    live: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every check's verdict; pure function of the report, the thresholds, the file's fingerprint and the
    comparison with the live lists (:func:`recsys_tasks.evaluation.live.compare_with_live`, None: none live)."""
    retrieval, ranking, lists = report["retrieval"], report["ranking"], report["lists"]
    cutoff = RECALL_CUTOFF if RECALL_CUTOFF in retrieval["model"]["recall"] else str(retrieval["cutoffs"][0])
    model = retrieval["model"]["recall"][cutoff]
    popular = retrieval["popularity"]["recall"][cutoff]
    needed = settings.min_recall_lift * popular
    bad_lists = {
        key: lists[key]
        for key in ("empty_lists", "short_lists", "duplicate_lists", "lists_with_seen_item")
        if lists[key]
    }
    checks = [
        _check(
            "retrieval_lift",
            model > 0 and model >= needed,
            f"model recall@{cutoff} {model:.4f} vs popularity {popular:.4f} "
            f"(needs >= {settings.min_recall_lift:g}x = {needed:.4f}; "
            f"lift {model / popular if popular else float('inf'):.2f}x)",
        ),
        _check(
            "ranking_auc",
            ranking["auc"] >= settings.min_ranking_auc,
            f"DLRM validation AUC {ranking['auc']:.4f} (floor {settings.min_ranking_auc:g}; "
            f"popularity AUC {ranking['popularity_auc']:.4f})",
        ),
        _check(
            "lists",
            not bad_lists,
            f"{lists['users_with_list']} lists of N={lists['top_n']}: "
            + (", ".join(f"{k}={v}" for k, v in bad_lists.items()) if bad_lists
               else "none empty, short, duplicated or seen"),
        ),
        _check(
            "user_coverage",
            lists["user_coverage"] >= settings.min_user_coverage,
            f"{lists['user_coverage']:.4f} of {lists['catalog_users']} known users have a list "
            f"(needs >= {settings.min_user_coverage:g})",
        ),
    ]
    checks.extend(published_checks(lists, live))
    reproduced = lists.get("written_lists_reproduced")
    if reproduced is not None:
        checks.append(_check(
            "written_lists_reproduced", reproduced["share"] >= REPRODUCED_SHARE,
            f"{reproduced['share']:.4f} of {reproduced['users']} evaluated users' written lists are what the run's "
            f"models and blend give from the window (needs >= {REPRODUCED_SHARE:g}; first different user row "
            f"{reproduced['first_different_user_row']})"))
    if recommendations_sha256 is not None:
        checks.append(
            _check(
                "report_matches",
                recommendations_sha256 == report.get("recommendations_sha256"),
                "report.json describes the recommendations being published"
                if recommendations_sha256 == report.get("recommendations_sha256")
                else "report.json was computed on other recommendations; rerun the 'evaluate' stage",
            )
        )
    return checks


def read_report(paths: RunPaths) -> dict[str, Any]:
    return json.loads(require(paths.report_json, "evaluate").read_text())


def enforce(paths: RunPaths, settings: QualityConfig, manifest: dict[str, Any] | None = None,
            run_id: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the gate for a run directory: ``(report, gate verdict)``; raise unless it passes or is forced.

    ``manifest``: what the store says is live (its run's lists are compared when its directory is found).
    """
    from .evaluate import recommendations_fingerprint
    from .live import compare_with_live, live_run_dir

    report = read_report(paths)
    live_dir, live_reason = live_run_dir(paths, manifest, run_id)
    live = None
    if live_dir is not None:
        fallback = json.loads(require(paths.fallback_list, "evaluate").read_text())["recommendations"]
        live = compare_with_live(paths, live_dir, fallback)
    else:
        log.info("quality gate: no comparison with live lists: %s", live_reason)
    checks = run_checks(report, settings, recommendations_fingerprint(paths.recommendations), live)
    failed = [c for c in checks if not c["passed"]]
    verdict = {"passed": not failed, "forced": False, "checks": checks, "live": live or {"skipped": live_reason}}
    if not failed:
        log.info("quality gate passed: %s", "; ".join(c["detail"] for c in checks))
        return report, verdict
    if not settings.force_publish:
        raise QualityGateError(failed)
    verdict["forced"] = True
    banner = "!" * 78
    log.error(banner)
    log.error("QUALITY GATE FAILED BUT quality.force_publish IS SET: PUBLISHING ANYWAY (operator override)")
    for check in failed:
        log.error("  failed %s: %s", check["name"], check["detail"])
    log.error(banner)
    return report, verdict
