"""Erasure ("delete my data"): a user's words and name leave Redis for good.

Order matters, so that a crash part-way can simply be retried:
1. SADD the user to ``keys.erased`` first: the gateway refuses their tokens from now on.
2. Per conversation in ``keys.user_history(uid)``, one script rebuilds the log without the
   user's text and name (see ``chat/lua/erase.lua``; seqs and the peer's messages are kept)
   and marks the user erased in the conversation (append refuses them there from then on).
3. Delete the user's control-plane data; the history set goes last (it is the work list).
   The caller takes the user out of matching before (``aftertalk erase-user`` runs the matcher's
   ``forget`` script: requests and offers withdrawn, out of the match indexes).
4. Ask Redis to rewrite its AOF, so the original XADDs leave the disk as well.
"""
from __future__ import annotations

import asyncio
import logging

from redis.exceptions import ResponseError

from chat.flags import forget_author
from chat.store import DELETED_NAME, ChatStore
from core.keys import Keys
from core.redis_client import RedisClient

log = logging.getLogger(__name__)


async def erase_user(redis: RedisClient, keys: Keys, store: ChatStore, uid: str, *,
                     compact_aof: bool = True, aof_wait_s: float = 60.0) -> int:
    """Erase ``uid``'s messages from every conversation they were in; return how many were erased."""
    await redis.sadd(keys.erased, uid)
    erased = 0
    for raw in await redis.smembers(keys.user_history(uid)):
        cid = raw.decode() if isinstance(raw, bytes) else raw
        erased += await store.erase_sender(cid, uid)
        await forget_author(redis, keys, cid, uid)     # flag excerpts quote the user's words too
        await forget_name(redis, keys, cid, uid)       # the matcher's record names both participants
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.survivor(uid), keys.request(uid), keys.blocks(uid), keys.user_convs(uid), keys.peers(uid),
                    keys.survivor_offers(uid), keys.request_declined(uid))
        for zset in (keys.relax, keys.away, keys.cooldowns):
            pipe.zrem(zset, uid)
        pipe.delete(keys.user_history(uid))
        await pipe.execute()
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
