"""What the writer sends to one node and what it expects back: rows of plain or fenced writes, as one RESP payload.

A plain part is ``JSON.SET`` + ``EXPIRE`` per row. A fenced part is, normally, one ``EVALSHA`` of the
fenced write (:mod:`.fence`) per ``ROWS_PER_CALL`` rows, checking the fence of its first row's slot;
after a redirect its rows go one call each (its own slot's fence; a single declared key, which
``ASKING`` can follow).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from . import keys
from .fence import Fence

ROW_REPLIES = b"+OK\r\n:1\r\n"  # JSON.SET, EXPIRE
ROW_REPLIES_ASKING = b"+OK\r\n+OK\r\n+OK\r\n:1\r\n"  # ASKING, JSON.SET, ASKING, EXPIRE
FENCED_ROW_REPLIES = {False: b":1\r\n", True: b"+OK\r\n:1\r\n"}  # EVALSHA of one row (after ASKING)
# Rows per fenced-write call: a server runs a call only once all of it has arrived, so calls of a few
# hundred rows let it work while the rest of the chunk streams in (one call per chunk and node made the
# client and the server take turns).
ROWS_PER_CALL = 512


def bulk(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def parse_error(message: str) -> Exception:
    """An error line as redis-py raises it (MOVED -> MovedError, OOM -> OutOfMemoryError, ...)."""
    from redis._parsers.base import BaseParser

    return BaseParser.parse_error(message)


@dataclass
class Part:
    """Rows bound for one node and the rows' slots (-1 on a single Redis).

    Plain: ``commands`` holds both commands of each row. Fenced (``fence`` set): ``commands`` holds each
    row's key and ``documents`` its document, as RESP bulk strings; ``batch`` sends them as one call.
    """

    commands: Any
    slots: Any
    asking: bool = False
    fence: Fence | None = None
    documents: Any = None
    batch: bool = True

    def __len__(self) -> int:
        return len(self.commands)

    def take(self, indices: Any) -> Part:
        import pyarrow as pa

        if indices is None:
            return self
        picks = pa.array(indices)
        return replace(self, commands=self.commands.take(picks), slots=self.slots[indices],
                       documents=None if self.documents is None else self.documents.take(picks))

    def one_call_per_row(self, asking: bool = False) -> Part:
        return replace(self, batch=False, asking=asking)

    @property
    def replies_per_row(self) -> int:
        """Reply lines per row; 0 for a batch (one reply, ``:<rows>``, per call of up to ``ROWS_PER_CALL`` rows)."""
        if self.fence is None:
            return 4 if self.asking else 2
        return 0 if self.batch else (2 if self.asking else 1)

    def expected_replies(self) -> bytes:
        if self.fence is None:
            return (ROW_REPLIES_ASKING if self.asking else ROW_REPLIES) * len(self)
        if self.batch:
            return b"".join(b":%d\r\n" % min(ROWS_PER_CALL, len(self) - start)
                            for start in range(0, len(self), ROWS_PER_CALL))
        return FENCED_ROW_REPLIES[self.asking] * len(self)

    def reply_lines(self) -> int:
        if self.fence is not None and self.batch:
            return -(-len(self) // ROWS_PER_CALL)
        return len(self) * self.replies_per_row

    def payload(self) -> bytes:
        if self.fence is None:
            if not self.asking:
                return keys.payload(self.commands)
            return b"".join(keys.asking_payload(row.encode()) for row in self.commands.to_pylist())
        if self.batch:
            return b"".join(self._batch_payload(start, min(start + ROWS_PER_CALL, len(self)))
                            for start in range(0, len(self), ROWS_PER_CALL))
        return b"".join(self._row_payload(i) for i in range(len(self)))

    def _fence_of(self, slot: int) -> bytes:
        assert self.fence is not None
        return bulk(self.fence.key_of_slot(None if slot < 0 else int(slot)))

    def _batch_payload(self, start: int, end: int) -> bytes:
        """``EVALSHA sha 1 <first key> <fence args> 1 <fence of the first row's slot> <rows> keys* documents*``."""
        assert self.fence is not None
        key_bulks, doc_bulks = self.commands.slice(start, end - start), self.documents.slice(start, end - start)
        rows, arguments = end - start, self.fence.arguments(create=True)
        return (b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 + len(arguments) + 3 + 2 * rows) + bulk(self.fence.sha) + bulk("1")
                + key_bulks[0].as_py().encode() + b"".join(bulk(a) for a in arguments) + bulk("1")
                + self._fence_of(self.slots[start]) + bulk(str(rows))
                + keys.payload(key_bulks) + keys.payload(doc_bulks))

    def _row_payload(self, row: int) -> bytes:
        """One row as its own call (its key declared, so a cluster node redirects it, and ``ASKING`` applies)."""
        assert self.fence is not None
        key, document = self.commands[row].as_py().encode(), self.documents[row].as_py().encode()
        arguments = self.fence.arguments(create=not self.asking)
        call = (b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 + len(arguments) + 5) + bulk(self.fence.sha) + bulk("1") + key
                + b"".join(bulk(a) for a in arguments) + bulk("1") + self._fence_of(self.slots[row]) + bulk("1")
                + key + document)
        return (keys.ASKING + call) if self.asking else call


@dataclass
class Outcome:
    """Rows of a round that were not acknowledged, by what to do with them."""

    transient: list[Part] = field(default_factory=list)
    moved: list[Part] = field(default_factory=list)
    ask: dict[str, list[Part]] = field(default_factory=dict)
    error: BaseException | None = None
    noscript: bool = False  # a node lacked the fenced-write script (a promoted replica, a restart)

    def __bool__(self) -> bool:
        return bool(self.transient or self.moved or self.ask)

    def rows(self) -> int:
        return sum(len(p) for p in (*self.transient, *self.moved, *(p for ps in self.ask.values() for p in ps)))
