"""The durable chat store: the Redis adapter for conversation logs.

Guarantees
----------
* **Atomic.**  :meth:`ChatStore.append` is one Lua script on the conversation's
  slot (tag ``{c:ID}``): the authorisation and state checks, the idempotency
  check, the seq assignment (``HINCRBY``), the server timestamp (``TIME``), the
  ``XADD`` with entry id ``<seq>-1``, the client-id record and the ``PUBLISH``
  calls happen together or not at all.  Seqs start at 1 and have no gaps;
  the log order is the seq order.  ``open``, ``end``, ``feedback`` and the
  erasure rewrite are single scripts as well; reads are single commands.
* **Idempotent.**  A (sender, client id) pair is stored at most once: a retry
  gets the first call's seq and ts with ``duplicate=True`` and publishes
  nothing.  The record lives as long as the conversation.
* **Durable when.**  A message is acknowledged once Redis has executed the
  script, i.e. it is in memory and in the AOF buffer.  It is on disk when the
  AOF is fsynced (``appendfsync everysec``: within about a second), and on a
  replica when replication catches up; a crash of the primary inside that
  window can lose acknowledged messages.  Clients resume with
  :meth:`read_after` from the last seq they saw; the ``epoch`` tells them
  whether the log they resume from is the one they knew.
* **Rate-limited with it.**  Given a :class:`SendLimit`, ``append`` takes one token from the
  sender's bucket in Redis.  On a single node that happens inside the same script, after the
  authorisation, duplicate and state checks and before anything is stored: a refused message
  (``rate_limited``) is not stored, and retries and refusals cost no token.  On Redis Cluster the
  bucket lives in the user's slot, not the conversation's, so it is one extra script call just
  before the append (``append_rate.lua``); there a retry or refused append has spent its token.
* **Pub/sub promises nothing.**  The ``PUBLISH`` inside ``append`` is only a
  wake-up for the gateways holding the participants' (and watching
  moderators') sockets: it is fire-and-forget, may be lost (no subscriber, a
  reconnecting gateway, a slow subscriber cut off) and is never replayed.
  The log is the truth; a gateway that may have missed something reads it
  with :meth:`read_after`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chat.groups import Member
from core.errors import ErrorCode, ServiceError, unavailable
from core.keys import Keys
from core.scripts import ScriptSet, as_service_error

DELETED_NAME = "Deleted user"
SCRIPTS = ("open.lua", "append.lua", "append_rate.lua", "end.lua", "feedback.lua", "erase.lua")


@dataclass(frozen=True, slots=True)
class SendLimit:
    """A sender's message rate, enforced by :meth:`ChatStore.append` in Redis: ``rate_per_s`` tokens a
    second, at most ``burst`` saved up, one bucket per user (``Keys.send_bucket``) shared by every
    connection on every gateway and kept across reconnects (chat/lua/append_bucket.lua)."""

    rate_per_s: float
    burst: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One log entry.  ``text`` is the original, ``shown`` what participants see (== text when unmasked)."""

    seq: int
    ts: int
    sender_id: str
    name: str
    role: str
    text: str
    shown: str
    client_id: str
    flags: str


@dataclass(frozen=True, slots=True)
class LiveMessage:
    """A decoded pub/sub wake-up.  ``text`` is what the channel carried: the *shown* text on a
    user channel, the *original* text on the watch channel (which alone carries ``flags``)."""

    conversation_id: str
    seq: int
    epoch: str
    ts: int
    name: str
    role: str
    text: str
    client_id: str
    sender_id: str
    flags: str | None = None     # None: from a user channel; a str: from the watch channel

    @property
    def watch(self) -> bool:
        return self.flags is not None


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    ts: int
    epoch: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ConversationMeta:
    id: str
    epoch: str
    patient: str
    patient_name: str
    survivor: str
    survivor_name: str
    state: str
    seq: int
    ended_by: str
    created: int = 0            # ms, server time
    ended_at: int = 0           # ms, server time; 0 while open
    kind: str = "pair"          # "pair", or "group": a group's members are in its own hash (chat.groups)

    @property
    def group(self) -> bool:
        return self.kind == "group"

    def participant(self, uid: str) -> bool:
        """One of the pair (a group's membership is read from its members hash: chat.groups)."""
        return bool(uid) and (uid == self.patient or uid == self.survivor)

    def peer_of(self, uid: str) -> str:
        """The other participant; "" if ``uid`` is not a participant."""
        if uid == self.patient:
            return self.survivor
        if uid == self.survivor:
            return self.patient
        return ""

    @property
    def ended(self) -> bool:
        return self.state != "open"


