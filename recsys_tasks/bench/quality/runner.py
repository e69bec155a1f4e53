"""``python -m recsys_tasks bench-quality``: MovieLens-100K imported, split by time, run through every pipeline
stage into a throwaway Redis, and the lists read back with JSON.GET judged on the test days beside the peers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...runtime import get_logger, load_average
from .dataset import fetch_ml100k
from .evaluation import RATING_THRESHOLD, evaluate_methods, published_lists, tune_and_rank_peers
from .split import TimeSplit, time_split

log = get_logger("bench_quality")

PIPELINE_STAGES = ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate")
USER_FEATURES = {"age:token": "age:continuous", "gender:token": "gender", "occupation:token": "occupation"}
# ``class:token_seq`` is a movie's space-separated genres (849 of the 1,682 movies have several).
ITEM_FEATURES = {"release_year:token": "release_year", "class:token_seq": "genres:multi"}
FEATURE_SETS = ("declared", "no-genres", "ids")


def load_ratings(data_dir: Path, users: int, seed: int) -> Any:
    """The ratings (``user_id, item_id, rating, timestamp, day``), optionally a seeded sample of ``users`` users."""
    import pandas as pd

    frame = pd.read_csv(data_dir / "ml-100k.inter", sep="\t")
    frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    if users:
        everyone = np.sort(frame["user_id"].unique())
        chosen = np.random.default_rng(seed).choice(everyone, size=min(users, len(everyone)), replace=False)
        frame = frame[frame["user_id"].isin(chosen)].reset_index(drop=True)
    frame["day"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True).dt.date
    return frame


def import_split(ratings: Any, data_dir: Path, work: Path, features: str) -> dict[str, Any]:
    """The sampled ratings written as RecBole's file again and brought in by the real importer, with the
    user and item tables' features of ``features`` (one of :data:`FEATURE_SETS`)."""
    from ...data.importer import FeatureTable, ImportSpec, import_interactions

    item_features = {"declared": ITEM_FEATURES, "ids": {},
                     "no-genres": {k: v for k, v in ITEM_FEATURES.items() if not v.endswith(":multi")}}[features]
    source = work / "ml-100k.inter"
    ratings[["user_id", "item_id", "rating", "timestamp"]].to_csv(
        source, sep="\t", index=False, header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    spec = ImportSpec(
        interactions=source, root=work / "partitions", user_col="user_id:token", item_col="item_id:token",
        time_col="timestamp:float", rating_col="rating:float", rating_threshold=RATING_THRESHOLD,
        users=FeatureTable(data_dir / "ml-100k.user", "user_id:token", USER_FEATURES) if item_features else None,
        items=FeatureTable(data_dir / "ml-100k.item", "item_id:token", item_features) if item_features else None,
    )
    return import_interactions(spec)


def pipeline_config(imported: dict[str, Any], split: TimeSplit, work: Path, overrides: dict[str, str]) -> Any:
    from ...config import Config

    settings = {
        **imported["settings"],
        "artifact_root": str(work / "artifacts"),
        "data.end_date": split.valid[1].isoformat(),
        "data.window_days": split.window_days,
        "data.valid_days": split.valid_days,
        # The bench measures the lists whatever the gate says; its verdict is recorded beside them.
        "quality.force_publish": True,
        "evaluate.plots": False,
    }
    return Config().with_overrides({**settings, **overrides}, origin="bench-quality")


def run_pipeline(config: Any, run_dir: Path, eval_users: np.ndarray) -> dict[str, Any]:
    """Every stage, the load into a throwaway local Redis, then each user's document read back (JSON.GET,
    the fallback for users without one, as :func:`recsys_tasks.store.fetch` serves applications)."""
    from ...ops.local_redis import LocalRedis, free_port
    from ...stages import run_stage
    from ...store import fetch

    seconds = {}
    for name in PIPELINE_STAGES:
        seconds[name] = run_stage(name, config, run_dir)["seconds"]
    server = LocalRedis(port=free_port(), directory=run_dir.parent / "redis").start()
    try:
        client = server.client()
        logical_date = f"{config.data.end_date}T23:59:59+00:00"
        load = run_stage("load_redis", config, run_dir, redis_client=client, run_id="bench-quality",
                         logical_date=logical_date)
        seconds["load_redis"] = load["seconds"]
        documents = {int(u): fetch(client, int(u), config.store) for u in eval_users}
        fallback = fetch(client, -1, config.store)
    finally:
        server.stop()
    gate = load.get("quality_gate", {})
    return {"seconds": seconds, "documents": documents, "fallback": fallback,
            "gate": {"passed": gate.get("passed"), "forced": gate.get("forced"),
                     "checks": gate.get("checks", gate.get("failed"))},
            "published_users": load.get("users")}


def retrieval_order(run_dir: Path, train_clicks: Any, users: np.ndarray, fallback: list[int], n: int) -> np.ndarray:
    """The Two-Tower's own top ``n`` from the run's exported embeddings (what scoring re-ranks), training clicks
    excluded as scoring excludes them; users without an embedding get the published fallback list."""
    import pandas as pd

    from ...paths import RunPaths

    paths = RunPaths(run_dir)
    user_table = pd.read_parquet(paths.user_features, columns=["user_id", "user_id_raw"])
    item_table = pd.read_parquet(paths.item_features, columns=["item_id", "item_id_raw"])
    user_vectors = pd.read_parquet(paths.user_embeddings).set_index("user_id").loc[user_table["user_id"]].to_numpy()
    item_vectors = pd.read_parquet(paths.item_embeddings).set_index("item_id").loc[item_table["item_id"]].to_numpy()
    row_of_user = dict(zip(user_table["user_id_raw"].to_numpy().tolist(), range(len(user_table))))
    item_raw = item_table["item_id_raw"].to_numpy()
    seen = train_clicks.groupby("user_id")["item_id"].apply(set).to_dict()
    lists = np.full((len(users), n), -1, dtype=np.int64)
    for position, user in enumerate(users):
        row = row_of_user.get(int(user))
        if row is None:
            chosen = np.asarray(fallback[:n], dtype=np.int64)
        else:
            scores = item_vectors @ user_vectors[row]
            order = item_raw[np.argsort(-scores, kind="stable")]
            excluded = seen.get(int(user), set())
            chosen = np.asarray([i for i in order if i not in excluded][:n], dtype=np.int64)
        lists[position, :len(chosen)] = chosen
    return lists


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:

    started = time.perf_counter()
    data_dir = fetch_ml100k(args.data_dir)
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    ratings = load_ratings(data_dir, args.users, args.seed)
    split = time_split(ratings["day"].to_numpy(), args.valid_fraction, args.test_fraction)
    ratings["part"] = split.part_of(ratings["day"].to_numpy())
    imported = import_split(ratings, data_dir, work, args.features)
    config = pipeline_config(imported, split, work, dict(args.overrides))
    if config.scoring.top_n < max(args.cutoffs):
        raise SystemExit(f"scoring.top_n={config.scoring.top_n} is shorter than the cut-off {max(args.cutoffs)}")
    peers = tune_and_rank_peers(ratings, args.top_n, args.quick, args.seed)
    test_users = peers["test_users"]
    pipeline = run_pipeline(config, work / "run", test_users)
    # The retrieval order excludes what scoring excludes (scoring.exclude): training clicks, or every rating.
    train = ratings[ratings["part"] == "train"]
    train_clicks = train if config.scoring.exclude == "interacted" else train[train["rating"] >= RATING_THRESHOLD]
    fallback = pipeline["fallback"]["recommendations"] if pipeline["fallback"] else []
    lists = {
        "published": published_lists(pipeline["documents"], test_users, args.top_n),
        "retrieval_order": retrieval_order(work / "run", train_clicks, test_users, fallback, args.top_n),
        **peers["lists"],
    }
    results = evaluate_methods(lists, peers["relevant"], peers["catalog_size"], args.cutoffs, peers["rated"])
    fallback_users = sum(bool(d and d.get("fallback")) for d in pipeline["documents"].values())
    return {
        "benchmark": "bench-quality",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command_line,
        "loadavg_start": args.loadavg_start, "loadavg_end": load_average(),
        "seconds": round(time.perf_counter() - started, 1),
        "data": {"dataset": "MovieLens-100K (recbole 1.2.1 wheel)", "ratings": int(len(ratings)),
                 "users": int(ratings["user_id"].nunique()), "items": int(ratings["item_id"].nunique()),
                 "click": f"rating >= {RATING_THRESHOLD:g}; every rating an impression",
                 "features": imported["settings"], "empty_days": imported["empty_days"]},
        "split": {**split.describe(ratings["day"].to_numpy()), "kind": "global time split by whole UTC days",
                  "valid_fraction": args.valid_fraction, "test_fraction": args.test_fraction},
        "protocol": {
            "test_users": int(len(test_users)),
            "test_users_rule": "a test click on an item not rated before the test days, and a rating before them",
            "relevant": "test clicks on items the user had not rated before the test days",
            "peers": "fit on train clicks, tuned on validation NDCG@10, refit on train + validation clicks; "
                     "every item rated before the test days excluded",
            "published": "JSON.GET of each test user's document, the fallback list for users without one "
                         f"({fallback_users} of {len(test_users)} users)",
            "retrieval_order": "the run's exported Two-Tower embeddings, with scoring.exclude's exclusion (as scoring)",
            "catalog_size": peers["catalog_size"],
        },
        "pipeline": {"settings": {k: v for k, v in config.to_dict().items() if k in ("data", "retrieval", "ranking",
                                                                                      "scoring", "quality")},
                     "stage_seconds": pipeline["seconds"], "quality_gate": pipeline["gate"]},
        "peer_settings": peers["settings"],
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import os
    import sys

    from ...config import parse_set_pairs
    from .report import write_report

    parser = argparse.ArgumentParser(prog="python -m recsys_tasks bench-quality", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-quality"),
                        help="output directory (git-ignored: its work/ holds the imported MovieLens data)")
    parser.add_argument("--data-dir", type=Path, help="ML-100K cache (default $RECSYS_DATA_CACHE/ml-100k or "
                        "~/.cache/recsys_tasks/ml-100k); fetched from the recbole wheel when absent")
    parser.add_argument("--users", type=int, default=0, help="a seeded sample of this many users (0: all 943)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="interactions in the validation days")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="interactions in the test days")
    parser.add_argument("--features", choices=FEATURE_SETS, default="declared",
                        help="declared: age (continuous), gender, occupation, release year (categorical), genres "
                             "(multi-valued); no-genres: the same without genres; ids: none")
    parser.add_argument("--quick", action="store_true", help="the test suite's variant: small peer grids")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline config override, e.g. --set retrieval.epochs=2 (repeatable)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # redis-server changes directory before opening its files
    args.overrides = parse_set_pairs(args.set)
    args.top_n, args.cutoffs = 20, [10, 20]
    args.command_line = "python -m recsys_tasks bench-quality " + " ".join(sys.argv[2:] if argv is None else argv)
    args.loadavg_start = list(os.getloadavg())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_benchmark(args)
    files = write_report(result, args.out)
    print((args.out / "report.md").read_text())
    print(json.dumps(files))
    return 0
