"""Pieces every stage shares: device detection, quiet TensorFlow, timing and the stage summary."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .paths import RunPaths


class InputDataError(ValueError):
    """Input data that does not match what a stage expects (file, column and value are named)."""


def get_logger(stage: str) -> logging.Logger:
    return logging.getLogger(f"recsys_tasks.{stage}")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter out of task logs (must run before it is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@functools.lru_cache(maxsize=1)
def device() -> str:
    """``"gpu"`` when TensorFlow sees a GPU and cudf imports (Merlin then runs on the GPU), else ``"cpu"``.

    TensorFlow places ops on the GPU by itself and Merlin's ``Dataset`` picks cudf when it is
    importable; the one branch on this is scoring's retrieval kernel (``scoring.retrieval_kernel=auto``:
    TensorFlow on a GPU, the tiled CPU kernel otherwise). The value is logged and reported.
    """
    quiet_tensorflow()
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return "cpu"
    try:
        import cudf  # noqa: F401
    except ImportError:
        return "gpu (tensorflow only; cudf missing, NVTabular on cpu)"
    return "gpu"


def seed_everything(seed: int) -> None:
    import numpy as np
    import tensorflow as tf

    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)


def make_optimizer(name: str, learning_rate: float) -> Any:
    """A Keras optimizer by name (``"adam"``, ``"adagrad"``, ...) with the given step size."""
    import tensorflow as tf

    return tf.keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = round(time.perf_counter() - start, 3)


def write_json(target: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename), so a reader never sees half a file."""
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(target)


def write_summary(paths: RunPaths, stage: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Store the stage's JSON-able summary in the run directory and return it (it is also the XCom)."""
    target = paths.summary(stage)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, summary)
    return summary


def read_summary(paths: RunPaths, stage: str) -> dict[str, Any]:
    from .paths import require

    return json.loads(require(paths.summary(stage), stage).read_text())


def stage(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Wrap a stage function: log start/end and device, time it, save its summary."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(config: Any, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
            log = get_logger(name)
            paths = RunPaths(Path(run_dir))
            paths.root.mkdir(parents=True, exist_ok=True)
            used = device()
            log.info("stage %s starting on %s in %s", name, used, paths.root)
            with timed() as clock:
                summary = fn(config, paths, **kwargs)
            summary = {"stage": name, "device": used, "seconds": clock["seconds"], **summary}
            log.info("stage %s done in %.1fs: %s", name, clock["seconds"], json.dumps(summary, default=str))
            return write_summary(paths, name, summary)

        return run

    return wrap
