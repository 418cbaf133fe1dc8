"""Live fan-out: one pub/sub link per gateway process, and the connections it holds.

Guarantee: pub/sub is only a wake-up.  Every live message carries its
``seq``; a connection writes message ``seq`` only right after ``seq - 1``,
and any gap (a lost publish, a pub/sub reconnect, a slow catch-up) is filled
from the conversation log, which is the truth.  The pub/sub link is a
:class:`~gateway.link.Link` (which documents what it promises): a link that
stops answering PING within ``ping_timeout_s`` or raises is dropped and rebuilt
with backoff, every channel is subscribed again, and then the hub catches every
connection up from the log and re-syncs it with the control plane (missed
matches and offers are replayed from state, not from pub/sub).

On a Redis Cluster, chat messages do not travel on the plain link: the append
script SPUBLISHes them to the conversation's shard channels (``Keys.conv_live``
for participants, ``Keys.conv_watch`` for watching moderators), which only the
node owning the conversation's slot serves.  The hub then follows, for every
conversation a local connection reads (``conn.delivered``) or a moderator
watches, that shard channel through :class:`~gateway.sharded_pubsub.ShardedSubscriber`
(one :class:`~gateway.link.Link` per node, whose reconnects trigger the same
catch-up from the log); control frames stay on the plain link.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from chat.erasure import ERASED_REASON
from chat.store import ChatStore, decode_live, message_frame
from core.errors import CloseCode
from core.keys import Keys
from core.redis_client import ClusterClient
from gateway import metrics
from gateway.connection import Conn
from gateway.limits import backoff
from gateway.link import Link
from gateway.sharded_pubsub import ShardedSubscriber
from matcher.estimate import public_queued

log = logging.getLogger("aftertalk.hub")
FILL_BATCH = 500
GROUP_EXITS = frozenset({"left", "removed"})     # a member's connections stop following the group


class Hub:
    def __init__(self, redis_bytes: Any, keys: Keys, chat: ChatStore, *,
                 ping_interval_s: float = 1.0, ping_timeout_s: float = 3.0, catchup_concurrency: int = 32) -> None:
        self.redis = redis_bytes
        # Catch-ups (a log read for one connection and conversation, or one user's control-plane
        # re-sync) run at most this many at a time; the rest wait their turn, first come first served.
        # After a real link loss every connection needs one at once: unpaced, thousands of reads hit
        # Redis together, empty the client pool, and the ones that time out were given up.
        self._catchup_slots = asyncio.Semaphore(catchup_concurrency)
        self.keys = keys
        self.chat = chat
        self.by_user: dict[str, set[Conn]] = {}
        self.watchers: dict[str, set[Conn]] = {}
        self.flag_watchers: set[Conn] = set()
        self.epochs: dict[str, str] = {}
        self._on_resync: Callable[[str], Awaitable[None]] | None = None   # given to run()
        self._resyncing: asyncio.Task[None] | None = None
        self._user_stem = keys.user_channel("").encode()
        self._watch_stem = keys.watch_channel("").encode()
        self._flag_channel = keys.flag_channel.encode()
        # the plain link: control frames, watch and flag channels (and chat messages off a cluster); its
        # channel set is the flag channel, a user channel per local user and a watch channel per watch
        self.link = Link(lambda: self.redis.pubsub(), self._dispatch, self._linked, channels=[self._flag_channel],
                         ping_interval_s=ping_interval_s, ping_timeout_s=ping_timeout_s)
        self.connected = self.link.connected
        # cluster only: conversation -> local participant connections fed from its shard channel
        self.followers: dict[str, set[Conn]] = {}
        self.shards: ShardedSubscriber | None = None
        if isinstance(redis_bytes, ClusterClient):
            self.shards = ShardedSubscriber(redis_bytes, self._dispatch_shard, self._shards_resubscribed,
                                            ping_interval_s=ping_interval_s, ping_timeout_s=ping_timeout_s)
        self._shard_head = f"{keys.prefix}:{{c:".encode()

    # ---- channels ---------------------------------------------------------------
    async def _subscribe(self, channel: bytes) -> None:
        """Subscribe and wait for the server's confirmation (so later reads of state cannot miss a publish)."""
        self.link.add(channel)
        if self.link.connected.is_set():
            await self.link.ready(channel)
        # otherwise the link's next connection subscribes it, and the hub re-syncs everyone then

    async def _unsubscribe(self, channel: bytes) -> None:
        await self.link.remove(channel)

    async def add(self, conn: Conn) -> None:
        conns = self.by_user.setdefault(conn.user.id, set())
        conns.add(conn)
        if len(conns) == 1:
            await self._subscribe(self._user_stem + conn.user.id.encode())

    async def remove(self, conn: Conn) -> None:
        self.flag_watchers.discard(conn)
        for cid in list(conn.watching):
            await self.unwatch(conn, cid)
        if self.shards is not None:
            for cid in list(conn.delivered):
                self._unfollow(conn, cid)
        conns = self.by_user.get(conn.user.id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_user[conn.user.id]
                await self._unsubscribe(self._user_stem + conn.user.id.encode())

    async def watch(self, conn: Conn, cid: str) -> None:
        group = self.watchers.setdefault(cid, set())
        group.add(conn)
        conn.watching.add(cid)
        if len(group) == 1:
            await self._subscribe(self._watch_stem + cid.encode())
            if self.shards is not None:
                await self._shard_subscribe(self.keys.conv_watch(cid).encode())

    async def unwatch(self, conn: Conn, cid: str) -> None:
        conn.watching.discard(cid)
        group = self.watchers.get(cid)
        if group is not None:
            group.discard(conn)
            if not group:
                del self.watchers[cid]
                await self._unsubscribe(self._watch_stem + cid.encode())
                if self.shards is not None:
                    await self.shards.unsubscribe(self.keys.conv_watch(cid).encode())

    def conns_of(self, uid: str) -> set[Conn]:
        return self.by_user.get(uid, set())

    def send_user(self, uid: str, frame: dict[str, Any]) -> None:
        """To this process's connections of one user only."""
        text = orjson.dumps(frame).decode()
        for conn in self.by_user.get(uid, ()):
            conn.push(text)

    async def publish_user(self, uid: str, frame: dict[str, Any]) -> None:
        """To every connection of one user, on every gateway (at most once: a hint, not a log)."""
        await self.redis.publish(self.keys.user_channel(uid), orjson.dumps(frame))

    async def publish_users(self, frames: list[tuple[str, dict[str, Any]]]) -> None:
        """Each frame to every connection of its user, on every gateway; one round trip for all."""
        if not frames:
            return
        if self.shards is not None:     # a cluster client routes PUBLISH one by one (any node serves it)
            await asyncio.gather(*(self.redis.publish(self.keys.user_channel(uid), orjson.dumps(frame))
                                   for uid, frame in frames))
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid, frame in frames:
                pipe.publish(self.keys.user_channel(uid), orjson.dumps(frame))
            await pipe.execute()

    async def publish_watchers(self, cid: str, frame: dict[str, Any]) -> None:
        """To every moderator watching a conversation, on every gateway."""
        await self.redis.publish(self.keys.watch_channel(cid), orjson.dumps(frame))

    # ---- sharded pub/sub (cluster only) --------------------------------------------
    async def _shard_subscribe(self, channel: bytes) -> None:
        """Follow a shard channel and wait for its confirmation; a failure is left to the reconnect loops."""
        assert self.shards is not None
        try:
            await self.shards.subscribe(channel)
        except Exception:
            log.warning("shard subscription failed; catch-up comes from the log")

    def _follow(self, conn: Conn, cid: str) -> None:
        if cid in conn.watching or conn.closed:
            return                  # a watching moderator is fed from the watch shard channel
        group = self.followers.setdefault(cid, set())
        group.add(conn)

    def _unfollow(self, conn: Conn, cid: str) -> None:
        group = self.followers.get(cid)
        if group is None:
            return
        group.discard(conn)
        if not group:
            del self.followers[cid]
            asyncio.get_running_loop().create_task(self._shard_unsubscribe_unfollowed(cid))

    async def _shard_unsubscribe_unfollowed(self, cid: str) -> None:
        if self.shards is not None and cid not in self.followers:     # nobody followed it again meanwhile
            await self.shards.unsubscribe(self.keys.conv_live(cid).encode())

    def _shard_cid(self, channel: bytes, suffix: bytes) -> str | None:
        if channel.startswith(self._shard_head) and channel.endswith(suffix):
            return channel[len(self._shard_head):-len(suffix)].decode()
        return None

    def _dispatch_shard(self, channel: bytes, data: bytes) -> None:
        cid = self._shard_cid(channel, b"}:live")
        if cid is not None:
            conns = self.followers.get(cid)
            if conns:
                self._to_user(conns, data)
            return
        cid = self._shard_cid(channel, b"}:watch")
        if cid is not None:
            group = self.watchers.get(cid)
            if group:
                self._to_watchers(cid, group, data)

    def _shards_resubscribed(self, channels: list[bytes]) -> None:
        """A node link (re)subscribed these channels: catch their readers up (each fill waits for confirmation)."""
        for channel in channels:
            cid = self._shard_cid(channel, b"}:live")
            readers = self.followers.get(cid, set()) if cid is not None else set()
            if cid is None:
                cid = self._shard_cid(channel, b"}:watch")
                readers = self.watchers.get(cid, set()) if cid is not None else set()
            for conn in list(readers):
                if cid is not None and cid in conn.delivered:
                    self.fill(conn, cid)

    # ---- catching up from the log -----------------------------------------------
    def fill(self, conn: Conn, cid: str, *, verify: bool = False) -> None:
        """Catch ``conn`` up on ``cid`` from the log.  ``verify`` (after a link loss): first check that
        the log still holds everything the connection was shown."""
        if self.shards is not None:
            self._follow(conn, cid)
        if cid not in conn.filling:
            conn.filling.add(cid)
            asyncio.get_running_loop().create_task(self._fill(conn, cid, verify))

    async def _fill(self, conn: Conn, cid: str, verify: bool = False) -> None:
        """Write every logged message after conn.delivered[cid], in order, then hand back to live delivery.
        A failed read (Redis restarting, loading, pool timeout) is retried with backoff while the
        connection is open: a catch-up is never given up, or the connection would miss messages until
        the next one arrived."""
        metrics.GAP_FILLS.inc()
        delays = backoff(initial=0.2, maximum=5.0)
        try:
            while not conn.closed:
                try:
                    if verify:
                        await self._verify_log(conn, cid)
                        verify = False
                    await self._fill_from_log(conn, cid)
                    return
                except Exception as exc:
                    log.warning("catch-up from the log failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(next(delays))
        finally:
            conn.filling.discard(cid)
            conn.seen.pop(cid, None)

    async def _verify_log(self, conn: Conn, cid: str) -> None:
        """A connection that stayed open while Redis failed over may have been shown messages the new
        primary never got (replication is asynchronous).  Its log is then behind what the connection
        saw, and the next messages would reuse those seqs: say so (``recovery_failed``, ``log_behind``,
        as a resume does) and give it the log from seq 1 as it now stands.  (Messages appended by other
        gateways before this check can hide the gap; docs/protocol.md says so.)"""
        async with self._catchup_slot():
            meta = await self.chat.meta(cid)
        if meta is not None and meta.seq < conn.delivered.get(cid, 0):
            conn.push(orjson.dumps({"type": "error", "code": "recovery_failed", "ref": "resync",
                                    "conversation_id": cid, "reason": "log_behind",
                                    "message": "This conversation's history could not be kept as you saw it; "
                                               "reload the transcript."}).decode())
            # from seq 1, or for a group member from the seq they joined at (they never read before it)
            conn.delivered[cid] = await self.chat.reader_floor(cid, conn.user.id) if meta.group else 0

    async def _fill_from_log(self, conn: Conn, cid: str) -> None:
        moderator_view = conn.user.role == "moderator"
        reserve = max(1, conn.limit // 2)        # outbox room kept free for acks and control frames
        if self.shards is not None and cid in self.followers:
            # the shard subscription must be confirmed before the log is read, or a message
            # appended in between would wait for the next one to be noticed
            await self._shard_subscribe(self.keys.conv_live(cid).encode())
        while not conn.closed:
            after = conn.delivered.get(cid, 0)
            async with self._catchup_slot():
                batch = await self.chat.read_after(cid, after, FILL_BATCH)
            epoch = self.epochs.get(cid, "")
            for m in batch:
                if len(conn.outbox) + reserve > conn.limit:
                    await conn.wait_room(reserve)       # a slow reader waits without holding a slot
                    if conn.closed:
                        return
                conn.push(orjson.dumps(message_frame(cid, epoch, m, moderator_view=moderator_view)).decode())
                conn.delivered[cid] = m.seq
            if len(batch) < FILL_BATCH and conn.seen.get(cid, 0) <= conn.delivered.get(cid, 0):
                return

    @contextlib.asynccontextmanager
    async def _catchup_slot(self) -> AsyncIterator[None]:
        metrics.CATCHUPS_WAITING.inc()
        try:
            await self._catchup_slots.acquire()
        finally:
            metrics.CATCHUPS_WAITING.dec()
        try:
            yield
        finally:
            self._catchup_slots.release()

    # ---- the pub/sub link ---------------------------------------------------------
    async def run(self, on_resync: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Own the pub/sub link until :meth:`stop`.  After every (re)subscription each connection
        is caught up from the log and ``on_resync(uid)`` runs for every user held here, so the
        services can re-send what lives outside the logs (matches, offers, the flag list)."""
        self._on_resync = on_resync
        await self.link.run()

    async def _linked(self, channels: list[bytes], reconnect: bool) -> None:
        """Every connection of the plain link, the first included (see :class:`gateway.link.Link`)."""
        await self._resync_all(reconnect)

    async def _resync_all(self, reconnect: bool = True) -> None:
        """After (re)subscribing: catch every connection up from the log and from the control plane,
        paced by the catch-up slots (see __init__)."""
        for conns in list(self.by_user.values()):
            for conn in list(conns):
                for cid in list(conn.delivered):
                    self.fill(conn, cid, verify=reconnect)
        for cid, group in list(self.watchers.items()):
            for conn in list(group):
                self.fill(conn, cid, verify=reconnect)
        if self._on_resync is not None:
            # in the background: the link starts listening now (live messages must not back up in
            # Redis's output buffer for this client while thousands of users are re-synced)
            if self._resyncing is not None:
                self._resyncing.cancel()          # superseded: this round re-syncs everyone again
            users = list(self.by_user)
            self._resyncing = asyncio.get_running_loop().create_task(self._resync_users(users))

    async def _resync_users(self, users: list[str]) -> None:
        await asyncio.gather(*(self._resync_user(uid) for uid in users))

    async def _resync_user(self, uid: str) -> None:
        """One user's control-plane re-sync, retried with backoff while they still have connections here."""
        assert self._on_resync is not None
        delays = backoff(initial=0.2, maximum=5.0)
        while self.by_user.get(uid):
            try:
                async with self._catchup_slot():
                    await self._on_resync(uid)
                return
            except Exception as exc:
                log.warning("re-sync of a user failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(next(delays))

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel.startswith(self._user_stem):
            uid = channel[len(self._user_stem):].decode()
            conns = self.by_user.get(uid)
            if conns:
                self._to_user(conns, data)
        elif channel.startswith(self._watch_stem):
            cid = channel[len(self._watch_stem):].decode()
            group = self.watchers.get(cid)
            if group:
                self._to_watchers(cid, group, data)
        elif channel == self._flag_channel:
            text = data.decode()
            for conn in list(self.flag_watchers):
                conn.push(text)

    def _to_user(self, conns: set[Conn], data: bytes) -> None:
        live = decode_live(data)
        if live is None:
            self._control(conns, data)
            return
        cid = live.conversation_id
        self.epochs.setdefault(cid, live.epoch)
        text = orjson.dumps(message_frame(cid, live.epoch, live)).decode()
        metrics.DELIVERED.inc(len(conns))
        for conn in list(conns):
            if not conn.deliver(cid, live.seq, text):
                self.fill(conn, cid)

    def _to_watchers(self, cid: str, group: set[Conn], data: bytes) -> None:
        live = decode_live(data)
        if live is None:
            self._watch_control(cid, group, data)
            return
        text = orjson.dumps(message_frame(cid, live.epoch, live, moderator_view=True)).decode()
        for conn in list(group):
            if not conn.deliver(cid, live.seq, text):
                self.fill(conn, cid)

    def _watch_control(self, cid: str, group: set[Conn], data: bytes) -> None:
        """A JSON frame on a watch channel (gateway.safety): forward it; ``watch_ended`` also stops the watch."""
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        text = data.decode()
        for conn in list(group):
            conn.push(text)
            if frame.get("type") == "watch_ended":
                conn.delivered.pop(cid, None)
                asyncio.get_running_loop().create_task(self.unwatch(conn, cid))

    def _control(self, conns: set[Conn], data: bytes) -> None:
        """A JSON frame from a matcher or moderation script: note what changes local state, forward it."""
        frame = orjson.loads(data)
        kind = frame.get("type")
        if kind == "erased":      # chat.erasure.mark_erased: sessions signed in before the erasure end
            at = float(frame.get("at") or 0)
            for conn in list(conns):
                if conn.user.iat is None or conn.user.iat <= at:
                    conn.close(CloseCode.UNAUTHORIZED, ERASED_REASON)
            return
        refresh = False
        if kind == "queued":      # the matcher's inputs -> the honest estimate (matcher.estimate, pure)
            refresh = bool(frame.get("refresh"))
            frame = public_queued(frame)
            text = orjson.dumps(frame).decode()
        else:
            text = data.decode()
        for conn in list(conns):
            if kind == "matched":
                cid = frame["conversation_id"]
                self.epochs[cid] = frame.get("epoch", "")
                if cid in conn.delivered:
                    continue
                conn.delivered[cid] = 0
                conn.position = None
                if self.shards is not None:
                    self.fill(conn, cid)    # follow its shard channel, then catch up what came first
            elif kind == "queued":
                if conn.position == frame.get("position") and not refresh:
                    continue
                conn.position = frame.get("position")
            elif kind == "cancelled":
                conn.position = None
            elif kind == "ended" or kind in GROUP_EXITS:
                cid = frame.get("conversation_id") or frame["group_id"]
                if kind != "left" or not frame.get("waitlisted"):
                    conn.delivered.pop(cid, None)
                    if self.shards is not None:
                        self._unfollow(conn, cid)
            elif kind == "joined":      # a group (gateway.groups): follow it from the seq joined at
                cid = frame["conversation_id"]
                self.epochs[cid] = frame.get("epoch", "")
                if cid not in conn.delivered:
                    conn.delivered[cid] = int(frame.get("seq") or 0)
                    self.fill(conn, cid)    # what was appended between the join and this frame
            conn.push(text)
            if kind == "suspended":
                conn.close(CloseCode.SUSPENDED, "suspended by a moderator")

    def stop(self) -> None:
        self.link.stop()
        if self._resyncing is not None:
            self._resyncing.cancel()
        if self.shards is not None:
            self.shards.stop()
