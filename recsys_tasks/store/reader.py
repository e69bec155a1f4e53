"""Reading what the load published: one user's document (with the popularity fallback) and the manifest.

Works on a single Redis and on a Redis Cluster (redis-py routes each key to its slot's node).
"""

from __future__ import annotations

import json
from typing import Any

from ..config import StoreConfig
from . import keys
from .errors import RedisJSONMissingError, json_module_hint


def _json_get(client: Any, key: str) -> Any:
    import redis

    try:
        return client.execute_command("JSON.GET", key)
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise RedisJSONMissingError(json_module_hint("Redis")) from exc
        raise


def fetch(
    client: Any, user_id: int, settings: StoreConfig | None = None, *, fallback: bool = True
) -> dict[str, Any] | None:
    """The published document of one user (by raw id).

    A user with no document (cold or unknown) gets the popularity list published under
    ``settings.fallback_key``, with this ``user_id`` and ``"fallback": true``; None only when neither
    exists (or ``fallback=False``).
    """
    settings = settings or StoreConfig()
    raw = _json_get(client, keys.user_key(settings, user_id))
    if raw is not None:
        return json.loads(raw)
    if not fallback:
        return None
    raw = _json_get(client, settings.fallback_key)
    return None if raw is None else {"user_id": int(user_id), **json.loads(raw), "fallback": True}


def read_manifest(client: Any, settings: StoreConfig | None = None) -> dict[str, Any] | None:
    """The manifest naming the published run, or None when nothing has been published."""
    settings = settings or StoreConfig()
    raw = _json_get(client, settings.manifest_key)
    return None if raw is None else json.loads(raw)
