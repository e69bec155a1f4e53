"""redis-py differences the pinned set has to bridge.

The Celery stack needs redis-py 6.4 (``kombu[redis]`` wants < 6.5); redis-py 7+ added the
``is_retryable`` filter to ``Retry.call_with_retry``. The load's retry policy works on both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def call_with_filtered_retry(
    call_with_retry: Callable[..., Any],
    do: Callable[[], Any],
    fail: Callable[..., Any],
    retryable: Callable[[Exception], bool],
    with_failure_count: bool = False,
) -> Any:
    """``call_with_retry(do, fail)`` that retries only errors ``retryable`` accepts.

    redis-py >= 7 takes the filter itself; on 6.x the filter runs in ``fail``, which re-raises a
    non-retryable error (a refused password) at once instead of backing off and trying again, and lets
    a retryable one go round again with backoff.
    """
    if "is_retryable" in inspect.signature(call_with_retry).parameters:
        return call_with_retry(do, fail, retryable, with_failure_count)

    def fail_or_raise(error: Exception) -> None:
        if not retryable(error):
            raise error
        try:
            fail(error)
        except Exception as raised:
            # redis-py 6.x's command path disconnects and re-raises the same error unless the client was
            # built with retry_on_error; the load's policy retries it (as 7+ does), anything else propagates.
            if raised is not error:
                raise

    def do_or_connection_error(do: Callable[[], Any] = do) -> Any:
        # redis-py 6.x hands the raw socket error of a refused connect to the retry, which only knows
        # redis' own ConnectionError: present it as one so the connect is retried too (as 7+ does).
        from redis.exceptions import ConnectionError as RedisConnectionError

        try:
            return do()
        except OSError as error:
            raise RedisConnectionError(f"{type(error).__name__}: {error}") from error

    return call_with_retry(do_or_connection_error, fail_or_raise)
