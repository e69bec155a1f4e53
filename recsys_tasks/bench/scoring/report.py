"""The Markdown table of a bench run's results (every row a ratio measured side by side in that run)."""

from __future__ import annotations

from typing import Any

TARGETS = {"scoring_ratio_k20_approximate": 1000.0, "approximate_overlap": 0.98, "scoring_ratio_default": 300.0,
           "ranking_fraction": 2.5, "retrieval_fraction": 0.7, "large_catalog_speedup": 10.0,
           "large_catalog_recall": 0.95, "redis_fraction": 0.5, "redis_ratio": 10.0, "memory_ratio": 1.5}


def _ok(passed: bool) -> str:
    return "yes" if passed else "**no**"


def _scoring_rows(s: dict[str, Any]) -> list[str]:
    nb, k20 = s["notebook"], s["ours_k20"]
    rows = [
        f"| scoring, K=N=20, exact (users/s) | {k20['users_per_s']:,.0f} ({k20['users']:,} users) | "
        f"{nb['users_per_s']:,.2f} (notebook method, {nb['users']} users) | {s['ratio_k20']:,.0f}x | | |",
    ]
    ann = s.get("ours_k20_approximate")
    if ann:
        overlap = ann["overlap_with_exact"]["mean_overlap"]
        with_build = ann["users"] / max(ann.get("stage_seconds", ann["seconds"]), 1e-9)
        rows += [
            f"| scoring, K=N=20, approximate ({ann['retrieval_kernel']}) (users/s) | {ann['users_per_s']:,.0f} "
            f"({with_build:,.0f} counting model load, planning and the index build) | "
            f"{nb['users_per_s']:,.2f} (notebook) | "
            f"{s['ratio_k20_approximate']:,.0f}x | >= 1000x | "
            f"{_ok(s['ratio_k20_approximate'] >= TARGETS['scoring_ratio_k20_approximate'])} |",
            f"| final top-20 overlap, approximate vs exact scoring | {overlap:.4f} | 1 | | >= 0.98 | "
            f"{_ok(overlap >= TARGETS['approximate_overlap'])} |",
        ]
    if "ours_default" in s:
        d = s["ours_default"]
        rows.append(
            f"| scoring, K={d['top_k']} N={d['top_n']}, exact (users/s) | {d['users_per_s']:,.0f} | "
            f"{nb['users_per_s']:,.2f} (notebook, K=20) | {s['ratio_default']:,.0f}x | >= 300x | "
            f"{_ok(s['ratio_default'] >= TARGETS['scoring_ratio_default'])} |")
    return rows


def _kernel_rows(rk: dict[str, Any], rt: dict[str, Any]) -> list[str]:
    threads = rt["kernel_threads"]
    return [
        f"| ranking, K={rk['k']}: DLRM split per user/item/pair, per-pair step in "
        f"{rk.get('pair_kernel', 'tensorflow')} (pairs/s) | {rk['ours_pairs_per_s']:,.0f} | "
        f"{rk['predict_pairs_per_s']:,.0f} (batched model.predict, same pairs) | {rk['fraction_of_predict']:.0%} | "
        f">= 250% | {_ok(rk['fraction_of_predict'] >= TARGETS['ranking_fraction'])} |",
        *([f"| ranking: DLRM split, per-pair step in TensorFlow (pairs/s) | {rk['tensorflow_pairs_per_s']:,.0f} | "
           f"{rk['predict_pairs_per_s']:,.0f} | {rk['tensorflow_fraction_of_predict']:.0%} | | |"]
          if "tensorflow_pairs_per_s" in rk else []),
        f"| ranking: whole DLRM per pair, the previous step (pairs/s) | {rk['whole_model_pairs_per_s']:,.0f} | "
        f"{rk['predict_pairs_per_s']:,.0f} | {rk['whole_model_fraction_of_predict']:.0%} | | |",
        f"| retrieval, K={rt['k']}, exact (users/s) | {rt['ours_users_per_s']:,.0f} | {rt['plain_users_per_s']:,.0f} "
        f"(matmul + top_k) | {rt['fraction_of_plain']:.0%} | >= 70% | "
        f"{_ok(rt['fraction_of_plain'] >= TARGETS['retrieval_fraction'])} |",
        f"| exact retrieval vs its matrix-product ceiling (users/s) | {rt['ours_users_per_s']:,.0f} | "
        f"{rt['matmul_ceiling_users_per_s']:,.0f} (the kernel's own tiles and BLAS, {threads['numba_threads']} "
        f"threads, {rt['sgemm_gflops']:,.0f} GFLOP/s, no top-k) | {rt['fraction_of_ceiling']:.0%} | | |",
    ]


