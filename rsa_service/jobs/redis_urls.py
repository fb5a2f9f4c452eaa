"""Redis clients for every topology `RSA_REDIS_URL` can name.

- `redis://`, `rediss://`, `unix://`: one server (a primary; its replicas are the operator's business);
- `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/PRIMARY_NAME`: the primary that Sentinel names; every
  new connection asks the sentinels where it is, so clients follow a failover;
- `redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]`: a Redis Cluster (any reachable nodes seed the map).
  Every transition's keys share one hash tag (`keys.py`), so each Lua script runs within one slot.

`rediss+sentinel://` and `rediss+cluster://` use TLS to the data nodes.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff

RedisClient = Redis | RedisCluster

REDIS_RETRIES = 8  # with the backoff below: about 5 s of outage (a restart, a failover) hidden from callers
REDIS_BACKOFF_BASE_S = 0.05
REDIS_BACKOFF_CAP_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 10.0  # longer than any blocking read the workers issue
SENTINEL_SOCKET_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30
# Connections per process; past this, a command waits (up to the socket timeout) for one to come free.
REDIS_MAX_CONNECTIONS = 128

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (it looks the primary up for each new connection) that waits for a free connection."""


class SentinelPrimary(Redis):
    """The client of a Sentinel-managed primary; closing it closes its connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager: Sentinel = self.connection_pool.sentinel_manager  # type: ignore[attr-defined]
        for sentinel in manager.sentinels:
            await sentinel.aclose()


@dataclass(frozen=True)
class Nodes:
    """`redis+sentinel://` or `redis+cluster://` taken apart."""

    hosts: tuple[tuple[str, int], ...]
    path: str
    username: str | None
    password: str | None
    tls: bool


def parse_nodes(url: str) -> Nodes:
    """Raise ValueError naming RSA_REDIS_URL when the host list or a port is malformed."""
    parts = urllib.parse.urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts: list[tuple[str, int]] = []
    for item in filter(None, hostlist.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"RSA_REDIS_URL: {item!r} is not HOST:PORT in {_redacted(url)}")
        hosts.append((host.strip("[]"), int(port)))
    if not hosts:
        raise ValueError(f"RSA_REDIS_URL: no HOST:PORT in {_redacted(url)}")
    return Nodes(
        hosts=tuple(hosts),
        path=parts.path.strip("/"),
        username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None,
        tls=parts.scheme.startswith("rediss"),
    )


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP_S, base=REDIS_BACKOFF_BASE_S), REDIS_RETRIES)


def redis_client(url: str, max_connections: int = REDIS_MAX_CONNECTIONS) -> RedisClient:
    """A client for `url` whose commands ride out a short outage (see `jobs.connect`).

    Pools make a command wait for a free connection rather than fail: redis-py's default pool raises "Too many
    connections" past its limit, which looked like a Redis outage to a busy worker's commits.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": _retry(),
    }
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_client(parse_nodes(url), common, max_connections)
    if scheme in CLUSTER_SCHEMES:
        return _cluster_client(parse_nodes(url), common)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=REDIS_SOCKET_TIMEOUT_S, **common
    )
    return Redis.from_pool(pool)


def _sentinel_client(nodes: Nodes, common: dict[str, Any], max_connections: int) -> Redis:
    if not nodes.path or "/" in nodes.path:
        raise ValueError("RSA_REDIS_URL: name the primary: redis+sentinel://HOST:PORT[,HOST:PORT...]/PRIMARY_NAME")
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(nodes.hosts),
        sentinel_kwargs={"socket_timeout": SENTINEL_SOCKET_TIMEOUT_S},
        username=nodes.username,
        password=nodes.password,
        ssl=nodes.tls,
        **common,
    )
    return sentinel.master_for(  # type: ignore[no-any-return]
        nodes.path,
        redis_class=SentinelPrimary,
        connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections,
        timeout=REDIS_SOCKET_TIMEOUT_S,
    )


def _cluster_client(nodes: Nodes, common: dict[str, Any]) -> RedisCluster:
    if nodes.path:
        raise ValueError("RSA_REDIS_URL: a cluster has no database or name: redis+cluster://HOST:PORT[,HOST:PORT...]")
    # No periodic health check: redis-py's cluster connections run it inside their own connection handshake, where
    # under concurrent first use it wrote to a connection not yet open; a dead node fails the command instead, and
    # the retry remaps the slots.
    common = {name: value for name, value in common.items() if name != "health_check_interval"}
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes.hosts],
        username=nodes.username,
        password=nodes.password,
        ssl=nodes.tls,
        **common,
    )


def reader_client(client: RedisClient, max_connections: int) -> RedisClient:
    """A client to the same server as `client` with a pool of its own, for blocking reads (event streams) that must
    never hold the connections its commands need. A cluster client is returned as it is: its per-node pools grow
    as needed, so blocking reads cannot starve its commands."""
    if isinstance(client, RedisCluster):
        return client
    pool = client.connection_pool
    kwargs = {key: value for key, value in pool.connection_kwargs.items() if key != "connection_pool"}
    options: dict[str, Any] = {
        "connection_class": pool.connection_class,
        "max_connections": max_connections,
        "timeout": REDIS_SOCKET_TIMEOUT_S,
    }
    if isinstance(pool, SentinelConnectionPool):
        manager = pool.sentinel_manager
        own: BlockingConnectionPool = BlockingSentinelPool(  # type: ignore[no-untyped-call]
            pool.service_name, manager, **options, **kwargs
        )
    else:
        own = BlockingConnectionPool(**options, **kwargs)
    return Redis.from_pool(own)
