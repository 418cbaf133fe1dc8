"""The Redis client factory: one Redis node, or a Redis Cluster, chosen by the URL.

``AFTERTALK_REDIS_URL`` (or ``--redis-url``) takes either

* a single-node URL, ``redis://[user:password@]host:port[/db]`` or ``rediss://...`` (TLS):
  a :class:`redis.asyncio.Redis` on a :class:`~redis.asyncio.BlockingConnectionPool`,
  so a burst waits for a free connection instead of failing; or
* a cluster URL, ``redis+cluster://[user:password@]host:port[,host:port...]`` or
  ``rediss+cluster://...`` (TLS): a :class:`ClusterClient`, a
  :class:`redis.asyncio.cluster.RedisCluster` that discovers the rest of the
  cluster from any one of the listed nodes.

Nothing else in the service knows which one it got; this works because

* every Lua script declares a key in ``KEYS[1]`` and touches only keys of that
  key's hash tag (``{ctl}`` or ``{c:ID}``, see :mod:`core.keys`), so EVALSHA
  is routed to the one primary that owns the slot (scripts are loaded on every
  primary on NOSCRIPT by redis-py);
* every MULTI transaction (``pipeline(transaction=True)``) keeps to one slot;
  plain pipelines may span slots (the cluster client splits them per node);
* control frames use plain PUBLISH, which a cluster forwards to every node over
  the cluster bus, so a subscriber on *any* node hears every channel; chat
  messages use sharded pub/sub (SPUBLISH to the conversation's ``{c:ID}``
  channels, followed per owning node by :mod:`gateway.sharded_pubsub`).

**Pub/sub.**  The hub calls ``client.pubsub()`` once per (re)connection.  For
a cluster that returns a plain :class:`redis.asyncio.client.PubSub` on one
node, and each call moves on to the next known node (primaries and replicas,
starting at a random one so gateways spread out).  When that node dies the
hub's reconnect loop simply lands on another node, resubscribes and catches up
from the logs.  The hub's sharded links use :meth:`ClusterClient.node_client`
of each slot owner (see gateway/hub.py and deploy/README.md).

**Bursts.**  The asyncio cluster client has no blocking pool: a node whose
connections are all busy raises ``MaxConnectionsError`` at once.  So that the
cluster client waits under bursts like the single-node one, commands pass a
semaphore of :data:`MAX_IN_FLIGHT` (waiting up to :data:`POOL_WAIT_S`), and so do
pipelines; each holds at most one connection per node, and each node's pool is
twice that size.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}   # scheme -> TLS
MAX_IN_FLIGHT = 64          # commands in flight per client (single node: pool size)
POOL_WAIT_S = 10.0          # how long a command waits for a free connection
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
HEALTH_CHECK_S = 5
_IN_FLIGHT: contextvars.ContextVar[bool] = contextvars.ContextVar("aftertalk_redis_in_flight", default=False)


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[user:pass@]host:port[,host:port...][/0]``; raise ValueError if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (want redis+cluster:// or rediss+cluster://): {url!r}")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):                        # [ipv6]:port
            host, _, port = part[1:].partition("]:")
        elif ":" in part:
            host, _, port = part.rpartition(":")
        else:
            host, port = part, "6379"
        try:
            port_no = int(port or 6379)
        except ValueError:
            raise ValueError(f"bad port in cluster URL: {part!r}") from None
        if not host or not 0 < port_no < 65536:
            raise ValueError(f"bad node in cluster URL: {part!r}")
        nodes.append((host, port_no))
    if not nodes:
        raise ValueError("a cluster URL needs at least one host:port")
    return ClusterURL(tuple(nodes), username, password, CLUSTER_SCHEMES[scheme.lower()])


class ClusterClient(RedisCluster):
    """A RedisCluster whose commands wait for a free connection, and whose ``pubsub()`` is plain
    pub/sub on one node at a time (see the module docstring)."""

    def __init__(self, *args: Any, node_kwargs: dict[str, Any], max_in_flight: int = MAX_IN_FLIGHT,
                 wait_s: float = POOL_WAIT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._node_kwargs = node_kwargs            # how to open a plain connection to one node
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._wait_s = wait_s
        self._pubsub_turn = random.randrange(1 << 16)
        self._refresh: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def in_flight(self) -> AsyncIterator[None]:
        """Wait (at most ``wait_s``) until fewer than ``max_in_flight`` commands or pipelines run.

        Each one holds at most one connection per node, so no node's pool (twice that size) runs
        dry.  Re-entrant: a pipeline that re-sends a redirected command inside its slot (redis-py
        does so after MOVED/ASK) does not wait for a second slot, so the limit cannot deadlock."""
        if _IN_FLIGHT.get():
            yield
            return
        if self._in_flight.locked():
            try:
                await asyncio.wait_for(self._in_flight.acquire(), self._wait_s)
            except TimeoutError:
                raise RedisConnectionError(f"no free Redis connection within {self._wait_s:g}s") from None
        else:
            await self._in_flight.acquire()
        token = _IN_FLIGHT.set(True)
        try:
            yield
        finally:
            _IN_FLIGHT.reset(token)
            self._in_flight.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.in_flight():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)      # raises, as the library does
        # redis-py declares CommandsProtocol._event_dispatcher, which ClusterPipeline never assigns (it is
        # unused there), so mypy takes every ClusterPipeline subclass for abstract.
        return WaitingPipeline(self, transaction)  # type: ignore[abstract]

    def pubsub_candidates(self) -> list[tuple[str, int]]:
        """Every node we know of (topology cache first, then the URL's nodes), in a stable order."""
        seen: dict[str, tuple[str, int]] = {}
        for node in [*self.nodes_manager.nodes_cache.values(), *self.nodes_manager.startup_nodes.values()]:
            seen.setdefault(node.name, (node.host, int(node.port)))
        return [seen[name] for name in sorted(seen)]

    def node_client(self, host: str, port: int) -> aioredis.Redis:
        """A plain client of one node (for pub/sub, and for per-node commands such as BGREWRITEAOF)."""
        name = f"{host}:{port}"
        client = self._node_clients.get(name)
        if client is None:
            client = self._node_clients[name] = aioredis.Redis(host=host, port=port, **self._node_kwargs)
        return client

    def node_clients(self) -> list[aioredis.Redis]:
        """A plain client of every node of the current topology, primaries and replicas: each keeps its
        own copy of the data set and its own AOF (erasure compacts them all, see chat/erasure.py)."""
        return [self.node_client(n.host, int(n.port)) for n in sorted(self.get_nodes(), key=lambda n: n.name)]

    # Not RedisCluster.pubsub's signature, on purpose: a plain PubSub of one node, not a ClusterPubSub.
    def pubsub(self, **kwargs: Any) -> PubSub:  # type: ignore[override]
        """A plain pub/sub connection to the next node in turn: a cluster forwards every PUBLISH to
        every node, so any live node will do, and a reconnect after a node died tries another one.

        A client used only for pub/sub sends no commands, so nothing would ever refresh its view of
        the topology (nodes added, replicas promoted, nodes gone); each call therefore also starts a
        refresh in the background, which the next call (the next reconnect) benefits from."""
        candidates = self.pubsub_candidates()
        host, port = candidates[self._pubsub_turn % len(candidates)]
        self._pubsub_turn += 1
        self._refresh_topology_soon()
        return self.node_client(host, port).pubsub(**kwargs)

    def _refresh_topology_soon(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        async def refresh() -> None:
            try:
                if self._initialize:
                    await self.initialize()
                else:
                    await self.nodes_manager.initialize()
            except Exception:
                pass        # no node answered: the nodes already known (and the URL's) remain the candidates

        self._refresh = loop.create_task(refresh())

    async def aclose(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        clients, self._node_clients = list(self._node_clients.values()), {}
        for client in clients:
            try:
                await client.aclose()
            except Exception:
                pass
        await super().aclose()


class WaitingPipeline(ClusterPipeline):
    """A cluster pipeline (or single-slot MULTI) that takes a slot of its client's in-flight limit."""

    cluster_client: ClusterClient

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.in_flight():
            return await super().execute(raise_on_error, allow_redirections)


RedisClient: TypeAlias = aioredis.Redis | ClusterClient
"""What :func:`make_redis` returns; stores and scripts take this rather than ``Any``.

redis-py (5+) ships its own type information (no ``types-redis``, which describes redis-py 4)."""


def make_redis(url: str, *, decode: bool) -> RedisClient:
    """The service's Redis client for ``url`` (single node or cluster, see the module docstring)."""
    if is_cluster_url(url):
        return make_cluster(parse_cluster_url(url), decode=decode)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_IN_FLIGHT, timeout=POOL_WAIT_S, decode_responses=decode,
        socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S, retry_on_timeout=False)
    return aioredis.Redis(connection_pool=pool)


def make_cluster(spec: ClusterURL, *, decode: bool, max_in_flight: int = MAX_IN_FLIGHT) -> ClusterClient:
    common: dict[str, Any] = dict(
        username=spec.username, password=spec.password, decode_responses=decode,
        socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S)
    if spec.tls:
        common["ssl"] = True
    # Plain per-node clients (pub/sub, per-node commands) must fail fast on a dead node, so that the
    # hub moves on to another one: redis-py's default would retry the connect 10 times with backoff.
    node_kwargs = {**common, "max_connections": 4, "retry": Retry(NoBackoff(), 0)}
    return ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in spec.nodes],
        max_connections=2 * max_in_flight, max_in_flight=max_in_flight, require_full_coverage=True,
        node_kwargs=node_kwargs, **common)
