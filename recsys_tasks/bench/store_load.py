"""``python -m recsys_tasks bench-store``: the load into a Redis Cluster vs one Redis vs ``redis-benchmark --cluster``.

On one machine and one set of synthetic documents (``--users`` users, ``--top-n`` items each, the
pipeline's document shape), it starts a local Redis and a local Redis Cluster (``--masters``
masters, ``--replicas`` replicas each, RedisJSON on every node) and measures, ``--repeats`` times
in turn (the median is reported):

- ours into the cluster: ``store.publish`` (validation, lock, capacity pre-flight, the fences claimed,
  fenced writes grouped by slot owner, ``WAIT``, the read-back, fallback, manifest); keys/s of the write
  phase (claim, writes, ``WAIT`` and read-back);
- ours into the single Redis, the same load;
- both again with the durability of issue 22 switched off (``fenced_writes``, ``verify_writes`` and
  ``min_replicas_acked=0``: plain ``JSON.SET`` + ``EXPIRE``, no ``WAIT``, no read-back), so the cost of
  the fence, ``WAIT`` and the read-back is a ratio measured in one run: each repeat runs the two back
  to back, and the ratio is the median of the repeats' ratios (target: the default keeps >= 70%);
- a redis-py ``pipeline(transaction=False)`` / ``ClusterPipeline`` doing the same work (``json.dumps`` of each
  document, ``JSON.SET`` + ``EXPIRE`` per key, executed every ``--pipeline-chunk-keys`` keys);
- ``redis-benchmark --cluster -P 64`` of ``JSON.SET`` with a typical document of this run against the
  cluster (one command per key, no ``EXPIRE``): what the servers take at most from a C client;
- ``redis-benchmark --cluster -P 64`` of ``EXPIRE`` on the keys it just wrote, so that
  ``1 / (1/JSON.SET + 1/EXPIRE)`` is what a C client reaches sending the same two commands per key as ours.

Beside every rate, the CPU microseconds spent per key by the client (ours: this process during the write
phase, ``write_documents`` run once more alone; redis-benchmark: the child process) and by the servers
(the masters' CPU times): on a machine whose cores the client and the servers share, this
shows what the rate is bound by.

Targets: cluster >= 75% of ``redis-benchmark --cluster``; cluster within 20% of the single
node's keys/s. Every figure is printed as a markdown table and written to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import StoreConfig

BENCH = StoreConfig(key_prefix="BENCH:U:", manifest_key="BENCH:MANIFEST", lock_key="BENCH:LOCK",
                    fallback_key="BENCH:FALLBACK", ttl_s=3600)
# The load as it was before issue 22: plain JSON.SET + EXPIRE, no WAIT, no read-back.
UNCONFIRMED = {"fenced_writes": False, "verify_writes": False, "min_replicas_acked": 0}
PIPELINE = 64


def synthetic_recommendations(path: Path, users: int, top_n: int, seed: int) -> Path:
    """``users`` lists of ``top_n`` items with float32 scores, as the 'score' stage writes them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    items = rng.integers(0, 100_000, size=(users, top_n))
    scores = -np.sort(-rng.random((users, top_n)).astype(np.float32), axis=1)
    offsets = pa.array(np.arange(0, users * top_n + 1, top_n, dtype=np.int32))
    table = pa.table({
        "user_id": pa.array(np.arange(users, dtype=np.int64) * 7 + 1),
        "recommendations": pa.ListArray.from_arrays(offsets, pa.array(items.ravel())),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel())),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def delete_bench_keys(client: Any) -> None:
    from ..store.resilience import is_cluster

    nodes = ([client.get_redis_connection(n) for n in client.get_primaries()] if is_cluster(client) else [client])
    for node in nodes:  # one key per UNLINK: a cluster node refuses several keys of different slots
        pipe = node.pipeline(transaction=False)
        for key in node.scan_iter(match="BENCH:*", count=10_000):
            pipe.unlink(key)
            if len(pipe) >= 5_000:
                pipe.execute()
        pipe.execute()


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds consumed so far by the processes ``pids``."""
    import psutil

    return sum(t.user + t.system for t in (psutil.Process(pid).cpu_times() for pid in pids))


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_key_us(cpu_s: float, keys: int) -> float:
    return round(1e6 * cpu_s / max(keys, 1), 3)


def measure_ours(client: Any, path: Path, chunk_keys: int, server_pids: Sequence[int],
                 confirmed: bool = True) -> dict[str, Any]:
    """``store.publish`` (its write phase's keys/s, as the stage reports it), then the write phase alone
    (``write_documents``, the same code) once more with the CPU time of this process and of the masters."""
    import dataclasses

    from ..store import publish
    from ..store.writer import write_documents

    settings = dataclasses.replace(BENCH, pipeline_chunk_keys=chunk_keys, **({} if confirmed else UNCONFIRMED))
    delete_bench_keys(client)
    started = time.perf_counter()
    summary = publish(client, path, settings, run_id="bench", logical_date="", generated_at="2026-01-01T00:00:00+00:00")
    total_s = time.perf_counter() - started
    delete_bench_keys(client)
    fields = {"run_id": "bench", "logical_date": "", "generated_at": "2026-01-01T00:00:00+00:00"}
    servers_before, client_before = process_cpu_s(server_pids), time.process_time()
    written = write_documents(client, path, settings, fields)["written"]
    client_cpu, servers_cpu = time.process_time() - client_before, process_cpu_s(server_pids) - servers_before
    delete_bench_keys(client)
    return {"keys_per_s": summary["keys_per_s"], "users": summary["users"], "load_seconds": round(total_s, 2),
            "avg_document_bytes": summary["avg_document_bytes"],
            "client_cpu_us_per_key": per_key_us(client_cpu, written),
            "servers_cpu_us_per_key": per_key_us(servers_cpu, written)}


def measure_redis_py_pipeline(client: Any, path: Path, chunk_keys: int, server_pids: Sequence[int]) -> dict[str, Any]:
    """The same documents written the textbook way: ``json.dumps`` per user, then a redis-py
    ``pipeline(transaction=False)`` (a ``ClusterPipeline`` on a cluster) of ``JSON.SET`` + ``EXPIRE`` per key,
    executed every ``chunk_keys`` keys (issue 21's baseline)."""
    import pyarrow.parquet as pq

    from ..store.keys import build_document, user_key

    delete_bench_keys(client)
    servers_before, client_before = process_cpu_s(server_pids), time.process_time()
    started, written = time.perf_counter(), 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_keys,
                                                   columns=["user_id", "recommendations", "scores"]):
        pipe = client.pipeline(transaction=False)
        for row in batch.to_pylist():
            key = user_key(BENCH, row["user_id"])
            document = build_document(row["user_id"], row["recommendations"], row["scores"], run_id="bench",
                                      logical_date="", generated_at="2026-01-01T00:00:00+00:00")
            pipe.execute_command("JSON.SET", key, "$", json.dumps(document, separators=(",", ":")))
            pipe.expire(key, BENCH.ttl_s)
        pipe.execute()
        written += batch.num_rows
    elapsed = time.perf_counter() - started
    client_cpu, servers_cpu = time.process_time() - client_before, process_cpu_s(server_pids) - servers_before
    delete_bench_keys(client)
    return {"keys_per_s": round(written / elapsed, 1), "users": written,
            "client_cpu_us_per_key": per_key_us(client_cpu, written),
            "servers_cpu_us_per_key": per_key_us(servers_cpu, written)}


def measure_redis_benchmark(port: int, command: list[str], requests: int, cluster: bool,
                            server_pids: Sequence[int]) -> dict[str, Any]:
    """``redis-benchmark -P 64`` of ``command`` (its key spelled ``__KEY__``) on ``requests`` random keys."""
    from .redis_load import redis_benchmark_keys_per_s

    key = "BENCH:{tag}:__rand_int__" if cluster else "BENCH:RB:__rand_int__"
    args = [*(["--cluster"] if cluster else []), "-h", "127.0.0.1", "-p", str(port), "-P", str(PIPELINE),
            "-n", str(requests), "-r", str(requests), "--csv",
            *(key if word == "__KEY__" else word for word in command)]
    servers_before, client_before = process_cpu_s(server_pids), children_cpu_s()
    rate = redis_benchmark_keys_per_s(args)
    client_cpu, servers_cpu = children_cpu_s() - client_before, process_cpu_s(server_pids) - servers_before
    return {"keys_per_s": rate, "requests": requests, "pipeline": PIPELINE, "clients": 50,
            "client_cpu_us_per_key": per_key_us(client_cpu, requests),
            "servers_cpu_us_per_key": per_key_us(servers_cpu, requests)}


def paired_ratio(confirmed: list[dict[str, Any]], unconfirmed: list[dict[str, Any]]) -> float:
    """The median over repeats of each repeat's keys/s with the durability over keys/s without (measured back
    to back): less swayed by a shared machine's drifting load than a ratio of the two medians."""
    return round(statistics.median(a["keys_per_s"] / b["keys_per_s"] for a, b in zip(confirmed, unconfirmed)), 3)


def same_commands_rate(json_set: float, expire: float) -> float:
    """Keys/s of sending both commands per key at the two measured rates, one after the other."""
    return round(1.0 / (1.0 / json_set + 1.0 / expire), 1)


def typical_document(path: Path) -> str:
    import pyarrow.parquet as pq

    from ..store.keys import build_document

    row = pq.read_table(path).slice(0, 1).to_pylist()[0]
    return json.dumps(build_document(row["user_id"], row["recommendations"], row["scores"], run_id="bench",
                                     logical_date="", generated_at="2026-01-01T00:00:00+00:00"), separators=(",", ":"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from ..ops.local_redis import LocalCluster, LocalRedis, free_port
    from ..store.fence import slot_tags
    from ..store.keys import _micro_spellings

    _micro_spellings()  # built once per process (~60 ms): not part of any measured load
    slot_tags()  # the fences' hash tags, likewise (~60 ms)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_store_"))
    path = synthetic_recommendations(work / "recommendations.parquet", args.users, args.top_n, args.seed)
    document = typical_document(path)
    single = LocalRedis(free_port(), work / "single").start()
    cluster = LocalCluster(work / "cluster", masters=args.masters, replicas=args.replicas).start()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "cluster", "single", "cluster_unconfirmed", "single_unconfirmed", "redis_py_cluster", "redis_py_single",
        "redis_benchmark_cluster", "redis_benchmark_cluster_expire", "redis_benchmark_single")}
    json_set, expire = ["JSON.SET", "__KEY__", "$", document], ["EXPIRE", "__KEY__", str(BENCH.ttl_s)]
    try:
        single_client = redis.Redis(port=single.port)
        cluster_client = cluster.client()
        masters = [n.pid for n in cluster.nodes if n.client().info("replication")["role"] == "master"]
        info = logging.getLogger("recsys_tasks").info
        for repeat in range(args.repeats):
            info("repeat %d of %d", repeat + 1, args.repeats)
            # Each pair (with and without the durability) back to back, the first of the two alternating
            # by repeat: on a shared machine the load drifts between measurements, and a pair's ratio
            # should see the same drift on both sides.
            for name, target, pids in (("cluster", cluster_client, masters), ("single", single_client, [single.pid])):
                for confirmed in ((True, False) if repeat % 2 == 0 else (False, True)):
                    runs[name if confirmed else f"{name}_unconfirmed"].append(
                        measure_ours(target, path, args.pipeline_chunk_keys, pids, confirmed=confirmed))
            runs["redis_py_cluster"].append(
                measure_redis_py_pipeline(cluster_client, path, args.pipeline_chunk_keys, masters))
            runs["redis_py_single"].append(
                measure_redis_py_pipeline(single_client, path, args.pipeline_chunk_keys, [single.pid]))
            port = cluster.nodes[0].port
            runs["redis_benchmark_cluster"].append(measure_redis_benchmark(port, json_set, args.users, True, masters))
            runs["redis_benchmark_cluster_expire"].append(
                measure_redis_benchmark(port, expire, args.users, True, masters))
            delete_bench_keys(cluster_client)
            runs["redis_benchmark_single"].append(
                measure_redis_benchmark(single.port, json_set, args.users, False, [single.pid]))
            delete_bench_keys(single_client)
    finally:
        cluster.stop()
        single.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(r["keys_per_s"] for r in rs) for name, rs in runs.items()}
    cpu = {name: {side: statistics.median(r[f"{side}_cpu_us_per_key"] for r in rs) for side in ("client", "servers")}
           for name, rs in runs.items()}
    median["redis_benchmark_cluster_same_commands"] = same_commands_rate(
        median["redis_benchmark_cluster"], median["redis_benchmark_cluster_expire"])
    return {
        "users": args.users, "top_n": args.top_n, "document_bytes": len(document), "masters": args.masters,
        "replicas": args.replicas, "repeats": args.repeats, "pipeline_chunk_keys": args.pipeline_chunk_keys,
        "runs": runs, "median_keys_per_s": median, "median_cpu_us_per_key": cpu,
        "cluster_vs_redis_benchmark": round(median["cluster"] / median["redis_benchmark_cluster"], 3),
        "cluster_vs_redis_benchmark_same_commands": round(
            median["cluster"] / median["redis_benchmark_cluster_same_commands"], 3),
        "cluster_vs_single": round(median["cluster"] / median["single"], 3),
        "confirmed_vs_unconfirmed_cluster": paired_ratio(runs["cluster"], runs["cluster_unconfirmed"]),
        "confirmed_vs_unconfirmed_single": paired_ratio(runs["single"], runs["single_unconfirmed"]),
        "cluster_vs_redis_py": round(median["cluster"] / median["redis_py_cluster"], 3),
        "single_vs_redis_py": round(median["single"] / median["redis_py_single"], 3),
    }


