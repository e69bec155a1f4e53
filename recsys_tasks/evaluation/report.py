"""The run's report for people: PNG plots and ``evaluation/report.md`` next to ``report.json``.

Also the one-screen summary that ``load_redis`` logs at its end. Plots use matplotlib's Agg backend,
so no display is needed. matplotlib is optional: the GPU worker's image (NVIDIA Merlin 23.08) has none,
and installing it there could move the image's numpy; without it the plots are skipped with a warning
and ``report.md`` keeps every table.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import RunPaths

log = logging.getLogger("recsys_tasks.evaluate")

PLOTS = {
    "recall": "recall_at_k.png",
    "loss": "training_loss.png",
    "scores": "score_distribution.png",
    "exposure": "item_exposure.png",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall(report: dict[str, Any], target: Path) -> None:
    plt = _pyplot()
    retrieval = report["retrieval"]
    cutoffs = [str(k) for k in retrieval["cutoffs"]]
    methods = [m for m in ("model", "popularity", "oracle") if retrieval.get(m)]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [retrieval[method]["recall"][k] for k in cutoffs]
        ax.bar(np.arange(len(cutoffs)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(cutoffs)) + width * (len(methods) - 1) / 2, [f"recall@{k}" for k in cutoffs])
    ax.set_ylabel("recall on validation clicks")
    ax.set_title(f"Retrieval over the full catalog ({retrieval['users_evaluated']} users)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


def plot_losses(losses: dict[str, list[float]], target: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (name, title) in zip(axes, (("fit_retrieval", "Two-Tower"), ("fit_ranking", "DLRM"))):
        values = losses.get(name) or []
        ax.plot(np.arange(1, len(values) + 1), values, marker="o")
        ax.set_title(f"{title} training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


def plot_scores(labels: np.ndarray, predictions: np.ndarray, published: np.ndarray, target: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    bins = np.linspace(0.0, 1.0, 41)
    labels = np.asarray(labels).astype(bool)
    axes[0].hist(predictions[~labels], bins=bins, alpha=0.6, density=True, label="no click")
    axes[0].hist(predictions[labels], bins=bins, alpha=0.6, density=True, label="click")
    axes[0].set_title("DLRM scores on validation impressions")
    axes[0].legend()
    axes[1].hist(published, bins=bins, color="tab:green")
    axes[1].set_title("Scores in the published lists")
    for ax in axes:
        ax.set_xlabel("predicted click probability")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


def plot_exposure(exposure: np.ndarray, gini_value: float, target: Path) -> None:
    plt = _pyplot()
    counts = np.sort(np.asarray(exposure))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(np.arange(1, len(counts) + 1), counts)
    axes[0].set_xlabel("item rank")
    axes[0].set_ylabel("lists containing the item")
    axes[0].set_title("Item exposure in published lists")
    ascending = counts[::-1].astype(np.float64)
    share = np.concatenate([[0.0], np.cumsum(ascending) / max(ascending.sum(), 1.0)])
    axes[1].plot(np.linspace(0, 1, len(share)), share, label="published lists")
    axes[1].plot([0, 1], [0, 1], linestyle="--", color="grey", label="equal exposure")
    axes[1].set_xlabel("share of items (least exposed first)")
    axes[1].set_ylabel("share of exposure")
    axes[1].set_title(f"Lorenz curve, Gini {gini_value:.3f}")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (the dev venv); False on the Merlin image."""
    return importlib.util.find_spec("matplotlib") is not None


def _base_rate(ranking: dict[str, Any]) -> str:
    """The reference a log loss is read against: the loss of predicting the mean click rate everywhere."""
    reference = ranking.get("base_rate_log_loss")
    if reference is None:
        return "no reference log loss in the report"
    rate = ranking.get("click_rate")
    mean = f" ({rate:.4f})" if rate is not None else ""
    return f"predicting the mean click rate{mean} for every impression scores {reference:.4f}; lower is better"


