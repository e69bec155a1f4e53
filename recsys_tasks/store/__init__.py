"""The RedisJSON store: stage 7 (``load_redis``) and the readers of what it publishes.

One module per role; dependencies point one way (keys <- writer <- publish; reader reads):

- :mod:`.keys`: every key name and the document shape, and their RESP encoding
- :mod:`.source`: the recommendations to publish (listing, validation, streaming)
- :mod:`.topology`: one Redis or a cluster's slot -> master map and per-node connections
- :mod:`.resilience`: the bounded retries (``store.retry_attempts``)
- :mod:`.connect`: a client from a URL with every wait bounded; a client that does not match the server named
- :mod:`.fence`: the fenced write (a script that never replaces a newer logical date's document)
- :mod:`.writer`: pipelined, pre-encoded writes with redirect / failover handling
- :mod:`.durability`: ``WAIT`` for the replicas and the read-back of every key before the manifest
- :mod:`.lock`: the load lock
- :mod:`.capacity`: the capacity pre-flight and the memory figures
- :mod:`.publish`: the load stage (validate -> quality gate -> skip/force -> capacity -> write -> manifest)
- :mod:`.reader`: ``fetch`` (with the fallback list) and ``read_manifest``
- :mod:`.errors`: the store's exception types

The public names are re-exported here (``from recsys_tasks.store import fetch, publish``).
"""

from __future__ import annotations

from .capacity import check_capacity, require_json_module, sample_memory
from .connect import WrongClientError, connect
from .durability import write_confirmed
from .errors import (
    CapacityError,
    DurabilityError,
    EvictionError,
    LoadLockedError,
    LockLostError,
    RedisJSONMissingError,
    RedisUnavailableError,
    StoreError,
    StoreOutOfMemoryError,
    SupersededError,
)
from .keys import build_document, encode_batch, encode_commands, user_key
from .lock import LoadLock
from .publish import load_redis, parse_logical_date, publish, publish_decision, sweep_leftovers, write_fallback
from .reader import fetch, read_manifest
from .resilience import resilient
from .source import REQUIRED_COLUMNS, check_recommendations, iter_recommendation_batches, recommendation_files
from .writer import PipelinedWriter, write_documents

__all__ = [
    "DurabilityError", "EvictionError", "SupersededError", "WrongClientError", "connect", "write_confirmed",
    "REQUIRED_COLUMNS", "CapacityError", "LoadLock", "LoadLockedError", "LockLostError", "PipelinedWriter",
    "RedisJSONMissingError", "RedisUnavailableError", "StoreError", "StoreOutOfMemoryError", "build_document",
    "check_capacity", "check_recommendations", "encode_batch", "encode_commands", "fetch",
    "iter_recommendation_batches",
    "load_redis", "parse_logical_date", "publish", "publish_decision", "read_manifest", "recommendation_files",
    "require_json_module", "resilient", "sample_memory", "sweep_leftovers", "user_key", "write_documents",
    "write_fallback",
]
