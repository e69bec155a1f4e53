"""Where each run's artifacts live: one directory per run, one sub-directory per stage.

Every stage reads its inputs and writes its outputs through :class:`RunPaths`, so the layout is
defined in one place and a rerun of a stage overwrites only its own directory.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path


class MissingArtifactError(FileNotFoundError):
    """An earlier stage's output is not in the run directory."""


def run_dir_for(artifact_root: str | Path, dag_id: str, run_id: str) -> Path:
    """``<artifact_root>/<dag_id>/<run_id>`` with the run id made safe for file systems."""
    safe_run_id = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    if not safe_run_id:
        raise ValueError(f"run id {run_id!r} has no usable characters for a directory name")
    return Path(artifact_root) / dag_id / safe_run_id


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def run_info(self) -> Path:
        """Run id, logical date and start time of the run (``recsys_tasks.ops.retention``)."""
        return self.root / "run.json"

    # stage 1
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def raw_train(self) -> Path:
        return self.raw / "train"

    @property
    def raw_valid(self) -> Path:
        return self.raw / "valid"

    @property
    def truth(self) -> Path:
        """The planted generator's click model (latent factors, exposure), for the oracle."""
        return self.raw / "truth.npz"

    @property
    def item_days(self) -> Path:
        """Daily partitions only: clicks per (raw item id, day) of the training days, for the blend's
        time-decayed popularity prior (:mod:`recsys_tasks.scoring.popularity`)."""
        return self.raw / "item_days.parquet"

    # stage 2
    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def categories(self) -> Path:
        return self.processed / "categories"

    @property
    def workflow(self) -> Path:
        return self.processed / "workflow"

    @property
    def train(self) -> Path:
        return self.processed / "train"

    @property
    def valid(self) -> Path:
        return self.processed / "valid"

    @property
    def retrieval_train(self) -> Path:
        return self.processed / "retrieval" / "train"

    @property
    def retrieval_valid(self) -> Path:
        return self.processed / "retrieval" / "valid"

    # stage 3
    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval"

    @property
    def query_tower(self) -> Path:
        return self.retrieval / "query_tower"

    @property
    def user_features(self) -> Path:
        return self.retrieval / "user_features.parquet"

    @property
    def item_features(self) -> Path:
        return self.retrieval / "item_features.parquet"

    @property
    def user_embeddings(self) -> Path:
        return self.retrieval / "user_embeddings.parquet"

    @property
    def item_embeddings(self) -> Path:
        return self.retrieval / "item_embeddings.parquet"

    # stage 4
    @property
    def ranking(self) -> Path:
        return self.root / "ranking"

    @property
    def dlrm(self) -> Path:
        return self.ranking / "dlrm"

    # stage 5
    @property
    def scoring(self) -> Path:
        return self.root / "scoring"

    @property
    def recommendations(self) -> Path:
        """A directory of parquet parts (one per scoring shard; one part when unsharded)."""
        return self.scoring / "recommendations"

    def recommendation_part(self, shard_index: int = 0) -> Path:
        return self.recommendations / f"part-{shard_index:05d}.parquet"

    @property
    def scoring_shards(self) -> Path:
        """The shard plan and one summary per scored shard."""
        return self.scoring / "shards"

    @property
    def scoring_plan(self) -> Path:
        return self.scoring_shards / "plan.json"

    def shard_summary(self, shard_index: int) -> Path:
        return self.scoring_shards / f"shard-{shard_index:05d}.json"

    def ann_index(self, kind: str) -> Path:
        """The run's approximate-retrieval index (built by the scoring plan, read by every shard)."""
        return self.scoring_shards / f"index-{kind}.faiss"

    # evaluate
    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.evaluation / "report.md"

    @property
    def fallback_list(self) -> Path:
        """The popularity list ``load_redis`` publishes for users with no document."""
        return self.evaluation / "fallback.json"

    # stage 6
    @property
    def load(self) -> Path:
        return self.root / "load"

    def summary(self, stage: str) -> Path:
        return self.root / "summaries" / f"{stage}.json"

    def fresh(self, directory: Path) -> Path:
        """Empty ``directory`` (a stage's own output) so a rerun leaves no stale files behind."""
        if not directory.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"refusing to clear {directory}: outside the run directory {self.root}")
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        return directory


def recommendation_files(path: Path) -> list[Path]:
    """The parquet parts of a recommendations directory (or a single parquet file), in name order."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise MissingArtifactError(f"{path}: no *.parquet parts (written by the 'score' stage)")
    return files


def require(path: Path, produced_by: str) -> Path:
    """Fail with a message naming the missing file and the stage that should have written it."""
    if not path.exists():
        raise MissingArtifactError(
            f"{path} is missing: it is written by the {produced_by!r} stage; run that stage first"
        )
    return path