# ---- pure helpers (gateway hot path) ---------------------------------------------------------

_LIVE_HEADS = (0x9A, 0x9B)      # msgpack fixarray of 10 (user channel) or 11 (watch channel)


def decode_live(payload: bytes) -> LiveMessage | None:
    """Decode a message wake-up published by ``append``; None for anything else (e.g. JSON frames)."""
    if not payload or payload[0] not in _LIVE_HEADS:
        return None
    try:
        a = msgpack.unpackb(payload, raw=False, use_list=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if a[0] != "m":
        return None
    return LiveMessage(a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10] if len(a) == 11 else None)


def message_frame(cid: str, epoch: str, m: StoredMessage | LiveMessage, *, moderator_view: bool = False) -> dict:
    """The client ``message`` frame.  Participants see ``shown``; ``moderator_view`` shows the original
    text of a :class:`StoredMessage`.  A :class:`LiveMessage` carries one text already chosen by its
    channel (shown on user channels, original on the watch channel), so ``moderator_view`` is moot.
    An erased sender's entries carry the name "Deleted user" and text "" (rewritten in the log)."""
    if isinstance(m, StoredMessage):
        text = m.text if moderator_view else m.shown
    else:
        text = m.text
    return {
        "type": "message",
        "conversation_id": cid,
        "seq": m.seq,
        "epoch": epoch,
        "from": {"name": m.name, "role": m.role},
        "text": text,
        "ts": m.ts,
        "client_id": m.client_id,
    }


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else v)


