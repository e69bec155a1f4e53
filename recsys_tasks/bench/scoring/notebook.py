"""The notebook's per-user scoring method, re-implemented, and the comparison of its lists with ours."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...paths import RunPaths
from ..common import NOTEBOOK_K, NOTEBOOK_USER_BATCH, _rate


@dataclass
class NotebookInputs:
    """The notebook's offline "feature stores" (pandas frames) and the retrieval embeddings."""

    user_fs: Any
    item_fs: Any
    clicks: Any
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray


def load_notebook_inputs(paths: RunPaths) -> NotebookInputs:
    import pandas as pd

    from ...features.tables import read_processed

    user_fs = pd.read_parquet(paths.user_features)
    item_fs = pd.read_parquet(paths.item_features)
    return NotebookInputs(
        user_fs=user_fs,
        item_fs=item_fs,
        clicks=read_processed(paths.retrieval_train, columns=["user_id", "item_id"]),
        user_embeddings=pd.read_parquet(paths.user_embeddings).drop(columns="user_id").to_numpy(np.float32),
        item_embeddings=pd.read_parquet(paths.item_embeddings).drop(columns="item_id").to_numpy(np.float32),
    )


def notebook_recommendations(
    inputs: NotebookInputs, dlrm: Any, user_rows: Sequence[int], k: int = NOTEBOOK_K, top_n: int | None = None,
    batch_size: int = NOTEBOOK_USER_BATCH,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The notebook's ``generate_recommendations_batch`` (sections 4.3-4.4), re-implemented.

    Candidates come a batch of users at a time (the notebook's ``topk_model``: dot products with
    every item, top-k); then, for each user on its own: a pandas filter of the user feature table,
    the row repeated once per candidate, an ``isin`` filter of the item feature table, a Merlin
    ``Dataset`` and ``Loader`` over that frame and one eager DLRM call; candidates ordered by the
    softmax of the scores. One difference, so the answers can be compared with ours: items the user
    clicked in training are masked before the top-k (found with a per-user pandas filter too).
    Yields ``(raw user id, raw item ids best first, scores)`` with ``top_n`` (default k) items.
    """
    import merlin.models.tf as mm
    import pandas as pd
    import tensorflow as tf
    from merlin.io import Dataset

    user_fs, item_fs = inputs.user_fs, inputs.item_fs
    item_ids = item_fs["item_id"].to_numpy()
    top_n = top_n or k
    for start in range(0, len(user_rows), batch_size):
        batch_rows = np.asarray(user_rows[start : start + batch_size])
        scores = tf.matmul(inputs.user_embeddings[batch_rows], inputs.item_embeddings, transpose_b=True).numpy()
        batch_users = user_fs["user_id"].to_numpy()[batch_rows]
        for i, user_id in enumerate(batch_users):
            seen = inputs.clicks[inputs.clicks.user_id == user_id].item_id.to_numpy()
            scores[i, np.searchsorted(item_ids, seen)] = -np.inf
        top_scores, top_rows = tf.math.top_k(scores, k=min(k, len(item_ids)))
        candidate_lists = np.where(np.isneginf(top_scores.numpy()), -1, item_ids[top_rows.numpy()])
        for user_id, candidates in zip(batch_users, candidate_lists):
            candidates = candidates[candidates >= 0]
            num_recs = len(candidates)
            user_features = user_fs[user_fs.user_id == user_id]
            raw_user_id = int(user_features.user_id_raw.to_numpy()[0])
            user_features = pd.concat([user_features] * num_recs, ignore_index=True)
            item_features = item_fs[item_fs.item_id.isin(candidates)].reset_index(drop=True)
            raw_item_ids = item_features.item_id_raw.to_numpy()
            item_features[user_features.columns] = user_features
            dataset = Dataset(item_features.drop(columns=["user_id_raw", "item_id_raw"]))
            batch = next(iter(mm.Loader(dataset, batch_size=num_recs, shuffle=False)))
            user_scores = dlrm(batch[0]).numpy().reshape(-1)
            probabilities = np.exp(user_scores) / sum(np.exp(user_scores))
            order = (-probabilities).argsort()[:top_n]
            yield raw_user_id, raw_item_ids[order], user_scores[order]



def measure_notebook_scoring(paths: RunPaths, sample_users: int) -> dict[str, Any]:
    from ...training.ranking import load_dlrm

    inputs = load_notebook_inputs(paths)
    dlrm = load_dlrm(paths.dlrm)
    rows = np.arange(min(sample_users, len(inputs.user_fs)))
    # One user first, so TensorFlow's one-off start-up is not billed to the method.
    next(notebook_recommendations(inputs, dlrm, rows[:1]))
    started = time.perf_counter()
    results = list(notebook_recommendations(inputs, dlrm, rows))
    elapsed = time.perf_counter() - started
    return {
        "users": len(rows), "seconds": round(elapsed, 3), "users_per_s": _rate(len(rows), elapsed),
        "lists": {uid: (recs.tolist(), scores.tolist()) for uid, recs, scores in results},
    }


def compare_lists(notebook: dict[int, tuple[list[int], list[float]]], recommendations: Path) -> dict[str, Any]:
    """How many of the notebook's lists our stage reproduced (same items, same order up to score ties)."""
    import pyarrow.parquet as pq

    ours = pq.read_table(recommendations, columns=["user_id", "recommendations", "scores"]).to_pandas()
    ours = ours[ours["user_id"].isin(list(notebook))].set_index("user_id")
    same = 0
    for user_id, (items, scores) in notebook.items():
        if user_id in ours.index and lists_agree(items, scores, list(ours.loc[user_id, "recommendations"]),
                                                 list(ours.loc[user_id, "scores"])):
            same += 1
    return {"users_compared": len(notebook), "identical_lists": same}


def lists_agree(items_a: list[int], scores_a: list[float], items_b: list[int], scores_b: list[float],
                tolerance: float = 1e-5) -> bool:
    """Same length, same scores (within tolerance) and same items except where neighbouring scores tie."""
    if len(items_a) != len(items_b) or not np.allclose(scores_a, scores_b, rtol=0, atol=tolerance):
        return False
    for position, (a, b) in enumerate(zip(items_a, items_b)):
        if a == b:
            continue
        tied = [p for p in range(len(scores_a)) if abs(scores_a[p] - scores_a[position]) <= tolerance]
        if b not in [items_a[p] for p in tied]:
            return False
    return True

