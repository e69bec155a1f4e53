"""Pieces every stage shares: logging, device detection, quiet TensorFlow, seeding, timing, the stage summary.

Everything here is cheap to import; TensorFlow is imported inside the functions that need it.
"""

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


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = round(time.perf_counter() - start, 3)


def parquet_rows(directory: Path) -> int:
    """Rows of every parquet part of a directory, from the files' footers (no data is read)."""
    import pyarrow.parquet as pq

    return int(sum(pq.read_metadata(f).num_rows for f in sorted(directory.glob("*.parquet"))))


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


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ``clear_refs`` value 5).

    Airflow may run several tasks in one process (``airflow dags test``); resetting at each task's start
    makes the peak read at its end that task's own. Returns False where the kernel does not allow it.
    psutil has neither the reset nor ``VmHWM``, so both stay on ``/proc``.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """This process's peak RSS since it started or since :func:`reset_peak_rss` (``VmHWM``; None off Linux).

    Not ``getrusage``'s ``ru_maxrss``: that one survives ``exec`` (a child of a large parent reports the
    parent's size at ``fork``) and ignores the reset.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """This process's resident memory now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def memory_usage(reset_ok: bool, rss_at_start: int | None) -> dict[str, Any]:
    """Peak and start RSS of this process for a stage summary (bytes); ``peak_rss_is_stage_only`` says
    whether the peak was reset at the stage's start (else it is the whole process's peak so far)."""
    return {
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_at_start_bytes": rss_at_start,
        "peak_rss_is_stage_only": reset_ok,
        "pid": os.getpid(),
    }


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (how many processes competed for the cores)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (with the threads it ran)."""
    times = os.times()
    return times.user + times.system


@contextlib.contextmanager
def stage_run(name: str, paths: RunPaths, *, target: Path | None = None, part: str = "") -> Iterator[dict[str, Any]]:
    """Run one stage (or one ``part`` of it, e.g. a shard): the one place a stage's bookkeeping lives.

    Logs the start (with the device) and the end, times the body, resets and reads the peak RSS, counts
    CPU seconds, and writes the summary JSON to ``target`` (default ``summaries/<name>.json``). The body
    puts its results into the yielded dict; on a clean exit it becomes, in place,
    ``{"stage", "device", "seconds", **results, "resources"}`` (a result's own ``seconds`` wins). A body
    that raises writes nothing.
    """
    log = get_logger(name)
    paths.root.mkdir(parents=True, exist_ok=True)
    used = device()
    label = f"{name} ({part})" if part else name
    log.info("stage %s starting on %s in %s", label, used, paths.root)
    reset_ok, rss_at_start, cpu_at_start = reset_peak_rss(), rss_bytes(), cpu_seconds()
    summary: dict[str, Any] = {}
    with timed() as clock:
        yield summary
    resources = {**memory_usage(reset_ok, rss_at_start),
                 "cpu_seconds": round(cpu_seconds() - cpu_at_start, 2), "loadavg": load_average()}
    results = dict(summary)
    summary.clear()
    summary.update({"stage": name, "device": used, "seconds": clock["seconds"], **results, "resources": resources})
    log.info("stage %s done in %.1fs: %s", label, clock["seconds"], json.dumps(summary, default=str))
    target = target or paths.summary(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, summary)


def stage(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Make a stage function ``fn(config, paths, **kwargs)`` callable as ``(config, run_dir, **kwargs)``
    inside :func:`stage_run` (its summary saved and returned, which is also the XCom)."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(config: Any, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
            paths = RunPaths(Path(run_dir))
            with stage_run(name, paths) as summary:
                summary.update(fn(config, paths, **kwargs))
            return summary

        return run

    return wrap


class Progress:
    """Logs a long loop's progress (done / total, rate, time left) at most every ``interval_s`` seconds, at
    the first update and when the loop is done.

    ``message`` is a %-format taking done, total, rate per second and seconds left, in that order, e.g.
    ``"scored %d/%d users (%.0f users/s, %.0fs left)"``.
    """

    def __init__(self, log: logging.Logger, message: str, total: int, *, interval_s: float = 10.0) -> None:
        self.log, self.message, self.total, self.interval_s = log, message, total, interval_s
        self.started = self.next_report = time.perf_counter()
        self.finished = False

    def update(self, done: int) -> None:
        now = time.perf_counter()
        just_finished = done >= self.total and not self.finished
        if now < self.next_report and not just_finished:
            return
        self.finished = done >= self.total
        rate = done / max(now - self.started, 1e-9)
        self.log.info(self.message, done, self.total, rate, max(self.total - done, 0) / max(rate, 1e-9))
        self.next_report = now + self.interval_s
