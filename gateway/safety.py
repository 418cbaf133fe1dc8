"""Moderation and safety in the gateway: flags on risky messages, crisis resources, reports, and
the moderator's feed, watch and actions, every one of them on the audit log.

:class:`Safety` is built by :mod:`gateway.compose` with its collaborators and offers its frame
handlers (:meth:`Safety.handlers`), its HTTP routes (:meth:`Safety.routes`) and the two hooks
the participants' service calls (:class:`gateway.service.SafetyHooks`).  Rules of access:

* Moderators read a conversation (``watch``, ``history``) and act in it (``notice``,
  ``moderator_end``) only while it has a flag that is not resolved.  An unflagged, fully
  resolved or unknown conversation gets the same ``forbidden``.
* Every read of a conversation is on the audit log *before* anything is shown; every action
  once it has taken effect.
* Watching is silent: participants get nothing when a moderator watches.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chat import audit
from chat.audit import AuditLog
from chat.crisis import CrisisLine, resources_frame
from chat.flags import OUTCOMES, FlagStore
from chat.moderation import CRISIS, REPORT_CATEGORY, REPORT_SEVERITY, Verdict
from chat.screening.queue import Backlog, ScreenQueue
from chat.store import Appended, ChatStore, ConversationMeta, message_frame
from chat.textnorm import is_blank
from core.errors import ErrorCode, ServiceError, Unauthorized
from core.keys import GROUP_ID_PREFIX
from gateway import metrics
from gateway.auth import verify_token
from gateway.connection import Conn
from gateway.conversations import Conversations
from gateway.dispatch import Handler
from gateway.hub import Hub
from gateway.settings import Settings
from matcher.store import MatchStore

log = logging.getLogger("aftertalk.safety")
MAX_REASON = 1000
FLAG_ATTEMPTS = 3
NOT_OPEN = "That conversation is not open to moderators."
SUSPENSION_END_REASON = "This conversation was closed by a moderator."
BACKLOG_CHECK_S = 2.0             # how often the screening backlog is looked at for the moderators' feed
MAX_UNTIL = 253402300799           # 9999-12-31T23:59:59Z: the last instant a suspension end can be written as a date


def _forbidden(cid: str) -> ServiceError:
    return ServiceError(ErrorCode.FORBIDDEN, NOT_OPEN, conversation_id=cid)


def _bounded(frame: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = frame.get(name) or ""
    if len(value) > limit:
        raise ServiceError(ErrorCode.TOO_LARGE, f"'{name}' is at most {limit} characters.", field=name)
    value = value.strip()
    if required and is_blank(value):      # invisible-only text (zero-width, format, fillers) is empty too
        raise ServiceError(ErrorCode.BAD_FRAME, f"'{name}' needs some text.", field=name)
    return value


class GroupLeading(Protocol):
    """What moderators' frames need of groups (:class:`gateway.group_tools.GroupTools`)."""

    async def close(self, conn: Conn, gid: str, *, reason: str = "") -> bool:
        """Close a group; True if it closed now."""

    async def moderator_view(self, gid: str) -> list[dict[str, Any]]:
        """The members of a group, as a moderator sees them (names, roles, user ids)."""


