"""The Redis adapter for moderation flags.

A flag points at one message (``seq``) of one conversation and has a category, a
severity and a status: ``open`` → ``acknowledged`` (a moderator is watching the
conversation) → ``resolved`` (with ``resolved_by`` and ``resolution``).  Keys (all on
the control-plane slot ``{ctl}``, see :mod:`core.keys`):

* ``keys.flag(id)``: hash, the flag itself; kept after resolution, as the record.
* ``keys.flags``: zset of the flags that are not resolved, scored so that ascending order
  is review order: conversations under priority review first, then highest severity,
  then oldest (see ``lua/flag_create.lua``).
* ``keys.conv_flags(cid)``: hash flag id → status; answers "may a moderator read this
  conversation?" (only while one of its flags is not resolved).

Every change is one Lua script that also publishes the change on ``keys.flag_channel``
(``flag``, ``flag_acknowledged``, ``flag_resolved``), so a gateway dying between the
write and the announcement cannot happen.  Flags raised on a message have an id derived
from (conversation, seq, category): raising them again is a no-op, so a retry (or a
second gateway) never duplicates a flag.
"""
from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, cast

import orjson

from core.keys import GROUP_ID_PREFIX, Keys
from core.redis_client import RedisClient
from core.scripts import ScriptSet

SCRIPTS = ("flag_create.lua", "flag_resolve.lua", "flag_ack.lua")
OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
EXCERPT_CHARS = 200
MAX_LIST = 500
PRIORITY_CATEGORIES = ("crisis",)
SOURCE_RULES, SOURCE_MODEL, SOURCE_REPORT = "rules", "model", "report"
TRUE_ALARM, FALSE_ALARM = "true_alarm", "false_alarm"
OUTCOMES = (TRUE_ALARM, FALSE_ALARM)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of ``text`` for a moderator's queue: at most ``limit`` characters, cut at a space if one is near."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 3 // 4:
        cut = cut[:space]
    return cut.rstrip() + "…"


def message_flag_id(cid: str, seq: int, category: str) -> str:
    """Deterministic id of the flag a category raises on one message."""
    digest = hashlib.blake2b(f"{cid}\x00{seq}\x00{category}".encode(), digest_size=10).hexdigest()
    return "f" + digest


def flag_frame(h: dict[str, str]) -> dict[str, Any]:
    """A flag hash as the ``flag`` frame moderators get (plus its status and review fields)."""
    frame: dict[str, Any] = {
        "type": "flag", "flag_id": h["flag_id"], "conversation_id": h["conversation_id"],
        "category": h["category"], "severity": h["severity"], "seq": int(h.get("seq") or 0),
        "excerpt": h.get("excerpt", ""), "ts": int(h.get("created") or 0), "status": h.get("status", OPEN),
        "priority": h.get("priority") == "1", "source": h.get("source") or SOURCE_RULES,
    }
    if h.get("score"):
        frame["score"] = float(h["score"])
    if h["conversation_id"].startswith(GROUP_ID_PREFIX):
        frame["group"] = True
    if h.get("reported_by"):
        frame["reported_by"] = h["reported_by"]
        frame["reason"] = h.get("reason", "")
    if h.get("acknowledged_by"):
        frame["acknowledged_by"] = h["acknowledged_by"]
    if h.get("status") == RESOLVED:
        frame["resolved_by"] = h.get("resolved_by", "")
        frame["resolution"] = h.get("resolution", "")
        if h.get("outcome"):
            frame["outcome"] = h["outcome"]
    return frame


