"""Bounded retries for the load: exactly ``store.retry_attempts`` tries per failure, each wait logged.

A try that fails with a connection error or a timeout is followed by at most ``retry_attempts - 1``
more, each after a backoff wait (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``) and
each making one connection attempt: redis-py's own connect retry is switched off inside a try, so
retries never nest. A refused password is never retried. Works for ``Redis`` and ``RedisCluster``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..config import StoreConfig
from ..runtime import get_logger

log = get_logger("load_redis")
T = TypeVar("T")


def is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors a later try can get past: the connection, a timeout, or a cluster between two topologies."""
    import redis
    from redis.exceptions import BusyLoadingError, ClusterDownError, TryAgainError

    return (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, BusyLoadingError)


def backoff_s(settings: StoreConfig, failures: int) -> float:
    """The wait before try ``failures + 1``."""
    return min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** (failures - 1))


def wait_before_retry(settings: StoreConfig, failures: int, error: BaseException, what: str) -> None:
    delay = backoff_s(settings, failures)
    log.warning("Redis %s (%s) %s; retrying in %.1fs (try %d of %d)", type(error).__name__, error, what, delay,
                failures + 1, settings.retry_attempts)
    time.sleep(delay)


def with_tries(settings: StoreConfig, what: str, operation: Callable[[], T]) -> T:
    """``operation()`` with ``retry_attempts`` tries on connection errors and timeouts (never a refused password).

    Inside a try redis-py's own retries make one attempt, so tries never nest. Used for the load's
    first contact: redis-py 6.4 does not retry a refused first connection by itself.
    """
    import redis

    failures = 0
    while True:
        outer = getattr(_retry_scope, "active", False)
        _retry_scope.active = True
        try:
            return operation()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if isinstance(exc, redis.AuthenticationError):
                raise
            failures += 1
            if failures >= settings.retry_attempts:
                raise
            wait_before_retry(settings, failures, exc, what)
        finally:
            _retry_scope.active = outer


def single_try() -> Any:
    """A retry policy of one try: what a connection gets inside one of our tries."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


class _LoadBackoff:
    """Backoff for redis-py's Retry: ``backoff_s`` per failure, logging each wait."""

    def __init__(self, settings: StoreConfig) -> None:
        self.settings = settings

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        delay = backoff_s(self.settings, failures)
        log.warning("Redis connection failed (try %d of %d); retrying in %.1fs",
                    failures, self.settings.retry_attempts, delay)
        return delay


_retry_scope = threading.local()


def load_retry(settings: StoreConfig) -> Any:
    from redis.exceptions import AuthenticationError
    from redis.retry import Retry

    class LoadRetry(Retry):
        """Retries connection errors and timeouts, never a refused password.

        redis-py nests a connect retry inside each command's retry; only the outermost one retries
        here, so an operation gets exactly ``retry_attempts`` tries.
        """

        def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):  # type: ignore[no-untyped-def]
            # Our own loop (not super()'s): redis-py 6.4 takes (do, fail), 8.x adds the last two arguments.
            if getattr(_retry_scope, "active", False):
                return do()
            _retry_scope.active = True
            try:
                failures = 0
                while True:
                    try:
                        return do()
                    except self._supported_errors as error:
                        if isinstance(error, AuthenticationError) or (is_retryable and not is_retryable(error)):
                            raise
                        failures += 1
                        if with_failure_count:
                            fail(error, failures)
                        else:
                            fail(error)
                        if failures > self._retries:
                            raise
                        time.sleep(self._backoff.compute(failures))
            finally:
                _retry_scope.active = False

    return LoadRetry(_LoadBackoff(settings), settings.retry_attempts - 1)  # type: ignore[arg-type]


