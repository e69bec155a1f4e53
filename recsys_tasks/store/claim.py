"""Claiming the fences: before its first document a fenced load sets every slot's fence to its own date and generation.

One call of the fenced write (:mod:`.fence`) per master, naming the fences of the slots it serves and no
documents; a fence of a newer load refuses the claim, and the load stops before writing anything.
"""

from __future__ import annotations

from typing import Any

from ..config import StoreConfig
from .errors import RedisUnavailableError, SupersededError
from .fence import SLOTS, Fence, load_fenced_write
from .parts import bulk
from .resilience import transient_errors, wait_before_retry


def superseded(name: str) -> SupersededError:
    return SupersededError(
        f"{name} holds a newer run's document or fence for this load's users (a newer logical date, or a load that "
        "took the lock after this one, wrote there while this load ran, e.g. after it stalled past its lock); the "
        "fenced write left them in place and this load stops without writing the manifest")


def claim_payload(fence: Fence, slots: Any) -> bytes:
    """One call claiming the fences of ``slots`` (all on one node; ``[-1]``: the one fence of a single Redis)."""
    keys_ = [fence.key_of_slot(None if int(slot) < 0 else int(slot)) for slot in slots]
    arguments = fence.arguments(create=True)
    return (b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 + len(arguments) + 1 + 2 * len(keys_)) + bulk(fence.sha) + bulk("1")
            + bulk(keys_[0]) + b"".join(bulk(a) for a in arguments) + bulk(str(len(keys_)))
            + b"".join(bulk(key) + b"$1\r\n0\r\n" for key in keys_))


def claim_fences(route: Any, client: Any, settings: StoreConfig, fence: Fence) -> None:
    """Claim every slot's fence (one fence on a single Redis) through ``route``'s connections; a redirect or a
    lost connection (a failover, a slot moving) claims again after a refresh, ``store.retry_attempts`` tries."""
    import numpy as np
    import redis.exceptions as rex

    again = (*transient_errors(), rex.ClusterDownError, rex.TryAgainError, rex.BusyLoadingError, rex.ReadOnlyError,
             rex.AskError, rex.NoScriptError)
    slots = np.arange(SLOTS) if route.cluster else np.array([-1])
    for failures in range(1, settings.retry_attempts + 1):
        try:
            for name, picks in route.group(slots).items():
                connection = route.connection(name)
                connection.send_packed_command([claim_payload(fence, slots if picks is None else slots[picks])],
                                               check_health=False)
                if connection.read_response() == -1:
                    raise superseded(name)
            return
        except rex.ResponseError as exc:
            if isinstance(exc, again) or "non local key" in str(exc):
                error: BaseException = exc
            else:
                raise
        except again as exc:
            if isinstance(exc, rex.AuthenticationError):
                raise
            error = exc
        if failures == settings.retry_attempts:
            raise RedisUnavailableError(f"claiming the fences failed after {failures} tries "
                                        f"({type(error).__name__}: {error}); no document was written") from error
        wait_before_retry(settings, failures, error, "claiming the fences")
        for name in route.connected_names():
            route.drop(name)
        route.refresh()
        if isinstance(error, rex.NoScriptError):
            load_fenced_write(client)
