"""The participants' use cases: one method per client frame, over the matcher and chat adapters.

Handlers validate what needs the vocabulary or state, call the adapters
(which decide atomically in Redis), and push frames.  They raise
ServiceError; only :mod:`gateway.app` turns errors into frames or closes.
Everything this service uses is handed to it by :mod:`gateway.compose`; the
moderators' side (:mod:`gateway.safety`) is reached only through the two
calls of :class:`SafetyHooks`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from chat.moderation import Moderator, Verdict
from chat.retention import Retention
from chat.store import Appended, ChatStore, SendLimit, message_frame
from chat.textnorm import is_blank
from core.errors import ErrorCode, ServiceError, Unauthorized, unavailable
from core.keys import GROUP_ID_PREFIX
from gateway import metrics
from gateway.auth import Identity, verify_token
from gateway.connection import Conn
from gateway.conversations import Conversations
from gateway.dispatch import STORE_ERRORS, Handler
from gateway.expiry import EXPIRED_REASON, TokenClock, reauthorized, refused
from gateway.hub import Hub
from gateway.limits import TokenBucket, retry_after_s
from gateway.quotas import TypingHints
from gateway.settings import Settings
from matcher.profile import Profile, parse_profile
from matcher.store import MatchStore
from matcher.vocabulary import Vocabulary

log = logging.getLogger("aftertalk.service")


def request_profile(frame: dict[str, Any], vocabulary: Vocabulary) -> tuple[Profile, float]:
    """A talk-now or widen frame's profile and its hold (``prefer_same_diagnosis_s``), checked."""
    profile = parse_profile(frame["profile"], vocabulary)
    hold = frame.get("prefer_same_diagnosis_s") or 0
    if not 0 <= hold <= 3600:
        raise ServiceError(ErrorCode.BAD_FRAME, "'prefer_same_diagnosis_s' must be 0 to 3600.")
    if hold and not profile.diagnoses:
        raise ServiceError(ErrorCode.INVALID_PROFILE, "Holding out for a same-diagnosis peer needs a diagnosis.")
    return profile, hold


class SafetyHooks(Protocol):
    """What the participants' service asks of the moderators' side (:class:`gateway.safety.Safety`)."""

    async def after_flagged(self, conn: Conn, cid: str, appended: Appended, verdict: Verdict) -> None:
        """A flagged message was stored and acknowledged: resources for its author, flags for moderators."""

    async def authorize_moderator_read(self, conn: Conn, cid: str, before_seq: int | None) -> None:
        """Raise ``forbidden`` unless moderators may read this conversation now; audit the read first."""


class GroupHooks(Protocol):
    """What the participants' service asks of the groups' side (:class:`gateway.groups.Groups`)."""

    async def session_groups(self, uid: str) -> list[dict[str, Any]]:
        """The user's groups for the welcome: conversation_id, epoch, last_seq, joined_seq, ..."""

    async def session_opened(self, groups: list[dict[str, Any]]) -> None:
        """The user connected: presence to these groups of theirs (as session_groups read them)."""

    async def session_ended(self, uid: str) -> None:
        """The user's last connection here went: presence to their groups; gone everywhere: stop waiting."""

    async def typing(self, gid: str, uid: str, frame: dict[str, Any]) -> None:
        """A typing hint to the group's other members."""


