"""The load lock: one load at a time, a per-load token, renewed by a watchdog, released only by its owner."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

from ..config import StoreConfig
from ..runtime import get_logger
from .errors import LoadLockedError, LockLostError
from .fence import server_time_us
from .resilience import is_cluster

log = get_logger("load_redis")

_RENEW_LOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_SET_IF_OWNER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('JSON.SET', KEYS[2], '$', ARGV[2]) end return false"
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def same_slot(*names: str) -> bool:
    from redis.crc import key_slot

    return len({key_slot(n.encode()) for n in names}) == 1


class LoadLock:
    """One load at a time: ``SET lock_key token NX PX lock_ttl_s``, renewed by a watchdog thread.

    Only the owner (same token) renews or releases it; a worker that is killed stops renewing, so
    its lock expires after ``lock_ttl_s`` and the next load proceeds. The lock counts as lost only
    when the owner check fails or no renewal succeeded for ``lock_ttl_s`` (a renewal that fails
    during a failover is tried again at the next interval). The manifest is written by a script
    that checks the token in the same step, so a load whose lock was lost never publishes; on a
    cluster whose lock and manifest keys hash to different slots (the defaults) the script cannot
    span both, so the owner first renews the lock (it cannot expire within ``lock_ttl_s`` then)
    and writes the manifest right after.
    """

    def __init__(self, client: Any, settings: StoreConfig, owner: str) -> None:
        self.client, self.settings = client, settings
        self.token = f"{owner} on {socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:12]}"
        self.lost: str | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._renewed_at = self._checked_at = time.monotonic()
        self.generation_us = 0

    @property
    def ttl_ms(self) -> int:
        return int(self.settings.lock_ttl_s * 1000)

    def acquire(self) -> None:
        key = self.settings.lock_key
        deadline = time.monotonic() + self.settings.lock_wait_s
        waiting_logged = False
        while not self.client.set(key, self.token, nx=True, px=self.ttl_ms):
            holder, remaining_ms = self.client.get(key), self.client.pttl(key)
            if time.monotonic() >= deadline:
                raise LoadLockedError(
                    f"{key} is held by {_text(holder)!r} "
                    f"(expires in {max(remaining_ms, 0) / 1000:.0f}s unless renewed): "
                    f"another load is running; waited {self.settings.lock_wait_s}s, wrote nothing"
                )
            if not waiting_logged:
                log.info("waiting up to %.0fs for %s, held by %r", self.settings.lock_wait_s, key, _text(holder))
                waiting_logged = True
            time.sleep(0.2)
        self._renewed_at = self._checked_at = time.monotonic()
        # The fence's generation (.fence): a load that takes the lock later has a larger one, so it wins
        # every fence against this one, whatever the dates, once this load has stalled past its lock.
        self.generation_us = server_time_us(self.client, key)
        log.info("acquired %s (expires after %ds without renewal)", key, self.settings.lock_ttl_s)

    def renew(self) -> bool:
        renewed = bool(self.client.eval(_RENEW_LOCK, 1, self.settings.lock_key, self.token, self.ttl_ms))
        if renewed:
            self._renewed_at = time.monotonic()
        return renewed

    def _watch(self) -> None:
        interval = self.settings.lock_ttl_s / 3
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    self.lost = f"{self.settings.lock_key} expired or was taken by another load"
            except Exception as exc:  # recorded, raised by ensure_held() in the loading thread
                unrenewed_s = time.monotonic() - self._renewed_at
                if unrenewed_s >= self.settings.lock_ttl_s:
                    self.lost = (f"renewing {self.settings.lock_key} failed for {unrenewed_s:.0f}s: "
                                 f"{type(exc).__name__}: {exc}")
                else:
                    log.warning("renewing %s failed (%s: %s); trying again in %.0fs", self.settings.lock_key,
                                type(exc).__name__, exc, interval)
            if self.lost:
                log.error("load lock lost: %s", self.lost)
                return

    def check(self) -> None:
        """Between chunks of documents: raise :class:`LockLostError` when the lock is no longer ours.

        Reads the lock when it was last confirmed a renewal interval (``lock_ttl_s / 3``) ago or more:
        the lock can only have been lost after at least that long, e.g. by a process stalled past
        its lock (SIGSTOP) that has just resumed. A read that fails is left to the writer's own
        retries. A stall between this check and the chunk's writes is left to the fenced write (:mod:`.fence`):
        the load that took the lock meanwhile has a newer generation, so its fences refuse this one's
        writes whatever the logical dates (a rerun of the same date included).
        """
        import redis

        self.ensure_held()
        now = time.monotonic()
        if now - self._checked_at < self.settings.lock_ttl_s / 3:
            return
        try:
            holder = self.client.get(self.settings.lock_key)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if isinstance(exc, redis.AuthenticationError):
                raise
            return
        if holder is None or _text(holder) != self.token:
            self.lost = (f"{self.settings.lock_key} is held by {_text(holder)!r}" if holder is not None
                         else f"{self.settings.lock_key} expired")
            raise LockLostError(f"{self.lost} while this load was writing (it stalled past lock_ttl_s="
                                f"{self.settings.lock_ttl_s}s?); stopped before the next chunk, manifest not written")
        self._checked_at = now

    def ensure_held(self) -> None:
        if self.lost:
            raise LockLostError(f"{self.lost}; not writing the manifest (rerun the load)")

    def set_if_owner(self, key: str, document: str, replicas: int = 0, timeout_ms: int = 0) -> int:
        """``JSON.SET key $ document`` only while this load still holds the lock; with ``replicas`` > 0, then
        ``WAIT replicas timeout_ms`` on the same connection. Returns the replicas that acknowledged it."""
        cluster = is_cluster(self.client)
        node = self.client.get_redis_connection(self.client.get_node_from_key(key)) if cluster else self.client
        pipe = node.pipeline(transaction=False)  # one connection: WAIT covers the writes made on it
        if cluster and not same_slot(self.settings.lock_key, key):
            if not self.renew():
                raise LockLostError(f"{self.settings.lock_key} is no longer held by this load; {key} not written")
            pipe.execute_command("JSON.SET", key, "$", document)
        else:
            pipe.eval(_SET_IF_OWNER, 2, self.settings.lock_key, key, self.token, document)
        if replicas > 0:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        replies = pipe.execute()
        if not replies[0]:
            raise LockLostError(f"{self.settings.lock_key} is no longer held by this load; {key} not written")
        return int(replies[1]) if replicas > 0 else 0

    def release(self) -> None:
        self.client.eval(_RELEASE_LOCK, 1, self.settings.lock_key, self.token)

    def __enter__(self) -> LoadLock:
        self.acquire()
        self._watchdog = threading.Thread(target=self._watch, name="recsys-load-lock", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import redis

        from .errors import RedisUnavailableError

        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        unreachable = (RedisUnavailableError, redis.ConnectionError, redis.TimeoutError)
        if isinstance(exc, unreachable) and not isinstance(exc, redis.AuthenticationError):
            # Redis stayed unreachable through every try: more tries to release would only delay the
            # failure. The lock expires by itself within lock_ttl_s.
            log.error("not releasing %s: Redis is unreachable; it expires within %ds",
                      self.settings.lock_key, self.settings.lock_ttl_s)
            return
        try:
            self.release()
        except Exception as release_error:
            if exc is None:
                raise
            # The load's own error is the one to report; the lock expires by itself.
            log.error("could not release %s (%s); it expires within %ds",
                      self.settings.lock_key, release_error, self.settings.lock_ttl_s)
