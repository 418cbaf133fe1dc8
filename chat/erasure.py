"""Erasure ("delete my data"): a user's words and name leave Redis for good.

Order matters, so that a crash part-way can simply be retried (``aftertalk erase-user``):
1. :func:`mark_erased`: the tombstone ``keys.erasures`` (uid -> erased-at, Redis clock) is written, then
   an ``erased`` control frame is published on the user's channel: every gateway closes that user's
   live connections (4401 "this account was erased").  From then on a token issued no later than
   the erasure is refused at hello, and the matcher's request and availability scripts refuse a
   session signed in with one (a session that raced the close cannot queue or become available).
   A token issued *after* the erasure starts afresh (a returning user).
2. The caller takes the user out of matching (``MatchStore.forget``: their request and talk-later
   request dropped, their pending offers and talk-later cards withdrawn, out of the match and
   availability indexes, their contacts ended for both sides, requests addressed to them dropped).
3. They leave every group and waitlist they are in (chat/lua/group_leave.lua: their place goes to the
   head of the waitlist) and stop waiting for a group.  Then per conversation in
   ``keys.user_history(uid)`` (groups included), one script rebuilds the log without the user's
   text and name (see ``chat/lua/erase.lua``; seqs and the peer's messages are kept) and marks the
   user erased in the conversation (append refuses them there from then on); flags quoting them
   lose the quote; the matcher's record of the conversation names them "Deleted user".
4. Delete the user's control-plane data; the history set goes last (it is the work list). Then the
   shared limits kept under the user's own tag (send bucket, typing hints, connection leases).
5. Ask Redis to rewrite its AOF, so the original XADDs leave the disk as well.

What is removed: the user's profile and availability (``sv:``), their offers, request and its "not
again" list, their talk-now counters, their talk-later request (``lt:``) with its offers, "not again"
list, expiry entry and expired-while-away notice, the talk-later cards they hold (``sv:ID:later``),
requests addressed to them (``lx:for:``), their contacts (``ct:``, both sides' ``cts:`` lists) and
their one-sided keep-in-touch requests (``kit:``), their blocks, their lists of open conversations, of past
conversations and of peers talked with, their place in the relax, away and cool-down sets, their
message texts and names in every log, their client ids (the idempotency map of each log), flag
excerpts quoting them. Their live connections' presence entries go as the gateways close them. What
is KEPT, with the user's id (a pseudonymous token subject) but none of their words or name: the
tombstone (``keys.erasures``); in each of their conversations until retention purges it, the
participants' ids (the matcher's record ``cv:``, the log's meta with its ``erased:<uid>`` marker,
and the ``from`` of their emptied entries, so the peer's transcript keeps its shape); other users'
safety lists that name them (another user's blocks, a patient's peers and declined lists: they must
still never be matched again); the flags on their messages or raised by them (ids of author and
reporter, category, seq, status; no excerpt or reason); and the moderation audit log.
tests/integration/test_retention_erasure.py checks this list against a scan of every key.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from redis.exceptions import ResponseError

from chat.flags import forget_author
from chat.groups import GroupStore, Left
from chat.store import DELETED_NAME, ChatStore
from core.keys import Keys
from core.redis_client import RedisClient

log = logging.getLogger(__name__)


ERASED_REASON = "this account was erased"


async def mark_erased(redis: RedisClient, keys: Keys, uid: str) -> float:
    """Step 1: write the tombstone (Redis's clock), then close every live session of ``uid`` on every
    gateway (an ``erased`` control frame on the user's channel; see ``gateway.hub``).  Returns the time."""
    sec, usec = await redis.time()
    at = int(sec) + int(usec) / 1e6
    await redis.hset(keys.erasures, uid, repr(at))
    await redis.publish(keys.user_channel(uid), orjson.dumps({"type": "erased", "at": at}))
    return at


async def erase_user(redis: RedisClient, keys: Keys, store: ChatStore, uid: str, *, mark: bool = True,
                     compact_aof: bool = True, aof_wait_s: float = 60.0,
                     on_group_left: Callable[[str, Left], Awaitable[None]] | None = None) -> int:
    """Erase ``uid``'s messages from every conversation they were in; return how many were erased.
    ``mark=False``: the caller ran :func:`mark_erased` already (``aftertalk erase-user`` does, before
    taking the user out of matching).  ``on_group_left(group id, left)``: told of each group the user
    was a member of, after they left it (``aftertalk erase-user`` tells the other members)."""
    if mark:
        await mark_erased(redis, keys, uid)
    erased = 0
    # the shared limits (send bucket, typing hints, connection leases) live in the user's own slot
    # ({u:ID}) and expire by themselves within seconds; they go at once all the same
    own = [keys.send_bucket(uid), keys.user_leases(uid)]
    groups = GroupStore(redis, keys, max_groups_per_user=0)
    for raw in await redis.smembers(keys.user_groups(uid)):     # out of every group and waitlist first
        gid = raw.decode() if isinstance(raw, bytes) else raw
        left = await groups.leave(gid, uid, mode="erase")
        if on_group_left is not None and left.was == "member":
            await on_group_left(gid, left)          # the others are told, and whoever moved up joins
    await groups.unseek(uid)
    for raw in await redis.smembers(keys.user_history(uid)):
        cid = raw.decode() if isinstance(raw, bytes) else raw
        own.append(keys.typing_hint(uid, cid))
        erased += await store.erase_sender(cid, uid)
        await forget_author(redis, keys, cid, uid)     # flag excerpts quote the user's words too
        await forget_name(redis, keys, cid, uid)       # the matcher's record names both participants
        await redis.srem(keys.keep_in_touch(cid), uid)   # a one-sided keep-in-touch request
    hour = int((await redis.time())[0]) // 3600      # talk-now counters live 3,700 s: this hour's and the last
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.request_count(uid, hour), keys.request_count(uid, hour - 1))
        pipe.delete(keys.survivor(uid), keys.request(uid), keys.blocks(uid), keys.user_convs(uid), keys.peers(uid),
                    keys.survivor_offers(uid), keys.request_declined(uid))
        # talk-later and contacts (MatchStore.forget ended them; these are what a crash could leave)
        pipe.delete(keys.later(uid), keys.later_offers(uid), keys.later_declined(uid), keys.survivor_later(uid),
                    keys.later_for(uid), keys.user_contacts(uid), keys.user_groups(uid))
        pipe.hdel(keys.later_expired, uid)
        for zset in (keys.relax, keys.away, keys.cooldowns, keys.later_deadlines):
            pipe.zrem(zset, uid)
        pipe.delete(keys.user_history(uid))
        await pipe.execute()
    await redis.delete(*own)
    if compact_aof:
        await rewrite_aof(redis, wait_s=aof_wait_s)
    return erased


async def forget_name(redis: RedisClient, keys: Keys, cid: str, uid: str) -> None:
    """Rename ``uid`` to "Deleted user" in the matcher's record of a conversation (kept until retention)."""
    who = await redis.hmget(keys.conversation(cid), "patient", "survivor")
    for role, raw in zip(("patient", "survivor"), who, strict=True):
        if (raw.decode() if isinstance(raw, bytes) else raw) == uid:
            await redis.hset(keys.conversation(cid), f"{role}_name", DELETED_NAME)


async def rewrite_aof(redis: RedisClient, *, wait_s: float = 60.0) -> bool:
    """Best effort: start an AOF rewrite that begins *after* now (so it cannot contain erased data).

    If a rewrite is already running (its fork may predate the erasure) wait for it, then start ours.
    Returns True if a rewrite was started; False when AOF is off, the command is disabled, or waiting
    timed out.  Never raises for Redis-side refusals."""
    node_clients = getattr(redis, "node_clients", None)
    if node_clients is not None:      # Redis Cluster: every node, replicas too, keeps its own AOF
        results = await asyncio.gather(*(rewrite_aof(node, wait_s=wait_s) for node in node_clients()))
        return bool(results) and all(results)
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        info = await redis.info("persistence")
        if not int(info.get("aof_enabled", 0)):
            return False
        try:
            await redis.bgrewriteaof()
            return True
        except ResponseError as exc:
            if "in progress" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                log.warning("AOF rewrite after erasure not started: %s", exc)
                return False
        await asyncio.sleep(0.2)
