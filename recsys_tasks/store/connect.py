"""Building a client from a URL with every wait bounded, and checking that the client matches the server.

Connecting, cluster discovery and the TLS handshake get ``store.socket_timeout_s`` and ``store.retry_attempts``
tries, like the load itself; a TLS/plain-text mismatch and a plain client at a cluster node are named.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlparse

from ..config import StoreConfig
from ..runtime import get_logger
from .errors import RedisUnavailableError, StoreError
from .resilience import is_cluster, single_try, wait_before_retry

log = get_logger("load_redis")

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_CLIENT_HINT = ("connect with a cluster client (--redis-url redis+cluster://host:port, or the connection "
                       "extra {\"cluster\": true})")


class WrongClientError(StoreError):
    """The client does not match the server: plain vs TLS, or a single-node client at a cluster node."""


def _answers_plain(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` answers a plain-text ``PING`` with any RESP reply (``+PONG``, ``-NOAUTH``...)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


def _answers_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked: this only diagnoses)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except (OSError, ssl.SSLError):
        return False


def diagnose(host: str, port: int, tls: bool, timeout_s: float) -> str:
    """A sentence on why a client could not talk to ``host:port``, when a probe can tell."""
    if tls and _answers_plain(host, port, timeout_s):
        return (f"{host}:{port} speaks plain-text Redis, not TLS: use redis:// (redis+cluster:// for a cluster) "
                "instead of rediss://")
    if not tls and _answers_tls(host, port, timeout_s):
        return (f"{host}:{port} speaks TLS only: use rediss:// (rediss+cluster:// for a cluster) with the CA "
                "certificate, instead of redis://")
    return ""


def require_single_node(client: Any) -> None:
    """Refuse, before anything is written, a single-node client whose server is a Redis Cluster node.

    Reads ``INFO cluster`` (the load's ACL already needs ``+info``); a user without it is told by the
    first redirect instead.
    """
    import redis

    if is_cluster(client):
        return
    kwargs = client.connection_pool.connection_kwargs
    try:
        enabled = int(client.info("cluster").get("cluster_enabled", 0) or 0)
    except redis.exceptions.NoPermissionError:
        return
    if enabled:
        raise WrongClientError(f"{kwargs.get('host', 'redis')}:{kwargs.get('port', '')} is a Redis Cluster node; "
                               f"{CLUSTER_CLIENT_HINT}. Nothing was written")


def connect(url: str, settings: StoreConfig | None = None) -> Any:
    """A client for ``url``: ``redis://`` / ``rediss://`` (TLS) one server, ``redis+cluster://`` /
    ``rediss+cluster://`` a Redis Cluster reached through any of its nodes (the slot map is read from it).

    Every connect and read has ``store.socket_timeout_s``; a server that does not answer gets
    ``store.retry_attempts`` tries, then :class:`RedisUnavailableError` (naming a TLS/plain mismatch
    when a probe finds one). A plain URL at a cluster node raises :class:`WrongClientError`.
    """
    import redis

    settings = settings or StoreConfig()
    scheme, _, rest = url.partition("://")
    cluster = scheme in CLUSTER_SCHEMES
    plain_url = f"{scheme.replace('+cluster', '')}://{rest}"
    parsed = urlparse(plain_url)
    host, port, tls = parsed.hostname or "127.0.0.1", parsed.port or 6379, plain_url.startswith("rediss")
    options = _bounded(settings)

    def build() -> Any:
        if cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(plain_url, cluster_error_retry_attempts=1, **options)
        return _pinged(redis.Redis.from_url(plain_url, **options))

    return _connected(build, host, port, tls, cluster, settings)


def connect_fields(settings: StoreConfig | None = None, *, host: str | None, port: int | None,
                   login: str | None = None, password: str | None = None,
                   extra: dict[str, Any] | None = None) -> Any:
    """:func:`connect` for a server given by fields, as an Airflow Redis connection holds them: host, port,
    login (ACL user), password, and the extras ``db``, ``cluster``, ``startup_nodes`` ("host:port,...")
    and ``ssl``, ``ssl_ca_certs``, ``ssl_cert_reqs``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_check_hostname`` (read as the Airflow Redis provider reads them), with the same bounded waits."""
    import redis

    settings = settings or StoreConfig()
    extra = dict(extra or {})
    host, port = host or "127.0.0.1", int(port or 6379)
    cluster = bool(extra.get("cluster", False))
    if cluster and extra.get("db") not in (None, 0):
        raise WrongClientError(f"a Redis Cluster has only database 0; the connection sets db={extra['db']!r}")
    tls = {k: v for k, v in extra.items() if k in SSL_EXTRAS}
    options = {**_bounded(settings), **tls,
               "username": login or None,
               "password": None if str(password).lower() in ("none", "false", "") else password}

    def build() -> Any:
        if cluster:
            from redis.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(h, int(p or 6379)) for h, _, p in
                     (n.strip().partition(":") for n in str(extra.get("startup_nodes") or "").split(",") if n.strip())]
            return RedisCluster(host=host, port=port, startup_nodes=nodes or None, cluster_error_retry_attempts=1,
                                **options)
        return _pinged(redis.Redis(host=host, port=port, db=int(extra.get("db") or 0), **options))

    return _connected(build, host, port, bool(tls.get("ssl")), cluster, settings)


SSL_EXTRAS = ("ssl", "ssl_cert_reqs", "ssl_ca_certs", "ssl_keyfile", "ssl_certfile", "ssl_check_hostname")


def _bounded(settings: StoreConfig) -> dict[str, Any]:
    """Every connect and read within ``socket_timeout_s``; one attempt inside redis-py: the tries are ours."""
    return {"socket_timeout": settings.socket_timeout_s, "socket_connect_timeout": settings.socket_timeout_s,
            "retry": single_try()}


def _pinged(client: Any) -> Any:
    """A single-node client once it has answered (redis-py connects lazily)."""
    try:
        client.ping()
    except BaseException:
        client.close()
        raise
    return client


def _connected(build: Any, host: str, port: int, tls: bool, cluster: bool, settings: StoreConfig) -> Any:
    """``build()`` with ``store.retry_attempts`` tries; a TLS/plain mismatch named; a cluster node refused to a
    single-node client."""
    import redis
    from redis.exceptions import RedisClusterException

    where = f"{'Redis Cluster node' if cluster else 'Redis'} at {host}:{port}"
    failures = 0
    while True:
        try:
            client = build()
            break
        except (redis.ConnectionError, redis.TimeoutError, RedisClusterException, ssl.SSLError) as exc:
            if isinstance(exc, redis.AuthenticationError) or "AuthenticationError" in str(exc):
                raise
            failures += 1
            hint = diagnose(host, port, tls, min(settings.socket_timeout_s, 5.0))
            if hint:
                raise WrongClientError(f"cannot talk to {where}: {hint}") from exc
            if failures >= settings.retry_attempts:
                raise RedisUnavailableError(
                    f"{where} did not answer within {settings.socket_timeout_s:g}s, {failures} tries "
                    f"({type(exc).__name__}: {exc}); nothing was read or written") from exc
            wait_before_retry(settings, failures, exc, f"connecting to {where}")
    if not cluster:
        require_single_node(client)
    return client