class Service:
    def __init__(self, settings: Settings, *, gateway_id: str, match: MatchStore, chat: ChatStore,
                 conversations: Conversations, hub: Hub, moderator: Moderator, vocabulary: Vocabulary,
                 retention: Retention, safety: SafetyHooks, typing_hints: TypingHints, groups: GroupHooks) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.match = match
        self.chat = chat
        self.conversations = conversations
        self.hub = hub
        self.moderator = moderator
        self.vocabulary = vocabulary
        self.retention = retention
        self.safety = safety
        self.groups = groups
        # per user, in Redis (one bucket across connections, gateways and reconnects): chat.store.SendLimit
        self._send_limit = SendLimit(settings.send_rate_per_s, settings.send_burst)
        self.typing_hints = typing_hints
        self.token_clock = TokenClock(settings.token_refresh_ahead_s)   # token_expiring, then 4401 at exp
        self._tasks: list[asyncio.Task[None]] = []

    def handlers(self) -> dict[str, Handler]:
        """The frames this service answers (roles are checked before, by :func:`gateway.protocol.authorize`)."""
        return {
            "ping": self.on_ping, "availability": self.on_availability, "talk_now": self.on_talk_now,
            "cancel": self.on_cancel, "accept": self.on_accept, "decline": self.on_decline,
            "send": self.on_send, "history": self.on_history, "typing": self.on_typing,
            "end": self.on_end, "block": self.on_block, "feedback": self.on_feedback,
            "reauth": self.on_reauth,
        }

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._housekeeping()), loop.create_task(self._presence_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _housekeeping(self) -> None:
        """Every ~0.5 s: matcher tick; every second: queue positions; every minute: retention."""
        n = 0
        while True:
            await asyncio.sleep(0.5)
            n += 1
            try:
                ticked, created = await self.match.tick()
                await self.conversations.open_created(created)
                for uid in ticked.get("offline") or ():     # a dead gateway's users: their groups are told
                    await self.groups.session_ended(uid)
                if n % 2 == 0:
                    await self._push_positions()
                if n % 120 == 1:
                    await self.retention.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("housekeeping skipped: %s", type(exc).__name__)

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_ttl_s / 3)
            live = {f"{uid}|{c.id}": c for uid, conns in self.hub.by_user.items() for c in conns}
            try:
                for member in await self.match.refresh_presence(list(live)):
                    conn = live[member]
                    if not conn.closed:    # reaped while alive (a stall longer than the TTL): register again
                        await self.conversations.open_created(await self.match.connected(conn.user.id, conn.id))
            except Exception as exc:
                log.debug("presence refresh skipped: %s", type(exc).__name__)

    async def _push_positions(self) -> None:
        waiting = [c for conns in self.hub.by_user.values() for c in conns if c.position is not None]
        if not waiting:
            return
        positions = await self.match.queue_positions([c.user.id for c in waiting])
        moved = [(c, pos) for c, pos in zip(waiting, positions, strict=True) if pos is not None and pos != c.position]
        if not moved:
            return
        uids = sorted({c.user.id for c, _ in moved})
        frames = dict(zip(uids, await self.match.queued_frames(uids), strict=True))
        for conn, _ in moved:
            queued = frames.get(conn.user.id)
            if queued is not None:
                conn.position = queued["position"]
                conn.push(orjson.dumps(queued).decode())

    # ---- sessions -------------------------------------------------------------------
    def new_conn(self, ws: Any, user: Identity, on_slow: Callable[[Conn], None]) -> Conn:
        now = time.monotonic()
        s = self.settings
        return Conn(ws, user, secrets.token_hex(6), outbox_limit=s.outbox_limit,
                    frames=TokenBucket(s.frames_per_s, s.frames_burst, now), on_slow=on_slow)

    async def open_session(self, conn: Conn, resume: dict[str, tuple[int, str | None]]) -> None:
        """Subscribe, register presence, send welcome, replay what a resuming client missed."""
        uid = conn.user.id
        conn.filling.add("*")            # hold live messages of every conversation until the welcome is out
        try:
            await self.hub.add(conn)
            await self.conversations.open_created(await self.match.connected(uid, conn.id))
            state = await self.match.user_state(uid, conn.user.role)
            if conn.user.role == "survivor":
                state["offers"] = await self.match.pending_offers(uid)
            elif conn.user.role == "patient":
                lapsed = await self.match.take_later_expired(uid)
                if lapsed:
                    state["later_expired"] = {"request_id": lapsed}
            metas = await asyncio.gather(*(self.chat.meta(c["conversation_id"]) for c in state["conversations"]))
            groups = await self.groups.session_groups(uid) if conn.user.role != "moderator" else []
        except STORE_ERRORS:
            raise unavailable() from None
        for conv, meta in zip(state["conversations"], metas, strict=True):
            conv["last_seq"] = meta.seq if meta else 0
        if groups:
            state["groups"] = groups
        failed: list[dict[str, Any]] = []
        for conv in [*state["conversations"], *groups]:
            cid = conv["conversation_id"]
            floor = conv.get("joined_seq", 0)      # a group member reads from the seq they joined at
            self.hub.epochs[cid] = conv["epoch"]
            if cid in resume:
                seq, epoch = resume.pop(cid)
                if epoch is not None and epoch != conv["epoch"]:
                    failed.append({"conversation_id": cid, "reason": "epoch_changed"})
                    seq = 0
                elif seq > conv["last_seq"]:
                    # the client saw messages the log no longer has (a failover lost acknowledged
                    # writes): never hand those seqs out again as if nothing happened
                    failed.append({"conversation_id": cid, "reason": "log_behind"})
                    seq = 0
                conn.delivered[cid] = max(seq, floor)      # a rebuilt log too: never before the join
            else:
                conn.delivered[cid] = max(conv["last_seq"], floor)
        # resumed conversations that are not open for this user: ended ones may still be read
        for cid, (seq, epoch) in resume.items():
            meta = await self.chat.meta(cid)
            if meta and meta.participant(uid) and (epoch is None or epoch == meta.epoch):
                self.hub.epochs[cid] = meta.epoch
                if seq > meta.seq:
                    failed.append({"conversation_id": cid, "reason": "log_behind"})
                    seq = 0
                conn.delivered[cid] = seq
            elif epoch is not None:
                failed.append({"conversation_id": cid, "reason": "log_unavailable"})
            else:
                conn.push(orjson.dumps({"type": "error", "code": "forbidden", "ref": "hello",
                                        "message": "You are not part of that conversation.",
                                        "conversation_id": cid}).decode())
        welcome = {"type": "welcome", "user": conn.user.public(), **state, "gateway": self.gateway_id,
                   "limits": {"max_text_chars": self.settings.max_text_chars,
                              "max_frame_bytes": self.settings.max_frame_bytes,
                              "offer_timeout_s": self.settings.offer_timeout_s}}
        conn.push(orjson.dumps(welcome).decode())
        for f in failed:
            conn.push(orjson.dumps({"type": "error", "code": "recovery_failed", "ref": "hello",
                                    "message": "This conversation's history could not be restored from where you "
                                               "left it; reload the transcript.", **f}).decode())
        if "request" in state and state["request"]["position"]:
            conn.position = state["request"]["position"]
        conn.filling.discard("*")
        for cid in list(conn.delivered):
            self.hub.fill(conn, cid)     # replays seq > delivered, then hands over to live delivery
        if groups:
            await self.groups.session_opened(groups)

    async def resync_user(self, uid: str) -> None:
        """After a pub/sub outage: replay matches and offers this process may have missed."""
        conns = self.hub.conns_of(uid)
        if not conns:
            return
        role = next(iter(conns)).user.role
        state = await self.match.user_state(uid, role)
        offers = await self.match.pending_offers(uid) if role == "survivor" else []
        groups = {g["conversation_id"]: g for g in await self.groups.session_groups(uid)} if role != "moderator" else {}
        for conn in list(conns):
            for cid in [c for c in conn.delivered if c.startswith(GROUP_ID_PREFIX) and c not in groups
                        and c not in conn.watching]:
                conn.delivered.pop(cid, None)       # left or removed while the link was down
            for cid, g in groups.items():
                if cid not in conn.delivered:       # joined (or moved up from a waitlist) meanwhile
                    self.hub.epochs[cid] = g["epoch"]
                    conn.delivered[cid] = g["joined_seq"]
                    self.hub.fill(conn, cid)
            for conv in state["conversations"]:
                cid = conv["conversation_id"]
                if cid not in conn.delivered:
                    conn.delivered[cid] = 0
                    conn.push(orjson.dumps({"type": "matched", "conversation_id": cid, "epoch": conv["epoch"],
                                            "peer": conv["peer"], "shared": conv["shared"]}).decode())
                    self.hub.fill(conn, cid)
            for offer in offers:
                conn.push(orjson.dumps(offer).decode())

    async def close_session(self, conn: Conn) -> None:
        conn.closed = True
        await self.hub.remove(conn)
        try:
            await self.conversations.open_created(await self.match.disconnected(conn.user.id, conn.id))
        except Exception:
            return    # the presence lease expires by itself and the tick cleans up
        if conn.user.role != "moderator" and not self.hub.conns_of(conn.user.id):
            await self.groups.session_ended(conn.user.id)

    # ---- frames ---------------------------------------------------------------------
    async def on_ping(self, conn: Conn, frame: dict[str, Any]) -> None:
        conn.push('{"type":"pong"}')

    async def on_reauth(self, conn: Conn, frame: dict[str, Any]) -> None:
        """A fresh token for the same user and role: the session continues on its clock (gateway.expiry)."""
        s = self.settings
        try:
            fresh = verify_token(frame["token"], s.secret, algorithms=s.jwt_algorithms,
                                 audience=s.jwt_audience, issuer=s.jwt_issuer)
        except Unauthorized as exc:
            raise refused(f"That token is not valid ({exc.reason}).",
                          "token_expired" if exc.reason == EXPIRED_REASON else "invalid_token") from None
        user = reauthorized(conn.user, fresh, time.time())
        if await self.match.is_erased(user.id, user.iat):
            raise refused("That token was issued before this account was erased.", "erased")
        if conn.closed:
            return
        conn.user = user
        self.token_clock.arm(conn)
        exp = user.exp
        conn.push(orjson.dumps({"type": "reauthed", "exp": int(exp) if exp.is_integer() else exp}).decode())

    async def on_availability(self, conn: Conn, frame: dict[str, Any]) -> None:
        s, user = self.settings, conn.user
        max_chats = frame.get("max_chats") or 1
        if not 1 <= max_chats <= s.max_chats_limit:
            raise ServiceError(ErrorCode.BAD_FRAME, f"'max_chats' must be 1 to {s.max_chats_limit}.", field="max_chats")
        if frame.get("profile") is not None:
            profile = parse_profile(frame["profile"], self.vocabulary)
        else:
            stored = (await self.match.user_state(user.id, user.role)).get("availability")
            if stored is None:
                raise ServiceError(ErrorCode.INVALID_PROFILE, "Send your profile with your first availability.")
            profile = parse_profile(stored["profile"], self.vocabulary)
        state, created = await self.match.set_availability(
            user.id, user.name, available=frame["available"], profile=profile, max_chats=max_chats,
            auto_accept=bool(frame.get("auto_accept")), issued_at=user.iat)
        await self.conversations.open_created(created)
        self.hub.send_user(user.id, {"type": "availability", "available": state["available"],
                                     "max_chats": state["max_chats"], "auto_accept": state["auto_accept"],
                                     "profile": profile.as_json(), "active": state["active"],
                                     "pending": state["pending"]})

    async def on_talk_now(self, conn: Conn, frame: dict[str, Any]) -> None:
        profile, hold = request_profile(frame, self.vocabulary)
        conn.position = None     # so the hub forwards the reply even when joining at an unchanged position
        _, created = await self.match.talk_now(conn.user.id, conn.user.name, profile,
                                               prefer_same_diagnosis_s=hold,
                                               known_conversations=list(conn.delivered),
                                               issued_at=conn.user.iat)
        await self.conversations.open_created(created)

    async def on_cancel(self, conn: Conn, frame: dict[str, Any]) -> None:
        await self.match.cancel(conn.user.id)

    async def on_accept(self, conn: Conn, frame: dict[str, Any]) -> None:
        _, created = await self.match.respond(conn.user.id, frame["offer_id"], accept=True)
        await self.conversations.open_created(created)

    async def on_decline(self, conn: Conn, frame: dict[str, Any]) -> None:
        _, created = await self.match.respond(conn.user.id, frame["offer_id"], accept=False)
        await self.conversations.open_created(created)
        self.hub.send_user(conn.user.id, {"type": "declined", "offer_id": frame["offer_id"]})

    async def on_send(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid, client_id, text = frame["conversation_id"], frame["client_id"], frame["text"]
        ref = {"client_id": client_id, "conversation_id": cid}
        if len(text) > self.settings.max_text_chars:
            raise ServiceError(ErrorCode.TOO_LARGE, f"Messages are at most {self.settings.max_text_chars} characters.",
                               **ref)
        if is_blank(text):      # whitespace, zero-width/format characters, fillers: nothing to read
            raise ServiceError(ErrorCode.BAD_FRAME, "A message needs some text.", **ref)
        verdict = self.moderator.check(text) if self.settings.moderation else None
        shown = verdict.shown_text if verdict else text
        flags = ",".join(verdict.categories) if verdict else ""
        user = conn.user
        try:
            appended = await self._append(cid, user, client_id, text, shown, flags)
        except ServiceError as exc:
            if exc.code == ErrorCode.RATE_LIMITED:      # the sender's bucket in Redis was empty: nothing stored
                exc.data.setdefault("retry_after_s", retry_after_s(self.settings.send_rate_per_s))
            exc.data.update(ref)
            raise
        metrics.MESSAGES.inc()
        conn.push(orjson.dumps({"type": "ack", "conversation_id": cid, "client_id": client_id,
                                "seq": appended.seq, "ts": appended.ts, "epoch": appended.epoch}).decode())
        if verdict is not None and verdict.flagged:   # idempotent: a retry re-raises lost flags
            await self.safety.after_flagged(conn, cid, appended, verdict)

    async def _append(self, cid: str, user: Identity, client_id: str, text: str, shown: str, flags: str) -> Appended:
        kwargs: dict[str, Any] = dict(sender_id=user.id, name=user.name, role=user.role, client_id=client_id,
                                      text=text, shown=shown, flags=flags, limit=self._send_limit)
        try:
            return await self.chat.append(cid, **kwargs)
        except ServiceError as exc:
            if exc.code != ErrorCode.FORBIDDEN or not await self.conversations.ensure_open(cid, user.id):
                raise
        return await self.chat.append(cid, **kwargs)

    async def on_history(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        limit = frame.get("limit") or self.settings.history_limit
        if not 1 <= limit <= 200:
            raise ServiceError(ErrorCode.BAD_FRAME, "'limit' must be 1 to 200.", field="limit")
        before = frame.get("before_seq")
        member = None
        if conn.user.role == "moderator":
            await self.safety.authorize_moderator_read(conn, cid, before)
            found = await self.chat.meta(cid)
            if found is None:
                raise ServiceError(ErrorCode.FORBIDDEN, "That conversation is not open to moderators.",
                                   conversation_id=cid)
            meta = found
        else:
            meta, member = await self.conversations.participant(cid, conn.user.id)
        messages = await self.chat.history(cid, before, limit)
        floor = 0
        if member is not None:      # a group member reads from the seq they joined at
            floor = member.joined_seq
            messages = [m for m in messages if m.seq > floor]
        moderator_view = conn.user.role == "moderator"
        conn.push(orjson.dumps({
            "type": "history", "conversation_id": cid, "epoch": meta.epoch, "state": meta.state,
            "messages": [message_frame(cid, meta.epoch, m, moderator_view=moderator_view) for m in messages],
            "has_more": bool(messages) and messages[0].seq > floor + 1}).decode())

    async def on_typing(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        if cid not in conn.delivered:
            raise ServiceError(ErrorCode.FORBIDDEN, "You are not part of that conversation.", conversation_id=cid)
        if not await self.typing_hints.claim(conn.user.id, cid):
            return      # typing is a hint: one per interval per user and conversation (in Redis), never stored
        meta, member = await self.conversations.participant(cid, conn.user.id)
        if meta.ended:
            return
        if member is not None:
            await self.groups.typing(cid, conn.user.id, {"type": "typing", "conversation_id": cid,
                                                         "from": {"name": member.name, "role": member.role}})
            return
        await self.hub.publish_user(meta.peer_of(conn.user.id), {
            "type": "typing", "conversation_id": cid, "from": {"name": conn.user.name, "role": conn.user.role}})

    async def _end(self, conn: Conn, cid: str, *, block: bool) -> None:
        meta = await self.conversations.participant_meta(cid, conn.user.id)
        if meta.group:
            raise ServiceError(ErrorCode.BAD_FRAME, "A group is left with leave_group.", conversation_id=cid)
        await self.conversations.end(cid, conn.user.id, conn.user.role, block=block)

    async def on_end(self, conn: Conn, frame: dict[str, Any]) -> None:
        await self._end(conn, frame["conversation_id"], block=False)

    async def on_block(self, conn: Conn, frame: dict[str, Any]) -> None:
        await self._end(conn, frame["conversation_id"], block=True)
        conn.push(orjson.dumps({"type": "blocked", "conversation_id": frame["conversation_id"]}).decode())

    async def on_feedback(self, conn: Conn, frame: dict[str, Any]) -> None:
        if frame["conversation_id"].startswith(GROUP_ID_PREFIX):
            raise ServiceError(ErrorCode.BAD_FRAME, "Feedback is for one-on-one conversations.",
                               conversation_id=frame["conversation_id"])
        rating, comment = frame["rating"], frame.get("comment") or ""
        if not 1 <= rating <= 5:
            raise ServiceError(ErrorCode.BAD_FRAME, "'rating' must be 1 to 5.", field="rating")
        if len(comment) > 2000:
            raise ServiceError(ErrorCode.TOO_LARGE, "Feedback comments are at most 2000 characters.")
        await self.chat.feedback(frame["conversation_id"], conn.user.id, rating, comment)
        conn.push(orjson.dumps({"type": "feedback_saved", "conversation_id": frame["conversation_id"]}).decode())
