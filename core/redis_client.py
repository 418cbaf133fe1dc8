"""The Redis client factory: one Redis node, a Sentinel-watched primary, or a Redis Cluster, chosen by the URL.

``AFTERTALK_REDIS_URL`` (or ``--redis-url``) takes either

* a single-node URL, ``redis://[user:password@]host:port[/db]`` or ``rediss://...`` (TLS):
  a :class:`redis.asyncio.Redis` on a :class:`~redis.asyncio.BlockingConnectionPool`,
  so a burst waits for a free connection instead of failing; or
* a Sentinel URL, ``redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/db]``
  or ``rediss+sentinel://...`` (TLS): the listed hosts are *Sentinels*, and the client is a
  :class:`SentinelClient`, redis-py's ``Sentinel(...).master_for(master-name)`` on a waiting
  pool (:class:`BlockingSentinelPool`).  Every new connection asks the Sentinels for the current
  primary, so after a failover the command connections (dropped with the dead primary, or
  refused with READONLY by a demoted one) reconnect to the promoted replica.  The URL's
  ``user:password@`` is for the Redis primary and replicas; Sentinels protected by a password of
  their own (``requirepass`` in sentinel.conf) take ``?sentinel_password=...`` (and
  ``&sentinel_username=...`` for an ACL user), masked like the URL's password in messages; or
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

**Pub/sub on Sentinel.**  The hub's link makes a new ``client.pubsub()`` for every reconnect; on
a :class:`SentinelClient` that is a :class:`SentinelPubSub` on the Sentinel pool, so its connection
too is made to whatever primary the Sentinels name *then*, never a remembered address.  A link
that stays connected to a node the Sentinels no longer call primary (a primary cut off from the
Sentinels but not from this gateway, or demoted without its clients being killed) is caught by
:meth:`SentinelPubSub.still_primary`, which :class:`gateway.link.Link` asks every few seconds.

**Pub/sub on a cluster.**  The hub calls ``client.pubsub()`` once per (re)connection.  For
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
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}   # scheme -> TLS
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")          # the query parameters understood
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
    username, password, hosts = _userinfo(netloc)
    nodes = _host_list(hosts, 6379, "cluster URL")
    if not nodes:
        raise ValueError("a cluster URL needs at least one host:port")
    return ClusterURL(tuple(nodes), username, password, CLUSTER_SCHEMES[scheme.lower()])


def _userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    """``[user[:password]@]hosts`` -> (user, password, hosts), percent-decoded."""
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    return username, password, hosts


def _host_list(hosts: str, default_port: int, what: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` (``[v6]:port`` too; a missing port is ``default_port``)."""
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):                        # [ipv6]:port or [ipv6]
            host, _, after = part[1:].partition("]")
            if after and not after.startswith(":"):
                raise ValueError(f"bad node in {what}: {part!r}")
            port = after[1:]
        elif ":" in part:
            host, _, port = part.rpartition(":")
        else:
            host, port = part, str(default_port)
        try:
            port_no = int(port or default_port)
        except ValueError:
            raise ValueError(f"bad port in {what}: {part!r}") from None
        if not host or not 0 < port_no < 65536:
            raise ValueError(f"bad node in {what}: {part!r}")
        nodes.append((host, port_no))
    return nodes


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL: where the Sentinels are, which primary they watch, how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None                 # for the primary and replicas
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None        # for the Sentinels themselves, when they require it
    sentinel_password: str | None = None


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[user:pass@]host:port[,host:port...]/<master-name>[/db]``; raise ValueError
    with the reason if malformed.  A host without a port is on 26379, Sentinel's own port."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (want redis+sentinel:// or rediss+sentinel://): {url!r}")
    rest, _, query = rest.split("#", 1)[0].partition("?")
    netloc, _, path = rest.partition("/")
    username, password, hosts = _userinfo(netloc)
    sentinels = _host_list(hosts, SENTINEL_PORT, "Sentinel URL")
    if not sentinels:
        raise ValueError("a Sentinel URL needs at least one Sentinel host:port")
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()                                     # a trailing slash
    if not parts or not parts[0]:
        raise ValueError("a Sentinel URL needs the master name after the hosts: .../<master-name>[/db]")
    if len(parts) > 2:
        raise ValueError(f"a Sentinel URL's path is /<master-name>[/db], not /{'/'.join(parts)}")
    master = parts[0]
    if any(c.isspace() or not c.isprintable() for c in master):
        raise ValueError(f"bad master name in Sentinel URL: {master!r}")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"bad database number in Sentinel URL: {parts[1]!r}")
        db = int(parts[1])
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in SENTINEL_OPTIONS:
            raise ValueError(f"unknown option {key!r} in Sentinel URL (known: {', '.join(SENTINEL_OPTIONS)})")
        options[key] = value
    return SentinelURL(tuple(sentinels), master, db, username, password, SENTINEL_SCHEMES[scheme.lower()],
                       options.get("sentinel_username") or None, options.get("sentinel_password") or None)


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


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool (each new connection asks the Sentinels for the primary) that, like the
    single-node pool, waits up to ``timeout`` for a free connection under a burst instead of failing."""


class SentinelPubSub(PubSub):
    """A pub/sub connection on the Sentinel pool: made to the primary the Sentinels name when it connects."""

    connection_pool: BlockingSentinelPool

    async def still_primary(self) -> bool:
        """False when the Sentinels name another primary than the node this connection is on (the link
        then reconnects).  True when it is the primary, when not connected yet, and when no Sentinel
        answers: an outage of the Sentinels alone is no reason to drop a working link."""
        conn = self.connection
        if conn is None or not conn.is_connected:
            return True
        try:
            host, port = await self.connection_pool.sentinel_manager.discover_master(self.connection_pool.service_name)
        except Exception:
            return True
        return (str(host), int(port)) == (str(conn.host), int(conn.port))


class SentinelClient(aioredis.Redis):
    """The primary of a Sentinel-watched Redis (``Sentinel.master_for``); it also owns, and closes, the
    connections to the Sentinels."""

    sentinel_manager: Sentinel
    service_name: str

    def pubsub(self, **kwargs: Any) -> SentinelPubSub:
        kwargs.setdefault("event_dispatcher", self._event_dispatcher)
        return SentinelPubSub(self.connection_pool, **kwargs)

    async def primary_address(self) -> tuple[str, int]:
        """Where the Sentinels say the primary is now (raises MasterNotFoundError when none says)."""
        host, port = await self.sentinel_manager.discover_master(self.service_name)
        return str(host), int(port)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.sentinel_manager.aclose()


RedisClient: TypeAlias = aioredis.Redis | ClusterClient
"""What :func:`make_redis` returns; stores and scripts take this rather than ``Any``.

