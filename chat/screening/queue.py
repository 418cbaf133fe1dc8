"""The screening queue: a Redis stream of message references, read by a consumer group.

Guarantee to the workers: every entry added to ``keys.screen_queue`` is handed to some worker
until one acknowledges it.  New entries go to exactly one live worker (``XREADGROUP ... >``);
entries that a worker took and did not acknowledge within ``claim_idle_s`` (it died, or hung)
are handed to another (``XAUTOCLAIM``).  So delivery is at least once, and a worker's effects
must be idempotent (flags are: their id is derived from conversation, seq and category).

The stream only holds references (``c`` conversation id, ``s`` seq), never text: the text stays
in the conversation's log, where retention and erasure already reach it.  Acknowledged entries
are trimmed by the workers (``XTRIM MINID`` below the oldest entry still owed), so the stream's
length is the backlog.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from core.keys import Keys

GROUP = "screeners"


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    entry_id: str
    conversation_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class Backlog:
    waiting: int            # entries not yet acknowledged: never read, or read by a worker still busy
    oldest_age_s: float     # age of the oldest of them (0 when there is none)
    pending: int            # of which handed to a worker and not yet acknowledged


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _parse(rows: Any) -> list[QueuedMessage]:
    out = []
    for entry_id, fields in rows or ():
        if not fields:              # deleted under a pending entry: nothing left to screen
            out.append(QueuedMessage(_s(entry_id), "", 0))
            continue
        f = {_s(k): _s(v) for k, v in fields.items()}
        out.append(QueuedMessage(_s(entry_id), f.get("c", ""), int(f.get("s") or 0)))
    return out


class ScreenQueue:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.screen_queue

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) once; later calls are no-ops.  A new group
        starts at ``0``: whatever was queued before the first worker ever ran is screened too."""
        try:
            await self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[QueuedMessage]:
        """New entries for this consumer, waiting up to ``block_ms`` for the first."""
        reply = await self.redis.xreadgroup(GROUP, consumer, {self.key: ">"}, count=count, block=block_ms)
        return _parse(reply[0][1]) if reply else []

    async def claim_stale(self, consumer: str, idle_s: float, count: int) -> list[QueuedMessage]:
        """Entries another worker took more than ``idle_s`` ago and never acknowledged."""
        reply = await self.redis.xautoclaim(self.key, GROUP, consumer, int(idle_s * 1000), "0-0", count=count)
        return _parse(reply[1])

    async def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self.redis.xack(self.key, GROUP, *entry_ids)

    async def _oldest_owed(self) -> tuple[str | None, int, int]:
        """(id of the oldest entry not acknowledged, waiting count, pending count)."""
        groups = {_s(g["name"]): g for g in await self.redis.xinfo_groups(self.key)}
        group = groups.get(GROUP)
        if group is None:
            length = int(await self.redis.xlen(self.key))
            first = await self.redis.xrange(self.key, "-", "+", count=1)
            return (_s(first[0][0]) if first else None), length, 0
        pending = int(group["pending"])
        lag = group.get("lag")
        last = _s(group["last-delivered-id"])
        undelivered = await self.redis.xrange(self.key, _next_id(last), "+", count=1)
        if lag is None:             # Redis cannot tell after some deletions: count what is after `last`
            lag = len(await self.redis.xrange(self.key, _next_id(last), "+"))
        oldest = None
        if pending:
            summary = await self.redis.xpending(self.key, GROUP)
            oldest = _s(summary["min"])
        if undelivered and (oldest is None or _ms(_s(undelivered[0][0])) < _ms(oldest)):
            oldest = _s(undelivered[0][0])
        return oldest, pending + int(lag), pending

    async def backlog(self) -> Backlog:
        oldest, waiting, pending = await self._oldest_owed()
        if oldest is None:
            return Backlog(waiting, 0.0, pending)
        now_s, now_us = await self.redis.time()
        now_ms = int(now_s) * 1000 + int(now_us) // 1000
        return Backlog(waiting, max(0.0, (now_ms - _ms(oldest)) / 1000), pending)

    async def forget_idle_consumers(self, idle_s: float = 3600.0) -> int:
        """Drop consumers that hold nothing and were idle for ``idle_s`` (workers that exited or
        died: every worker process has a name of its own).  A consumer with pending entries is
        kept, so no entry loses its owner before XAUTOCLAIM moves it."""
        dropped = 0
        for c in await self.redis.xinfo_consumers(self.key, GROUP):
            if int(c["pending"]) == 0 and int(c["idle"]) >= idle_s * 1000:
                dropped += int(await self.redis.xgroup_delconsumer(self.key, GROUP, _s(c["name"])) == 0)
        return dropped

    async def trim(self) -> None:
        """Drop acknowledged entries: everything older than the oldest entry still owed."""
        oldest, _, _ = await self._oldest_owed()
        if oldest is None:
            groups = {_s(g["name"]): g for g in await self.redis.xinfo_groups(self.key)}
            if GROUP not in groups:
                return
            oldest = _next_id(_s(groups[GROUP]["last-delivered-id"]))
        await self.redis.xtrim(self.key, minid=oldest, approximate=False)