def _window(report: dict[str, Any]) -> list[str]:
    window = report.get("data_window")
    if not window:
        return []
    return [
        f"Window: {window['start_date']} .. {window['end_date']} ({window['days']} daily partitions); "
        f"train {', '.join(window['train_days'])} ({window['rows']['train']} rows), "
        f"validation {', '.join(window['valid_days'])} ({window['rows']['valid']} rows).",
        "",
    ]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table: the header, its rule and a line per row (an empty cell is one space wide)."""

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"

    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]


def _interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f" [{bounds[0]:.4f}, {bounds[1]:.4f}]"


def _with_ci(method: dict[str, Any], metric: str, k: str) -> str:
    return f"{method[metric][k]:.4f}{_interval(method.get(f'{metric}_ci95', {}).get(k))}"


def markdown(report: dict[str, Any], *, plots: bool = True) -> str:
    retrieval, ranking, lists = report["retrieval"], report["ranking"], report["lists"]
    cutoffs = [str(k) for k in retrieval["cutoffs"]]
    methods = [m for m in ("model", "popularity", "oracle") if retrieval.get(m)]
    sample = retrieval.get("sample", {})
    lines = [
        "# Run report",
        "",
        f"Data source: `{report['source']}`. Numbers are also in `../report.json`. Every metric is computed "
        f"on a seeded sample of {sample.get('users_sampled', '?')} of the "
        f"{sample.get('known_users_in_validation', '?')} "
        "validation users known from training (all of them when there are fewer than `evaluate.sample_users`); "
        "brackets hold its 95% interval (normal approximation over users; AUC by Hanley & McNeil).",
        "",
        *_window(report),
        f"## Retrieval (full catalog, {retrieval['users_evaluated']} users with validation clicks)",
        "",
        *_table(["method", *(f"{metric}@{k}" for k in cutoffs for metric in ("recall", "ndcg"))],
                ([method, *(_with_ci(retrieval[method], metric, k) for k in cutoffs for metric in ("recall", "ndcg"))]
                 for method in methods)),
    ]
    lines += [
        "",
        f"![recall@k]({PLOTS['recall']})",
        "",
        "## Ranking (validation impressions)",
        "",
        f"DLRM AUC {ranking['auc']:.4f}{_interval(ranking.get('auc_ci95'))}, log loss {ranking['log_loss']:.4f}"
        f"{_interval(ranking.get('log_loss_ci95'))} ({_base_rate(ranking)}); popularity AUC "
        f"{ranking['popularity_auc']:.4f}{_interval(ranking.get('popularity_auc_ci95'))}, "
        f"on {ranking['rows']} validation impressions.",
        "",
        f"![training loss]({PLOTS['loss']})",
        "",
        f"![scores]({PLOTS['scores']})",
        "",
        f"## Published lists (N = {lists['top_n']})",
        "",
        *_published_table(lists),
        *_blend_lines(report.get("blend")),
        *([f"- validation-only users' lists: {report['window_fold_in']['reason']}"] if report.get("window_fold_in")
          else []),
        *_counterfactual_table(report.get("counterfactual")),
        f"- {lists['users_with_list']} lists for {lists['catalog_users']} known users "
        f"(coverage {lists['user_coverage']:.4f}), full lists {lists['full_list_share']:.4f}",
        f"- catalog coverage {lists['catalog_coverage']:.4f}, Gini of item exposure {lists['exposure_gini']:.4f}",
        f"- empty {lists['empty_lists']}, short {lists['short_lists']}, with duplicates {lists['duplicate_lists']}, "
        f"holding a seen item {lists['lists_with_seen_item']}",
        "",
        f"![exposure]({PLOTS['exposure']})",
        "",
        "## Stages",
        "",
        *_table(["stage", "device", "seconds"], ([name, s["device"], str(s["seconds"])]
                                                  for name, s in report["stages"].items())),
        "",
    ]
    if not plots:
        lines = [line for line in lines if not line.startswith("![")]
        lines.insert(3, "Plots were not drawn: matplotlib is not installed where this run was evaluated.\n")
    return "\n".join(lines)


def _published_table(lists: dict[str, Any]) -> list[str]:
    """Exactly the lists to be written vs each reference order, on the same sampled users, paired intervals."""
    n = lists["top_n"]
    lines = [f"What would be written (the fallback for sampled users without a list: "
             f"{lists.get('users_with_fallback', 0)}), on {lists.get('users_evaluated', '?')} sampled validation "
             "users:", ""]
    paired = lists.get("paired_difference", {})
    rows = []
    for name, prefix in (("published", ""), ("retrieval_order", "retrieval_order_"), ("popularity", "popularity_")):
        if f"{prefix}recall_at_n" not in lists:
            continue
        difference = paired.get(name, {}).get("recall_at_n")
        rows.append([name.replace("_", " "),
                     f"{lists[f'{prefix}recall_at_n']:.4f}{_interval(lists.get(f'{prefix}recall_at_n_ci95'))}",
                     f"{lists[f'{prefix}ndcg_at_n']:.4f}{_interval(lists.get(f'{prefix}ndcg_at_n_ci95'))}",
                     f"{difference['mean']:+.4f}{_interval(difference['ci95'])}" if difference else ""])
    return [*lines, *_table(["lists", f"recall@{n}", f"ndcg@{n}", f"recall@{n}: published - this [95%]"], rows), ""]


def _counterfactual_table(counterfactual: dict[str, Any] | None) -> list[str]:
    if not counterfactual:
        return []
    names = [n for n in ("published", "retrieval_order", "popularity", "oracle", "click_oracle") if n in counterfactual]
    lines = ["", f"Counterfactual, under the planted truth ({counterfactual['users']} evaluated users; "
             f"{counterfactual['metric']}; `oracle` ranks by P(shown) x P(click | shown) as logged recall rewards, "
             "`click oracle` by P(click | shown)):", ""]
    rows = ([name.replace("_", " "), f"{row['expected_clicks']:.4f}{_interval(row['expected_clicks_ci95'])}",
             f"{row['catalog_coverage']:.4f}", f"{row['exposure_gini']:.4f}"]
            for name, row in ((n, counterfactual[n]) for n in names))
    return [*lines, *_table(["lists", "expected clicks per list", "catalogue coverage", "exposure Gini"], rows), ""]


def _blend_lines(blend: dict[str, Any] | None) -> list[str]:
    if not blend:
        return []
    chosen = blend["chosen"]
    weights = ", ".join(f"{k} {v:g}" for k, v in chosen["weights"].items())
    lines = [f"- final order: **{chosen['name']}** (weights on standardised components: {weights}); "
             f"{blend.get('reason', '')}"]
    if blend.get("candidates"):
        best = sorted(blend["candidates"], key=lambda row: -next(v for k, v in row.items() if k.startswith("recall@")))
        shown = ", ".join(f"{row['name']} {next(v for k, v in row.items() if k.startswith('recall@')):.4f}"
                          for row in best[:5])
        lines.append(f"- blend fit, best of {len(best)} orders by validation recall: {shown}")
    return lines


def write_report(
    paths: RunPaths,
    report: dict[str, Any],
    *,
    losses: dict[str, list[float]],
    validation_scores: tuple[np.ndarray, np.ndarray],
    published_scores: np.ndarray,
    exposure: np.ndarray,
) -> Path:
    """The four PNG plots and ``report.md`` in ``evaluation/``; without matplotlib, ``report.md`` only."""
    out = paths.evaluation
    out.mkdir(parents=True, exist_ok=True)
    if not matplotlib_available():
        log.warning("plots skipped: matplotlib is not installed (the GPU worker's Merlin image has none); "
                    "report.json and %s have every number", paths.report_md.name)
        paths.report_md.write_text(markdown(report, plots=False))
        return paths.report_md
    plot_recall(report, out / PLOTS["recall"])
    plot_losses(losses, out / PLOTS["loss"])
    plot_scores(*validation_scores, published_scores, out / PLOTS["scores"])
    plot_exposure(exposure, report["lists"]["exposure_gini"], out / PLOTS["exposure"])
    paths.report_md.write_text(markdown(report))
    return paths.report_md


def summary_lines(report: dict[str, Any], gate: dict[str, Any], published: dict[str, Any] | None) -> list[str]:
    """The one-screen summary ``load_redis`` logs last."""
    retrieval, ranking, lists = report["retrieval"], report["ranking"], report["lists"]
    k = str(retrieval["cutoffs"][0])
    oracle = retrieval.get("oracle")
    lines = [
        "=" * 78,
        f"RUN SUMMARY (source {report['source']})",
        f"retrieval recall@{k}: model {retrieval['model']['recall'][k]:.4f} | popularity "
        f"{retrieval['popularity']['recall'][k]:.4f} | oracle {_fmt(oracle['recall'][k] if oracle else None)}",
        f"ranking AUC {ranking['auc']:.4f} (popularity {ranking['popularity_auc']:.4f}), "
        f"log loss {ranking['log_loss']:.4f} ({_base_rate(ranking)})",
        f"lists: recall@{lists['top_n']} {lists['recall_at_n']:.4f} published vs "
        f"{lists['retrieval_order_recall_at_n']:.4f} retrieval order, {_fmt(lists.get('popularity_recall_at_n'))} "
        f"popularity; coverage {lists['catalog_coverage']:.3f}; "
        f"Gini {lists['exposure_gini']:.3f}; full {lists['full_list_share']:.3f}; seen {lists['lists_with_seen_item']}",
        "stages: " + ", ".join(f"{n} {s['seconds']}s/{s['device']}" for n, s in report["stages"].items()),
        f"quality gate: {'PASSED' if gate['passed'] else 'FAILED'}"
        + (" -- PUBLISHED ANYWAY (quality.force_publish)" if gate.get("forced") else ""),
    ]
    lines += [f"  {c['name']}: {'ok' if c['passed'] else 'FAIL'} - {c['detail']}" for c in gate["checks"]]
    served = (published or {}).get("manifest") or {}
    if published is not None and published.get("published", True):
        lines.append(f"published {published.get('users')} documents, manifest run {served.get('run_id')}")
    elif published is not None:
        lines.append(f"NOT published ({published.get('users')} documents left unwritten): {published.get('reason')}")
        lines.append(f"Redis still serves run {served.get('run_id')} ({served.get('logical_date')})")
    lines.append("=" * 78)
    return lines