@contextlib.contextmanager
def resilient(client: Any, settings: StoreConfig) -> Iterator[Any]:
    """For the load's duration: bounded retries on ``client``, and socket timeouts if it has none.

    A single node: redis-py applies the policy to connecting and to every command and pipeline.
    A cluster: its commands get ``retry_attempts`` tries (each refreshing the slot map after a
    connection error; redis-py's cluster client does not wait between them), and a node's own
    connection makes one attempt per try. The pipelined document writes have their own loop
    (:mod:`recsys_tasks.store.writer`) with the same budget and the backoff waits.
    """
    if is_cluster(client):
        with _resilient_cluster(client, settings):
            yield client
        return
    previous_retry = client.get_retry()
    kwargs = client.connection_pool.connection_kwargs
    previous_timeouts = {k: kwargs.get(k) for k in ("socket_timeout", "socket_connect_timeout")}
    for name, value in previous_timeouts.items():
        if value is None:
            kwargs[name] = settings.socket_timeout_s
    # Connections already in the pool keep the timeouts they were made with: give them ours too.
    available = list(getattr(client.connection_pool, "_available_connections", []))
    pooled = [c for c in available if c.socket_timeout is None]
    for connection in pooled:
        connection.socket_timeout = connection.socket_connect_timeout = settings.socket_timeout_s
        if connection._sock is not None:
            connection._sock.settimeout(settings.socket_timeout_s)
    client.set_retry(load_retry(settings))
    try:
        yield client
    finally:
        for connection in pooled:
            connection.socket_timeout = connection.socket_connect_timeout = None
            if connection._sock is not None:
                connection._sock.settimeout(None)
        if previous_retry is None:
            client.set_retry(single_try())  # what redis-py gives a connection without a policy
            kwargs["retry"] = None
        else:
            client.set_retry(previous_retry)
        kwargs.update(previous_timeouts)


@contextlib.contextmanager
def _resilient_cluster(client: Any, settings: StoreConfig) -> Iterator[None]:
    kwargs = client.nodes_manager.connection_kwargs
    saved = {k: kwargs.get(k) for k in ("socket_timeout", "socket_connect_timeout")}
    for name in saved:
        if saved[name] is None:
            kwargs[name] = settings.socket_timeout_s
    # No "retry" in these kwargs: redis-py gives every node connection it creates a one-try policy itself,
    # and passes it beside them, so a node first met mid-load (a promoted replica) would fail to connect.
    node_retries = {}
    for node in list(client.nodes_manager.nodes_cache.values()):
        if node.redis_connection is not None:
            node_retries[node.name] = (node, node.redis_connection.get_retry())
            node.redis_connection.set_retry(single_try())
    previous = client.retry
    from redis.retry import Retry

    client.set_retry(Retry(_LoadBackoff(settings), settings.retry_attempts - 1))  # type: ignore[arg-type]
    try:
        yield
    finally:
        client.set_retry(previous)
        for node, retry in node_retries.values():
            if node.redis_connection is not None and retry is not None:
                node.redis_connection.set_retry(retry)
        for name, value in saved.items():
            if value is None:
                kwargs.pop(name, None)
            else:
                kwargs[name] = value


def failover_s(client: Any) -> float:
    """Seconds a cluster may take to replace a failed master: twice its ``cluster-node-timeout`` (read with
    ``CONFIG GET`` from a master; Redis's default 15 s when that is not allowed) plus 2 s for the election."""
    import redis

    node_timeout_ms = 15_000
    try:
        reply = client.get_redis_connection(client.get_primaries()[0]).config_get("cluster-node-timeout")
        node_timeout_ms = int(reply.get("cluster-node-timeout", node_timeout_ms))
    except (redis.RedisError, IndexError, ValueError) as exc:
        log.info("cluster-node-timeout unknown (%s); assuming Redis's default %d ms", exc, node_timeout_ms)
    return 2 * node_timeout_ms / 1000 + 2.0


def covering_failover(client: Any, settings: StoreConfig) -> StoreConfig:
    """``settings`` with enough ``retry_attempts`` that the backoff waits outlast a failover of this cluster
    (:func:`failover_s`); unchanged for a single Redis or when they already do."""
    import dataclasses

    if not is_cluster(client):
        return settings
    needed, attempts = failover_s(client), settings.retry_attempts
    while sum(backoff_s(settings, f) for f in range(1, attempts)) < needed and attempts < 100:
        attempts += 1
    if attempts > settings.retry_attempts:
        log.info("retry budget raised from %d to %d tries so the waits (%.1fs) outlast a failover (~%.1fs: "
                 "2 x cluster-node-timeout + 2s)", settings.retry_attempts, attempts,
                 sum(backoff_s(settings, f) for f in range(1, attempts)), needed)
        settings = dataclasses.replace(settings, retry_attempts=attempts)
    return settings
