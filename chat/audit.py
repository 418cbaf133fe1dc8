"""The moderation audit log: an append-only Redis stream (``keys.audit``) of who did what, to whom, when.

Every moderator action and every look at a conversation's messages is one entry:
``who`` (moderator id) and ``who_name``, ``action``, and whichever of
``conversation_id``, ``user_id``, ``flag_id`` and ``detail`` apply.  The entry id is
the stream id, whose first part is the server time in milliseconds (``ts``), so
entries are ordered, unique and time-stamped by Redis rather than by a gateway's
clock.  Nothing in the code base trims or edits the stream.

Reads of a conversation (``watch``, moderator ``history``) are recorded *before*
anything is shown, so a failed write shows nothing; actions are recorded once
they have taken effect (``resolve`` atomically, inside its script).
"""
from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from typing import Any

from core.keys import Keys

WATCH, WATCH_FLAGS, HISTORY = "watch", "watch_flags", "history"
NOTICE, MODERATOR_END, SUSPEND, RESOLVE = "notice", "moderator_end", "suspend", "resolve"
# groups (issue 12): creation and the facilitator tools, by facilitators and moderators alike
GROUP_CREATE, GROUP_MUTE, GROUP_REMOVE = "group_create", "group_mute", "group_remove"
GROUP_READMIT, GROUP_PIN, GROUP_CLOSE = "group_readmit", "group_pin", "group_close"
FIELDS = ("who", "who_name", "action", "conversation_id", "user_id", "flag_id", "detail")
MAX_DETAIL = 2000
MAX_PAGE = 1000
_STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")


def entry_fields(*, who: str, who_name: str, action: str, conversation_id: str = "", user_id: str = "",
                 flag_id: str = "", detail: str = "") -> dict[str, str]:
    """The stream fields of one entry (empty ones left out)."""
    values = {"who": who, "who_name": who_name, "action": action, "conversation_id": conversation_id,
              "user_id": user_id, "flag_id": flag_id, "detail": detail[:MAX_DETAIL]}
    return {k: v for k, v in values.items() if v}


async def record(redis: Any, keys: Keys, **fields: str) -> str:
    """Append one entry (see :func:`entry_fields` for the names); returns its id."""
    entry_id = await redis.xadd(keys.audit, entry_fields(**fields))
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def as_entry(entry_id: Any, raw: dict[Any, Any]) -> dict[str, Any]:
    eid = _s(entry_id)
    out: dict[str, Any] = {"id": eid, "ts": int(eid.partition("-")[0])}
    fields = {_s(k): _s(v) for k, v in raw.items()}
    out.update({name: fields[name] for name in FIELDS if name in fields})
    return out


STREAM_ID_MAX = 2**64 - 1     # each half of a stream id is an unsigned 64-bit integer


def check_after(after: str | None) -> str | None:
    """Validate a paging cursor (an entry id); raises ValueError saying what is wrong."""
    if after in (None, ""):
        return None
    if not _STREAM_ID.fullmatch(after):
        raise ValueError("'after' must be an audit entry id such as 1718000000000-0")
    ms, _, seq = after.partition("-")
    if int(ms) > STREAM_ID_MAX or int(seq or 0) > STREAM_ID_MAX:
        raise ValueError(f"'after' is out of range: each part of an entry id is at most {STREAM_ID_MAX}")
    return after


def _is_last_id(after: str) -> bool:
    ms, _, seq = after.partition("-")
    return int(ms) == STREAM_ID_MAX and (not seq or int(seq) == STREAM_ID_MAX)


async def page(redis: Any, keys: Keys, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
    """Entries after the entry id ``after`` (from the start when None), oldest first, at most ``limit``.

    Returns ``{"entries": [...], "next": id | None}``; ``next`` is the cursor for the following
    page when this one is full.  Raises ValueError for a malformed cursor or limit."""
    after = check_after(after)
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"'limit' must be 1 to {MAX_PAGE}")
    if after and _is_last_id(after):
        return {"entries": [], "next": None}      # nothing can come after the largest id
    rows = await redis.xrange(keys.audit, f"({after}" if after else "-", "+", count=limit)
    entries = [as_entry(i, f) for i, f in rows]
    return {"entries": entries, "next": entries[-1]["id"] if len(entries) == limit else None}


def parse_since(since: str) -> str:
    """``--since`` (ISO 8601 time, UTC when no zone is given, or epoch seconds) → a stream start id."""
    since = since.strip()
    if not since:
        return "-"
    try:
        seconds = float(since)
    except ValueError:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise ValueError(f"--since: {since!r} is neither an ISO time nor epoch seconds") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp()
    return str(max(0, int(seconds * 1000)))


def format_entry(e: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(e["ts"] / 1000, UTC).isoformat(timespec="milliseconds")
    who = e.get("who", "?") + (f" ({e['who_name']})" if e.get("who_name") else "")
    targets = [f"{name}={e[name]}" for name in ("conversation_id", "user_id", "flag_id") if e.get(name)]
    detail = e.get("detail", "").replace("\n", " ")
    parts = [when.replace("+00:00", "Z"), who, e.get("action", "?"), *targets]
    if detail:
        parts.append(repr(detail))
    return "  ".join(parts)


async def print_audit(redis: Any, keys: Keys, since: str, limit: int, out: Any = None) -> int:
    """Print entries from ``since`` on, oldest first, at most ``limit``; returns how many were printed."""
    out = out or sys.stdout
    try:
        start = parse_since(since or "")
    except ValueError as exc:
        print(f"aftertalk: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    printed = 0
    while printed < limit:
        rows = await redis.xrange(keys.audit, start, "+", count=min(MAX_PAGE, limit - printed))
        if not rows:
            break
        for entry_id, raw in rows:
            print(format_entry(as_entry(entry_id, raw)), file=out)
        printed += len(rows)
        start = f"({_s(rows[-1][0])}"
    return printed


class AuditLog:
    """The audit stream of one deployment, for the services that write and page it.

    Guarantee: :meth:`record` returns only once Redis has appended the entry, so a caller that
    records *before* showing something shows nothing when the write fails."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def record(self, **fields: str) -> str:
        return await record(self._redis, self._keys, **fields)

    async def page(self, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        return await page(self._redis, self._keys, after=after, limit=limit)
