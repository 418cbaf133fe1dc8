"""``aftertalk export-labels``: moderators' reviewed flags as training rows for the screening model.

When a moderator resolves a flag they may say whether it was a true or a false alarm (``outcome``);
that is stored with the flag and written in the audit log.  This module walks the audit log's
``resolve`` entries (``--since`` bounds them), and for each flag with an outcome writes one JSONL
row in the data set's own format, so ``python -m chat.screening.train --data <file> ...`` reads it:

``{"id", "lang": "", "text", "labels", "kind": "reviewed_<source>", "group", "split", "category",
"source", "score", "outcome", "resolved_at"}``

Only text that moderators already saw is exported: the flagged message itself (shown to them in
the flag and in the watched transcript), nothing around it.  Reports are skipped (their text is the
reporter's reason, not a message), and so is a message that retention or erasure has removed.
A ``review`` flag is an uncertain crisis score: a true alarm becomes a ``crisis`` row.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any, TextIO

from chat import audit
from chat.flags import SOURCE_REPORT
from chat.store import ChatStore
from core.keys import Keys

TRAINABLE = {"crisis": "crisis", "review": "crisis", "abuse": "abuse", "medical_advice": "medical_advice"}


def split_of(group: str) -> str:
    """The data set's split rule (a fixed hash of the group), so exported rows never move split."""
    h = int(hashlib.sha1(group.encode()).hexdigest(), 16) % 100
    return "test" if h < 15 else "dev" if h < 30 else "train"


async def _resolved_flag_ids(redis: Any, keys: Keys, since: str) -> AsyncIterator[str]:
    start = audit.parse_since(since)
    while True:
        rows = await redis.xrange(keys.audit, start, "+", count=audit.MAX_PAGE)
        for entry_id, raw in rows:
            entry = audit.as_entry(entry_id, raw)
            if entry.get("action") == audit.RESOLVE and entry.get("flag_id"):
                yield entry["flag_id"]
        if len(rows) < audit.MAX_PAGE:
            return
        start = f"({audit.as_entry(rows[-1][0], {})['id']}"


async def export_labels(redis: Any, keys: Keys, chat: ChatStore, out: TextIO, *, since: str = "") -> int:
    """Write the reviewed flags resolved since ``since`` (ISO time or epoch seconds); returns how many."""
    written, seen = 0, set()
    async for fid in _resolved_flag_ids(redis, keys, since):
        if fid in seen:
            continue
        seen.add(fid)
        flag = await redis.hgetall(keys.flag(fid))
        category, outcome = flag.get("category", ""), flag.get("outcome", "")
        if not outcome or flag.get("source") == SOURCE_REPORT or category not in TRAINABLE:
            continue
        seq = int(flag.get("seq") or 0)
        found = await chat.read_after(flag["conversation_id"], seq - 1, 1) if seq else []
        if not found or found[0].seq != seq or not found[0].text:
            continue                       # purged by retention, or erased
        label = TRAINABLE[category]
        row = {"id": fid, "lang": "", "text": found[0].text,
               "labels": [label] if outcome == "true_alarm" else [],
               "kind": f"reviewed_{flag.get('source') or 'rules'}", "group": fid, "split": split_of(fid),
               "category": category, "source": flag.get("source") or "rules",
               "score": float(flag["score"]) if flag.get("score") else None, "outcome": outcome,
               "resolved_at": int(flag.get("resolved_at") or 0)}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        written += 1
    return written
