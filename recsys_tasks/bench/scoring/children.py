"""The real ``score`` stage in a child process, and that child's own peak memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ...config import Config
from ...runtime import get_logger, peak_rss_bytes
from ..common import BenchError

log = get_logger("bench")


def run_scoring_child(run_dir: Path, top_k: int, top_n: int, chunk_users: int, rank_batch_rows: int,
                      out: Path, kernel: str = "auto") -> dict[str, Any]:
    """Run the real ``score`` stage in a fresh process and return its summary plus its peak RSS."""
    command = [sys.executable, "-m", "recsys_tasks.bench.scoring", "--child-score", str(run_dir),
               "--child-out", str(out),
               "--top-k", str(top_k), "--top-n", str(top_n), "--chunk-users", str(chunk_users),
               "--rank-batch-rows", str(rank_batch_rows), "--child-kernel", kernel]
    log.info("scoring %s at K=%d N=%d (retrieval kernel %s) in a child process", run_dir, top_k, top_n, kernel)
    # The child's log (progress: users done, rate, time left) goes straight to ours.
    result = subprocess.run(command)
    if result.returncode != 0:
        raise BenchError(f"scoring child for {run_dir} failed with exit code {result.returncode} (its log is above)")
    return json.loads(out.read_text())


def _child_score(run_dir: Path, top_k: int, top_n: int, chunk_users: int, rank_batch_rows: int, out: Path,
                 kernel: str = "auto") -> None:
    from ...scoring.stage import score

    config = Config().with_overrides({"scoring.top_k": top_k, "scoring.top_n": top_n,
                                      "scoring.user_chunk_size": chunk_users,
                                      "scoring.rank_batch_rows": rank_batch_rows,
                                      "scoring.retrieval_kernel": kernel,
                                      # Synthetic inputs have no validation window to fit a blend on; the
                                      # bench measures the DLRM ranking path, as before blends existed, over
                                      # the notebook's candidates (retrieved ones only, training history).
                                      "scoring.blend": "dlrm", "scoring.history": "train",
                                      "scoring.popular_candidates": 0})
    started = time.perf_counter()
    summary = score(config, run_dir)
    # The stage's users/s counts scoring only; planning (and an approximate index's build) is one-off per run.
    summary["stage_seconds"] = round(time.perf_counter() - started, 3)
    summary["peak_rss_mb"] = peak_rss_mb()
    out.write_text(json.dumps(summary))


def peak_rss_mb() -> float:
    """This process's own peak resident memory, MB (:func:`recsys_tasks.runtime.peak_rss_bytes`, Linux's ``VmHWM``).

    Elsewhere ``getrusage``'s ``ru_maxrss`` (KiB on Linux, bytes on macOS), an upper bound for a child
    process: it survives ``exec``, so in a child of a large parent it reports the parent's size at ``fork``
    (a child started by a bench holding a million users' catalog read 3.5 GB while its own peak was 2.4 GB).
    """
    peak = peak_rss_bytes()
    if peak is not None:
        return round(peak / (1024 * 1024), 1)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)
