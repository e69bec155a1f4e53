"""The benchmark's outputs: ``quality.json`` (everything, with split and settings), ``report.md`` (the table)
and ``quality.png`` (recall@20 and NDCG@10 with their 95% intervals), all in the output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...runtime import write_json

ORDER = ("published", "retrieval_order", "popularity", "recent_popularity", "item_knn", "als", "bpr", "ease")
LABELS = {"published": "this project, published (read back from Redis)", "retrieval_order": "its retrieval order",
          "popularity": "popularity", "recent_popularity": "popularity, time-decayed",
          "item_knn": "item-kNN (cosine)", "als": "implicit ALS", "bpr": "implicit BPR",
          "ease": "EASE (closed form)"}


def _cell(entry: dict[str, Any]) -> str:
    return f"{entry['mean']:.3f}"


def _diff(entry: dict[str, Any]) -> str:
    paired = entry.get("vs_published")
    if paired is None:
        return "-"
    return f"{paired['mean']:+.3f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]"


def _gate(gate: dict[str, Any]) -> str:
    failed = [f"{c['name']} ({c['detail']})" for c in gate.get("checks") or [] if not c.get("passed")]
    verdict = "passed" if gate.get("passed") else "refused"
    forced = ", publication forced by the bench" if gate.get("forced") else ""
    return f"{verdict}{forced}" + (f"; failed: {'; '.join(failed)}" if failed else "")


def markdown(result: dict[str, Any]) -> str:
    methods = [m for m in ORDER if m in result["results"]]
    split = result["split"]
    lines = [
        f"# bench-quality: MovieLens-100K, {result['date_utc']}",
        "",
        f"`{result['command']}`; load average {result['loadavg_start']} at the start, {result['loadavg_end']} at "
        f"the end; {result['seconds']} s.",
        "",
        f"Split ({split['kind']}): train {split['train']['first_day']}..{split['train']['last_day']} "
        f"({split['train']['interactions']} ratings), validation {split['valid']['first_day']}.."
        f"{split['valid']['last_day']} ({split['valid']['interactions']}), test {split['test']['first_day']}.."
        f"{split['test']['last_day']} ({split['test']['interactions']}). {result['protocol']['test_users']} test "
        f"users ({result['protocol']['test_users_rule']}).",
        "",
        "| method | recall@10 | recall@20 | NDCG@10 | coverage@20 | already rated | recall@20 - published [95% CI] "
        "| NDCG@10 - published [95% CI] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in methods:
        entry = result["results"][name]
        lines.append(f"| {LABELS[name]} | {_cell(entry['recall@10'])} | {_cell(entry['recall@20'])} | "
                     f"{_cell(entry['ndcg@10'])} | {entry['coverage']:.3f} | "
                     f"{entry.get('already_rated_share', float('nan')):.3f} | {_diff(entry['recall@20'])} | "
                     f"{_diff(entry['ndcg@10'])} |")
    lines += ["", "already rated: share of the top-20 slots holding an item the user rated before the test days.",
              "", "Peers' chosen settings (tuned on validation NDCG@10): " + "; ".join(
        f"{name} {settings['chosen']}" for name, settings in result["peer_settings"].items()) + ".",
        "", f"Quality gate of the pipeline run: {_gate(result['pipeline']['quality_gate'])}.",
        "", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in result["protocol"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], target: Path) -> bool:
    """The bar chart; False (and no file) when matplotlib (the ``plots`` extra) is absent."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in ORDER if m in result["results"]]
    metrics = ("recall@20", "ndcg@10")
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.38
    for offset, metric in enumerate(metrics):
        means = np.array([result["results"][m][metric]["mean"] for m in methods])
        low = means - np.array([result["results"][m][metric]["ci95"][0] for m in methods])
        high = np.array([result["results"][m][metric]["ci95"][1] for m in methods]) - means
        axis.bar(np.arange(len(methods)) + (offset - 0.5) * width, means, width, yerr=[low, high], capsize=3,
                 label=metric)
    axis.set_xticks(np.arange(len(methods)), [LABELS[m].split(" (")[0] for m in methods], rotation=20, ha="right")
    axis.set_ylabel("mean over test users (95% CI)")
    axis.set_title(f"MovieLens-100K, time split, {result['protocol']['test_users']} test users; "
                   f"load {result['loadavg_start'][0]:.1f}", fontsize=10)
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return True


def write_report(result: dict[str, Any], out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "quality.json", "markdown": out / "report.md", "png": out / "quality.png"}
    write_json(files["json"], result)
    files["markdown"].write_text(markdown(result))
    if not plot(result, files["png"]):
        files.pop("png")
    return {k: str(v) for k, v in files.items()}
