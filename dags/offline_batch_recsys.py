r"""
### Offline batch recommender

Every day, train a retrieval and a ranking model on Ali-CCP-shaped data and publish fresh
recommendations for **every user** to Redis (RedisJSON), where applications read them with one
`JSON.GET USER:<raw user id>` in well under a millisecond.

**Flow** (the Graph view draws it):

1. `generate_data` → `transform`
2. `transform` → `fit_retrieval` (Two-Tower) and `fit_ranking` (DLRM), side by side
3. both → `plan_scoring` → `score` × N (mapped: one task per shard, labelled *shard 0* … *shard N-1*)
4. every shard → `collect_scores` → `evaluate` → `load_redis` (quality gate, then Redis)

| task | what it does | writes (under the run's directory) |
|---|---|---|
| `generate_data` | raw Ali-CCP impressions (train/valid): planted synthetic (default), Merlin's or parquet | `raw/` |
| `transform` | NVTabular workflow (Categorify, raw ids kept, target tagged, Dropna); click subset | `processed/` |
| `fit_retrieval` | Two-Tower (in-batch negatives); full-catalog recall/ndcg; embeddings, query tower | `retrieval/` |
| `fit_ranking` | DLRM; validation AUC; SavedModel | `ranking/` |
| `plan_scoring` | clears earlier parts, records the shard count (`scoring.num_shards`) | `scoring/shards/` |
| `score` | mapped, one per shard of users: top-K, seen dropped, DLRM-ranked, top-N | `scoring/recommendations/` |
| `collect_scores` | after every shard: exactly the planned parts are in, every user once | `summaries/score.json` |
| `evaluate` | recall/ndcg vs popularity and oracle, ranking AUC, list quality, plots | `report.json`, `evaluation/` |
| `load_redis` | quality gate, then pipelined `JSON.SET` + TTL per user, fallback list, manifest key | Redis |
| `prune_runs` | teardown: keeps the newest `retention.keep_runs` run directories | deletes older ones |

`load_redis` updates the Asset `offline_batch_recsys_recommendations` when it publishes (not when it
skips or is refused); `prune_runs` never deletes the published run or one still running.

Each run writes to `<artifact_root>/offline_batch_recsys/<run_id>/`, so scheduled runs, manual
runs and backfills never overwrite each other. `max_active_runs=1` bounds scheduled and manual runs only:
a backfill runs up to its own `--max-active-runs` (Airflow's default 10) besides, so dates can finish out of
order (pass `--max-active-runs 1` for one at a time). Redis is protected whatever the order: `load_redis`
never replaces a newer logical date (unless `store.force`). Unless the `data.seed` param is set, the data
seed is tied to the logical date, so each date of a backfill has its own data. Every task runs on the `gpu`
queue and pool and retries on its own (each scoring shard too, so N GPU workers score in parallel);
a task running longer than `RECSYS_TASK_TIMEOUT_MINUTES` (environment of the dag-processor, default 240)
fails and frees its GPU slot.
`load_redis` publishes nothing when the run fails the quality gate (thresholds in the `quality` config
section; `quality.force_publish` overrides, loudly). Redis comes from the `redis_recs` connection.
Params left empty use the configuration
(defaults, `$RECSYS_CONFIG` YAML file, `RECSYS__SECTION__FIELD` environment variables).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, teardown
from recsys_airflow import (
    collect_scoring_shards,
    load_and_announce,
    plan_scoring_shards,
    prune_run_dirs,
    recommendations_asset,
    run_stage,
    score_shard,
)

DEFAULT_ARGS = {
    "owner": "recsys",
    "queue": "gpu",
    "pool": "gpu",
    "retries": 2,
    # A lost worker is detected after [scheduler] task_instance_heartbeat_timeout (90 s in the stack and
    # compose); the retry then waits 30-60 s (backoff: up to 10 min later), not the 5-10 min of Airflow's
    # default, which doubled a run's time after one worker death (docs/stack-operations.md).
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    # A stuck task (a hung Dask cluster, a lost GPU) must not hold the GPU slot forever.
    "execution_timeout": timedelta(minutes=int(os.environ.get("RECSYS_TASK_TIMEOUT_MINUTES", "240"))),
}


def _optional_int(description: str, minimum: int = 1) -> Param:
    return Param(None, type=["null", "integer"], minimum=minimum, description=description)


PARAMS = {
    "data.num_rows": _optional_int("Impressions to generate (train + valid); the notebook uses 1,000,000."),
    "data.seed": _optional_int("Seed of the data generator.", minimum=0),
    "retrieval.epochs": _optional_int("Two-Tower training epochs (default 8)."),
    "ranking.epochs": _optional_int("DLRM training epochs (default 3)."),
    "scoring.top_k": _optional_int("Candidates retrieved per user (default 100)."),
    "scoring.top_n": _optional_int("Items published per user (default 20)."),
    "scoring.num_shards": _optional_int("Scoring shards, one mapped task each (default 1)."),
    "store.force": Param(
        None,
        type=["null", "boolean"],
        description="Publish even if Redis already holds a run with a newer logical date (backfill that must "
        "win, or rollback). Empty/off: an older run's load is skipped and logged.",
    ),
}


@dag(
    dag_id="offline_batch_recsys",
    # Data intervals: the run that starts at 00:00 UTC on day D+1 has logical date D and reads D's data.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["recsys", "merlin", "redis", "gpu"],
    doc_md=__doc__,
)
def offline_batch_recsys() -> None:
    # multiple_outputs=False: each task's summary travels whole as its return value; Airflow would otherwise
    # infer True from the `dict` annotation and also store every key of every summary as its own XCom.
    @task(multiple_outputs=False)
    def generate_data() -> dict:
        return run_stage("generate_data", get_current_context())

    @task(multiple_outputs=False)
    def transform(_data: dict) -> dict:
        return run_stage("transform", get_current_context())

    @task(multiple_outputs=False)
    def fit_retrieval(_features: dict) -> dict:
        return run_stage("fit_retrieval", get_current_context())

    @task(multiple_outputs=False)
    def fit_ranking(_features: dict) -> dict:
        return run_stage("fit_ranking", get_current_context())

    @task(multiple_outputs=False)
    def plan_scoring(_retrieval: dict, _ranking: dict) -> list[int]:
        return plan_scoring_shards(get_current_context())

    @task(multiple_outputs=False, map_index_template="{{ shard_label }}")
    def score(shard_index: int) -> dict:
        context = get_current_context()
        context["shard_label"] = f"shard {shard_index}"
        return score_shard(shard_index, context)

    @task(multiple_outputs=False)
    def collect_scores(_shards: list[dict]) -> dict:
        return collect_scoring_shards(get_current_context())

    @task(multiple_outputs=False)
    def evaluate(_scores: dict) -> dict:
        return run_stage("evaluate", get_current_context())

    @task(multiple_outputs=False, outlets=[recommendations_asset()])
    def load_redis(_report: dict) -> dict:
        return load_and_announce(get_current_context())

    @teardown
    @task(multiple_outputs=False)
    def prune_runs() -> dict:
        return prune_run_dirs(get_current_context())

    features = transform(generate_data())
    shards = plan_scoring(fit_retrieval(features), fit_ranking(features))
    load_redis(evaluate(collect_scores(score.expand(shard_index=shards)))) >> prune_runs()


offline_batch_recsys()
