"""Every Redis key name the load uses and the shape of every document it writes (the one place that formats them).

A user's document lives at ``<key_prefix><raw user id>`` and holds the notebook's fields
(``user_id``, ``recommendations``) plus ``scores``, ``run_id``, ``logical_date`` and
``generated_at``. :func:`encode_commands` builds the RESP of a whole batch of them column-wise.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..config import StoreConfig
from ..runtime import InputDataError

RUN_FIELDS = ("run_id", "logical_date", "generated_at")
# The RESP that starts each row's second command; a document (JSON) never holds a raw CR or LF.
EXPIRE_PREFIX = b"*3\r\n$6\r\nEXPIRE\r\n"
ASKING = b"*1\r\n$6\r\nASKING\r\n"


def user_key(settings: StoreConfig, user_id: int) -> str:
    return f"{settings.key_prefix}{int(user_id)}"


def size_probe_key(settings: StoreConfig) -> str:
    """Scratch key of the capacity pre-flight (next to the lock, so a least-privilege ACL on ``RECSYS:*`` covers it)."""
    return f"{settings.lock_key}:SIZE_PROBE"


def document_key_pattern(settings: StoreConfig) -> str:
    """A ``SCAN MATCH`` pattern for every key under the prefix (glob characters in the prefix escaped)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in settings.key_prefix) + "*"


def build_document(
    user_id: int, recommendations: list[int], scores: list[float], *, run_id: str, logical_date: str, generated_at: str
) -> dict[str, Any]:
    return {
        "user_id": int(user_id),
        "recommendations": [int(i) for i in recommendations],
        "scores": [round(float(s), 6) for s in scores],
        "run_id": run_id,
        "logical_date": logical_date,
        "generated_at": generated_at,
    }


def fallback_document(fallback: dict[str, Any], run_fields: dict[str, str]) -> str:
    """The popularity list for users with no document, as stored at ``fallback_key``."""
    doc = {"recommendations": [int(i) for i in fallback["recommendations"]],
           "scores": [round(float(s), 6) for s in fallback["scores"]], **run_fields, "fallback": True}
    return json.dumps(doc, separators=(",", ":"))


def manifest_document(run_fields: dict[str, str], *, users: int, settings: StoreConfig, forced_by: list[str],
                      completed_at: str) -> dict[str, Any]:
    """What ``manifest_key`` says about the published run.

    ``forced`` is true when any override made this run publish; ``forced_by`` names which:
    ``"date"`` (``store.force`` replaced a newer run: the rollback) and/or ``"quality"``
    (``quality.force_publish`` published a run that failed the quality gate).
    """
    return {**run_fields, "users": users, "key_prefix": settings.key_prefix, "forced": bool(forced_by),
            "forced_by": list(forced_by), "completed_at": completed_at}


def document_tail(run_fields: dict[str, str]) -> str:
    """The run fields every document of a run ends with, already JSON-encoded (with the closing brace)."""
    return ",".join(f"{json.dumps(n)}:{json.dumps(run_fields[n])}" for n in RUN_FIELDS) + "}"


def _numpy(values: Any) -> Any:
    """A pyarrow array as numpy; zero-copy when there are no nulls (pyarrow's other path is ~1 us per value)."""
    return values.to_numpy(zero_copy_only=values.null_count == 0)


MICRO = 1_000_000


@functools.lru_cache(maxsize=1)
def _micro_spellings() -> tuple[Any, Any]:
    """``repr(m / 1e6)`` for every m in [0, 10**6] (how ``json`` spells a probability rounded to 6
    decimals) as a fixed-width byte matrix (one row of 8 bytes per m; bytes past a row's length are
    ignored) and each spelling's length.

    Built with numpy in ~60 ms (~9 MB, once per process) instead of a million ``repr`` calls (~0.45 s,
    which was most of a 20,000-user load): for 100 <= m < 10**6 the shortest spelling that reads back as
    the same double is ``0.`` then m's six digits without trailing zeros (any shorter decimal is at least
    1e-6 away, far more than a double's spacing here); Python spells the other 101 values differently
    (``0.0``, ``1.0`` and, below 1e-4, ``1.5e-05``), so those come from ``repr``. ``tests/test_store.py``
    checks every row against ``repr``.
    """
    import numpy as np

    width = 8
    three = np.array([[ord(c) for c in f"{n:03d}"] for n in range(1000)], dtype=np.uint8)  # "000".."999"
    trailing_zeros = np.array([3] + [len(f"{n:03d}") - len(f"{n:03d}".rstrip("0")) for n in range(1, 1000)])
    m = np.arange(MICRO + 1, dtype=np.int64)
    high, low = (m // 1000) % 1000, m % 1000
    matrix = np.empty((MICRO + 1, width), dtype=np.uint8)
    matrix[:, 0], matrix[:, 1] = ord("0"), ord(".")
    matrix[:, 2:5], matrix[:, 5:8] = three[high], three[low]
    lengths = 8 - np.where(low != 0, trailing_zeros[low], 3 + trailing_zeros[high])
    for value in [*range(100), MICRO]:  # 0.0, 1e-06 .. 9.9e-05 and 1.0: Python's other spellings
        spelling = repr(value / 1e6).encode()
        matrix[value] = np.frombuffer(spelling.ljust(width, b"\0"), dtype=np.uint8)
        lengths[value] = len(spelling)
    return matrix, lengths


def _score_spellings(values: Any) -> Any:
    """JSON spellings of ``round(float(v), 6)`` for float32 scores, as a pyarrow string array.

    For float32 v, v * 1e6 is exact in float64, so ``np.rint`` (half to even) rounds it exactly as
    ``round(v, 6)`` does, and ``m / 1e6`` is the same double as ``round(v, 6)``: the spelling is a
    table lookup (a numpy gather of fixed-width rows, then the padding dropped). Scores outside
    [0, 1] (a sigmoid never gives one) take the plain per-value path.
    """
    import numpy as np
    import pyarrow as pa

    scores = _numpy(values)
    if scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 1)):
        micro = np.rint(scores.astype(np.float64) * 1e6).astype(np.int64)
        matrix, lengths = _micro_spellings()
        picked, sizes = matrix[micro], lengths[micro]
        data = picked[np.arange(matrix.shape[1]) < sizes[:, None]]  # row-major: each spelling in order
        offsets = np.zeros(len(micro) + 1, dtype=np.int32)
        np.cumsum(sizes, out=offsets[1:])
        return pa.StringArray.from_buffers(len(micro), pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))
    return pa.array([json.dumps(round(float(v), 6)) for v in scores.tolist()], type=pa.string())


