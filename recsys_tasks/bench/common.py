"""Constants, the error type and small helpers shared by the benchmark's parts."""

from __future__ import annotations

EMBEDDING_DIM = 64
NOTEBOOK_K = 20
"""The notebook retrieves 20 candidates per user and ranks all 20."""
NOTEBOOK_USER_BATCH = 32
"""The notebook's user loader batch size for candidate retrieval."""
BENCH_KEY_PREFIX = "BENCH:USER:"
BENCH_MANIFEST_KEY = "BENCH:MANIFEST"
REDIS_BENCHMARK_PIPELINE = 64


class BenchError(RuntimeError):
    """The benchmark could not measure something it promised to (a missing tool, a failed child)."""



def _rate(count: float, seconds: float) -> float:
    return round(count / max(seconds, 1e-9), 1)