class FlagStore:
    # ``redis`` decodes replies (make_redis(..., decode=True)); redis-py's types cannot say so, hence the casts to str.
    def __init__(self, redis: RedisClient, keys: Keys, *,
                 priority_categories: Iterable[str] = PRIORITY_CATEGORIES) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = ScriptSet(redis, "chat", SCRIPTS)
        self.priority_categories = ",".join(priority_categories)

    async def _create(self, cid: str, seq: int, text: str, quads: list[str], *, source: str, author: str = "",
                      reporter: str = "", reason: str = "") -> list[dict[str, Any]]:
        k = self.keys
        raw = await self.scripts.run(
            "flag_create", [k.flags, k.conv_flags(cid)],
            [k.ctl, k.flag_channel, cid, seq, excerpt(text), self.priority_categories, author, reporter, reason,
             source, *quads])
        return orjson.loads(raw)

    async def raise_flags(self, cid: str, seq: int, hits: Iterable[tuple[str, str]], text: str, *,
                          author: str = "", source: str = SOURCE_RULES,
                          scores: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """One flag per (category, severity) on message ``seq``; ``text`` is its ORIGINAL text, ``author``
        the sender's id (kept so that erasing the sender also blanks the excerpt).  ``source`` says
        who raised it (``rules`` or ``model``); the model also gives each category's ``score``.

        The flag id depends only on (conversation, seq, category), whoever raises it: a rule flag and
        a model flag of the same category on the same message are one flag, raised by whichever
        came first.  Returns the frames of the flags created now (already-raised ones are skipped)."""
        quads: list[str] = []
        for category, severity in hits:
            score = "" if scores is None or category not in scores else f"{scores[category]:.4f}"
            quads += [message_flag_id(cid, seq, category), category, severity, score]
        if not quads:
            return []
        return await self._create(cid, seq, text, quads, source=source, author=author)

    async def report(self, cid: str, seq: int, reporter: str, reason: str, *,
                     category: str = "report", severity: str = "high") -> dict[str, Any]:
        """A participant's report: a new flag at the latest ``seq``; the excerpt is the reason."""
        fid = "r" + secrets.token_hex(10)
        created = await self._create(cid, seq, reason, [fid, category, severity, ""], source=SOURCE_REPORT,
                                     reporter=reporter, reason=reason)
        return created[0]

    async def get(self, flag_id: str) -> dict[str, Any] | None:
        h = await self.redis.hgetall(self.keys.flag(flag_id))
        return flag_frame(cast(dict[str, str], h)) if h else None

    async def _frames(self, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in ids:
                pipe.hgetall(self.keys.flag(fid))
            rows = await pipe.execute()
        return [flag_frame(h) for h in rows if h]

    async def list_unresolved(self, limit: int = MAX_LIST) -> list[dict[str, Any]]:
        """Open and acknowledged flags in review order (priority, then severity, then age)."""
        return await self._frames(cast(list[str], await self.redis.zrange(self.keys.flags, 0, limit - 1)))

    async def count_unresolved(self) -> int:
        return await self.redis.zcard(self.keys.flags)

    async def for_conversation(self, cid: str) -> list[dict[str, Any]]:
        """Every flag of one conversation, resolved ones included, oldest first."""
        frames = await self._frames(sorted(cast(list[str], await self.redis.hkeys(self.keys.conv_flags(cid)))))
        return sorted(frames, key=lambda f: (f["ts"], f["flag_id"]))

    async def has_unresolved(self, cid: str) -> bool:
        """True while the conversation has a flag that is open or acknowledged."""
        return any(status != RESOLVED for status in await self.redis.hvals(self.keys.conv_flags(cid)))

    async def acknowledge(self, cid: str, moderator_id: str) -> int:
        k = self.keys
        return int(await self.scripts.run("flag_ack", [k.conv_flags(cid)], [k.ctl, k.flag_channel, cid, moderator_id]))

    async def resolve(self, flag_id: str, cid: str, moderator_id: str, resolution: str,
                      audit_fields: dict[str, str], *, outcome: str = "") -> dict[str, Any]:
        """Resolve flag ``flag_id`` of conversation ``cid`` and append ``audit_fields`` to the audit
        log, atomically.  ``outcome`` (:data:`OUTCOMES`, or "" when the moderator did not say) is
        kept with the flag: reviewed flags are the input of retraining (``aftertalk export-labels``).

        Returns ``{resolved, flag_id, conversation_id, resolved_by, resolution, unresolved}``;
        ``resolved`` is False when it had been resolved already (nothing changed, nothing audited).
        Raises ServiceError NOT_FOUND for an unknown flag or one of another conversation."""
        k = self.keys
        audit = [x for pair in audit_fields.items() for x in pair]
        raw = await self.scripts.run(
            "flag_resolve", [k.flags, k.flag(flag_id), k.conv_flags(cid), k.audit],
            [k.flag_channel, k.watch_channel(cid), flag_id, cid, moderator_id, resolution, outcome, *audit])
        return orjson.loads(raw)


async def forget_author(redis: RedisClient, keys: Keys, cid: str, uid: str) -> int:
    """Erasure: blank the excerpts (and report reasons) ``uid`` wrote in conversation ``cid``'s flags.

    The flags themselves stay (category, seq, status, who resolved them: the moderation record);
    only the user's words go.  Idempotent; returns how many flags were changed."""
    fids = sorted(f.decode() if isinstance(f, bytes) else f for f in await redis.hkeys(keys.conv_flags(cid)))
    if not fids:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for fid in fids:
            pipe.hmget(keys.flag(fid), "author", "reported_by", "excerpt")
        rows = await pipe.execute()
    changed = 0
    async with redis.pipeline(transaction=False) as pipe:
        for fid, row in zip(fids, rows, strict=True):
            author, reporter, text = (v.decode() if isinstance(v, bytes) else v for v in row)
            if text and uid in (author, reporter):
                pipe.hset(keys.flag(fid), mapping={"excerpt": "", "reason": ""})
                changed += 1
        if changed:
            await pipe.execute()
    return changed
