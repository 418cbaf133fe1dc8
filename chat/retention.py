"""Retention: conversations ended longer ago than the retention period are deleted.

The control-plane zset ``keys.ended`` (conversation id -> end time, epoch seconds;
written by the matcher when a conversation ends) is the work list.  A
conversation's log keys live in its own slot and the control-plane record in
``{ctl}``, so this is not one script: per conversation, the log keys go first
(one DEL, one slot), then the control-plane record, flags index and the
``ended`` entry (one MULTI on the ``{ctl}`` slot).  A crash in between leaves
the ``ended`` entry, so the next run finishes the job; every step is idempotent.
"""
from __future__ import annotations

from typing import Any

from gateway.keys import Keys


async def purge_expired(redis: Any, keys: Keys, *, now_s: float, retention_s: float, batch: int = 100) -> int:
    """Delete every conversation that ended at or before ``now_s - retention_s``; return how many."""
    cutoff = now_s - retention_s
    purged = 0
    while True:
        due = await redis.zrangebyscore(keys.ended, "-inf", cutoff, start=0, num=max(batch, 1))
        if not due:
            return purged
        cids = [c.decode() if isinstance(c, bytes) else c for c in due]
        async with redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.delete(keys.conv_meta(cid), keys.conv_log(cid), keys.conv_client_ids(cid))
            await pipe.execute()
        async with redis.pipeline(transaction=True) as pipe:
            for cid in cids:
                pipe.delete(keys.conversation(cid), keys.conv_flags(cid))
            pipe.zrem(keys.ended, *cids)
            await pipe.execute()
        purged += len(cids)
        if len(cids) < batch:
            return purged
