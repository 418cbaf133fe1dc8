"""Sharded pub/sub on a Redis Cluster: one SSUBSCRIBE link per node, each with its own reconnect loop.

A shard channel (SPUBLISH) is only delivered by the nodes serving its slot, so
a subscriber must sit on the node that owns the slot: one pub/sub connection
per node, opened on demand.  Each link keeps the shard channels routed to it,
waits for the server's confirmation of every subscription (callers rely on
it before reading the log, so no publish can fall in between), PINGs to detect
a silent link, and on any failure reconnects with backoff: it re-routes its
channels by the current topology (a failover or slot migration moves them to
another node's link), subscribes them again and reports them to
``on_resubscribed`` so the hub catches their readers up from the log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from gateway import metrics
from gateway.limits import backoff

log = logging.getLogger("aftertalk.hub")
CONFIRM_WAIT_S = 3.0


class ShardedSubscriber:
    """The set of shard channels this process follows, spread over one link per owning node."""

    def __init__(self, cluster: Any, on_message: Callable[[bytes, bytes], None],
                 on_resubscribed: Callable[[list[bytes]], None], *,
                 ping_interval_s: float = 1.0, ping_timeout_s: float = 3.0) -> None:
        self.cluster = cluster
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.links: dict[str, _NodeLink] = {}      # node name -> its link
        self.route: dict[bytes, _NodeLink] = {}     # channel -> the link it is subscribed on
        self._stopping = False

    def owner(self, channel: bytes) -> tuple[str, int]:
        node = self.cluster.get_node_from_key(channel)
        return node.host, int(node.port)

    def _link_for(self, channel: bytes) -> "_NodeLink":
        host, port = self.owner(channel)
        name = f"{host}:{port}"
        link = self.links.get(name)
        if link is None:
            link = self.links[name] = _NodeLink(self, host, port)
            link.start()
        return link

    async def subscribe(self, channel: bytes) -> None:
        """Follow ``channel``; return once the owning node confirmed it (or after CONFIRM_WAIT_S)."""
        link = self.route.get(channel)
        if link is None:
            link = self.route[channel] = self._link_for(channel)
            link.add(channel)
        await link.ready(channel)

    async def ready(self, channel: bytes) -> None:
        """Wait until ``channel``'s subscription is confirmed, if it is being (re)made."""
        link = self.route.get(channel)
        if link is not None:
            await link.ready(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        link = self.route.pop(channel, None)
        if link is not None:
            await link.remove(channel)

    def reroute(self, link: "_NodeLink") -> None:
        """Before a link reconnects: move the channels whose slot another node now owns."""
        for channel in list(link.channels):
            try:
                target = self._link_for(channel)
            except Exception:
                return                  # topology unknown for now: retry on the same node
            if target is not link:
                link.channels.discard(channel)
                self.route[channel] = target
                target.add(channel)
                self.on_resubscribed([channel])

    def refresh_topology(self) -> None:
        refresh = getattr(self.cluster, "_refresh_topology_soon", None)
        if refresh is not None:
            refresh()

    def stop(self) -> None:
        """Stop every link's loop (its connection is closed as the task ends)."""
        self._stopping = True
        for link in self.links.values():
            link.stop()


class _NodeLink:
    """One pub/sub connection to one node, holding the shard channels whose slots it serves."""

    def __init__(self, owner: ShardedSubscriber, host: str, port: int) -> None:
        self.owner = owner
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self.channels: set[bytes] = set()
        self.pubsub: Any = None
        self.connected = asyncio.Event()
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, channel: bytes) -> None:
        self.channels.add(channel)
        self._confirm.setdefault(channel, asyncio.get_running_loop().create_future())
        if self.connected.is_set() and self.pubsub is not None:
            asyncio.get_running_loop().create_task(self._send_subscribe(channel))
        # otherwise the reconnect loop subscribes every channel of this link

    async def _send_subscribe(self, channel: bytes) -> None:
        try:
            await self.pubsub.ssubscribe(channel)
        except Exception:
            pass                        # the link is failing: its reconnect loop subscribes again

    async def ready(self, channel: bytes) -> None:
        fut = self._confirm.get(channel)
        if fut is None or fut.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), CONFIRM_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("shard subscription not confirmed in time")

    async def remove(self, channel: bytes) -> None:
        self.channels.discard(channel)
        fut = self._confirm.pop(channel, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self.connected.is_set() and self.pubsub is not None:
            try:
                await self.pubsub.sunsubscribe(channel)
            except Exception:
                pass

    async def _run(self) -> None:
        delays = backoff()
        first = True
        while not self.owner._stopping:
            if not first:
                self.owner.reroute(self)
                if not self.channels and self.owner.links.get(self.name) is self:
                    del self.owner.links[self.name]     # e.g. a dead node whose slots moved: let it go
                    return
            pubsub = self.owner.cluster.node_client(self.host, self.port).pubsub()
            try:
                channels = sorted(self.channels)
                for channel in channels:
                    self._confirm.setdefault(channel, asyncio.get_running_loop().create_future())
                if channels:
                    await pubsub.ssubscribe(*channels)
                else:
                    await pubsub.ping()      # open the connection now, so that failures show here
                self.pubsub = pubsub
                self.connected.set()
                late = sorted(self.channels - set(channels))   # added while the link was being made
                if late:
                    await pubsub.ssubscribe(*late)
                delays = backoff()
                if not first and channels:
                    self.owner.on_resubscribed(channels)   # their readers wait for confirmation, then fill
                first = False
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.owner._stopping:
                    log.warning("shard pub/sub link lost (%s); reconnecting", type(exc).__name__)
                first = False
            finally:
                self.connected.clear()
                self.pubsub = None
                for channel, fut in list(self._confirm.items()):
                    if not fut.done():
                        fut.set_result(None)     # nobody waits in vain; the next round re-confirms
                self._confirm.clear()
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            if not self.owner._stopping:
                metrics.PUBSUB_RECONNECTS.inc()
                self.owner.refresh_topology()
                await asyncio.sleep(next(delays))

    async def _listen(self, pubsub: Any) -> None:
        interval, timeout = self.owner.ping_interval_s, self.owner.ping_timeout_s
        last_pong = last_turn = time.monotonic()
        last_ping = 0.0
        while not self.owner._stopping:
            now = time.monotonic()
            if now - last_turn > interval + 1.0:
                last_pong = now         # our own stall (see Hub._listen), not the link's
            last_turn = now
            if now - last_ping >= interval:
                await pubsub.ping()
                last_ping = now
            if now - last_pong > timeout:
                raise ConnectionError("shard pub/sub link silent past the ping timeout")
            msg = await pubsub.get_message(timeout=interval)
            if msg is None:
                continue
            last_pong = time.monotonic()
            kind = msg["type"]
            if kind == "smessage":
                self.owner.on_message(msg["channel"], msg["data"])
            elif kind == "ssubscribe":
                fut = self._confirm.get(msg["channel"])
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