def markdown(results: dict[str, Any]) -> str:
    m, cpu = results["median_keys_per_s"], results["median_cpu_us_per_key"]
    ok = {True: "met", False: "not met"}

    def cpu_cells(name: str) -> str:
        return f"{cpu[name]['client']:.2f} | {cpu[name]['servers']:.2f}"

    rows = [
        f"| measure (median of {results['repeats']}) | keys/s | ratio | target | client CPU µs / key | "
        "masters' CPU µs / key |",
        "|---|---:|---:|---|---:|---:|",
        f"| ours into the cluster ({results['masters']} masters, {results['replicas']} replica(s) each): fenced "
        f"writes, WAIT, read-back (the default) | {m['cluster']:,.0f} | | | {cpu_cells('cluster')} |",
        f"| ours into one Redis | {m['single']:,.0f} | cluster/single {results['cluster_vs_single']:.2f} | "
        f">= 0.80: {ok[results['cluster_vs_single'] >= 0.8]} | {cpu_cells('single')} |",
        f"| ours into the cluster without fence, WAIT and read-back (the load before issue 22) | "
        f"{m['cluster_unconfirmed']:,.0f} | confirmed/unconfirmed {results['confirmed_vs_unconfirmed_cluster']:.2f} | "
        f">= 0.70: {ok[results['confirmed_vs_unconfirmed_cluster'] >= 0.7]} | {cpu_cells('cluster_unconfirmed')} |",
        f"| ours into one Redis without fence, WAIT and read-back | {m['single_unconfirmed']:,.0f} | "
        f"confirmed/unconfirmed {results['confirmed_vs_unconfirmed_single']:.2f} | "
        f">= 0.70: {ok[results['confirmed_vs_unconfirmed_single'] >= 0.7]} | {cpu_cells('single_unconfirmed')} |",
        f"| redis-py ClusterPipeline, json.dumps + JSON.SET + EXPIRE per key | {m['redis_py_cluster']:,.0f} | "
        f"ours/redis-py {results['cluster_vs_redis_py']:.2f} | | {cpu_cells('redis_py_cluster')} |",
        f"| redis-py pipeline(transaction=False), one Redis, same work | {m['redis_py_single']:,.0f} | "
        f"ours/redis-py {results['single_vs_redis_py']:.2f} | | {cpu_cells('redis_py_single')} |",
        f"| redis-benchmark --cluster -P {PIPELINE} JSON.SET | {m['redis_benchmark_cluster']:,.0f} | "
        f"cluster/benchmark {results['cluster_vs_redis_benchmark']:.2f} | "
        f">= 0.75: {ok[results['cluster_vs_redis_benchmark'] >= 0.75]} | {cpu_cells('redis_benchmark_cluster')} |",
        f"| redis-benchmark --cluster -P {PIPELINE} EXPIRE | {m['redis_benchmark_cluster_expire']:,.0f} | | | "
        f"{cpu_cells('redis_benchmark_cluster_expire')} |",
        f"| redis-benchmark --cluster, JSON.SET + EXPIRE per key (1/(1/a+1/b) of the two rows above) | "
        f"{m['redis_benchmark_cluster_same_commands']:,.0f} | cluster/benchmark "
        f"{results['cluster_vs_redis_benchmark_same_commands']:.2f} | | | |",
        f"| redis-benchmark -P {PIPELINE} JSON.SET, one Redis | {m['redis_benchmark_single']:,.0f} | | | "
        f"{cpu_cells('redis_benchmark_single')} |",
    ]
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks bench-store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000, help="documents per load")
    parser.add_argument("--top-n", type=int, default=10, help="items per list")
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1,
                        help="replicas per master (same machine); with replicas the confirmed load WAITs for one")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline-chunk-keys", type=int, default=StoreConfig().pipeline_chunk_keys)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", default="", help="keep the inputs and server directories here")
    parser.add_argument("--out", default="bench_store.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run(args)
    results["markdown"] = markdown(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(results["markdown"])
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
