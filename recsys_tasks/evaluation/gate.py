"""The quality gate ``load_redis`` runs before it writes anything to Redis.

It reads the run's ``report.json`` (written by ``evaluate``) and refuses to publish, raising
:class:`QualityGateError` naming each failed check and its numbers, when

* ``retrieval_lift``: the model's retrieval recall@10 is below ``quality.min_recall_lift`` x the
  popularity baseline's (or is zero);
* ``ranking_auc``: the DLRM's validation AUC is below ``quality.min_ranking_auc``;
* ``lists``: any published list is empty, short, holds a duplicate or an item the user already clicked;
* ``user_coverage``: fewer than ``quality.min_user_coverage`` of the known users have a list;
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


def run_checks(
    report: dict[str, Any], settings: QualityConfig, recommendations_sha256: str | None = None
) -> list[dict[str, Any]]:
    """Every check's verdict; pure function of the report, the thresholds and the file's fingerprint."""
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


def enforce(paths: RunPaths, settings: QualityConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the gate for a run directory: ``(report, gate verdict)``; raise unless it passes or is forced."""
    from .evaluate import recommendations_fingerprint

    report = read_report(paths)
    checks = run_checks(report, settings, recommendations_fingerprint(paths.recommendations))
    failed = [c for c in checks if not c["passed"]]
    verdict = {"passed": not failed, "forced": False, "checks": checks}
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
