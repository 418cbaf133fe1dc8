"""One supervised pub/sub link to Redis: the reconnect loop both hubs share.

A :class:`Link` owns one pub/sub connection at a time and a set of channels.  It
connects, subscribes the whole set, reads, PINGs, and when the connection fails
or falls silent it closes it and starts over with backoff.  The plain hub
(:mod:`gateway.hub`, SUBSCRIBE) runs one; the sharded subscriber
(:mod:`gateway.sharded_pubsub`, SSUBSCRIBE) runs one per cluster node.

**What a link promises its owner.**

* *Delivery while up.*  Once the server has confirmed a channel's subscription on
  the current connection (:meth:`Link.ready` returns), every message published to
  that channel is handed to ``on_message`` once, in publish order, until the
  connection is lost or the channel is removed.  Nothing else is delivered: a
  message published while no confirmed subscription existed is *not* retried.
* *Every gap ends with a callback.*  After each new connection has sent the
  subscription of the whole set (as it stands then, including channels added
  while connecting), ``on_connected(channels, reconnect)`` is awaited, before
  anything is read from the connection.  ``channels`` are those the connection
  subscribed up front; ``reconnect`` is false only on the first attempt.  So an
  owner that, from ``on_connected``, starts for each channel a task that awaits
  :meth:`Link.ready` and then reads its log from the last position it delivered
  misses nothing: the log covers everything before the confirmation, the link
  everything after.  (Because reading starts only after ``on_connected``
  returns, ``on_connected`` itself must not wait for :meth:`Link.ready`.)
* *The set is the truth.*  :meth:`Link.add` and :meth:`Link.remove` change the
  set at once; while the link is up the change is sent to the server at once,
  while it is down the next connection subscribes the set as it is then.
  :meth:`Link.ready` also waits while the link is down (for the next
  connection's confirmation), at most :data:`CONFIRM_WAIT_S`; a lost connection
  releases every waiter.
* *Liveness.*  A connection that raises, that the client library re-made by
  itself (redis-py reconnects a dropped pub/sub connection and resubscribes it
  unasked, which would skip ``on_connected``), or from which nothing at all
  arrives (no message, no confirmation, no PONG) for ``ping_timeout_s`` while it
  is PINGed every ``ping_interval_s``, is closed and rebuilt after a delay from
  :func:`gateway.limits.backoff` (reset after each successful connect), counted
  in ``aftertalk_pubsub_reconnects_total``.  Any traffic proves the link alive
  (a burst of confirmations can hold a PONG back), and a stall of this process
  itself (its event loop did not run for over ``ping_interval_s + 1`` s: CPU
  starvation, a long GC pause) is not taken for a dead link: the timeout starts
  afresh, since a needless reconnect would re-sync every connection on top of
  the overload.
* *On the primary.*  Every reconnect opens a fresh PubSub through ``open``, so
  it lands wherever the client's pool says *then* (on a Sentinel URL, the
  primary the Sentinels name at that moment: see :mod:`core.redis_client`).  A
  PubSub that can tell whether its node is still the primary (a
  ``still_primary()`` coroutine, as :class:`core.redis_client.SentinelPubSub`
  has) is asked every ``primary_check_s``; a "no" is a lost link (after a
  failover the old primary, if still reachable from here, no longer hears the
  publishes).  A check that does not answer within :data:`PRIMARY_CHECK_WAIT_S`
  counts as "yes".
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio.client import PubSub
from redis.crc import key_slot

from gateway import metrics
from gateway.limits import backoff

log = logging.getLogger("aftertalk.hub")
CONFIRM_WAIT_S = 3.0
PRIMARY_CHECK_WAIT_S = 2.0

OnMessage = Callable[[bytes, bytes], None]                      # (channel, data)
OnConnected = Callable[[list[bytes], bool], Awaitable[None]]    # (channels subscribed, reconnect)


class Link:
    """A pub/sub connection kept alive, with the set of channels it must be subscribed to.

    ``open`` makes a fresh (not yet connected) PubSub for each attempt.  ``sharded``
    selects SSUBSCRIBE/SUNSUBSCRIBE and ``smessage`` instead of the plain commands.
    Optional hooks: ``on_lost()`` runs after a connection was lost, before the backoff
    delay; ``before_retry()`` runs before every attempt but the first, and ends
    :meth:`run` by returning false.
    """

    def __init__(self, open: Callable[[], PubSub], on_message: OnMessage, on_connected: OnConnected, *,
                 sharded: bool = False, channels: Iterable[bytes] = (),
                 ping_interval_s: float = 1.0, ping_timeout_s: float = 3.0, primary_check_s: float = 5.0,
                 on_lost: Callable[[], None] | None = None,
                 before_retry: Callable[[], bool] | None = None) -> None:
        self._open = open
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._before_retry = before_retry
        self.sharded = sharded
        self.label = "shard pub/sub" if sharded else "pub/sub"
        self._kinds = ("smessage", "ssubscribe") if sharded else ("message", "subscribe")
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.primary_check_s = primary_check_s
        self.channels: set[bytes] = set(channels)
        self.connected = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._remade = False

    # ---- the channel set ------------------------------------------------------------
    def add(self, channel: bytes) -> None:
        """Put ``channel`` in the set; if the link is up, subscribe it now (:meth:`ready` waits for that)."""
        if channel in self.channels:
            return
        self.channels.add(channel)
        self._confirm.setdefault(channel, asyncio.get_running_loop().create_future())
        if self.connected.is_set() and self._pubsub is not None:
            asyncio.get_running_loop().create_task(self._send_subscribe(channel))
        # otherwise the next connection subscribes every channel of the set

    async def _send_subscribe(self, channel: bytes) -> None:
        pubsub = self._pubsub
        if pubsub is None or channel not in self.channels:
            return                      # the link dropped (its next connection subscribes), or removed already
        try:
            await self._subscribe(pubsub, [channel])
        except Exception:
            pass                        # the link is failing: its next connection subscribes again

    async def ready(self, channel: bytes) -> None:
        """Wait until ``channel``'s subscription is confirmed, if it is being (re)made (at most CONFIRM_WAIT_S)."""
        fut = self._confirm.get(channel)
        if fut is None or fut.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), CONFIRM_WAIT_S)
        except TimeoutError:
            log.warning("%s not confirmed in time", "shard subscription" if self.sharded else "subscription")

    def discard(self, channel: bytes) -> None:
        """Take ``channel`` out of the set without telling the server (for a link that is down)."""
        self.channels.discard(channel)
        fut = self._confirm.pop(channel, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def remove(self, channel: bytes) -> None:
        """Take ``channel`` out of the set and, if the link is up, unsubscribe it."""
        self.discard(channel)
        pubsub = self._pubsub
        if self.connected.is_set() and pubsub is not None:
            try:
                if self.sharded:
                    await pubsub.sunsubscribe(channel)
                else:
                    await pubsub.unsubscribe(channel)
            except Exception:
                pass

    async def _subscribe(self, pubsub: PubSub, channels: list[bytes]) -> None:
        if self.sharded:
            # one SSUBSCRIBE per hash slot: Redis refuses channels of several slots in one (CROSSSLOT),
            # and a node's link (re)subscribing every conversation it holds would fail, reconnect and
            # fail again, for as long as it held two conversations in different slots
            by_slot: dict[int, list[bytes]] = {}
            for channel in channels:
                by_slot.setdefault(key_slot(channel), []).append(channel)
            for group in by_slot.values():
                await pubsub.ssubscribe(*group)
        else:
            await pubsub.subscribe(*channels)

    # ---- the loop ---------------------------------------------------------------------
    def start(self) -> None:
        """Run :meth:`run` in a task of its own (which :meth:`stop` cancels)."""
        self._task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        """End the loop: at once if started by :meth:`start`, else at its next turn."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        """Connect, subscribe, call ``on_connected``, read; on any failure reconnect with backoff."""
        delays = backoff()
        first = True
        while not self._stopping:
            if not first and self._before_retry is not None and not self._before_retry():
                return
            pubsub = self._open()
            try:
                channels = sorted(self.channels)
                for channel in channels:
                    self._confirm.setdefault(channel, asyncio.get_running_loop().create_future())
                if channels:
                    await self._subscribe(pubsub, channels)
                else:
                    await pubsub.ping()      # open the connection now, so that failures show here
                self._watch_connection(pubsub)
                self._pubsub = pubsub
                self.connected.set()
                late = sorted(self.channels - set(channels))   # added while the link was being made
                if late:
                    await self._subscribe(pubsub, late)
                delays = backoff()
                reconnect, first = not first, False
                await self._on_connected(channels, reconnect)
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._stopping:
                    log.warning("%s link lost (%s); reconnecting", self.label, type(exc).__name__)
                first = False
            finally:
                self.connected.clear()
                self._pubsub = None
                self._unwatch_connection(pubsub)
                for fut in self._confirm.values():
                    if not fut.done():
                        fut.set_result(None)     # nobody waits in vain; the next connection re-confirms
                self._confirm.clear()
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            if not self._stopping:
                metrics.PUBSUB_RECONNECTS.inc()
                if self._on_lost is not None:
                    self._on_lost()
                await asyncio.sleep(next(delays))

    # redis-py re-makes a dropped pub/sub connection by itself, inside whichever call notices (the read,
    # a PING, a SUBSCRIBE), and subscribes its channels again: the link would not notice, and what was
    # published in between would be lost without ``on_connected`` running.  A connect callback on the
    # connection catches that; the read loop then treats it as a lost link.
    def _watch_connection(self, pubsub: PubSub) -> None:
        self._remade = False
        if pubsub.connection is not None:
            pubsub.connection.register_connect_callback(self._connection_remade)

    def _unwatch_connection(self, pubsub: PubSub) -> None:
        if pubsub.connection is not None:      # it goes back to the pool: later reconnects are not ours
            pubsub.connection.deregister_connect_callback(self._connection_remade)

    def _connection_remade(self, connection: object) -> None:
        self._remade = True

    async def _listen(self, pubsub: PubSub) -> None:
        interval, timeout = self.ping_interval_s, self.ping_timeout_s
        message, confirmation = self._kinds
        last_pong = last_turn = last_check = time.monotonic()
        last_ping = 0.0
        still_primary: Callable[[], Awaitable[bool]] | None = getattr(pubsub, "still_primary", None)
        while not self._stopping:
            if self._remade:
                raise ConnectionError(f"{self.label} connection was re-made under the link")
            now = time.monotonic()
            if now - last_turn > interval + 1.0:
                # this process itself did not run for a while (CPU starvation, a long GC pause): that
                # silence is ours, not the link's, so the PONG gets a fresh chance before we reconnect
                # (a needless reconnect re-syncs every connection: a storm on top of the overload)
                last_pong = now
            last_turn = now
            if now - last_ping >= interval:
                await pubsub.ping()
                last_ping = now
            if now - last_pong > timeout:
                raise ConnectionError(f"{self.label} link silent past the ping timeout")
            if still_primary is not None and now - last_check >= self.primary_check_s:
                last_check = now
                if not await self._is_primary(still_primary):
                    raise ConnectionError(f"{self.label} link is on a node that is no longer the primary")
            msg = await pubsub.get_message(timeout=interval)
            if msg is None or self._remade:
                continue
            # anything read proves the link alive: a burst of subscribe confirmations (thousands of
            # clients signing in at once) can hold the PONG back past the timeout
            last_pong = time.monotonic()
            kind = msg["type"]
            if kind == message:
                self._on_message(msg["channel"], msg["data"])
            elif kind == confirmation:
                fut = self._confirm.get(msg["channel"])
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def _is_primary(self, still_primary: Callable[[], Awaitable[bool]]) -> bool:
        try:
            return await asyncio.wait_for(still_primary(), PRIMARY_CHECK_WAIT_S)
        except TimeoutError:
            return True
