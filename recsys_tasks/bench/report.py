"""The Markdown table of a bench run's results."""

from __future__ import annotations

from typing import Any

TARGETS = {"scoring_ratio": 1000.0, "ranking_fraction": 0.7, "retrieval_fraction": 0.7,
           "redis_fraction": 0.5, "redis_ratio": 10.0, "memory_ratio": 1.5}


def markdown_table(results: dict[str, Any]) -> str:
    s, r, rk, rt, m = (results[k] for k in ("scoring", "redis", "ranking", "retrieval", "memory"))
    users, items = results["inputs"]["users"], results["inputs"]["items"]

    def ok(passed: bool) -> str:
        return "yes" if passed else "**no**"

    rows = [
        ("| measure | ours | reference | ours / reference | target | met |"),
        ("|---|---|---|---|---|---|"),
        (f"| scoring, K=N=20 (users/s) | {s['ours_k20']['users_per_s']:,.0f} ({s['ours_k20']['users']:,} users) | "
         f"{s['notebook']['users_per_s']:,.2f} (notebook method, {s['notebook']['users']} users) | "
         f"{s['ratio_k20']:,.0f}x | >= 1000x | {ok(s['ratio_k20'] >= TARGETS['scoring_ratio'])} |"),
        (f"| scoring, K={s['ours_default']['top_k']} N={s['ours_default']['top_n']} (users/s) | "
         f"{s['ours_default']['users_per_s']:,.0f} | {s['notebook']['users_per_s']:,.2f} (notebook, K=20) | "
         f"{s['ratio_default']:,.0f}x | | |"),
        (f"| ranking (pairs/s) | {rk['ours_pairs_per_s']:,.0f} | {rk['predict_pairs_per_s']:,.0f} "
         f"(batched model.predict) | {rk['fraction_of_predict']:.0%} | >= 70% | "
         f"{ok(rk['fraction_of_predict'] >= TARGETS['ranking_fraction'])} |"),
        (f"| retrieval, K={rt['k']} (users/s) | {rt['ours_users_per_s']:,.0f} | {rt['plain_users_per_s']:,.0f} "
         f"(matmul + top_k) | {rt['fraction_of_plain']:.0%} | >= 70% | "
         f"{ok(rt['fraction_of_plain'] >= TARGETS['retrieval_fraction'])} |"),
        (f"| retrieval vs the matrix-product ceiling (users/s) | {rt['ours_users_per_s']:,.0f} | "
         f"{rt['matmul_ceiling_users_per_s']:,.0f} (best sgemm here, {rt['sgemm_gflops']:,.0f} GFLOP/s, "
         f"no top-k) | {rt['ours_users_per_s'] / rt['matmul_ceiling_users_per_s']:.0%} | | |"),
        (f"| Redis load vs ceiling (keys/s) | {r['ours_keys_per_s']:,.0f} | "
         f"{r['redis_benchmark']['keys_per_s']:,.0f} (redis-benchmark -P 64 JSON.SET) | "
         f"{r['fraction_of_redis_benchmark']:.0%} | >= 50% | "
         f"{ok(r['fraction_of_redis_benchmark'] >= TARGETS['redis_fraction'])} |"),
        (f"| Redis load vs notebook (keys/s) | {r['ours_keys_per_s']:,.0f} | {r['notebook_keys_per_s']:,.0f} "
         f"(one awaited JSON.SET per key) | {r['ratio_to_notebook']:,.1f}x | >= 10x | "
         f"{ok(r['ratio_to_notebook'] >= TARGETS['redis_ratio'])} |"),
        (f"| peak RSS of scoring (MB) | {m['large']['peak_rss_mb']:,.0f} ({m['large']['users']:,} users) | "
         f"{m['small']['peak_rss_mb']:,.0f} ({m['small']['users']:,} users) | {m['ratio']:.2f}x | <= 1.5x | "
         f"{ok(m['ratio'] <= TARGETS['memory_ratio'])} |"),
    ]
    e2e = results["end_to_end"]
    rows.append(f"\nEnd to end, {users:,} users x {items:,} items: scoring {e2e['score_seconds']:,.0f}s + "
                f"load {e2e['load_seconds']:,.0f}s = {e2e['total_seconds']:,.0f}s. "
                f"Notebook lists reproduced by ours: {s['agreement']['identical_lists']}/"
                f"{s['agreement']['users_compared']}.")
    return "\n".join(rows)

