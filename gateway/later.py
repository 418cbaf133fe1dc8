"""When nobody fits right now: widening a waiting request, talk-later requests, and contacts (keep in
touch, talk again).  One method per client frame, over the matcher adapter, which decides each
atomically in Redis (matcher/lua/widen.lua, later.lua, contact.lua, again.lua); the honest wait in
``queued`` is built by the hub from the matcher's inputs (matcher/estimate.py).
"""
from __future__ import annotations

from typing import Any

from chat.moderation import Moderator
from chat.textnorm import is_blank
from core.errors import ErrorCode, ServiceError
from core.keys import GROUP_ID_PREFIX
from gateway.connection import Conn
from gateway.conversations import Conversations
from gateway.dispatch import Handler
from gateway.service import request_profile
from gateway.settings import Settings
from matcher.profile import parse_profile
from matcher.store import MatchStore
from matcher.vocabulary import Vocabulary

LATER_NOTE_CHARS = 280      # a talk-later request's note, shown to survivors
LATER_DEFAULT_H = 24        # a talk-later request's life unless within_h says otherwise (and talk_again's)
LATER_NOTE_REFUSED = frozenset({"crisis", "abuse"})   # moderation categories a note may not carry


class Later:
    def __init__(self, settings: Settings, *, match: MatchStore, conversations: Conversations,
                 moderator: Moderator, vocabulary: Vocabulary) -> None:
        self.settings = settings
        self.match = match
        self.conversations = conversations
        self.moderator = moderator
        self.vocabulary = vocabulary

    def handlers(self) -> dict[str, Handler]:
        """The frames this service answers (roles are checked before, by :func:`gateway.protocol.authorize`)."""
        return {
            "widen": self.on_widen, "talk_later": self.on_talk_later, "cancel_later": self.on_cancel_later,
            "keep_in_touch": self.on_keep_in_touch, "talk_again": self.on_talk_again,
            "end_contact": self.on_end_contact,
        }

    async def on_widen(self, conn: Conn, frame: dict[str, Any]) -> None:
        """Change the waiting request's profile and hold in place: same position, a new ``queued``."""
        profile, hold = request_profile(frame, self.vocabulary)
        _, created = await self.match.widen(conn.user.id, profile, prefer_same_diagnosis_s=hold)
        await self.conversations.open_created(created)

    def _later_note(self, raw: Any) -> str:
        """The optional note of a talk-later request, moderated like a message: contact details masked; a
        note the rules flag as crisis or abuse is refused (the patient can rephrase it; it never reaches a
        survivor)."""
        if raw is None or is_blank(raw):
            return ""
        if len(raw) > LATER_NOTE_CHARS:
            raise ServiceError(ErrorCode.TOO_LARGE, f"A note is at most {LATER_NOTE_CHARS} characters.", field="note")
        if not self.settings.moderation:
            return str(raw)
        verdict = self.moderator.check(raw)
        if set(verdict.categories) & LATER_NOTE_REFUSED:
            raise ServiceError(ErrorCode.BAD_FRAME, "This note cannot be shown to a volunteer as it is; if you "
                               "need help now, please call a crisis line.", field="note",
                               categories=list(verdict.categories))
        return verdict.shown_text

    async def on_talk_later(self, conn: Conn, frame: dict[str, Any]) -> None:
        profile = parse_profile(frame["profile"], self.vocabulary)
        within_h = frame.get("within_h")
        within_h = 24 if within_h is None else within_h
        if not 1 <= within_h <= 72:
            raise ServiceError(ErrorCode.BAD_FRAME, "'within_h' must be 1 to 72.", field="within_h")
        note = self._later_note(frame.get("note"))
        _, created = await self.match.talk_later(conn.user.id, conn.user.name, profile, within_s=within_h * 3600,
                                                 note=note, issued_at=conn.user.iat)
        await self.conversations.open_created(created)

    async def on_cancel_later(self, conn: Conn, frame: dict[str, Any]) -> None:
        await self.match.cancel_later(conn.user.id, frame["request_id"])

    async def on_keep_in_touch(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        if cid.startswith(GROUP_ID_PREFIX):
            raise ServiceError(ErrorCode.BAD_FRAME, "Keeping in touch is for one-on-one conversations.",
                               conversation_id=cid)
        await self.conversations.participant_meta(cid, conn.user.id)     # forbidden unless a participant
        await self.match.keep_in_touch(conn.user.id, cid)

    async def on_talk_again(self, conn: Conn, frame: dict[str, Any]) -> None:
        conn.position = None     # the answer may be a queued at an unchanged position
        _, created = await self.match.talk_again(conn.user.id, conn.user.name, frame["contact_id"],
                                                 later_s=LATER_DEFAULT_H * 3600, issued_at=conn.user.iat)
        await self.conversations.open_created(created)

    async def on_end_contact(self, conn: Conn, frame: dict[str, Any]) -> None:
        await self.match.end_contact(conn.user.id, frame["contact_id"])
