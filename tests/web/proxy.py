"""A loopback TCP proxy that can cut the connections carrying event streams, as a flaky network would."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from dataclasses import dataclass, field


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket
    latest: bytes = b""  # the latest request sent on this connection (its first chunk: line and headers)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class CuttingProxy:
    upstream_port: int
    requests: list[bytes] = field(default_factory=list)  # every request's first chunk, in order
    _links: list[_Link] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def event_requests(self) -> list[bytes]:
        with self._lock:
            return [r for r in self.requests if r.startswith(b"GET ") and b"/events" in r.split(b"\r\n", 1)[0]]

    def cut_event_streams(self) -> int:
        """Reset every connection now serving an event stream; returns how many were cut."""
        with self._lock:
            streams = [link for link in self._links if b"/events" in link.latest.split(b"\r\n", 1)[0]]
        for link in streams:
            link.close()
        return len(streams)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for link in self._links:
                link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(client, socket.create_connection(("127.0.0.1", self.upstream_port)))
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pipe, args=(link, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(link, False), daemon=True).start()

    def _pipe(self, link: _Link, outbound: bool) -> None:
        source, target = (link.client, link.upstream) if outbound else (link.upstream, link.client)
        with suppress(OSError):
            while data := source.recv(65536):
                if outbound and data[:8].split(b" ", 1)[0] in (b"GET", b"POST", b"DELETE"):
                    with self._lock:
                        link.latest = data
                        self.requests.append(data)
                target.sendall(data)
        link.close()
