"""The lists that are live now, judged on this run's validation clicks: the gate's blessing against them.

``evaluate`` saves the evaluated users, their relevant items and the per-user figures of the lists it
judged; at load time the gate finds the published run's directory through the manifest (a sibling of
this run's directory, named by its run id) and measures that run's recommendations on the same users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..paths import RunPaths, recommendation_files
from ..runtime import get_logger
from .lists import flat_lists
from .metrics import Relevant, RowLookup, hits_csr, mean_ci95, ndcg_per_user, recall_per_user

log = get_logger("load_redis")

SAMPLE_FILE = "validation_sample.npz"


def sample_path(paths: RunPaths) -> Path:
    return paths.evaluation / SAMPLE_FILE


def save_sample(paths: RunPaths, relevant: Relevant, user_ids: np.ndarray, item_ids: np.ndarray,
                published: dict[str, np.ndarray], top_n: int) -> None:
    """The evaluated users (raw ids), their relevant items (raw ids, CSR) and the published per-user figures."""
    np.savez(sample_path(paths), user_ids=user_ids[relevant.eval_users], indptr=relevant.indptr,
             item_ids=item_ids[relevant.items], top_n=np.array(top_n), recall=published["recall"],
             ndcg=published["ndcg"])


def live_run_dir(paths: RunPaths, manifest: dict[str, Any] | None, run_id: str) -> tuple[Path | None, str]:
    """The live run's directory, or None with the reason it cannot be compared."""
    if not manifest or not manifest.get("run_id"):
        return None, "no run is published yet"
    if not sample_path(paths).exists():
        return None, f"this run has no {sample_path(paths)} (written by 'evaluate')"
    live_id = str(manifest["run_id"])
    if live_id == run_id:
        return None, f"run {live_id!r} is this run (a reload)"
    candidate = paths.root.parent / live_id
    parts = RunPaths(candidate).recommendations
    if not parts.is_dir() or not any(parts.glob("*.parquet")):
        return None, f"the live run {live_id!r} has no recommendations at {candidate} (retention removed it?)"
    return candidate, f"live run {live_id!r} at {candidate}"


def compare_with_live(paths: RunPaths, live_dir: Path, fallback_ids: list[int]) -> dict[str, Any]:
    """recall@N / ndcg@N of the live lists on this run's evaluated users, paired with this run's lists.

    A user without a live document is scored on ``fallback_ids`` (what the application would show).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    sample = np.load(sample_path(paths))
    top_n = int(sample["top_n"])
    user_ids, indptr, relevant_ids = sample["user_ids"], sample["indptr"], sample["item_ids"]
    table = pa.concat_tables([pq.read_table(f, columns=["user_id", "recommendations"])
                              for f in recommendation_files(RunPaths(live_dir).recommendations)])
    live_rows = RowLookup(table.column("user_id").to_numpy()).rows(user_ids)
    # Flat numpy arrays, not Python lists: a million users' lists would be 20 million Python ints.
    values, offsets = flat_lists(table.column("recommendations"))
    fallback = np.asarray(fallback_ids, dtype=np.int64)[:top_n]
    chosen_ids = np.full((len(user_ids), top_n), -1, dtype=np.int64)
    for position, row in enumerate(live_rows):
        chosen = values[offsets[row]:offsets[row + 1]][:top_n] if row >= 0 else fallback
        chosen_ids[position, :len(chosen)] = chosen
    lookup = RowLookup(np.unique(np.concatenate([relevant_ids, chosen_ids[chosen_ids >= 0]])))
    ranked = np.where(chosen_ids >= 0, lookup.rows(chosen_ids.reshape(-1)).reshape(chosen_ids.shape), -1)
    counts = np.diff(indptr)
    hits = hits_csr(ranked, indptr, lookup.rows(relevant_ids))
    live = {"recall": recall_per_user(hits, counts, top_n), "ndcg": ndcg_per_user(hits, counts, top_n)}
    out: dict[str, Any] = {"run_dir": str(live_dir), "users_evaluated": int(len(user_ids)),
                           "users_with_fallback": int((live_rows < 0).sum())}
    for metric in ("recall", "ndcg"):
        out[f"live_{metric}_at_n"], out[f"live_{metric}_at_n_ci95"] = mean_ci95(live[metric])
        mean, interval = mean_ci95(sample[metric] - live[metric])
        out[f"{metric}_at_n_difference"] = {"mean": mean, "ci95": interval}
    return out
