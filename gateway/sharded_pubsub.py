"""Sharded pub/sub on a Redis Cluster: one SSUBSCRIBE link per node, each with its own reconnect loop.

A shard channel (SPUBLISH) is only delivered by the nodes serving its slot, so
a subscriber must sit on the node that owns the slot: one pub/sub connection
per node, opened on demand.  Each node's connection is a :class:`gateway.link.Link`
(see there what it promises: confirmed subscriptions, which callers wait for
before reading the log so no publish can fall in between; PINGs; reconnects with
backoff).  What this module adds: before a node's link reconnects, its channels
are re-routed by the current topology (a failover or slot migration moves them
to another node's link; a link left with none ends), and after it reconnected,
the channels it subscribed again are reported to ``on_resubscribed`` so the hub
catches their readers up from the log.
"""
from __future__ import annotations

from collections.abc import Callable

from core.redis_client import ClusterClient
from gateway.link import Link


class ShardedSubscriber:
    """The set of shard channels this process follows, spread over one link per owning node."""

    def __init__(self, cluster: ClusterClient, on_message: Callable[[bytes, bytes], None],
                 on_resubscribed: Callable[[list[bytes]], None], *,
                 ping_interval_s: float = 1.0, ping_timeout_s: float = 3.0) -> None:
        self.cluster = cluster
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.links: dict[str, Link] = {}           # node name "host:port" -> its link
        self.route: dict[bytes, Link] = {}          # channel -> the link it is subscribed on
        self._stopping = False

    def owner(self, channel: bytes) -> tuple[str, int]:
        node = self.cluster.get_node_from_key(channel.decode())   # channels are encoded str keys: same slot
        assert node is not None                                     # only a replica lookup finds none
        return node.host, int(node.port)

    def _link_for(self, channel: bytes) -> Link:
        host, port = self.owner(channel)
        name = f"{host}:{port}"
        link = self.links.get(name)
        if link is None:
            link = self.links[name] = self._node_link(host, port)
            if not self._stopping:
                link.start()
        return link

    def _node_link(self, host: str, port: int) -> Link:
        """A link to one node, holding the shard channels whose slots it serves."""
        name = f"{host}:{port}"

        def before_retry() -> bool:
            self.reroute(link)
            if not link.channels and self.links.get(name) is link:
                del self.links[name]        # e.g. a dead node whose slots moved: let it go
                return False
            return True

        async def connected(channels: list[bytes], reconnect: bool) -> None:
            if reconnect and channels:
                self.on_resubscribed(channels)     # their readers wait for confirmation, then fill

        link = Link(lambda: self.cluster.node_client(host, port).pubsub(), self.on_message, connected,
                    sharded=True, ping_interval_s=self.ping_interval_s, ping_timeout_s=self.ping_timeout_s,
                    on_lost=self.refresh_topology, before_retry=before_retry)
        return link

    async def subscribe(self, channel: bytes) -> None:
        """Follow ``channel``; return once the owning node confirmed it (or after ``gateway.link.CONFIRM_WAIT_S``)."""
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

    def reroute(self, link: Link) -> None:
        """Before a link reconnects: move the channels whose slot another node now owns."""
        for channel in list(link.channels):
            try:
                target = self._link_for(channel)
            except Exception:
                return                  # topology unknown for now: retry on the same node
            if target is not link:
                link.discard(channel)
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
