"""Retention: conversations ended longer ago than the retention period are deleted.

The control-plane zset ``keys.ended`` (conversation id -> end time, epoch seconds;
written by the matcher when a conversation ends) is the work list.  A
conversation's log keys live in its own slot and the control-plane record in
``{ctl}``, so this is not one script: per conversation, the log keys go first
(one DEL, one slot), then the control-plane record, its resolved flags and the
``ended`` entry (one MULTI on the ``{ctl}`` slot).  A conversation with an unresolved
flag is kept until a moderator resolves it.  A crash in between leaves
the ``ended`` entry, so the next run finishes the job; every step is idempotent.
A one-sided keep-in-touch request of the conversation (``keys.keep_in_touch``) goes with its
record; a contact both sides kept (``keys.contact``) outlives the conversation until either side
ends it, a block, or an erasure.
"""
from __future__ import annotations

from typing import Any

from core.keys import Keys

HOLD_S = 3600.0   # a conversation with an unresolved flag is looked at again this much later


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def _without_open_flags(redis: Any, keys: Keys, cids: list[str], *,
                              recheck_at: float) -> tuple[list[str], list[str]]:
    """Split off conversations a moderator still has to review: they are kept, and re-checked later.

    Returns the purgeable ids and the ids of their (resolved) flags, whose records go with them."""
    async with redis.pipeline(transaction=False) as pipe:
        for cid in cids:
            pipe.hgetall(keys.conv_flags(cid))
        statuses = await pipe.execute()
    keep: dict[str, float] = {}
    purge: list[str] = []
    flag_ids: list[str] = []
    for cid, flags in zip(cids, statuses, strict=True):
        if any(_s(status) != "resolved" for status in flags.values()):
            keep[cid] = recheck_at
        else:
            purge.append(cid)
            flag_ids.extend(_s(fid) for fid in flags)
    if keep:
        await redis.zadd(keys.ended, keep)
    return purge, flag_ids


async def purge_expired(redis: Any, keys: Keys, *, now_s: float, retention_s: float, batch: int = 100) -> int:
    """Delete every conversation that ended at or before ``now_s - retention_s``; return how many."""
    cutoff = now_s - retention_s
    purged = 0
    while True:
        due = await redis.zrangebyscore(keys.ended, "-inf", cutoff, start=0, num=max(batch, 1))
        if not due:
            return purged
        cids = [c.decode() if isinstance(c, bytes) else c for c in due]
        cids, flag_ids = await _without_open_flags(redis, keys, cids, recheck_at=cutoff + HOLD_S)
        if not cids:
            continue
        async with redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.delete(keys.conv_meta(cid), keys.conv_log(cid), keys.conv_client_ids(cid),
                            # a closed group's membership, beside its log in the same slot
                            keys.group_members(cid), keys.group_names(cid), keys.group_waitlist(cid),
                            keys.group_waiting(cid), keys.group_muted(cid), keys.group_removed(cid))
            await pipe.execute()
        async with redis.pipeline(transaction=True) as pipe:
            for cid in cids:
                pipe.delete(keys.conversation(cid), keys.conv_flags(cid), keys.keep_in_touch(cid))
            for fid in flag_ids:
                pipe.delete(keys.flag(fid))
            pipe.zrem(keys.ended, *cids)
            await pipe.execute()
        purged += len(cids)
        if len(cids) < batch:
            return purged


class Retention:
    """Runs :func:`purge_expired` on Redis's clock, so gateways with skewed clocks agree."""

    def __init__(self, redis: Any, keys: Keys, *, retention_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self.retention_s = retention_s

    async def run(self) -> int:
        now = (await self._redis.time())[0]
        return await purge_expired(self._redis, self._keys, now_s=now, retention_s=self.retention_s)
