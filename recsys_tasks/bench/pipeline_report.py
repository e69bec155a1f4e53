"""Reports of ``bench-pipeline``: JSON, Markdown, the log-log PNG, slopes and the 1M-user day's targets."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

TASKS = ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate", "load_redis")

# Targets of the 1M-user day (docs/performance.md, `bench-pipeline`).
TARGET_DAG_S = 45 * 60
TARGET_PEAK_RSS_BYTES = 8 * 10**9
TARGET_SLOPE = 1.1
TARGET_THROUGHPUT_RATIO = 0.7


# --------------------------------------------------------------------------------------------------


def slopes(points: list[dict[str, Any]], measure: str = "seconds") -> list[dict[str, Any]]:
    """Log-log slope of each stage's ``measure`` (``seconds`` or ``cpu_seconds``) against users between
    consecutive points (by users). On a shared machine CPU seconds are the steadier measure of the work."""
    ordered = sorted((p for p in points if p.get("users")), key=lambda p: p["users"])
    out = []
    for low, high in zip(ordered, ordered[1:]):
        seconds_low = {t["task"]: t.get(measure) for t in low["tasks"]}
        seconds_high = {t["task"]: t.get(measure) for t in high["tasks"]}
        ratio = math.log(high["users"] / low["users"])
        row: dict[str, Any] = {"from_users": low["users"], "to_users": high["users"]}
        for task in TASKS:
            if seconds_low.get(task) and seconds_high.get(task):
                row[task] = round(math.log(seconds_high[task] / seconds_low[task]) / ratio, 2)
        if measure == "seconds" and low.get("dag_wall_s") and high.get("dag_wall_s"):
            row["whole DAG"] = round(math.log(high["dag_wall_s"] / low["dag_wall_s"]) / ratio, 2)
        out.append(row)
    return out


def plot(points: list[dict[str, Any]], target: Path) -> None:
    """Seconds against users, log-log, one line per stage and one for the whole DAG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted((p for p in points if p.get("users")), key=lambda p: p["users"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task in (*TASKS, "whole DAG"):
        xs, ys = [], []
        for point in ordered:
            seconds = point.get("dag_wall_s") if task == "whole DAG" else next(
                (t["seconds"] for t in point["tasks"] if t["task"] == task), None)
            if seconds:
                xs.append(point["users"])
                ys.append(seconds)
        if xs:
            ax.plot(xs, ys, marker="o", label=task, linewidth=2.5 if task == "whole DAG" else 1.5,
                    linestyle="--" if task == "whole DAG" else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("users (items = users / 10, impressions = 20 x users)")
    ax.set_ylabel("seconds")
    loads = [p["load"] for p in ordered if p.get("load", {}).get("cores")]
    means = [load["mean_1min"] for load in loads]
    machine = (f"{loads[0]['cores']} cores, mean 1-min load {min(means):.1f}-{max(means):.1f}" if loads
               else "load not recorded")
    ax.set_title(f"DAG tasks against data size (airflow dags test, {machine})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(target, dpi=80)
    plt.close(fig)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if spec else str(value)


def _interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def targets(points: list[dict[str, Any]], sweep_slopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 1M-user day's targets against the largest point measured (met / not met / not measured)."""
    if not points:
        return []
    largest = max(points, key=lambda p: p.get("users") or 0)
    label = f"{largest['name']} ({largest.get('users')} users)"
    peak = max((t["peak_rss_gb"] or 0 for t in largest["tasks"]), default=None)
    quality = largest.get("quality", {})
    out = [
        {"target": "whole DAG <= 45 min",
         "measured": f"{largest['dag_wall_s'] / 60:.1f} min at {label}" if largest.get("complete", True) else
         f"not completed: stopped after {largest['dag_wall_s'] / 60:.1f} min at {label}, tasks done: "
         + ", ".join(t["task"] for t in largest["tasks"]),
         "met": largest.get("complete", True) and largest["dag_wall_s"] <= TARGET_DAG_S},
        {"target": "every task's peak RSS <= 8 GB",
         "measured": f"max {peak} GB at {label}" + ("" if largest.get("complete", True) else " (tasks done only)"),
         "met": peak is not None and peak * 1e9 <= TARGET_PEAK_RSS_BYTES},
    ]
    last = [s for s in sweep_slopes if s["to_users"] == largest.get("users")]
    if last:
        worst = max(((k, v) for k, v in last[-1].items() if k in TASKS), key=lambda kv: kv[1])
        out.append({"target": "log-log slope <= 1.1 (each stage)",
                    "measured": f"worst {worst[0]} {worst[1]} ({last[-1]['from_users']} -> {last[-1]['to_users']})",
                    "met": worst[1] <= TARGET_SLOPE})
    if quality.get("recall_at_10") is not None:
        lift = quality["recall_at_10"] / max(quality["popularity_recall_at_10"], 1e-12)
        out.append({"target": "recall@10 >= 2x popularity", "measured": f"{lift:.2f}x at {label}", "met": lift >= 2})
        out.append({"target": "AUC >= 0.70", "measured": f"{quality['auc']:.4f} at {label}",
                    "met": quality["auc"] >= 0.70})
    if quality.get("published_recall_at_n") is not None:
        # The product's quality: the published lists, against popularity and their own retrieval order.
        published, popularity = quality["published_recall_at_n"], quality["popularity_recall_at_n"]
        out.append({"target": "published recall@N >= 2x popularity",
                    "measured": f"{published / max(popularity, 1e-12):.2f}x at {label}",
                    "met": published >= 2 * popularity})
        interval = quality.get("published_minus_retrieval_order_ci95")
        out.append({"target": "published recall@N not below the retrieval order (paired 95% upper bound >= 0)",
                    "measured": f"{published:.4f} vs {quality['retrieval_order_recall_at_n']:.4f} "
                                f"{_interval(interval)} at {label}",
                    "met": interval is not None and interval[1] >= 0})
    for name, result in largest.get("throughput", {}).items():
        out.append({"target": f"{name} >= 70% of plain model.fit", "measured": f"{result['ratio']:.0%} at {label}",
                    "met": result["ratio"] >= TARGET_THROUGHPUT_RATIO})
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Pipeline benchmark", "", f"Measured {results['measured_at']} on {results['machine']}.", ""]
    for point in results["points"]:
        load = point.get("load", {})
        lines += [
            f"## {point['name']}: {point.get('users')} users x {point.get('items')} items x "
            f"{point.get('impressions')} impressions",
            "",
            f"Whole DAG (`airflow dags test`): **{point['dag_wall_s']:.0f} s**; machine load (1-min average, "
            f"{load.get('cores')} cores) mean {load.get('mean_1min')}, max {load.get('max_1min')}.",
            "",
            "| task | seconds | peak RSS (GB) | RSS at start (GB) | rows | rows/s | CPU s / wall s |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for t in point["tasks"]:
            lines.append(f"| {t['task']} | {t['seconds']:.1f} | {_fmt(t['peak_rss_gb'])} | "
                         f"{_fmt(t['rss_at_start_gb'])} | {t['rows']:,} {t['row_unit']} | {t['rows_per_s']:,.0f} | "
                         f"{_fmt(t['cpu_per_wall'])} |")
        quality = point.get("quality", {})
        if quality.get("recall_at_10") is not None:
            recall_ci = _interval(quality.get("recall_at_10_ci95"))
            lines += ["", f"Quality: recall@10 {quality['recall_at_10']:.4f} {recall_ci} "
                      f"(popularity {quality['popularity_recall_at_10']:.4f}, oracle "
                      f"{_fmt(quality.get('oracle_recall_at_10'), '.4f')}), AUC {quality['auc']:.4f} "
                      f"{_interval(quality.get('auc_ci95'))}, on {quality['users_evaluated']} users; gate passed: "
                      f"{quality.get('gate_passed')}."]
        if quality.get("published_recall_at_n") is not None:
            lines += ["", f"Published lists: recall@N {quality['published_recall_at_n']:.4f} "
                      f"{_interval(quality.get('published_recall_at_n_ci95'))}, retrieval order "
                      f"{quality['retrieval_order_recall_at_n']:.4f}, popularity "
                      f"{quality['popularity_recall_at_n']:.4f}; "
                      "published − retrieval order "
                      f"{_interval(quality.get('published_minus_retrieval_order_ci95'))}; "
                      f"catalogue coverage {_fmt(quality.get('published_catalog_coverage'), '.3f')}."]
        if point.get("throughput"):
            lines += ["", "| training | rows | batch | Merlin Loader samples/s | plain model.fit samples/s | ratio |",
                      "|---|---:|---:|---:|---:|---:|"]
            for name, r in point["throughput"].items():
                lines.append(f"| {name} | {r['rows']:,} | {r['batch_size_rows']} | {r['loader_samples_per_s']:,.0f} | "
                             f"{r['plain_fit_samples_per_s']:,.0f} | {r['ratio']:.0%} |")
        lines.append("")
    if results["slopes"]:
        lines += ["## Log-log slopes (seconds against users)", "",
                  "| from -> to users | " + " | ".join((*TASKS, "whole DAG")) + " |",
                  "|---" * (len(TASKS) + 2) + "|"]
        for s in results["slopes"]:
            cells = " | ".join(_fmt(s.get(t)) for t in (*TASKS, "whole DAG"))
            lines.append(f"| {s['from_users']:,} -> {s['to_users']:,} | {cells} |")
        lines.append("")
    if results.get("cpu_slopes"):
        lines += ["## Log-log slopes of CPU seconds (the work, whatever the machine's load)", "",
                  "| from -> to users | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
        for row in results["cpu_slopes"]:
            cells = " | ".join(_fmt(row.get(t)) for t in TASKS)
            lines.append(f"| {row['from_users']:,} -> {row['to_users']:,} | {cells} |")
        lines.append("")
    if results["targets"]:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in results["targets"]]
        lines.append("")
    lines += ["![seconds against users](bench_pipeline.png)", ""]
    return "\n".join(lines)


def write_outputs(out_dir: Path, points: list[dict[str, Any]]) -> dict[str, Any]:
    from datetime import datetime, timezone

    sweep_slopes = slopes(points)
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    results = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {memory_gib:.0f} GiB",
        "points": [{k: v for k, v in p.items() if k != "load_samples"} for p in points],
        "slopes": sweep_slopes,
        "cpu_slopes": slopes(points, "cpu_seconds"),
        "targets": targets(points, sweep_slopes),
    }
    (out_dir / "bench_pipeline.json").write_text(json.dumps(results, indent=2))
    (out_dir / "bench_pipeline.md").write_text(markdown(results))
    plot(points, out_dir / "bench_pipeline.png")
    return results