redis-py (5+) ships its own type information (no ``types-redis``, which describes redis-py 4)."""


def make_redis(url: str, *, decode: bool) -> RedisClient:
    """The service's Redis client for ``url`` (single node or cluster, see the module docstring)."""
    if is_cluster_url(url):
        return make_cluster(parse_cluster_url(url), decode=decode)
    if is_sentinel_url(url):
        return make_sentinel(parse_sentinel_url(url), decode=decode)
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


def make_sentinel(spec: SentinelURL, *, decode: bool, max_in_flight: int = MAX_IN_FLIGHT) -> SentinelClient:
    """A client of the primary that ``spec``'s Sentinels watch (see the module docstring).  Nothing is
    connected until the first command."""
    timeouts: dict[str, Any] = dict(socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S)
    # A dead Sentinel must cost one failed connect, not redis-py's default retries with backoff: the next
    # Sentinel in the list is asked at once, and the one that answered is asked first from then on.
    sentinel_kwargs: dict[str, Any] = {**timeouts, "retry": Retry(NoBackoff(), 0),
                                       "username": spec.sentinel_username, "password": spec.sentinel_password}
    if spec.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        spec.master, redis_class=SentinelClient, connection_pool_class=BlockingSentinelPool,
        max_connections=max_in_flight, timeout=POOL_WAIT_S, db=spec.db, username=spec.username,
        password=spec.password, decode_responses=decode, health_check_interval=HEALTH_CHECK_S,
        retry_on_timeout=False, ssl=spec.tls, **timeouts)
    assert isinstance(client, SentinelClient)
    client.sentinel_manager = sentinel
    client.service_name = spec.master
    return client
