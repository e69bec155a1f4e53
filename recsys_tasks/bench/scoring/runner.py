"""``python -m recsys_tasks bench``: our scoring and loading, side by side with the notebook's method and plain limits.

On one set of inputs (same models, users, candidate count and Redis server) it measures: scoring
(the notebook's per-user method on a sample of users vs our ``score`` stage on all users, at the
notebook's K=20 and at our default K), ranking (our step vs plain batched ``model.predict``),
retrieval (ours vs plain ``tf.matmul`` + ``tf.math.top_k``), Redis loading (the notebook's one
awaited ``JSON.SET`` per key vs ``store.write_documents`` vs ``redis-benchmark -P 64``), peak memory
of scoring at two user counts, and the end-to-end time of scoring + load. It prints a Markdown
table and writes the same numbers to a JSON file.

The inputs are synthetic at the requested scale (the data generator's output cannot reach a million
users on two cores in reasonable time, and random clicks carry no signal anyway): feature tables with
realistic cardinalities, Gaussian user and item embeddings of the Two-Tower's size (64), a few seen
clicks per user, and a DLRM built by the project's own ``build_dlrm`` and trained for one epoch on
random impressions. Speed does not depend on what the weights learnt; the shapes are those of a real
run. ``--run-dir`` benchmarks an existing pipeline run's trained models instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import Config
from ...paths import RunPaths
from ...runtime import get_logger, load_average, quiet_tensorflow
from ..common import NOTEBOOK_K
from ..redis_load import measure_redis
from .approximate import list_overlap_files, measure_approximate, measure_large_catalog
from .children import _child_score, run_scoring_child
from .inputs import build_scale_run, subset_run
from .kernels import measure_ranking, measure_retrieval
from .notebook import compare_lists, measure_notebook_scoring
from .report import markdown_table

log = get_logger("bench")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    quiet_tensorflow()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.run_dir:
        # A copy of the run's user side (items and models linked), so scoring never touches the run itself.
        source = RunPaths(Path(args.run_dir).resolve())
        import pyarrow.parquet as pq

        available = pq.read_metadata(source.user_features).num_rows
        main_run = subset_run(source, work / "main_run", min(args.run_dir_users or available, available))
    elif args.resume and RunPaths(work / "scale_run").dlrm.exists():
        main_run = RunPaths(work / "scale_run")
    else:
        main_run = build_scale_run(work / "scale_run", args.users, args.items, seed=args.seed)
    import pyarrow.parquet as pq

    num_users = pq.read_metadata(main_run.user_features).num_rows
    num_items = pq.read_metadata(main_run.item_features).num_rows
    small_users = min(args.memory_users, num_users)
    def subset(name: str, users: int) -> RunPaths:
        # --resume reuses a subset an interrupted run already made (its models are links to the main run's).
        done = RunPaths(work / name)
        if args.resume and done.user_features.exists() and pq.read_metadata(done.user_features).num_rows == users:
            return done
        return subset_run(main_run, work / name, users)

    small_run = subset("small_run", small_users)
    results: dict[str, Any] = {"inputs": {"users": num_users, "items": num_items, "synthetic": not args.run_dir,
                                          "cpu_count": os.cpu_count(), "chunk_users": args.chunk_users,
                                          "rank_batch_rows": args.rank_batch_rows, "loadavg_start": load_average()}}

    out = Path(args.out)

    def checkpoint() -> None:
        # Partial results survive a long run that is interrupted (and --resume picks them up).
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str))

    from ...scoring.candidates import exact_kernel

    # Exact retrieval for every run but the approximate one: `auto` would switch to an index on a large catalog.
    exact = exact_kernel()

    def child(run: RunPaths, top_k: int, top_n: int, name: str, kernel: str = exact) -> dict[str, Any]:
        target = work / f"score_{name}.json"
        if args.resume and target.exists():
            return json.loads(target.read_text())
        return run_scoring_child(run.root, top_k, top_n, args.chunk_users, args.rank_batch_rows, target, kernel)

    # Scoring at the notebook's K and at ours, each a real `score` run in a child process (the child's
    # peak RSS is the memory figure); the K=20 run's lists are compared with the notebook method's.
    # The longest run (all users at our K) goes last, so everything else is measured by then.
    k20_users = min(args.k20_users or num_users, num_users)
    k20_run = subset("k20_run", k20_users)
    ours_k20 = child(k20_run, NOTEBOOK_K, NOTEBOOK_K, "k20")
    small = child(small_run, args.top_k, args.top_n, "small")
    notebook = measure_notebook_scoring(main_run, args.notebook_users)
    agreement = compare_lists(notebook.pop("lists"), k20_run.recommendations)
    results["scoring"] = {"notebook": notebook, "ours_k20": ours_k20, "agreement": agreement,
                          "ratio_k20": round(ours_k20["users_per_s"] / notebook["users_per_s"], 1)}
    # The same K=N=20 scoring with approximate retrieval: its final lists against the exact run's.
    ann_run = subset("k20_ann_run", k20_users)
    ours_ann = child(ann_run, NOTEBOOK_K, NOTEBOOK_K, "k20_ann", args.ann_kernel)
    ours_ann["overlap_with_exact"] = list_overlap_files(ann_run.recommendations, k20_run.recommendations)
    ours_ann["retrieval_kernel"] = args.ann_kernel
    results["scoring"]["ours_k20_approximate"] = ours_ann
    results["scoring"]["ratio_k20_approximate"] = round(ours_ann["users_per_s"] / notebook["users_per_s"], 1)
    checkpoint()
    results["ranking"] = measure_ranking(main_run, args.ranking_users, args.top_k, args.rank_batch_rows)
    results["retrieval"] = measure_retrieval(main_run, args.retrieval_users, args.top_k, args.chunk_users)
    checkpoint()
    results["approximate"] = measure_approximate(main_run, args.ann_users, (NOTEBOOK_K, args.top_k), args.top_n,
                                                 args.chunk_users, args.rank_batch_rows)
    checkpoint()
    if args.large_catalog_items:
        results["large_catalog"] = measure_large_catalog(args.large_catalog_items, args.large_catalog_users,
                                                         args.top_k, args.chunk_users)
        checkpoint()
    results["memory"] = {"small": {"users": small_users, "peak_rss_mb": small["peak_rss_mb"]}}
    checkpoint()

    ours_default = child(main_run, args.top_k, args.top_n, "default")
    results["scoring"]["ours_default"] = ours_default
    results["scoring"]["ratio_default"] = round(ours_default["users_per_s"] / notebook["users_per_s"], 1)
    results["memory"]["large"] = {"users": num_users, "peak_rss_mb": ours_default["peak_rss_mb"]}
    results["memory"]["ratio"] = round(ours_default["peak_rss_mb"] / small["peak_rss_mb"], 3)
    checkpoint()

    server = None
    url = args.redis_url
    if not url:
        from ...ops.local_redis import LocalRedis, free_port

        server = LocalRedis(free_port(), work / "redis").start()
        url = server.url
    try:
        results["redis"] = measure_redis(url, main_run.recommendations, args.notebook_keys,
                                         args.redis_benchmark_requests, args.pipeline_chunk_keys)
    finally:
        if server is not None:
            server.stop()
    results["end_to_end"] = {
        "score_seconds": ours_default["seconds"],
        "load_seconds": results["redis"]["ours_load_seconds"],
        "total_seconds": round(ours_default["seconds"] + results["redis"]["ours_load_seconds"], 1),
    }
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    results["inputs"]["loadavg_end"] = load_average()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="synthetic users (all are scored)")
    parser.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    parser.add_argument("--run-dir", help="benchmark this pipeline run's models and tables instead of synthetic ones")
    parser.add_argument("--run-dir-users", type=int, default=0,
                        help="with --run-dir: score only the first this many users (default: all)")
    parser.add_argument("--work-dir", default="bench_work", help="synthetic inputs and outputs go here")
    parser.add_argument("--out", default="bench.json", help="the JSON results file")
    parser.add_argument("--redis-url", default="", help="Redis with RedisJSON (default: start a local one)")
    parser.add_argument("--memory-users", type=int, default=100_000, help="the smaller user count for peak memory")
    parser.add_argument("--k20-users", type=int, default=0,
                        help="users our stage scores at the notebook's K=20 (default: all; the rate is per user)")
    parser.add_argument("--notebook-users", type=int, default=200, help="users scored by the notebook's method")
    parser.add_argument("--notebook-keys", type=int, default=20_000, help="keys written by the notebook's method")
    parser.add_argument("--ranking-users", type=int, default=4096, help="users whose K pairs the ranking test scores")
    parser.add_argument("--retrieval-users", type=int, default=16_384, help="users in the retrieval comparison")
    parser.add_argument("--redis-benchmark-requests", type=int, default=1_000_000)
    parser.add_argument("--top-k", type=int, default=defaults.scoring.top_k)
    parser.add_argument("--top-n", type=int, default=defaults.scoring.top_n)
    parser.add_argument("--chunk-users", type=int, default=defaults.scoring.user_chunk_size)
    parser.add_argument("--rank-batch-rows", type=int, default=defaults.scoring.rank_batch_rows)
    parser.add_argument("--pipeline-chunk-keys", type=int, default=defaults.store.pipeline_chunk_keys)
    parser.add_argument("--ann-kernel", default=defaults.scoring.ann_kernel, choices=["ivf", "hnsw"],
                        help="the approximate kernel of the K=N=20 approximate scoring run")
    parser.add_argument("--ann-users", type=int, default=16_384,
                        help="users in the approximate-vs-exact retrieval comparison")
    parser.add_argument("--large-catalog-items", type=int, default=1_000_000,
                        help="synthetic catalog size for approximate vs exact retrieval only (0: skip)")
    parser.add_argument("--large-catalog-users", type=int, default=4096, help="users queried on that catalog")
    parser.add_argument("--approximate-only", action="store_true",
                        help="with --run-dir: measure only approximate vs exact retrieval on that run's embeddings")
    parser.add_argument("--large-catalog-kinds", default="ivf,hnsw", help="index kinds measured on that catalog")
    parser.add_argument("--large-catalog-only", action="store_true",
                        help="measure only approximate vs exact retrieval on the large synthetic catalog")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resume", action="store_true",
                        help="reuse the work directory's inputs and finished scoring runs from an interrupted run")
    parser.add_argument("--child-score", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--child-kernel", default="auto", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child_score:
        _child_score(Path(args.child_score), args.top_k, args.top_n, args.chunk_users, args.rank_batch_rows,
                     Path(args.child_out), args.child_kernel)
        return 0
    start_load = load_average()
    if args.approximate_only:
        # Approximate vs exact retrieval on a run's embeddings alone (list overlap too when it has a DLRM).
        from .report import approximate_rows

        results = {"approximate": measure_approximate(RunPaths(Path(args.run_dir)), args.ann_users,
                                                      (NOTEBOOK_K, args.top_k), args.top_n, args.chunk_users,
                                                      args.rank_batch_rows),
                   "loadavg_start": start_load, "loadavg_end": load_average()}
        table = "\n".join(approximate_rows(results["approximate"]))
    elif args.large_catalog_only:
        # Retrieval on a large synthetic catalog alone (no models needed): its own JSON and table rows.
        from .report import large_catalog_rows

        results = {"large_catalog": measure_large_catalog(args.large_catalog_items, args.large_catalog_users,
                                                          args.top_k, args.chunk_users,
                                                          kinds=tuple(args.large_catalog_kinds.split(","))),
                   "loadavg_start": start_load, "loadavg_end": load_average()}
        table = "\n".join(large_catalog_rows(results["large_catalog"]))
    else:
        results = run_bench(args)
        table = markdown_table(results)
    results["markdown"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(table)
    print(f"\nresults written to {out}")
    return 0