class Safety:
    def __init__(self, settings: Settings, *, match: MatchStore, chat: ChatStore, conversations: Conversations,
                 hub: Hub, flags: FlagStore, audit_log: AuditLog, crisis_lines: tuple[CrisisLine, ...],
                 screen_queue: ScreenQueue | None, groups: GroupLeading) -> None:
        self.settings = settings
        self.match = match
        self.chat = chat
        self.conversations = conversations
        self.hub = hub
        self.flags = flags
        self.audit_log = audit_log
        self.crisis_lines = crisis_lines
        self.screen_queue = screen_queue      # None: model screening is off in this deployment
        self.groups = groups
        self._behind: bool | None = None
        self._task: asyncio.Task[None] | None = None

    def handlers(self) -> dict[str, Handler]:
        """The frames this service answers; ``history`` stays with the participants' service,
        which asks :meth:`authorize_moderator_read` for moderators."""
        return {
            "report": self.on_report, "watch_flags": self.on_watch_flags, "watch": self.on_watch,
            "unwatch": self.on_unwatch, "notice": self.on_notice, "moderator_end": self.on_moderator_end,
            "suspend": self.on_suspend, "resolve": self.on_resolve,
        }

    def routes(self) -> list[Route]:
        return [Route("/api/audit", self.audit_route, methods=["GET"]),
                Route("/api/crisis-lines", self.crisis_lines_route, methods=["GET"])]

    async def crisis_lines_route(self, request: Request) -> Response:
        """``GET /api/crisis-lines?locale=es-MX``: the lines a ``resources`` frame would carry for that
        locale, for a page that must show them before anything was flagged (the waiting screen when
        nobody fits).  Public, like the page itself: the lines are no secret, and someone who cannot
        wait may not be signed in."""
        frame = resources_frame("", self.crisis_lines, request.query_params.get("locale"))
        return JSONResponse({k: frame[k] for k in ("lines", "locale", "message") if k in frame})

    # ---- screening backlog ------------------------------------------------------------
    def start(self) -> None:
        if self.screen_queue is not None:
            self._task = asyncio.get_running_loop().create_task(self._watch_backlog())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def screening_backlog(self) -> Backlog | None:
        """The model screening's backlog (also in /metrics), or None when screening is off."""
        if self.screen_queue is None:
            return None
        backlog = await self.screen_queue.backlog()
        metrics.update_screening_gauges(backlog.waiting, backlog.oldest_age_s, backlog.pending)
        return backlog

    def _screening_frame(self, backlog: Backlog) -> str:
        behind = backlog.oldest_age_s > self.settings.screening_behind_s
        return orjson.dumps({"type": "screening", "behind": behind, "waiting": backlog.waiting,
                             "oldest_age_s": round(backlog.oldest_age_s, 1),
                             "bound_s": self.settings.screening_behind_s}).decode()

    async def _watch_backlog(self) -> None:
        """Tell this process's flag feeds when screening falls behind its bound, and when it catches up."""
        while True:
            await asyncio.sleep(BACKLOG_CHECK_S)
            try:
                backlog = await self.screening_backlog()
            except Exception as exc:
                log.debug("screening backlog unreadable: %s", type(exc).__name__)
                continue
            if backlog is None:
                return
            behind = backlog.oldest_age_s > self.settings.screening_behind_s
            if behind != self._behind or behind:
                self._behind = behind
                text = self._screening_frame(backlog)
                for conn in list(self.hub.flag_watchers):
                    conn.push(text)

    # ---- automatic flags ------------------------------------------------------------
    async def after_flagged(self, conn: Conn, cid: str, appended: Appended, verdict: Verdict) -> None:
        """After a flagged message was stored: resources to its author on crisis, then the flags.

        The message was acknowledged already, so a failure here is not the sender's error: the
        flags are retried a few times and then logged.  Raising them is idempotent."""
        if CRISIS in verdict.categories:
            frame = resources_frame(cid, self.crisis_lines, conn.user.locale)     # lines for their locale
            try:        # to every connection of the author, on every gateway
                await self.hub.publish_user(conn.user.id, frame)
            except Exception:
                conn.push(orjson.dumps(frame).decode())     # at least the one they are typing on
        hits = [(hit.category, hit.severity) for hit in verdict.hits]
        for attempt in range(FLAG_ATTEMPTS):
            try:
                stored = await self.chat.read_after(cid, appended.seq - 1, 1)
                original = stored[0].text if stored and stored[0].seq == appended.seq else verdict.shown_text
                _count(await self.flags.raise_flags(cid, appended.seq, hits, original, author=conn.user.id))
                return
            except Exception:
                if attempt + 1 == FLAG_ATTEMPTS:
                    log.exception("could not record the flags of message %s of a conversation", appended.seq)
                    return
                await asyncio.sleep(0.2 * (attempt + 1))

    # ---- participants -----------------------------------------------------------------
    async def on_report(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid, uid = frame["conversation_id"], conn.user.id
        reason = _bounded(frame, "reason", MAX_REASON)
        meta = await self.conversations.participant_meta(cid, uid)    # forbidden, the same for unknown ones
        pending = [f for f in await self.flags.for_conversation(cid)
                   if f["category"] == REPORT_CATEGORY and f.get("reported_by") == uid and f["status"] != "resolved"]
        if not pending:        # one open report per reporter and conversation is enough to bring a moderator
            _count([await self.flags.report(cid, meta.seq, uid, reason, category=REPORT_CATEGORY,
                                            severity=REPORT_SEVERITY)])
        conn.push(orjson.dumps({"type": "reported", "conversation_id": cid}).decode())

    # ---- moderators: reading ------------------------------------------------------------
    async def _audit(self, conn: Conn, action: str, **target: str) -> None:
        await self.audit_log.record(who=conn.user.id, who_name=conn.user.name, action=action, **target)

    async def _open_to_moderators(self, cid: str) -> ConversationMeta:
        meta = await self.chat.meta(cid)
        if meta is None or not await self.flags.has_unresolved(cid):
            raise _forbidden(cid)
        return meta

    async def _flags_frame(self) -> str:
        flags = await self.flags.list_unresolved()
        return orjson.dumps({"type": "flags", "flags": flags,
                             "total": await self.flags.count_unresolved()}).decode()

    async def on_watch_flags(self, conn: Conn, frame: dict[str, Any]) -> None:
        """The unresolved flags now, then each change live.  Joining the feed before reading the list
        means nothing published in between is missed (a flag may come twice: dedupe by flag_id)."""
        await self._audit(conn, audit.WATCH_FLAGS)
        self.hub.flag_watchers.add(conn)
        conn.push(await self._flags_frame())
        await self._push_screening(conn)

    async def _push_screening(self, conn: Conn) -> None:
        try:
            backlog = await self.screening_backlog()
        except Exception:
            return      # the next backlog check tells the feed
        if backlog is not None:
            conn.push(self._screening_frame(backlog))

    async def on_watch(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        meta = await self._open_to_moderators(cid)
        await self._audit(conn, audit.WATCH, conversation_id=cid)
        await self.flags.acknowledge(cid, conn.user.id)
        self.hub.epochs[cid] = meta.epoch
        # hold live messages (noted in conn.seen) until the transcript is out, then catch up from the log
        conn.filling.add(cid)
        try:
            await self.hub.watch(conn, cid)
            messages = await self.chat.history(cid, None, self.settings.history_limit)
            flags = await self.flags.for_conversation(cid)
        except BaseException:
            conn.filling.discard(cid)
            await self.hub.unwatch(conn, cid)
            raise
        out: dict[str, Any] = {
            "type": "history", "conversation_id": cid, "epoch": meta.epoch, "state": meta.state,
            "watching": True, "flags": flags,
            "messages": [message_frame(cid, meta.epoch, m, moderator_view=True) for m in messages],
            "has_more": bool(messages) and messages[0].seq > 1}
        if meta.group:
            out["group"] = True
            out["members"] = await self.groups.moderator_view(cid)
        else:
            out["participants"] = {"patient": {"id": meta.patient, "name": meta.patient_name},
                                     "survivor": {"id": meta.survivor, "name": meta.survivor_name}}
            out["contact"] = await self.match.contact_between(meta.patient, meta.survivor)   # issue 14
        conn.push(orjson.dumps(out).decode())
        conn.delivered[cid] = messages[-1].seq if messages else 0
        conn.filling.discard(cid)
        self.hub.fill(conn, cid)

    async def on_unwatch(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        await self.hub.unwatch(conn, cid)
        conn.delivered.pop(cid, None)
        conn.push(orjson.dumps({"type": "unwatched", "conversation_id": cid}).decode())

    async def authorize_moderator_read(self, conn: Conn, cid: str, before_seq: int | None) -> None:
        """A moderator's ``history``: only while a flag is unresolved, and audited before anything is read."""
        if not await self.flags.has_unresolved(cid):
            raise _forbidden(cid)
        await self._audit(conn, audit.HISTORY, conversation_id=cid,
                          detail=f"before_seq={before_seq}" if before_seq is not None else "")

    async def resync_user(self, uid: str) -> None:
        """After a pub/sub outage: re-send the flag list to this user's feed connections."""
        feeds = [c for c in self.hub.conns_of(uid) if c in self.hub.flag_watchers]
        if feeds:
            text = await self._flags_frame()
            for conn in feeds:
                conn.push(text)
                await self._push_screening(conn)

    # ---- moderators: actions ----------------------------------------------------------
    async def on_notice(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        text = _bounded(frame, "text", self.settings.max_text_chars, required=True)
        client_id = frame.get("client_id")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 128:
            client_id = "notice-" + secrets.token_hex(8)
        await self._open_to_moderators(cid)
        user = conn.user
        appended = await self.chat.append(cid, sender_id=user.id, name=user.name, role="moderator",
                                                  client_id=client_id, text=text, shown=text)
        if not appended.duplicate:
            await self._audit(conn, audit.NOTICE, conversation_id=cid, detail=text)
        conn.push(orjson.dumps({"type": "ack", "ref": "notice", "conversation_id": cid, "client_id": client_id,
                                "seq": appended.seq, "ts": appended.ts, "epoch": appended.epoch}).decode())

    async def _end_as_moderator(self, conn: Conn, cid: str, reason: str) -> bool:
        if cid.startswith(GROUP_ID_PREFIX):     # a group closes for everyone (gateway.group_tools)
            return await self.groups.close(conn, cid, reason=reason)
        out = await self.conversations.end(cid, conn.user.id, "moderator", reason=reason)
        if out.get("ended"):
            ended = {"type": "ended", "conversation_id": cid, "by": "moderator"}
            if reason:
                ended["reason"] = reason
            await self.hub.publish_watchers(cid, ended)
        return bool(out.get("ended"))

    async def on_moderator_end(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        reason = _bounded(frame, "reason", MAX_REASON)
        await self._open_to_moderators(cid)
        ended = await self._end_as_moderator(conn, cid, reason)
        await self._audit(conn, audit.MODERATOR_END, conversation_id=cid, detail=reason)
        conn.push(orjson.dumps({"type": "done", "ref": "moderator_end", "conversation_id": cid,
                                "ended": ended}).decode())

    async def on_suspend(self, conn: Conn, frame: dict[str, Any]) -> None:
        """Suspend a user: no matching (the matcher withdraws requests and offers), every connection
        closed with 4403 on every gateway, and their open conversations ended so no peer waits."""
        uid = frame["user_id"]
        reason = _bounded(frame, "reason", MAX_REASON)
        until = frame.get("until") or 0
        if uid == conn.user.id:
            raise ServiceError(ErrorCode.BAD_FRAME, "You cannot suspend yourself.", field="user_id")
        if until and until <= await self.match.server_time():
            raise ServiceError(ErrorCode.BAD_FRAME, "'until' must be in the future (epoch seconds).", field="until")
        if until > MAX_UNTIL:        # found by fuzzing: 1e20 or 2**64 suspended first, then failed to audit
            raise ServiceError(ErrorCode.BAD_FRAME, "'until' must be epoch seconds before the year 10000 "
                               "(leave it out to suspend until lifted).", field="until")
        await self.match.suspend(uid, until, reason)
        ended = []
        for cid in await self.match.user_conversations(uid):
            if await self._end_as_moderator(conn, cid, SUSPENSION_END_REASON):
                ended.append(cid)
        detail = reason + (f" (until {datetime.fromtimestamp(until, UTC).isoformat(timespec='seconds')})"
                           if until else "")
        await self._audit(conn, audit.SUSPEND, user_id=uid, detail=detail)
        conn.push(orjson.dumps({"type": "done", "ref": "suspend", "user_id": uid, "until": until,
                                "ended": ended}).decode())

    async def on_resolve(self, conn: Conn, frame: dict[str, Any]) -> None:
        fid = frame["flag_id"]
        resolution = _bounded(frame, "resolution", MAX_REASON, required=True)
        outcome = frame.get("outcome") or ""
        if outcome and outcome not in OUTCOMES:
            raise ServiceError(ErrorCode.BAD_FRAME, f"'outcome' must be one of {', '.join(OUTCOMES)}.",
                               field="outcome")
        flag = await self.flags.get(fid)
        if flag is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "There is no such flag.", flag_id=fid)
        cid = flag["conversation_id"]
        detail = f"[{outcome}] {resolution}" if outcome else resolution
        fields = audit.entry_fields(who=conn.user.id, who_name=conn.user.name, action=audit.RESOLVE,
                                    conversation_id=cid, flag_id=fid, detail=detail)
        out = await self.flags.resolve(fid, cid, conn.user.id, resolution, fields, outcome=outcome)
        conn.push(orjson.dumps({"type": "done", "ref": "resolve", **out}).decode())

    # ---- HTTP: the audit log ----------------------------------------------------------
    async def audit_route(self, request: Request) -> Response:
        """``GET /api/audit?after=<entry id>&limit=<1..1000>`` with ``Authorization: Bearer <moderator token>``."""
        s = self.settings
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _json({"error": "send Authorization: Bearer <moderator token>"}, 401,
                         {"WWW-Authenticate": 'Bearer realm="aftertalk"'})
        try:
            user = verify_token(token.strip(), s.secret, algorithms=s.jwt_algorithms,
                                audience=s.jwt_audience, issuer=s.jwt_issuer)
        except Unauthorized as exc:
            return _json({"error": exc.reason}, 401,
                         {"WWW-Authenticate": 'Bearer realm="aftertalk", error="invalid_token"'})
        if user.role != "moderator":
            return _json({"error": "moderators only"}, 403)
        try:
            limit = int(request.query_params.get("limit") or 100)
        except ValueError:
            return _json({"error": f"'limit' must be an integer from 1 to {audit.MAX_PAGE}"}, 400)
        try:
            if await self.match.is_suspended(user.id):
                return _json({"error": "moderators only"}, 403)
            try:
                result = await self.audit_log.page(after=request.query_params.get("after"), limit=limit)
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
        except Exception:
            log.warning("audit log read failed", exc_info=True)
            return _json({"error": "the store is unreachable; try again"}, 503)
        return _json(result, 200)


def _count(created: list[dict[str, Any]]) -> None:
    """Count the flags created now (a retried message re-raises nothing, so counts nothing)."""
    for flag in created:
        metrics.FLAGS.labels(flag["category"]).inc()


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})
