"""``python -m recsys_tasks <stage> --run-dir DIR``: every stage runnable without Airflow.

``run`` runs all seven stages in order; ``fetch USER_ID`` prints one published document;
``make-partitions --root DIR --start YYYY-MM-DD --days N`` writes planted daily partitions;
``import-interactions FILE --root DIR ...`` writes your own interactions as daily partitions
(``docs/input-data.md``); ``bench-quality`` measures the published lists against classic recommenders on
MovieLens-100K (``docs/benchmark-quality.md``); ``bench``
measures scoring and loading against the notebook's method (``python -m recsys_tasks bench --help``);
``bench-store`` the load into a Redis Cluster vs one Redis vs ``redis-benchmark --cluster``;
``bench-pipeline`` runs the whole DAG at a preset size or a sweep of sizes, measured task by task. Redis is
reached through ``--redis-url`` (default: the ``RECSYS_REDIS_URL`` environment variable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import STAGES
from .config import Config, ConfigError, load_config, parse_set_pairs
from .stages import run_stage

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis(url: str, config: Config) -> Any:
    """A client for ``url`` (``redis+cluster://`` / ``rediss+cluster://``: a Redis Cluster), every wait bounded."""
    from .store.connect import connect

    return connect(url, config.store)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a configuration error prints one line naming the key (exit status 2), a store or
    connection failure one line naming the problem (exit status 1); ``--debug`` shows the traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main([a for a in argv if a != "--debug"])
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if "--debug" in argv or not _one_line_error(exc):
            raise
        print(f"error: {type(exc).__name__}: {exc} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _one_line_error(exc: BaseException) -> bool:
    """Store errors and connection failures are told in one line; anything else is a bug: its traceback."""
    import redis
    from redis.exceptions import RedisClusterException

    from .store.errors import StoreError

    return isinstance(exc, (StoreError, redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError,
                            RedisClusterException))


def _main(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        from .bench.scoring.runner import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["bench-store"]:
        from .bench.store_load import main as bench_store_main

        return bench_store_main(argv[1:])
    if argv[:1] == ["import-interactions"]:
        from .data.importer import main as import_main

        return import_main(argv[1:])
    if argv[:1] == ["bench-quality"]:
        from .bench.quality.runner import main as bench_quality_main

        return bench_quality_main(argv[1:])
    if argv[:1] == ["bench-pipeline"]:
        from .bench.pipeline import main as bench_pipeline_main

        return bench_pipeline_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks", description=__doc__)
    parser.add_argument("command", choices=[*STAGES, "run", "fetch", "show", "make-partitions"])
    parser.add_argument("user_id", nargs="?", type=int, help="raw user id (fetch only)")
    parser.add_argument("--run-dir", type=Path, help="the run's artifact directory")
    parser.add_argument("--config", type=Path, help="YAML file with config overrides")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set scoring.top_k=50 (repeatable)")
    parser.add_argument("--redis-url", default=os.environ.get("RECSYS_REDIS_URL", DEFAULT_REDIS_URL),
                        help="redis://host:port/db (rediss:// for TLS); a Redis Cluster: redis+cluster://host:port")
    parser.add_argument("--run-id", help="run id written into the documents (default: the one this run directory "
                        "was loaded with before, else the directory's name)")
    parser.add_argument("--logical-date", help="logical date of the run (default: the one this run directory was "
                        "loaded with before, else now); a load older than the published run is skipped unless --force")
    parser.add_argument("--force", action="store_true",
                        help="load_redis: publish even over a newer run (the rollback); same as --set store.force=true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a store or connection error")
    parser.add_argument("--dag-id", default="offline_batch_recsys", help="show: DAG whose runs live under the root")
    parser.add_argument("--expect-logical-date", default="", help="show: fail unless the manifest names this date")
    parser.add_argument("--root", type=Path, help="make-partitions: directory that receives dt=YYYY-MM-DD/ partitions")
    parser.add_argument("--start", help="make-partitions: first day, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=14, help="make-partitions: number of daily partitions (14)")
    parser.add_argument("--rows-per-day", type=int,
                        help="make-partitions: impressions per day (default data.num_rows / data.window_days)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = parse_set_pairs(args.set)
    if args.force:
        overrides["store.force"] = "true"
    config = load_config(args.config, overrides=overrides)
    if args.command == "fetch":
        if args.user_id is None:
            parser.error("fetch needs a USER_ID")
        from .store import fetch

        doc = fetch(_redis(args.redis_url, config), args.user_id, config.store)
        print(json.dumps(doc))
        return 0 if doc is not None else 1
    if args.command == "show":
        return show(config, _redis(args.redis_url, config), args.dag_id, args.expect_logical_date)
    if args.command == "make-partitions":
        if args.root is None or not args.start:
            parser.error("make-partitions needs --root and --start")
        return make_partitions(config, args.root, args.start, args.days, args.rows_per_day)
    if args.run_dir is None:
        parser.error(f"{args.command} needs --run-dir")
    names = STAGES if args.command == "run" else (args.command,)
    client = _redis(args.redis_url, config) if "load_redis" in names else None
    run_id, logical_date = run_identity(args.run_dir, args.run_id, args.logical_date)
    if config.data.partition_root and not config.data.end_date and args.logical_date:
        config = config.with_overrides({"data.end_date": args.logical_date[:10]}, origin="--logical-date")
    for name in names:
        summary = run_stage(name, config, args.run_dir, redis_client=client, run_id=run_id,
                            logical_date=logical_date)
        print(json.dumps(summary, default=str))
    return 0


def make_partitions(config: Config, root: Path, start: str, days: int, rows_per_day: int | None) -> int:
    """Planted impressions of one user/item population written as ``days`` daily partitions under ``root``."""
    import datetime

    from .data.partitions import write_partitions
    from .data.planted import generate_planted

    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")
    try:
        datetime.date.fromisoformat(start)
    except ValueError:
        raise ConfigError(f"--start must be a day written YYYY-MM-DD, got {start!r}") from None
    per_day = rows_per_day or max(config.data.num_rows // config.data.window_days, 1)
    settings = config.with_overrides({"data.num_rows": per_day * days}, origin="--rows-per-day").data
    frame, _ = generate_planted(settings)
    written = write_partitions(frame, root, start, days)
    print(json.dumps({"root": str(root), "partitions": written}))
    return 0


def run_identity(run_dir: Path, run_id: str | None, logical_date: str | None) -> tuple[str, str]:
    """The run id and logical date a load publishes under.

    Unless given, they are those recorded by this run directory's previous load (so reloading an old
    run's artifacts, the rollback, republishes it as the run it was), else the directory's name and now.
    """
    from datetime import datetime, timezone

    from .paths import RunPaths

    previous_file = RunPaths(run_dir).summary("load_redis")
    previous = json.loads(previous_file.read_text()) if previous_file.exists() else {}
    run_id = run_id or previous.get("run_id") or run_dir.resolve().name
    if logical_date is None:
        logical_date = previous.get("logical_date") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return run_id, logical_date


def show(config: Config, client: Any, dag_id: str, expect_logical_date: str) -> int:
    """Print the published run's summary; exit 1 unless the manifest names the expected run."""
    from datetime import datetime

    from .paths import RunPaths, run_dir_for
    from .store import read_manifest

    manifest = read_manifest(client, config.store)
    if manifest is None:
        print(f"no manifest at {config.store.manifest_key}: nothing has been published", file=sys.stderr)
        return 1
    if expect_logical_date and (
        not manifest.get("logical_date")
        or datetime.fromisoformat(manifest["logical_date"]) != datetime.fromisoformat(expect_logical_date)
    ):
        print(f"the manifest names logical date {manifest.get('logical_date')!r}, not {expect_logical_date!r}",
              file=sys.stderr)
        return 1
    paths = RunPaths(run_dir_for(config.artifact_root, dag_id, manifest["run_id"]))
    summaries = {
        name: json.loads(paths.summary(name).read_text()) for name in STAGES if paths.summary(name).exists()
    }
    print(f"run {manifest['run_id']}  ({paths.root})")
    print(f"{'stage':<15}{'device':<8}{'seconds':>9}  result")
    for name, summary in summaries.items():
        print(f"{name:<15}{summary.get('device', ''):<8}{summary.get('seconds', 0):>9.1f}  {_headline(summary)}")
    print(f"manifest {config.store.manifest_key}: {json.dumps(manifest)}")
    return 0


def _headline(summary: dict[str, Any]) -> str:
    stage = summary["stage"]
    if stage == "generate_data":
        return ", ".join(f"{k}: {v['rows']} rows / {v['users']} users" for k, v in summary["splits"].items())
    if stage == "transform":
        return f"rows {summary['rows']}"
    if stage in ("fit_retrieval", "fit_ranking"):
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items())
        extra = f", {summary['users']} users x {summary['items']} items" if "users" in summary else ""
        return f"{metrics}, loss/epoch {summary['loss_per_epoch']}{extra}"
    if stage == "score":
        return (f"{summary['users']} users, K={summary['top_k']} N={summary['top_n']}, "
                f"{summary['users_per_s']} users/s, short lists {summary['short_lists']}")
    if stage == "evaluate":
        retrieval, lists = summary["retrieval"], summary["lists"]
        oracle, k = retrieval.get("oracle"), str(retrieval["cutoffs"][0])
        return (f"recall@{k} model {retrieval['model']['recall'][k]:.4f} / popularity "
                f"{retrieval['popularity']['recall'][k]:.4f} / oracle "
                f"{format(oracle['recall'][k], '.4f') if oracle else 'n/a'}, AUC {summary['ranking']['auc']:.4f}, "
                f"coverage {lists['catalog_coverage']:.3f}, report {summary.get('report_md', summary['report_json'])}")
    if stage == "load_redis":
        if not summary.get("published", True):
            return f"not published: {summary.get('reason', '')}"
        return (f"{summary['users']} documents, {summary['keys_per_s']} keys/s, ~{summary['avg_document_bytes']} B "
                f"each, ~{summary.get('redis_bytes_per_user', '?')} B/user in Redis")
    return ""


if __name__ == "__main__":
    sys.exit(main())
