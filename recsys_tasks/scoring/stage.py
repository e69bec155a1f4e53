"""Stage 5: recommendations for every user, in chunks of users, with no per-user model call.

For each chunk: top-K unseen candidates per user (:mod:`recsys_tasks.scoring.candidates`: on a CPU the tiled
kernel of :mod:`recsys_tasks.scoring.kernels.topk` or a FAISS index, on a GPU TensorFlow), every (user, candidate) pair
scored by the DLRM (:mod:`recsys_tasks.scoring.ranker`) when the run's blend weighs it, candidates reordered by
the blend fitted on validation in the plan (:mod:`recsys_tasks.scoring.blend`), top-N kept, encoded ids mapped
back to raw ids. The result streams to ``scoring/recommendations/part-<shard>.parquet``
chunk by chunk, so memory does not grow with the number of users. Users are split into
``scoring.num_shards`` contiguous shards (one part each): in Airflow every shard is its own mapped task
(``plan_shards`` -> ``score_shard`` x N -> ``collect_shards``); the CLI's ``score`` runs the same three
steps in one process. The inputs (embeddings, feature tables, seen items) are read by
:mod:`recsys_tasks.scoring.catalog`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..paths import RunPaths, require
from ..runtime import (
    InputDataError,
    Progress,
    get_logger,
    quiet_tensorflow,
    stage,
    stage_run,
    write_json,
    write_summary,
)
from .blend import Blend, fit_blend, fixed_blend
from .candidates import attach_index, retrieval_kernel, retrieve, with_popular_candidates
from .catalog import Catalog, embedding_matrix, load_catalog, with_history
from .ranker import make_ranker, pair_features, rank_pairs

log = get_logger("score")


def score_chunk(
    catalog: Catalog, model: Any, user_rows: np.ndarray, top_k: int, top_n: int, rank_batch_rows: int,
    kernel: str = "auto", blend: Blend | None = None, popular_candidates: int = 0,
) -> dict[str, Any]:
    """Recommendations for one chunk of users: raw user ids, raw item ids best first, their final scores.

    ``model`` is the DLRM (run whole on every pair) or a ranker of :mod:`recsys_tasks.scoring.ranker`;
    ``blend`` the final order (None: the DLRM order, whose scores are click probabilities);
    ``popular_candidates`` popular items under the blend's prior join the retrieved candidates.
    """
    candidate_rows, retrieval_scores = retrieve(catalog, user_rows, top_k, kernel)
    if blend is not None:
        candidate_rows, retrieval_scores = with_popular_candidates(
            catalog, user_rows, candidate_rows, retrieval_scores, catalog.prior(blend.half_life_days),
            popular_candidates)
    probabilities = None
    if blend is None or blend.uses_dlrm:
        if callable(model) and not hasattr(model, "predict"):
            probabilities = model(user_rows, candidate_rows)
        else:
            probabilities = rank_pairs(model, pair_features(catalog, user_rows, candidate_rows), rank_batch_rows)
            probabilities = probabilities.reshape(candidate_rows.shape)
    if blend is None:
        ranked = probabilities
    else:
        retrieval_scores = np.where(candidate_rows >= 0, retrieval_scores, 0.0)
        ranked = blend.combine(retrieval_scores, probabilities,
                               catalog.prior(blend.half_life_days)[np.maximum(candidate_rows, 0)])
    ranked[candidate_rows < 0] = -np.inf
    # Stable sort keeps retrieval order between equal DLRM scores.
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :top_n]
    best_rows = np.take_along_axis(candidate_rows, order, axis=1)
    best_scores = np.take_along_axis(ranked, order, axis=1)
    if blend is not None:
        # Into (0, 1), order kept: one range for every published score (and the store's fast float path).
        best_scores = (1.0 / (1.0 + np.exp(-best_scores.astype(np.float64)))).astype(np.float32)
    item_raw = catalog.item_features["item_id_raw"]
    if (best_rows >= 0).all():
        # The usual case: whole lists, converted in one C call instead of one per user.
        recommendations, scores = item_raw[best_rows].tolist(), best_scores.tolist()
    else:
        recommendations, scores = [], []
        for rows, values in zip(best_rows, best_scores):
            keep = rows >= 0
            recommendations.append(item_raw[rows[keep]].tolist())
            scores.append(values[keep].tolist())
    return {
        "user_id": catalog.user_features["user_id_raw"][user_rows],
        "recommendations": recommendations,
        "scores": scores,
        "user_id_encoded": catalog.user_features["user_id"][user_rows],
    }


def iter_user_chunks(num_users: int, chunk_size: int) -> Iterator[np.ndarray]:
    for start in range(0, num_users, chunk_size):
        yield np.arange(start, min(start + chunk_size, num_users))


def recommendations_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("user_id", pa.int64()),
            ("recommendations", pa.list_(pa.int64())),
            ("scores", pa.list_(pa.float32())),
            ("user_id_encoded", pa.int64()),
        ]
    )


class ShardError(InputDataError):
    """The shard plan and the parts on disk disagree (missing, extra or foreign parts)."""


def shard_rows(num_users: int, num_shards: int, shard_index: int) -> np.ndarray:
    """Contiguous user rows of one shard; shard sizes differ by at most one user."""
    if not 0 <= shard_index < num_shards:
        raise ShardError(f"shard index {shard_index} is outside 0..{num_shards - 1}")
    return np.arange(shard_index * num_users // num_shards, (shard_index + 1) * num_users // num_shards)


def plan_shards(config: Config, run_dir: str | Path, inputs: tuple[Catalog, Any] | None = None) -> dict[str, Any]:
    """Start a scoring pass: clear every part of an earlier pass, fit the blend, record how many shards there are.

    Runs once before the shards, so a part left by an earlier attempt with more shards cannot leak
    into this run's recommendations, and no shard ever deletes another shard's part. ``inputs``: the
    catalog and DLRM when the caller has them loaded (else they are read here, for the blend's fit).
    """
    import pyarrow.parquet as pq

    paths = RunPaths(Path(run_dir))
    num_shards = config.scoring.num_shards
    users = pq.read_metadata(require(paths.user_features, "fit_retrieval")).num_rows
    paths.fresh(paths.recommendations)
    paths.fresh(paths.scoring_shards)
    plan = {"num_shards": num_shards, "users": int(users), "shards": list(range(num_shards))}
    items = pq.read_metadata(require(paths.item_embeddings, "fit_retrieval")).num_rows
    kernel = retrieval_kernel(config.scoring.retrieval_kernel, items, config.scoring)
    if kernel in ("ivf", "hnsw"):
        # One index per run: built here once, read by every shard (HNSW built by several threads is
        # not bit-reproducible, so shards building their own could disagree).
        from .kernels.ann import IndexSettings, build_index, write_index

        item_embeddings = embedding_matrix(
            paths.item_embeddings, "item_id",
            pq.read_table(require(paths.item_features, "fit_retrieval"), columns=["item_id"])["item_id"].to_numpy(),
        )
        index = build_index(item_embeddings, IndexSettings.from_config(kernel, config.scoring),
                            config.scoring.ann_threads)
        write_index(index, paths.ann_index(kernel))
        plan["ann_index"] = str(paths.ann_index(kernel))
    plan["retrieval_kernel"] = kernel
    settings = config.scoring
    catalog = inputs[0] if inputs is not None else None
    if settings.blend == "fit":
        catalog, model = inputs if inputs is not None else _load_inputs(paths, settings)
        if kernel in ("ivf", "hnsw") and catalog.ann_index is None:
            attach_index(catalog, kind=kernel, settings=settings, path=paths.ann_index(kernel))
        # Fitted on what the models were validated with: the training days (the validation days are the targets).
        validated = with_history(catalog, paths, settings.exclude, "train")
        ranker = make_ranker(model, validated, settings.rank_batch_rows, settings.factored_ranking)
        plan["blend"] = fit_blend(validated, ranker, require(paths.valid, "transform"), settings, kernel)
    else:
        plan["blend"] = fixed_blend(settings.blend)
    plan["window_users"] = 0
    if settings.history == "window":
        from .window_users import write_window_part

        catalog = catalog if catalog is not None else load_catalog(paths, settings.exclude, settings.history)
        blend = plan_blend(plan)

        def fitted_fold_in() -> Blend | None:
            from .window_fit import fit_fold_in

            train_view = with_history(catalog, paths, settings.exclude, "train")
            plan["window_fold_in"] = fit_fold_in(
                train_view, paths, require(paths.valid, "transform"), blend.half_life_days if blend else 0.0,
                settings.top_n, settings.blend_seed, settings.blend_requires_significant_gain)
            chosen = plan["window_fold_in"]["chosen"]
            return Blend.from_json(chosen) if chosen else None

        plan["window_users"] = write_window_part(
            catalog, paths, settings.exclude, blend, settings.top_n, recommendations_schema(),
            fitted_fold_in if settings.window_users == "fold_in" else None)
    write_json(paths.scoring_plan, plan)
    log.info("scoring plan: %d users in %d shard(s)", users, num_shards)
    return plan


def plan_blend(plan: dict[str, Any]) -> Blend | None:
    """The plan's fitted blend (None for a plan written before blends: the DLRM order)."""
    return Blend.from_json(plan["blend"]["chosen"]) if "blend" in plan else None


def read_plan(paths: RunPaths) -> dict[str, Any]:
    return json.loads(require(paths.scoring_plan, "score (planning)").read_text())


def _score_part(
    catalog: Catalog, model: Any, settings: Any, paths: RunPaths, shard_index: int, num_shards: int,
    blend: Blend | None = None,
) -> dict[str, Any]:
    """Score one shard's users and atomically replace that shard's part (and only that part)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = shard_rows(catalog.num_users, num_shards, shard_index)
    schema = recommendations_schema()
    target = paths.recommendation_part(shard_index)
    tmp = target.with_suffix(".parquet.tmp")
    kernel = retrieval_kernel(settings.retrieval_kernel, catalog.num_items, settings)
    if kernel in ("ivf", "hnsw") and catalog.ann_index is None:
        attach_index(catalog, kind=kernel, settings=settings, path=require(paths.ann_index(kernel), "score (planning)"))

    ranker = make_ranker(model, catalog, settings.rank_batch_rows, settings.factored_ranking) \
        if blend is None or blend.uses_dlrm else None
    log.info("shard %d/%d: %d users, retrieval kernel %s", shard_index + 1, num_shards, len(rows), kernel)
    users_done, short_lists, started = 0, 0, time.perf_counter()
    progress = Progress(log, f"shard {shard_index + 1}/{num_shards}: scored %d/%d users (%.0f users/s, %.0fs left)",
                        len(rows))
    with pq.ParquetWriter(tmp, schema) as writer:
        for chunk_start in range(0, len(rows), settings.user_chunk_size):
            user_rows = rows[chunk_start:chunk_start + settings.user_chunk_size]
            chunk = score_chunk(catalog, ranker, user_rows, settings.top_k, settings.top_n, settings.rank_batch_rows,
                                kernel, blend, settings.popular_candidates)
            writer.write_table(pa.Table.from_pydict(chunk, schema=schema))
            users_done += len(user_rows)
            short_lists += sum(len(r) < settings.top_n for r in chunk["recommendations"])
            progress.update(users_done)
    tmp.replace(target)
    elapsed = time.perf_counter() - started
    return {
        "shard_index": shard_index,
        "num_shards": num_shards,
        "users": users_done,
        "short_lists": int(short_lists),
        "seconds": round(elapsed, 3),
        "users_per_s": round(users_done / max(elapsed, 1e-9), 1),
        "retrieval_kernel": kernel,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "part": str(target),
    }


def _load_inputs(paths: RunPaths, settings: Any) -> tuple[Catalog, Any]:
    from ..training.ranking import load_dlrm

    # The model first: restoring a SavedModel briefly takes ~1 GB more than the loaded model holds, so
    # doing it before the catalog exists keeps a million users' tables out of the stage's peak memory.
    model = load_dlrm(require(paths.dlrm, "fit_ranking"))
    catalog = load_catalog(paths, settings.exclude, settings.history)
    if catalog.num_items < settings.top_n:
        raise InputDataError(
            f"{paths.item_features}: the catalog has {catalog.num_items} items, fewer than "
            f"scoring.top_n={settings.top_n}"
        )
    return catalog, model


def _check_plan_matches(paths: RunPaths, plan: dict[str, Any], catalog: Catalog) -> None:
    if catalog.num_users != plan["users"]:
        raise ShardError(
            f"{paths.scoring_plan}: planned for {plan['users']} users but {paths.user_features} now has "
            f"{catalog.num_users}; fit_retrieval was rerun after planning, so plan and score again"
        )


def score_shard(config: Config, run_dir: str | Path, shard_index: int) -> dict[str, Any]:
    """One mapped scoring task: the users of shard ``shard_index`` of the plan, into its own part."""
    quiet_tensorflow()
    paths = RunPaths(Path(run_dir))
    plan = read_plan(paths)
    shard_rows(plan["users"], plan["num_shards"], shard_index)  # a bad index fails before the model loads
    with stage_run("score", paths, target=paths.shard_summary(shard_index),
                   part=f"shard {shard_index} of {plan['num_shards']}") as summary:
        catalog, model = _load_inputs(paths, config.scoring)
        _check_plan_matches(paths, plan, catalog)
        summary.update(_score_part(catalog, model, config.scoring, paths, shard_index, plan["num_shards"],
                                   plan_blend(plan)))
    return summary


def collect_parts(config: Config, paths: RunPaths) -> dict[str, Any]:
    """Check that exactly the planned parts are in, one per shard, covering every user once; sum them up."""
    import pyarrow.parquet as pq

    plan = read_plan(paths)
    expected = {paths.recommendation_part(i) for i in range(plan["num_shards"])}
    if plan.get("window_users"):
        from .window_users import window_part

        expected.add(window_part(paths))
    present = set(paths.recommendations.glob("*.parquet"))
    if present - expected:
        raise ShardError(
            f"{paths.recommendations}: parts {sorted(p.name for p in present - expected)} do not belong to "
            f"this scoring pass of {plan['num_shards']} shard(s)"
        )
    missing = sorted(i for i in range(plan["num_shards"]) if paths.recommendation_part(i) not in present)
    if missing:
        raise ShardError(f"{paths.recommendations}: shard(s) {missing} of {plan['num_shards']} have no part yet")
    if expected - present:
        raise ShardError(f"{paths.recommendations}: {sorted(p.name for p in expected - present)} written by the "
                         "plan is missing; plan and score again")
    shards = [json.loads(require(paths.shard_summary(i), "score").read_text()) for i in range(plan["num_shards"])]
    rows = sum(pq.read_metadata(part).num_rows for part in expected)
    planned = plan["users"] + plan.get("window_users", 0)
    if rows != planned:
        raise ShardError(f"{paths.recommendations}: the parts hold {rows} users, the plan has {planned}")
    busiest = max(s["seconds"] for s in shards)
    catalog_items = pq.read_metadata(paths.item_features).num_rows
    return {
        "users": rows,
        "window_users": int(plan.get("window_users", 0)),
        "items": int(catalog_items),
        "top_k": config.scoring.top_k,
        "top_n": config.scoring.top_n,
        "num_shards": plan["num_shards"],
        # A plan written before the kernel was recorded (an upgrade between planning and collecting) has none.
        "retrieval_kernel": plan.get("retrieval_kernel", "not recorded"),
        "short_lists": int(sum(s["short_lists"] for s in shards)),
        "users_per_s": round(rows / max(sum(s["seconds"] for s in shards), 1e-9), 1),
        "slowest_shard_s": busiest,
        "generated_at": max(s["generated_at"] for s in shards),
        "recommendations": str(paths.recommendations),
        "blend": plan.get("blend"),
        "window_fold_in": {k: v for k, v in plan["window_fold_in"].items() if k != "candidates"}
        if plan.get("window_fold_in") else None,
        "scores": "sigmoid of the blend's score: a ranking score in (0, 1), higher first, comparable within a "
        "list only (not a click probability)" if plan.get("blend") else "DLRM click probability",
    }


def collect_shards(config: Config, run_dir: str | Path) -> dict[str, Any]:
    """After every mapped shard: verify the parts and write the ``score`` stage summary that loading reads."""
    paths = RunPaths(Path(run_dir))
    summary = collect_parts(config, paths)
    shard = json.loads(paths.shard_summary(0).read_text())
    summary = {"stage": "score", "device": shard.get("device", ""), "seconds": summary["slowest_shard_s"], **summary}
    log.info("score: %d shard(s) in, %d users", summary["num_shards"], summary["users"])
    return write_summary(paths, "score", summary)


@stage("score")
def score(config: Config, paths: RunPaths) -> dict[str, Any]:
    """The whole stage in one process: plan, every shard in turn, collect (what the CLI runs).

    With ``scoring.num_shards`` > 1 the output is the same set of parts the mapped Airflow tasks write.
    """
    from ..runtime import device

    quiet_tensorflow()
    settings = config.scoring
    catalog, model = _load_inputs(paths, settings)
    plan = plan_shards(config, paths.root, (catalog, model))
    _check_plan_matches(paths, plan, catalog)
    for shard_index in plan["shards"]:
        summary = _score_part(catalog, model, settings, paths, shard_index, plan["num_shards"], plan_blend(plan))
        write_json(paths.shard_summary(shard_index), {"device": device(), **summary})
    return collect_parts(config, paths)
