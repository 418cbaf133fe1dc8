"""Where the matcher's record of a conversation meets the conversation's log.

``matcher/`` and ``chat/`` do not know each other: the matcher decides who talks with whom
(``{ctl}`` slot), the chat store keeps what they say (``{c:ID}`` slot).  This small adapter is
the one place that keeps the two in step, for both the participants' service and the
moderators' service:

* a match creates its log (:meth:`open_created`); a gateway that died between the matcher's
  script and the log's creation is repaired by the next participant frame (:meth:`ensure_open`);
* every participant check reads the log's participant list (:meth:`participant_meta`), or for a
  group its members (chat.groups), and an unknown, foreign or never-opened conversation gets the
  same ``forbidden``;
* ending closes the log first, then the match (:meth:`end`): a peer who hears ``ended`` and
  sends gets ``conversation_ended``, never an ack.  Both steps are idempotent, so a crash in
  between is finished by ending again.
"""
from __future__ import annotations

from typing import Any

from chat.groups import GroupStore, Member
from chat.store import ChatStore, ConversationMeta
from core.errors import ErrorCode, ServiceError
from gateway import metrics
from matcher.store import Created, MatchStore


class Conversations:
    def __init__(self, match: MatchStore, chat: ChatStore, groups: GroupStore) -> None:
        self.match = match
        self.chat = chat
        self.groups = groups

    async def open_created(self, created: list[Created]) -> None:
        for c in created:
            metrics.MATCHES.inc()
            metrics.MATCH_LATENCY.observe(max(0.0, c.wait_s))
            await self.chat.open(c.id, epoch=c.epoch, patient=(c.patient, c.patient_name),
                                 survivor=(c.survivor, c.survivor_name))

    async def ensure_open(self, cid: str, uid: str) -> bool:
        """Open a conversation's log from the matcher's record if the matching gateway died before it could."""
        cv = await self.match.conversation(cid)
        if not cv or uid not in (cv["patient"], cv["survivor"]) or cv.get("state") != "open":
            return False
        await self.chat.open(cid, epoch=cv["epoch"], patient=(cv["patient"], cv["patient_name"]),
                             survivor=(cv["survivor"], cv["survivor_name"]))
        return True

    async def participant_meta(self, cid: str, uid: str) -> ConversationMeta:
        """The conversation's metadata if ``uid`` takes part in it; ``forbidden`` otherwise."""
        meta, _ = await self.participant(cid, uid)
        return meta

    async def participant(self, cid: str, uid: str) -> tuple[ConversationMeta, Member | None]:
        """As :meth:`participant_meta`, with ``uid``'s membership when the conversation is a group."""
        meta = await self.chat.meta(cid)
        if meta is None and await self.ensure_open(cid, uid):
            meta = await self.chat.meta(cid)
        if meta is not None and meta.group:
            member = await self.groups.member(cid, uid)
            if member is not None:
                return meta, member
        if meta is None or not meta.participant(uid):
            raise ServiceError(ErrorCode.FORBIDDEN, "You are not part of that conversation.", conversation_id=cid)
        return meta, None

    async def end(self, cid: str, uid: str, role: str, *, block: bool = False,
                  reason: str = "") -> dict[str, Any]:
        """Close the log, then the match; returns the matcher's answer (``ended`` is true the first time)."""
        await self.chat.end(cid, uid)
        out, created = await self.match.end(cid, uid, role, block=block, reason=reason)
        await self.open_created(created)
        return out
