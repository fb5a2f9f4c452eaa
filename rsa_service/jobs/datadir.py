"""Which redis-server wrote an embedded data directory, and whether another one can read it.

Redis 7 keeps its append-only file as a directory (`appendonlydir/`: base, increments, manifest); Redis 6.2 keeps
one `appendonly.aof`. A 6.2 server finds no AOF in a directory Redis 7 wrote and starts empty, hiding every job
(and writes a second AOF beside the first, whose jobs a later Redis 7 never sees). Redis reads older formats but
not newer ones, so a directory remembers the newest server that wrote it (`store.json`) and an older one is
refused before it starts, with what to install.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARKER = "store.json"
MULTIPART_AOF_DIR = "appendonlydir"
SINGLE_AOF_FILE = "appendonly.aof"
MULTIPART_SINCE = (7, 0)
_VERSION = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")


class DataDirError(RuntimeError):
    """The data directory cannot be served by the redis-server found; nothing in it was changed."""


@dataclass(frozen=True, order=True)
class ServerVersion:
    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def aof_format(self) -> str:
        return "multi-part" if (self.major, self.minor) >= MULTIPART_SINCE else "single-file"

    @classmethod
    def parse(cls, text: str) -> ServerVersion:
        found = _VERSION.search(text)
        if found is None:
            raise DataDirError(f"cannot tell the version of redis-server from {text.strip()!r}")
        return cls(*(int(part) for part in found.groups()))


def server_version(binary: str) -> ServerVersion:
    answer = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return ServerVersion.parse(answer.stdout)


def _written_by(data_dir: Path) -> tuple[ServerVersion | None, str]:
    """The newest server recorded as having written `data_dir` (None: no record), and what says so."""
    marker = data_dir / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        return ServerVersion.parse(f"v={recorded['server']}"), f"{marker} records redis-server {recorded['server']}"
    # Directories from before the marker: the AOF layout tells the format apart.
    if (data_dir / MULTIPART_AOF_DIR).is_dir():
        return ServerVersion(*MULTIPART_SINCE, 0), f"{data_dir / MULTIPART_AOF_DIR} is Redis 7's multi-part AOF"
    return None, ""


def check_readable(data_dir: Path, binary: str, version: ServerVersion) -> None:
    """Refuse to start `binary` over data it cannot read (it would start empty); DataDirError says why and what to
    install. Two AOF histories side by side (left by releases without this check) are refused too: starting either
    server would hide the other's jobs."""
    single = data_dir / SINGLE_AOF_FILE
    multipart = data_dir / MULTIPART_AOF_DIR
    if single.is_file() and single.stat().st_size and multipart.is_dir():
        raise DataDirError(
            f"{data_dir} holds two job histories: {single} (written by Redis 6) and {multipart} (written by Redis "
            f"7); either server would start with only one of them. Keep one: move the other out of the directory "
            "(start a Redis 6.2 on a copy holding only appendonly.aof to read its jobs), then start again."
        )
    wrote, because = _written_by(data_dir)
    if wrote is not None and (version.major, version.minor) < (wrote.major, wrote.minor):
        raise DataDirError(
            f"the job store in {data_dir} was written by redis-server {wrote} ({because}); the redis-server found, "
            f"{version} at {binary}, cannot read it and would start empty. Install Redis {wrote.major}.{wrote.minor} "
            "or newer (Debian/Ubuntu: 'apt-get install redis-server', macOS: 'brew install redis') so that it comes "
            "first on PATH, or point RSA_REDIS_URL at such a server. Nothing in the directory was changed."
        )


def record_writer(data_dir: Path, version: ServerVersion) -> None:
    """Note the server now writing `data_dir` (it has converted any older format it found)."""
    payload = {"server": str(version), "aof": version.aof_format}
    marker = data_dir / MARKER
    temporary = marker.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    temporary.replace(marker)