def _documents(batch: Any, settings: StoreConfig, tail: str) -> tuple[Any, Any]:
    """Each row's document (JSON) and key name, built column-wise by Arrow's string kernels: no Python per user.

    Each document is byte-for-byte ``json.dumps(build_document(...), separators=(",", ":"))`` (``tail``
    holds the run fields, already encoded).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def rebuilt(column: Any, values: Any) -> Any:
        # A batch may be a slice: offsets index the whole child array, flatten() holds only ours.
        offsets = pc.subtract(column.offsets, column.offsets[0])
        return pa.ListArray.from_arrays(offsets, values)

    recs_column, scores_column = batch.column("recommendations"), batch.column("scores")
    recs = pc.binary_join(rebuilt(recs_column, pc.cast(recs_column.flatten(), pa.string())), ",")
    scores = pc.binary_join(rebuilt(scores_column, _score_spellings(scores_column.flatten())), ",")
    user_ids = pc.cast(batch.column("user_id"), pa.string())
    docs = pc.binary_join_element_wise('{"user_id":', user_ids, ',"recommendations":[', recs, '],"scores":[', scores,
                                       "],", tail, "")
    keys = pc.binary_join_element_wise(settings.key_prefix, user_ids, "")
    return docs, keys


def _length(strings: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pc.binary_length(strings), pa.string())


def _checked(commands: Any) -> Any:
    if commands.null_count:
        raise InputDataError("a recommendations batch holds a null user id, list or score")
    return commands


def encode_commands(batch: Any, settings: StoreConfig, tail: str) -> tuple[Any, Any, int]:
    """RESP for one batch, one string per user: ``JSON.SET key $ doc`` then ``EXPIRE key ttl``.

    ``batch`` is a pyarrow RecordBatch of the recommendations file (see :func:`_documents`).
    Returns ``(commands, keys, document_bytes)``, both arrays aligned with the batch's rows.
    """
    import pyarrow.compute as pc

    docs, keys = _documents(batch, settings, tail)
    key_lengths = _length(keys)
    ttl = str(int(settings.ttl_s))
    commands = pc.binary_join_element_wise(
        "*4\r\n$8\r\nJSON.SET\r\n$", key_lengths, "\r\n", keys, "\r\n$1\r\n$\r\n$", _length(docs), "\r\n", docs,
        "\r\n*3\r\n$6\r\nEXPIRE\r\n$", key_lengths, "\r\n", keys, "\r\n", f"${len(ttl)}\r\n{ttl}\r\n", "")
    return _checked(commands), keys, pc.sum(pc.binary_length(docs)).as_py() or 0


def encode_fenced(batch: Any, settings: StoreConfig, tail: str) -> tuple[Any, Any, Any, int]:
    """The arguments of the fenced write (:mod:`.fence`) for one batch: each row's key and document as RESP
    bulk strings. Returns ``(key bulks, document bulks, keys, document_bytes)``, aligned with the batch's rows."""
    import pyarrow.compute as pc

    docs, keys = _documents(batch, settings, tail)
    key_bulks = _checked(pc.binary_join_element_wise("$", _length(keys), "\r\n", keys, "\r\n", ""))
    doc_bulks = _checked(pc.binary_join_element_wise("$", _length(docs), "\r\n", docs, "\r\n", ""))
    return key_bulks, doc_bulks, keys, pc.sum(pc.binary_length(docs)).as_py() or 0


def payload(commands: Any) -> bytes:
    """Every command of a string array back to back: its data buffer, without a copy per user."""
    import numpy as np

    _, offsets_buffer, data = commands.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[commands.offset : commands.offset + len(commands) + 1]
    return data[int(offsets[0]) : int(offsets[-1])].to_pybytes()


def encode_batch(batch: Any, settings: StoreConfig, tail: str) -> tuple[bytes, int, int]:
    """:func:`encode_commands` as one bytes object: ``(payload, documents, document_bytes)``."""
    commands, _, document_bytes = encode_commands(batch, settings, tail)
    return payload(commands), len(commands), document_bytes


def asking_payload(row: bytes) -> bytes:
    """One row's ``JSON.SET`` + ``EXPIRE``, each preceded by ``ASKING`` (a slot being imported by the target node)."""
    split = row.index(EXPIRE_PREFIX)
    return ASKING + row[:split] + ASKING + row[split:]
