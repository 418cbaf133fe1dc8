"""The facilitator tools of groups (issue 12): mute, remove, readmit, pin and close.

Who may use them is decided in Redis, in the same step as the change (chat/lua/group_admin.lua and
group_leave.lua): a facilitator who is a member of the group, or a moderator in any group; only a
moderator readmits.  A facilitator who does not lead a group learns nothing from a refusal: an
unknown group and someone else's group are answered the same ``forbidden``.  Every use is on the
audit log (docs/moderation.md), and the members are told through :class:`gateway.groups.Groups`.
"""
from __future__ import annotations

from typing import Any

import orjson

from chat import audit
from chat.groups import GroupStore
from core.errors import ErrorCode, ServiceError
from gateway.connection import Conn
from gateway.dispatch import Handler
from gateway.groups import NO_SUCH_GROUP, NOT_PART, Groups, forbidden, group_id
from gateway.hub import Hub
from matcher.groups import MAX_PIN

MAX_MINUTES = 1440
MAX_REASON = 500


def _unless_leading(exc: ServiceError, gid: str, is_moderator: bool) -> ServiceError:
    """A facilitator who does not lead this group learns nothing from a refusal: an unknown group and
    someone else's group get the same ``forbidden`` (moderators, who may act in any group, are told
    ``not_found``)."""
    if is_moderator or exc.message not in (NO_SUCH_GROUP, NOT_PART):
        return exc
    return forbidden(group_id=gid)


class GroupTools:
    def __init__(self, *, store: GroupStore, groups: Groups, hub: Hub) -> None:
        self.store = store
        self.groups = groups
        self.hub = hub

    def handlers(self) -> dict[str, Handler]:
        return {"mute_member": self.on_mute_member, "remove_member": self.on_remove_member,
                "readmit_member": self.on_readmit_member, "pin": self.on_pin, "close_group": self.on_close_group}

    def _lead(self, conn: Conn) -> tuple[str, bool]:
        user = conn.user
        if user.role != "moderator" and not user.facilitator:
            raise forbidden("Only facilitators and moderators may do that.")
        return user.id, user.role == "moderator"

    async def _admin(self, conn: Conn, gid: str, op: str, arg: str = "", extra: str | int = "") -> list[str]:
        actor, is_mod = self._lead(conn)
        try:
            return await self.store.admin(gid, op, actor=actor, actor_is_moderator=is_mod, arg=arg, extra=extra)
        except ServiceError as exc:
            raise _unless_leading(exc, gid, is_mod) from None

    def _done(self, conn: Conn, ref: str, gid: str, **data: Any) -> None:
        conn.push(orjson.dumps({"type": "done", "ref": ref, "group_id": gid, **data}).decode())

    async def on_mute_member(self, conn: Conn, frame: dict[str, Any]) -> None:
        gid, name, minutes = group_id(frame), frame["name"], frame["minutes"]
        if not 0 <= minutes <= MAX_MINUTES:
            raise ServiceError(ErrorCode.BAD_FRAME, f"'minutes' must be 0 to {MAX_MINUTES}.", field="minutes")
        target, until = await self._admin(conn, gid, "mute", name, minutes)
        await self.groups.audit(conn, audit.GROUP_MUTE, gid, detail=f"{name}: {minutes} min", target=target)
        g = await self.groups.record(gid)
        await self.groups.tell_members(g, {"type": "member_muted", "group_id": gid, "name": name, "until": int(until)})
        self._done(conn, "mute_member", gid, name=name, until=int(until))

    async def on_remove_member(self, conn: Conn, frame: dict[str, Any]) -> None:
        gid, name = group_id(frame), frame["name"]
        reason = (frame.get("reason") or "")[:MAX_REASON]
        actor, is_mod = self._lead(conn)
        try:
            left = await self.store.leave(gid, name, mode="remove", actor=actor, actor_is_moderator=is_mod)
        except ServiceError as exc:
            raise _unless_leading(exc, gid, is_mod) from None
        await self.groups.audit(conn, audit.GROUP_REMOVE, gid, detail=f"{name}: {reason}", target=left.uid)
        await self.groups.departed(gid, left.uid, name, left.promoted, {"type": "removed", "group_id": gid})
        self._done(conn, "remove_member", gid, name=name)

    async def on_readmit_member(self, conn: Conn, frame: dict[str, Any]) -> None:
        gid, name = group_id(frame), frame["name"]
        if conn.user.role != "moderator":
            raise forbidden("Only moderators may let someone back in.")
        (target,) = await self._admin(conn, gid, "readmit", name)
        await self.groups.audit(conn, audit.GROUP_READMIT, gid, detail=name, target=target)
        self._done(conn, "readmit_member", gid, name=name)

    async def on_pin(self, conn: Conn, frame: dict[str, Any]) -> None:
        gid, text = group_id(frame), frame["text"]
        if len(text) > MAX_PIN:
            raise ServiceError(ErrorCode.TOO_LARGE, f"A pinned message is at most {MAX_PIN} characters.")
        g = await self.store.record(gid)
        me = g.member(conn.user.id) if g else None
        await self._admin(conn, gid, "pin", text.strip(), me.name if me else conn.user.name)
        await self.groups.audit(conn, audit.GROUP_PIN, gid, detail=text.strip())
        g = await self.groups.record(gid)
        await self.groups.tell_members(g, {"type": "pinned", "group_id": gid, "pinned": g.pinned})
        self._done(conn, "pin", gid)

    async def on_close_group(self, conn: Conn, frame: dict[str, Any]) -> None:
        gid = group_id(frame)
        await self.close(conn, gid, reason=(frame.get("reason") or "")[:MAX_REASON])
        self._done(conn, "close_group", gid)

    async def close(self, conn: Conn, gid: str, *, reason: str = "") -> bool:
        """Close a group (also a moderator's ``moderator_end`` of one); True if it closed now."""
        (changed,) = await self._admin(conn, gid, "close")
        g = await self.groups.record(gid)
        if changed == "1":
            waiting = await self.store.closed(g)
            await self.groups.audit(conn, audit.GROUP_CLOSE, gid, detail=reason)
            closed = {"type": "group_closed", "group_id": gid}
            await self.hub.publish_users([(m.uid, closed) for m in g.members] + [(u, closed) for u in waiting])
            await self.hub.publish_watchers(gid, {"type": "ended", "conversation_id": gid, "by": conn.user.role})
        return changed == "1"

    async def moderator_view(self, gid: str) -> list[dict[str, Any]]:
        """What a moderator watching a group sees of its members (ids included: moderators act on them)."""
        return [{"name": m.name, "role": m.role, "facilitator": m.facilitator, "user_id": m.uid}
                for m in await self.store.members(gid)]