def _overlap(value: float | None) -> str:
    return "n/a (no DLRM)" if value is None else f"{value:.3f}"


def approximate_rows(a: dict[str, Any]) -> list[str]:
    rows = []
    for k, entry in a["by_k"].items():
        for kind in ("ivf", "hnsw"):
            e = entry[kind]
            rows.append(
                f"| retrieval, K={k}, {kind} on the run's embeddings ({a['items']:,} items) (users/s) | "
                f"{e['users_per_s']:,.0f} (recall {e['candidate_recall']:.3f}, top-{e['top_n']} overlap "
                f"{_overlap(e['top_n_overlap'])}, built in {e['build_seconds']:,.0f}s) | "
                f"{entry['exact_users_per_s']:,.0f} (exact) | {e['speedup_vs_exact']:.1f}x | | |")
            if "sweep" in e:
                points = "; ".join(f"{p['value']}: {p['users_per_s']:,.0f} users/s at recall "
                                   f"{p['candidate_recall']:.3f}" for p in e["sweep"]["points"])
                rows.append(f"| the same, {e['sweep']['parameter']} swept | {points} | | | | |")
    return rows


def large_catalog_rows(c: dict[str, Any]) -> list[str]:
    rows = []
    for kind in [kind for kind in ("ivf", "hnsw") if kind in c]:
        e = c[kind]
        met = e["speedup_vs_exact"] >= TARGETS["large_catalog_speedup"] and \
            e["candidate_recall"] >= TARGETS["large_catalog_recall"]
        rows.append(
            f"| retrieval, K={c['k']}, {kind}, {c['items']:,}-item synthetic catalog (users/s) | "
            f"{e['users_per_s']:,.0f} (recall {e['candidate_recall']:.3f}, built in {e['build_seconds']:,.0f}s) | "
            f"{c['exact_users_per_s']:,.0f} (exact) | {e['speedup_vs_exact']:.1f}x | >= 10x at recall >= 0.95 | "
            f"{_ok(met)} |")
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    rows = ["| measure | ours | reference | ours / reference | target | met |", "|---|---|---|---|---|---|"]
    rows += _scoring_rows(results["scoring"])
    rows += _kernel_rows(results["ranking"], results["retrieval"])
    if "approximate" in results:
        rows += approximate_rows(results["approximate"])
    if "large_catalog" in results:
        rows += large_catalog_rows(results["large_catalog"])
    if "redis" not in results:  # an interrupted run: what was measured so far
        return "\n".join(rows)
    r, m = results["redis"], results["memory"]
    rows += [
        f"| Redis load vs ceiling (keys/s) | {r['ours_keys_per_s']:,.0f} | "
        f"{r['redis_benchmark']['keys_per_s']:,.0f} (redis-benchmark -P 64 JSON.SET) | "
        f"{r['fraction_of_redis_benchmark']:.0%} | >= 50% | "
        f"{_ok(r['fraction_of_redis_benchmark'] >= TARGETS['redis_fraction'])} |",
        f"| Redis load vs notebook (keys/s) | {r['ours_keys_per_s']:,.0f} | {r['notebook_keys_per_s']:,.0f} "
        f"(one awaited JSON.SET per key) | {r['ratio_to_notebook']:,.1f}x | >= 10x | "
        f"{_ok(r['ratio_to_notebook'] >= TARGETS['redis_ratio'])} |",
        f"| peak RSS of scoring (MB) | {m['large']['peak_rss_mb']:,.0f} ({m['large']['users']:,} users) | "
        f"{m['small']['peak_rss_mb']:,.0f} ({m['small']['users']:,} users) | {m['ratio']:.2f}x | <= 1.5x | "
        f"{_ok(m['ratio'] <= TARGETS['memory_ratio'])} |",
    ]
    inputs, s, e2e = results["inputs"], results["scoring"], results["end_to_end"]
    rows.append(f"\nEnd to end, {inputs['users']:,} users x {inputs['items']:,} items: scoring "
                f"{e2e['score_seconds']:,.0f}s + load {e2e['load_seconds']:,.0f}s = {e2e['total_seconds']:,.0f}s. "
                f"Notebook lists reproduced by ours: {s['agreement']['identical_lists']}/"
                f"{s['agreement']['users_compared']}. Load average at start / end: {inputs.get('loadavg_start', '?')}"
                f" / {inputs.get('loadavg_end', '?')} ({inputs['cpu_count']} CPUs).")
    return "\n".join(rows)
