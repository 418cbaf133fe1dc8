"""Moderation and safety in the gateway: flags on risky messages, crisis resources, reports, and
the moderator's feed, watch and actions, every one of them on the audit log.

:class:`Safety` plugs into :class:`gateway.service.Service` when the service is built: it adds
its frame handlers to ``service.handlers``, sets the ``on_flagged`` and ``may_watch`` hooks, and
adds ``GET /api/audit`` to ``service.extra_routes``.  Rules of access:

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
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chat import audit
from chat.crisis import parse_crisis_lines, resources_frame
from chat.flags import FlagStore
from chat.moderation import CRISIS, REPORT_CATEGORY, REPORT_SEVERITY, Verdict
from chat.store import Appended, message_frame
from gateway.auth import verify_token
from gateway.connection import Conn
from core.errors import ErrorCode, ServiceError, Unauthorized

if TYPE_CHECKING:
    from gateway.service import Service

log = logging.getLogger("aftertalk.safety")
MAX_REASON = 1000
FLAG_ATTEMPTS = 3
NOT_OPEN = "That conversation is not open to moderators."
SUSPENSION_END_REASON = "This conversation was closed by a moderator."
MAX_UNTIL = 253402300799           # 9999-12-31T23:59:59Z: the last instant a suspension end can be written as a date


def _forbidden(cid: str) -> ServiceError:
    return ServiceError(ErrorCode.FORBIDDEN, NOT_OPEN, conversation_id=cid)


def _bounded(frame: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = frame.get(name) or ""
    if len(value) > limit:
        raise ServiceError(ErrorCode.TOO_LARGE, f"'{name}' is at most {limit} characters.", field=name)
    value = value.strip()
    if required and not value:
        raise ServiceError(ErrorCode.BAD_FRAME, f"'{name}' needs some text.", field=name)
    return value


class Safety:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.redis = service.redis
        self.keys = service.keys
        self.hub = service.hub
        self.flags = FlagStore(service.redis, service.keys)
        self.crisis_lines = parse_crisis_lines(service.settings.crisis_lines)
        service.handlers.update({
            "report": self.on_report, "watch_flags": self.on_watch_flags, "watch": self.on_watch,
            "unwatch": self.on_unwatch, "notice": self.on_notice, "moderator_end": self.on_moderator_end,
            "suspend": self.on_suspend, "resolve": self.on_resolve,
        })
        self._participant_history = service.handlers["history"]
        service.handlers["history"] = self.on_history
        service.on_flagged = self.on_flagged
        service.may_watch = self.flags.has_unresolved
        self._resync_user = service.hub.on_resync
        service.hub.on_resync = self.resync_user
        service.extra_routes = [*getattr(service, "extra_routes", []),
                                Route("/api/audit", self.audit_route, methods=["GET"])]

    # ---- automatic flags ------------------------------------------------------------
    async def on_flagged(self, conn: Conn, cid: str, appended: Appended, verdict: Verdict) -> None:
        """After a flagged message was stored: resources to its author on crisis, then the flags.

        The message was acknowledged already, so a failure here is not the sender's error: the
        flags are retried a few times and then logged.  Raising them is idempotent."""
        if CRISIS in verdict.categories:
            frame = resources_frame(cid, self.crisis_lines)
            try:        # to every connection of the author, on every gateway
                await self.redis.publish(self.keys.user_channel(conn.user.id), orjson.dumps(frame))
            except Exception:
                conn.push(orjson.dumps(frame).decode())     # at least the one they are typing on
        hits = [(hit.category, hit.severity) for hit in verdict.hits]
        for attempt in range(FLAG_ATTEMPTS):
            try:
                stored = await self.service.chat.read_after(cid, appended.seq - 1, 1)
                original = stored[0].text if stored and stored[0].seq == appended.seq else verdict.shown_text
                await self.flags.raise_flags(cid, appended.seq, hits, original, author=conn.user.id)
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
        meta = await self.service._participant_meta(cid, uid)    # forbidden, the same for unknown ones
        pending = [f for f in await self.flags.for_conversation(cid)
                   if f["category"] == REPORT_CATEGORY and f.get("reported_by") == uid and f["status"] != "resolved"]
        if not pending:        # one open report per reporter and conversation is enough to bring a moderator
            await self.flags.report(cid, meta.seq, uid, reason, category=REPORT_CATEGORY, severity=REPORT_SEVERITY)
        conn.push(orjson.dumps({"type": "reported", "conversation_id": cid}).decode())

    # ---- moderators: reading ------------------------------------------------------------
    async def _audit(self, conn: Conn, action: str, **target: str) -> None:
        await audit.record(self.redis, self.keys, who=conn.user.id, who_name=conn.user.name, action=action, **target)

    async def _open_to_moderators(self, cid: str):
        meta = await self.service.chat.meta(cid)
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
            messages = await self.service.chat.history(cid, None, self.service.settings.history_limit)
            flags = await self.flags.for_conversation(cid)
        except BaseException:
            conn.filling.discard(cid)
            await self.hub.unwatch(conn, cid)
            raise
        conn.push(orjson.dumps({
            "type": "history", "conversation_id": cid, "epoch": meta.epoch, "state": meta.state,
            "watching": True,
            "participants": {"patient": {"id": meta.patient, "name": meta.patient_name},
                             "survivor": {"id": meta.survivor, "name": meta.survivor_name}},
            "flags": flags,
            "messages": [message_frame(cid, meta.epoch, m, moderator_view=True) for m in messages],
            "has_more": bool(messages) and messages[0].seq > 1}).decode())
        conn.delivered[cid] = messages[-1].seq if messages else 0
        conn.filling.discard(cid)
        self.hub.fill(conn, cid)

    async def on_unwatch(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        await self.hub.unwatch(conn, cid)
        conn.delivered.pop(cid, None)
        conn.push(orjson.dumps({"type": "unwatched", "conversation_id": cid}).decode())

    async def on_history(self, conn: Conn, frame: dict[str, Any]) -> None:
        """Participants: unchanged.  Moderators: the read is audited first (only if it will be allowed)."""
        if conn.user.role == "moderator":
            cid = frame["conversation_id"]
            if await self.flags.has_unresolved(cid):
                before = frame.get("before_seq")
                await self._audit(conn, audit.HISTORY, conversation_id=cid,
                                  detail=f"before_seq={before}" if before is not None else "")
        await self._participant_history(conn, frame)

    async def resync_user(self, uid: str) -> None:
        """After a pub/sub outage: also re-send the flag list to this user's feed connections."""
        if self._resync_user is not None:
            await self._resync_user(uid)
        feeds = [c for c in self.hub.conns_of(uid) if c in self.hub.flag_watchers]
        if feeds:
            text = await self._flags_frame()
            for conn in feeds:
                conn.push(text)

    # ---- moderators: actions ----------------------------------------------------------
    async def on_notice(self, conn: Conn, frame: dict[str, Any]) -> None:
        cid = frame["conversation_id"]
        text = _bounded(frame, "text", self.service.settings.max_text_chars, required=True)
        client_id = frame.get("client_id")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 128:
            client_id = "notice-" + secrets.token_hex(8)
        await self._open_to_moderators(cid)
        user = conn.user
        appended = await self.service.chat.append(cid, sender_id=user.id, name=user.name, role="moderator",
                                                  client_id=client_id, text=text, shown=text)
        if not appended.duplicate:
            await self._audit(conn, audit.NOTICE, conversation_id=cid, detail=text)
        conn.push(orjson.dumps({"type": "ack", "ref": "notice", "conversation_id": cid, "client_id": client_id,
                                "seq": appended.seq, "ts": appended.ts, "epoch": appended.epoch}).decode())

    async def _end_as_moderator(self, conn: Conn, cid: str, reason: str) -> bool:
        # the log closes first, as in Service._end: a participant who hears "ended" and sends gets
        # conversation_ended, never an ack
        await self.service.chat.end(cid, conn.user.id)
        out, created = await self.service.match.end(cid, conn.user.id, "moderator", reason=reason)
        await self.service.open_created(created)
        if out.get("ended"):
            ended = {"type": "ended", "conversation_id": cid, "by": "moderator"}
            if reason:
                ended["reason"] = reason
            await self.redis.publish(self.keys.watch_channel(cid), orjson.dumps(ended))
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
        if until and until <= (await self.redis.time())[0]:
            raise ServiceError(ErrorCode.BAD_FRAME, "'until' must be in the future (epoch seconds).", field="until")
        if until > MAX_UNTIL:        # found by fuzzing: 1e20 or 2**64 suspended first, then failed to audit
            raise ServiceError(ErrorCode.BAD_FRAME, "'until' must be epoch seconds before the year 10000 "
                               "(leave it out to suspend until lifted).", field="until")
        await self.service.match.suspend(uid, until, reason)
        ended = []
        for cid in sorted(await self.redis.smembers(self.keys.user_convs(uid))):
            if await self._end_as_moderator(conn, cid, SUSPENSION_END_REASON):
                ended.append(cid)
        detail = reason + (f" (until {datetime.fromtimestamp(until, timezone.utc).isoformat(timespec='seconds')})"
                           if until else "")
        await self._audit(conn, audit.SUSPEND, user_id=uid, detail=detail)
        conn.push(orjson.dumps({"type": "done", "ref": "suspend", "user_id": uid, "until": until,
                                "ended": ended}).decode())

    async def on_resolve(self, conn: Conn, frame: dict[str, Any]) -> None:
        fid = frame["flag_id"]
        resolution = _bounded(frame, "resolution", MAX_REASON, required=True)
        flag = await self.flags.get(fid)
        if flag is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "There is no such flag.", flag_id=fid)
        cid = flag["conversation_id"]
        fields = audit.entry_fields(who=conn.user.id, who_name=conn.user.name, action=audit.RESOLVE,
                                    conversation_id=cid, flag_id=fid, detail=resolution)
        out = await self.flags.resolve(fid, cid, conn.user.id, resolution, fields)
        conn.push(orjson.dumps({"type": "done", "ref": "resolve", **out}).decode())

    # ---- HTTP: the audit log ----------------------------------------------------------
    async def audit_route(self, request: Request) -> Response:
        """``GET /api/audit?after=<entry id>&limit=<1..1000>`` with ``Authorization: Bearer <moderator token>``."""
        s = self.service.settings
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
            if await self.service.match.is_suspended(user.id):
                return _json({"error": "moderators only"}, 403)
            try:
                result = await audit.page(self.redis, self.keys, after=request.query_params.get("after"), limit=limit)
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
        except Exception:
            log.warning("audit log read failed", exc_info=True)
            return _json({"error": "the store is unreachable; try again"}, 503)
        return _json(result, 200)


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})