def _fields(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    return {_s(k): _s(v) for k, v in raw.items()}


def _entry(entry_id: Any, raw: Any) -> StoredMessage:
    f = _fields(raw)
    text = f.get("text", "")
    return StoredMessage(
        seq=int(_s(entry_id).partition("-")[0]),
        ts=int(f.get("ts") or 0),
        sender_id=f.get("from", ""),
        name=f.get("name", DELETED_NAME),
        role=f.get("role", ""),
        text=text,
        shown=f.get("shown", text),
        client_id=f.get("cid", ""),
        flags=f.get("flags", ""),
    )


def _settle(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():                  # the sender went away meanwhile; the write happened or not, as for any call
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _AutoPipeline:
    """Auto-pipelining of one hot script (``append``) on a single-node client.

    Calls made in the same event-loop turn (a gateway under load reads frames from many sockets
    per turn) go to Redis as one pipeline: one pool checkout, one write, one read, instead of a
    full redis-py round trip each (~135 µs of client CPU per call against ~30-60 µs batched,
    measured on the benchmark machine).  A call alone is sent on the next turn, so light load
    sees no added latency.  Each call keeps its own outcome: a refusal is its own ServiceError,
    a lost connection makes every call of the batch ``unavailable`` (outcome unknown, exactly as
    for a lone call: the client retries with the same client id), and NOSCRIPT (a restarted
    Redis) falls back to the normal call, which loads the script.
    """

    def __init__(self, redis: Any, scripts: ScriptSet, name: str) -> None:
        self._redis = redis
        self._scripts = scripts
        self._name = name
        self._sha = scripts.sha(name)
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def call(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((keys, args, fut))
        if len(self._pending) == 1:
            self._flushing = loop.create_task(self._flush())   # a reference, so the task is not collected
        return fut

    async def _one(self, keys: list[str], args: list[Any], fut: asyncio.Future[Any]) -> None:
        try:
            _settle(fut, await self._scripts.run(self._name, keys, args))
        except Exception as exc:
            _settle(fut, exc=exc)

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            if len(batch) == 1:
                await self._one(*batch[0])
                return
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for keys, args, _ in batch:
                        pipe.evalsha(self._sha, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                for _, _, fut in batch:
                    _settle(fut, exc=unavailable())
                return
            for (keys, args, fut), res in zip(batch, results, strict=True):
                if isinstance(res, NoScriptError):
                    await self._one(keys, args, fut)
                elif isinstance(res, ResponseError):
                    _settle(fut, exc=as_service_error(res))
                elif isinstance(res, Exception):
                    _settle(fut, exc=res)
                else:
                    _settle(fut, res)
        finally:
            for _, _, fut in batch:     # cancelled at shutdown: nobody is left waiting in vain
                _settle(fut, exc=unavailable("The service is shutting down."))


class ChatStore:
    """Conversation logs in Redis.  One instance per process; its scripts are registered once."""

    def __init__(self, redis: Any, keys: Keys, *, screening: bool = False) -> None:
        """``screening``: queue every participant's new message on ``keys.screen_queue`` for the
        screening workers (:mod:`chat.screening.worker`)."""
        self.redis = redis
        self.keys = keys
        self.screening = screening
        self.scripts = ScriptSet(redis, "chat", SCRIPTS)
        self._user_stem = keys.user_channel("")
        assert keys.user_channel("x") == self._user_stem + "x", "user channels must be stem + uid"
        # cluster clients split pipelines per node on their own terms: they keep one call per append
        self._append_pipeline = (_AutoPipeline(redis, self.scripts, "append")
                                 if isinstance(redis, aioredis.Redis) else None)
        # on a cluster, wake-ups go to the conversation's shard channels (SPUBLISH, see gateway.hub)
        self._sharded = isinstance(redis, RedisCluster)

    def _conv_keys(self, cid: str) -> list[str]:
        k = self.keys
        return [k.conv_meta(cid), k.conv_log(cid), k.conv_client_ids(cid), k.group_members(cid), k.group_muted(cid)]

    async def open(self, cid: str, *, epoch: str, patient: tuple[str, str], survivor: tuple[str, str]) -> None:
        """Create the conversation's metadata; a second call never changes epoch, seq or state."""
        await self.scripts.run("open", [self.keys.conv_meta(cid)],
                               [epoch, patient[0], patient[1], survivor[0], survivor[1]])

    async def meta(self, cid: str) -> ConversationMeta | None:
        f = _fields(await self.redis.hgetall(self.keys.conv_meta(cid)))
        if "epoch" not in f:
            return None
        return ConversationMeta(
            id=cid, epoch=f["epoch"], patient=f.get("patient", ""), patient_name=f.get("patient_name", ""),
            survivor=f.get("survivor", ""), survivor_name=f.get("survivor_name", ""),
            state=f.get("state", "open"), seq=int(f.get("seq") or 0), ended_by=f.get("ended_by", ""),
            created=int(f.get("created") or 0), ended_at=int(f.get("ended_at") or 0),
            kind=f.get("kind") or "pair",
        )

    async def reader_floor(self, cid: str, uid: str) -> int:
        """The seq a group member joined at (they read only what came after it); 0 for anyone else."""
        record = await self.redis.hget(self.keys.group_members(cid), uid)
        return Member.parse(uid, _s(record)).joined_seq if record is not None else 0

    async def append(self, cid: str, *, sender_id: str, name: str, role: str, client_id: str,
                     text: str, shown: str, flags: str = "", limit: SendLimit | None = None) -> Appended:
        """Store and publish one message (see the module docstring).  ``shown`` "" means "same as text";
        ``limit``: take a token from the sender's send bucket, or refuse.

        Raises ServiceError FORBIDDEN (unknown conversation, not a participant nor a moderator, erased
        sender), CONVERSATION_ENDED, MUTED (a group member muted by a facilitator; ``retry_after_s``)
        or RATE_LIMITED (nothing stored); UNAVAILABLE if Redis cannot be
        reached (nothing was stored, or the outcome is unknown: retry with the same client id)."""
        keys = self._conv_keys(cid)
        args = [cid, sender_id, name, role, client_id, text, shown, flags,
                self._user_stem, self.keys.watch_channel(cid)]
        if self._sharded:
            args += [self.keys.conv_live(cid), self.keys.conv_watch(cid)]
            if limit is not None:       # another slot: its own call, before the append (module docstring)
                await self.scripts.run("append_rate", [self.keys.send_bucket(sender_id)],
                                       [limit.rate_per_s, limit.burst])
        else:
            if limit is not None:       # the same script: the token and the append are one atomic step
                keys.append(self.keys.send_bucket(sender_id))
                args += ["", "", repr(float(limit.rate_per_s)), str(limit.burst)]
            if self.screening:
                keys.append(self.keys.screen_queue)
        try:
            if self._append_pipeline is not None:
                res = await self._append_pipeline.call(keys, args)
            else:
                res = await self.scripts.run("append", keys, args)
        except ServiceError as exc:
            if exc.code == ErrorCode.MUTED:     # the script says how many seconds are left
                raise ServiceError(ErrorCode.MUTED, "A facilitator has muted you in this group for a while.",
                                   retry_after_s=int(exc.message)) from None
            raise
        appended = Appended(int(res[0]), int(res[1]), _s(res[2]), bool(int(res[3])))
        if self._sharded and self.screening and role != "moderator":
            await self._queue_for_screening(cid, appended.seq)
        return appended

    async def _queue_for_screening(self, cid: str, seq: int) -> None:
        """Cluster only: the screening stream is in the ``{ctl}`` slot, out of the append script's
        reach, so the message is queued here, before the sender's ack.  If this fails the sender
        gets ``unavailable`` and resends with the same client id: the append is then a duplicate
        and the message is queued again (the workers' flags are idempotent).  Only a gateway that
        dies between the two commands leaves a message to the rules alone (docs/safety-eval.md)."""
        try:
            await self.redis.xadd(self.keys.screen_queue, {"c": cid, "s": seq})
        except (RedisConnectionError, RedisTimeoutError, OSError):
            raise unavailable() from None

    async def read_after(self, cid: str, after_seq: int, limit: int = 500) -> list[StoredMessage]:
        """Messages with seq > after_seq, ascending, at most ``limit``."""
        if limit <= 0:
            return []
        rows = await self.redis.xrange(self.keys.conv_log(cid), f"{max(after_seq, 0) + 1}-0", "+", count=limit)
        return [_entry(i, f) for i, f in rows]

    async def history(self, cid: str, before_seq: int | None, limit: int) -> list[StoredMessage]:
        """The latest ``limit`` messages with seq < before_seq (or the latest overall), ascending."""
        if limit <= 0 or (before_seq is not None and before_seq <= 1):
            return []
        top = "+" if before_seq is None else f"{before_seq - 1}-1"
        rows = await self.redis.xrevrange(self.keys.conv_log(cid), top, "-", count=limit)
        return [_entry(i, f) for i, f in reversed(rows)]

    async def end(self, cid: str, by: str) -> bool:
        """End the conversation's log.  True only for the call that ended it; ended_at = server time (ms)."""
        return bool(int(await self.scripts.run("end", [self.keys.conv_meta(cid)], [by])))

    async def feedback(self, cid: str, uid: str, rating: int, comment: str) -> None:
        """Store ``uid``'s feedback (fields ``<role>_rating``, ``<role>_comment``, ``<role>_feedback_at``).

        Raises ServiceError FORBIDDEN for non-participants, BAD_FRAME while the conversation is open."""
        await self.scripts.run("feedback", [self.keys.conv_meta(cid)], [uid, int(rating), comment])

    async def erase_sender(self, cid: str, uid: str) -> int:
        """Rewrite one conversation's log without ``uid``'s words and name (see lua/erase.lua).

        Returns how many of the user's entries were rewritten.  Used by :func:`chat.erasure.erase_user`."""
        k = self.keys
        return int(await self.scripts.run("erase", [k.conv_meta(cid), k.conv_log(cid), k.conv_client_ids(cid)],
                                          [uid, DELETED_NAME]))
