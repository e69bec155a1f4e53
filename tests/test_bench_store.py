"""``bench-store`` at a tiny size: a real 3-master cluster, a real single Redis, real redis-benchmark runs.

Checks that every rate and CPU figure is measured (positive, from the processes that did the work)
and that the ratios in the JSON are the ones the table prints.
"""

from __future__ import annotations

import json
import shutil
import statistics

import pytest

from recsys_tasks.bench import store_load as bench_store

pytestmark = pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark not installed")


def test_bench_store_measures_rates_and_cpu(tmp_path):
    out = tmp_path / "bench_store.json"
    assert bench_store.main(["--users", "20000", "--repeats", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rates = results["median_keys_per_s"]
    for name in ("cluster", "single", "cluster_unconfirmed", "single_unconfirmed", "redis_py_cluster",
                 "redis_py_single", "redis_benchmark_cluster", "redis_benchmark_cluster_expire",
                 "redis_benchmark_single", "redis_benchmark_cluster_same_commands"):
        assert rates[name] > 0, name
    assert results["runs"]["cluster"][0]["users"] == 20000
    # Both commands per key cost more than either alone.
    assert rates["redis_benchmark_cluster_same_commands"] < min(rates["redis_benchmark_cluster"],
                                                                 rates["redis_benchmark_cluster_expire"])
    cpu = results["median_cpu_us_per_key"]
    for name in ("cluster", "single", "redis_benchmark_cluster", "redis_benchmark_single"):
        # The servers parse every JSON.SET (20,000 EXPIREs may take less than one 10 ms clock tick).
        assert cpu[name]["servers"] > 0, name
    for name in ("cluster", "single"):  # our client validates and encodes every document
        assert cpu[name]["client"] > 0, name
    assert results["cluster_vs_single"] == round(rates["cluster"] / rates["single"], 3)
    assert results["cluster_vs_redis_benchmark_same_commands"] == round(
        rates["cluster"] / rates["redis_benchmark_cluster_same_commands"], 3)
    assert f"cluster/single {results['cluster_vs_single']:.2f}" in results["markdown"]
    # The cost of the fence, WAIT and the read-back, and redis-py doing the same work, in the same run.
    for name in ("cluster", "single"):  # the median of each repeat's ratio (the pair runs back to back)
        pairs = zip(results["runs"][name], results["runs"][f"{name}_unconfirmed"])
        assert results[f"confirmed_vs_unconfirmed_{name}"] == round(
            statistics.median(a["keys_per_s"] / b["keys_per_s"] for a, b in pairs), 3)
    assert results["cluster_vs_redis_py"] == round(rates["cluster"] / rates["redis_py_cluster"], 3)
    assert f"confirmed/unconfirmed {results['confirmed_vs_unconfirmed_cluster']:.2f}" in results["markdown"]
    assert results["runs"]["redis_py_cluster"][0]["users"] == 20000 and results["replicas"] == 1
    assert "EXPIRE" in results["markdown"]
