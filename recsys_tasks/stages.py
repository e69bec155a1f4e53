"""The pipeline's stages by name, and ``run_stage``: the one way the CLI, the DAG's glue and the benches run one.

Each stage function takes a config and a run directory and returns its summary; the imports are lazy so that
importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config


def stage_functions() -> dict[str, Any]:
    from .data.sources import generate_data
    from .evaluation.evaluate import evaluate
    from .features.workflow import transform
    from .scoring.stage import score
    from .training.ranking import fit_ranking
    from .training.retrieval import fit_retrieval

    return {
        "generate_data": generate_data,
        "transform": transform,
        "fit_retrieval": fit_retrieval,
        "fit_ranking": fit_ranking,
        "score": score,
        "evaluate": evaluate,
    }


def run_stage(name: str, config: Config, run_dir: Path, *, redis_client: Any = None, run_id: str = "manual",
              logical_date: str = "") -> dict[str, Any]:
    """Run one stage; each records its time, peak memory and CPU in its summary (:func:`runtime.stage_run`)."""
    if name == "load_redis":
        from .store import load_redis

        if redis_client is None:
            raise ValueError("the load_redis stage needs a Redis client")
        return load_redis(config, run_dir, redis_client, run_id=run_id, logical_date=logical_date)
    return stage_functions()[name](config, run_dir)
