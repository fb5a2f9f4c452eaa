"""Real Redis topologies on loopback for the crash tests: one server, a 3-primary cluster, a Sentinel setup.

Each offers the URL the service takes (`RSA_REDIS_URL`) and `crash(key)`: SIGKILL the server that holds `key`
and bring the store back as an operator's setup would. One server restarts from its AOF; a cluster primary
restarts from its AOF before the cluster fails it over; a Sentinel primary stays dead until the sentinels
promote its replica, then comes back as the new primary's replica.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import redis
from redis.cluster import RedisCluster

from rsa_service.jobs.embedded import find_redis_server

START_TIMEOUT_S = 30.0
SENTINEL_PRIMARY = "rsa"
# Long enough that a primary killed and restarted within it is not failed over: the cluster test restarts it.
CLUSTER_NODE_TIMEOUT_MS = 30_000
SENTINEL_DOWN_AFTER_MS = 1000


class RedisServer:
    """A redis-server process on a loopback port with AOF on, restartable from its own data (crash tests)."""

    def __init__(self, data_dir: Path, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.args = list(args)  # more settings: cluster mode, replicaof, sentinel
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = os.environ.get("RSA_TEST_REDIS_SERVER") or find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--repl-diskless-sync-delay",
                "0",  # a replica syncs at once rather than waiting 5 s for others to join
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only the AOF survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Topology(Protocol):
    name: str

    @property
    def url(self) -> str: ...

    def crash(self, key: str) -> None:
        """SIGKILL the server holding `key`; return once the store serves again."""
        ...


def _wait_for(check: Callable[[], object], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _info(port: int, section: str) -> dict[str, object]:
    with redis.Redis(port=port, socket_timeout=2) as client:
        return client.info(section)  # type: ignore[no-any-return]


class SingleServer:
    name = "single"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    def crash(self, key: str) -> None:
        self.server.kill()
        time.sleep(1.0)
        self.server.start()


class ClusterProcesses:
    """Six redis-server processes in cluster mode: three primaries, one replica each."""

    name = "cluster"

    def __init__(self, root: Path, primaries: int = 3) -> None:
        self.bus_ports = [_free_port() for _ in range(primaries * 2)]  # not port + 10000, which may pass 65535
        self.nodes = [
            RedisServer(
                root / f"node{i}",
                [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(root / f"node{i}" / "nodes.conf"),
                    "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                    "--cluster-port", str(bus_port),
                ],
            )
            for i, bus_port in enumerate(self.bus_ports)
        ]  # fmt: skip
        self.primaries = primaries

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[: self.primaries])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        if self.primaries >= 3:
            subprocess.run(
                [_redis_cli(), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        else:  # redis-cli creates clusters of three primaries or more: one primary is set up by hand
            self._one_primary()
        for node in self.nodes:
            _wait_for(functools.partial(_ready_node, node.port), "the cluster to form and sync")

    def _one_primary(self) -> None:
        primary, replica = self.nodes
        with redis.Redis(port=primary.port, decode_responses=True) as first, redis.Redis(port=replica.port) as second:
            first.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            second.execute_command("CLUSTER", "MEET", "127.0.0.1", primary.port, self.bus_ports[0])
            primary_id = first.execute_command("CLUSTER", "MYID")
            _wait_for(lambda: primary_id in str(second.execute_command("CLUSTER", "NODES")), "the nodes to meet")
            second.execute_command("CLUSTER", "REPLICATE", primary_id)

    def primary_for(self, key: str) -> RedisServer:
        with RedisCluster(host="127.0.0.1", port=self.nodes[0].port) as client:
            port = client.get_node_from_key(key).port
        return next(node for node in self.nodes if node.port == port)

    def crash(self, key: str) -> None:
        node = self.primary_for(key)
        node.kill()
        time.sleep(1.0)
        node.start()
        _wait_for(lambda: _cluster_ok(node.port), "the restarted primary to rejoin")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_ok(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=2) as client:
        return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))


def _ready_node(port: int) -> bool:
    return _cluster_ok(port) and _synced(port)


def _synced(port: int) -> bool:
    """A primary, or a replica whose link to its primary is up (a commit waiting for a replica can succeed)."""
    replication = _info(port, "replication")
    return replication.get("role") == "master" or replication.get("master_link_status") == "up"


def _redis_cli() -> str:
    return os.environ.get("RSA_TEST_REDIS_CLI") or str(Path(find_redis_server()).with_name("redis-cli"))


class SentinelProcesses:
    """A primary, its replica, and three sentinels watching them (quorum two)."""

    name = "sentinel"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers = [RedisServer(root / "a"), RedisServer(root / "b")]
        self.servers[1].args = ["--replicaof", "127.0.0.1", str(self.servers[0].port)]
        self.sentinel_ports = [_free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SENTINEL_PRIMARY}"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        _wait_for(lambda: _info(self.servers[1].port, "replication").get("master_link_status") == "up", "the replica")
        for index, port in enumerate(self.sentinel_ports):
            conf = self.root / f"sentinel{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {SENTINEL_PRIMARY} 127.0.0.1 {self.servers[0].port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_PRIMARY} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SENTINEL_PRIMARY} 10000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [find_redis_server(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            _wait_for(functools.partial(self._sentinel_ready, port), "the sentinels to see each other and the replica")

    def _sentinel_ready(self, port: int) -> bool:
        with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
            primary = client.execute_command("SENTINEL", "MASTER", SENTINEL_PRIMARY)
            fields = dict(zip(primary[::2], primary[1::2], strict=True)) if isinstance(primary, list) else primary
            return int(fields["num-other-sentinels"]) == 2 and int(fields["num-slaves"]) >= 1

    def primary(self) -> RedisServer:
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=2, decode_responses=True) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_PRIMARY)
        return next(server for server in self.servers if server.port == int(port))

    def crash(self, key: str) -> None:
        old = self.primary()
        old.kill()
        _wait_for(lambda: self.primary() is not old, "the sentinels to fail over")
        new = self.primary()
        _wait_for(lambda: _info(new.port, "replication").get("role") == "master", "the promoted replica")
        old.args = ["--replicaof", "127.0.0.1", str(new.port)]
        old.start()  # back as a replica, so that a commit waiting for one replica can be acknowledged again
        _wait_for(lambda: _info(old.port, "replication").get("master_link_status") == "up", "the old primary's sync")

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
            process.wait()
        for server in self.servers:
            server.stop()
