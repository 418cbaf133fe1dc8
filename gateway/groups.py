"""Groups (issue 12): create, find, join and leave groups; who is online; telling the members.

The rules are pure (:mod:`matcher.groups`: what a valid group is, its next session, what fits
whom and in what order); the capacity, the waitlist, mutes and removals are decided atomically in
Redis (:class:`chat.groups.GroupStore`).  This service checks roles and shapes, calls those two,
and tells the people concerned, on whichever gateway they are connected: frames for a user go
to their user channel (``Hub.publish_users``), where every gateway holding one of their
connections picks them up (``joined`` and ``left`` also change what that connection follows).

Members are named by their name in the group, never by user id.  The facilitator tools are
:mod:`gateway.group_tools`.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from chat import audit
from chat.audit import AuditLog
from chat.groups import GroupRecord, GroupStore, Joined, Left, Member, NewGroup
from core.errors import ErrorCode, ServiceError
from gateway.connection import Conn
from gateway.dispatch import Handler
from gateway.hub import Hub
from gateway.settings import Settings
from matcher.groups import (
    GroupView,
    competes,
    iso,
    next_session,
    parse_group_spec,
    parse_schedule,
    ranked,
)
from matcher.profile import Profile, parse_profile
from matcher.vocabulary import Vocabulary

log = logging.getLogger("aftertalk.groups")


NO_SUCH_GROUP, NOT_PART = "There is no such group.", "You are not part of that group."   # as chat/lua/group_*.lua


def forbidden(message: str = NOT_PART, **data: Any) -> ServiceError:
    return ServiceError(ErrorCode.FORBIDDEN, message, **data)


def group_id(frame: dict[str, Any]) -> str:
    gid: str = frame["group_id"]
    return gid


class Groups:
    def __init__(self, settings: Settings, *, store: GroupStore, hub: Hub, audit_log: AuditLog,
                 vocabulary: Vocabulary) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.audit_log = audit_log
        self.vocabulary = vocabulary

    def handlers(self) -> dict[str, Handler]:
        return {
            "create_group": self.on_create_group, "list_groups": self.on_list_groups,
            "find_group": self.on_find_group, "cancel_find_group": self.on_cancel_find_group,
            "join_group": self.on_join_group, "leave_group": self.on_leave_group,
        }

    # ---- views ---------------------------------------------------------------------------
    def _view(self, g: GroupRecord, now: datetime) -> GroupView:
        schedule = parse_schedule(g.schedule) if g.schedule else None
        return GroupView(g.group_id, g.kind, g.code, g.language, len(g.members), g.capacity,
                         next_session(schedule, now), g.created, g.state == "open")

    def _summary(self, g: GroupRecord, uid: str, now: datetime, position: int | None = None) -> dict[str, Any]:
        view = self._view(g, now)
        return {"group_id": g.group_id, "conversation_id": g.group_id, "title": g.title,
                "description": g.description, "topic": {"kind": g.kind, "code": g.code}, "language": g.language,
                "members": len(g.members), "capacity": g.capacity, "facilitators": g.facilitators,
                "schedule": g.schedule, "next_session": iso(view.next_session), "state": g.state,
                "joined": g.member(uid) is not None, "waitlist_position": position}

    async def _members(self, g: GroupRecord, viewer: str, online: set[str]) -> list[dict[str, Any]]:
        blocked = await self.store.blocks_of(viewer)
        out = []
        for m in g.members:
            entry: dict[str, Any] = {"name": m.name, "role": m.role, "facilitator": m.facilitator,
                                     "online": m.uid in online}
            if m.uid in blocked:
                entry["blocked"] = True
            out.append(entry)
        return out

    async def _joined_frame(self, g: GroupRecord, uid: str, online: set[str] | None = None) -> dict[str, Any]:
        me = g.member(uid)
        assert me is not None
        if online is None:
            online = await self.store.online([m.uid for m in g.members])
        return {"type": "joined", "group_id": g.group_id, "conversation_id": g.group_id, "epoch": g.epoch,
                "seq": me.joined_seq, "name": me.name, "group": self._summary(g, uid, datetime.now(UTC)),
                "members": await self._members(g, uid, online), "pinned": g.pinned}

    async def record(self, gid: str) -> GroupRecord:
        g = await self.store.record(gid)
        if g is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "There is no such group.", group_id=gid)
        return g

    # ---- telling people ------------------------------------------------------------------
    async def tell_members(self, g: GroupRecord, frame: dict[str, Any], *, but: str = "") -> None:
        await self.hub.publish_users([(m.uid, frame) for m in g.members if m.uid != but])

    @staticmethod
    def _presence(g: GroupRecord, online: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """Who is online, to every connected member."""
        frame = {"type": "presence", "group_id": g.group_id, "online": [m.name for m in g.members if m.uid in online]}
        return [(m.uid, frame) for m in g.members if m.uid in online]

    async def announce_presence(self, gids: list[str]) -> None:
        """Every connected member of these groups gets who is online now."""
        frames: list[tuple[str, dict[str, Any]]] = []
        for g in await self.store.records(gids):
            frames += self._presence(g, await self.store.online([m.uid for m in g.members]))
        await self.hub.publish_users(frames)

    async def _welcome(self, g: GroupRecord, uid: str, online: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """A new member's frames: ``joined`` to them (every connection), ``member_joined`` to the others
        (marked for those who blocked them)."""
        me = g.member(uid)
        if me is None:
            return []     # left again meanwhile
        others = [m.uid for m in g.members if m.uid != uid]
        blockers = await self.store.blocked_by(others, uid)
        announce = {"type": "member_joined", "group_id": g.group_id, "name": me.name, "role": me.role,
                    "facilitator": me.facilitator}
        return [(uid, await self._joined_frame(g, uid, online))] + [
            (o, {**announce, "blocked": True} if o in blockers else announce) for o in others]

    async def _welcome_joiner(self, gid: str, uid: str) -> None:
        """A new member (joined now, or moved up from the waitlist): their welcome, then presence; one
        read of the group and of who is online, one round trip of publishes."""
        g = await self.record(gid)
        online = await self.store.online([m.uid for m in g.members])
        await self.hub.publish_users(await self._welcome(g, uid, online) + self._presence(g, online))

    async def departed(self, gid: str, left_uid: str, name: str, promoted: list[Member],
                       frame: dict[str, Any]) -> None:
        """Someone left or was removed (``frame`` to them): ``member_left`` to the others, a welcome to
        whoever moved up from the waitlist, then presence."""
        frames: list[tuple[str, dict[str, Any]]] = [(left_uid, frame)]
        g = await self.store.record(gid)
        if g is not None:
            online = await self.store.online([m.uid for m in g.members])
            frames += [(m.uid, {"type": "member_left", "group_id": gid, "name": name}) for m in g.members]
            for m in promoted:
                frames += await self._welcome(g, m.uid, online)
            frames += self._presence(g, online)
        await self.hub.publish_users(frames)

    async def after_erasure(self, gid: str, left: Left) -> None:
        """An erased member left (``aftertalk erase-user``): the others are told, whoever moved up from the
        waitlist joins.  Their messages stay in the transcript as "Deleted user"."""
        await self.departed(gid, left.uid, left.name, left.promoted, {"type": "left", "group_id": gid})

    async def audit(self, conn: Conn, action: str, gid: str, detail: str = "", target: str = "") -> None:
        await self.audit_log.record(who=conn.user.id, who_name=conn.user.name, action=action,
                                    conversation_id=gid, detail=detail, user_id=target)

    # ---- the session ---------------------------------------------------------------------
    async def session_groups(self, uid: str) -> list[dict[str, Any]]:
        """The groups a user is a member of, for the welcome and resume."""
        out = []
        for g in await self.store.records(await self.store.of_user(uid)):
            me = g.member(uid)
            if me is not None:
                out.append({"group_id": g.group_id, "conversation_id": g.group_id, "epoch": g.epoch,
                            "last_seq": g.seq, "joined_seq": me.joined_seq, "name": me.name, "title": g.title,
                            "state": g.state})
        return out

    async def session_opened(self, groups: list[dict[str, Any]]) -> None:
        """A user connected: their open groups (as :meth:`session_groups` read them) are told who is online."""
        try:
            await self.announce_presence([g["group_id"] for g in groups if g["state"] == "open"])
        except Exception as exc:      # a hint: the next change corrects it
            log.debug("presence not announced: %s", type(exc).__name__)

    async def session_ended(self, uid: str) -> None:
        """A user's last connection on a gateway went (or expired with a dead gateway): their groups are
        told who is online; with no connection left anywhere, they stop waiting for a group (find_group).
        Two round trips for a user in no group and waiting for none: this runs for every session that ends."""
        try:
            gids, seeking = await self.store.current(uid)
            if seeking and not await self.store.online([uid]):
                await self.store.unseek(uid)
            if gids:
                await self.announce_presence(gids)
        except Exception as exc:      # a hint: the next change corrects it
            log.debug("presence not announced: %s", type(exc).__name__)

    # ---- creating and finding ------------------------------------------------------------
    async def on_create_group(self, conn: Conn, frame: dict[str, Any]) -> None:
        user = conn.user
        if user.role != "moderator" and not user.facilitator:
            raise forbidden("Only facilitators and moderators create groups.")
        spec = parse_group_spec(frame, self.vocabulary)
        facilitator = user.role != "moderator"      # a moderator leads from outside, without being a member
        gid = self.store.new_id()
        if facilitator and await self.store.reserve(user.id, gid) == 0:
            raise self._at_limit()
        await self.store.create(
            gid, NewGroup(spec.kind, spec.code, spec.language, spec.title, spec.description, spec.capacity,
                          spec.schedule.as_json() if spec.schedule else None),
            uid=user.id, name=user.name, role=user.role, facilitator=True, member=facilitator)
        g = await self.record(gid)
        await self.audit(conn, audit.GROUP_CREATE, gid, detail=spec.title)
        conn.push(orjson.dumps({"type": "group", "group": self._summary(g, user.id, datetime.now(UTC))}).decode())
        if facilitator:     # then ``joined`` on every connection, as for any member: it starts their following
            await self.hub.publish_users([(user.id, await self._joined_frame(g, user.id))])
        await self._serve_seekers(g)

    async def _serve_seekers(self, g: GroupRecord) -> None:
        """People waiting for a group (find_group) join a new one that fits them, in order, while it has room."""
        now = datetime.now(UTC)
        view = self._view(g, now)
        for uid, raw in await self.store.seekers():
            try:
                profile = parse_profile(raw, self.vocabulary)
            except ServiceError:
                continue
            if not ranked(profile, [view]):
                continue
            role, name = raw.get("_role", "patient"), raw.get("_name", "")
            joined = await self._try_join(g.group_id, uid, name, role, wait=False, facilitator=raw.get("_fac") is True)
            if joined is None:
                continue
            if joined.status == "full":
                return
            await self.store.unseek(uid)
            await self._welcome_joiner(g.group_id, uid)

    async def _try_join(self, gid: str, uid: str, name: str, role: str, *, wait: bool,
                        facilitator: bool = False) -> Joined | None:
        """Reserve a place in the user's count, then join; give the place back if not joined.  None: at the
        user's limit."""
        reserved = await self.store.reserve(uid, gid)
        if reserved == 0:
            return None
        try:
            joined = await self.store.join(gid, uid=uid, name=name, role=role, facilitator=facilitator, wait=wait)
        except ServiceError:
            if reserved == 1:
                await self.store.release(uid, gid)
            raise
        if joined.status == "full" and reserved == 1:
            await self.store.release(uid, gid)
        return joined

    async def _fitting(self, profile: Profile, uid: str) -> list[GroupRecord]:
        topics = [("diagnosis", c) for c in sorted(profile.diagnoses)] + [
            ("side_effect", c) for c in sorted(profile.side_effects)]
        records = await self.store.records(await self.store.indexed(topics))
        now = datetime.now(UTC)
        by_id = {g.group_id: g for g in records}
        return [by_id[v.group_id] for v in ranked(profile, [self._view(g, now) for g in records])]

    async def on_list_groups(self, conn: Conn, frame: dict[str, Any]) -> None:
        uid = conn.user.id
        if frame.get("profile") is not None:
            records = await self._fitting(parse_profile(frame["profile"], self.vocabulary), uid)
        else:
            records = await self.store.records(await self.store.of_user(uid))
        positions = await self.store.waitlist_positions([g.group_id for g in records], uid)
        now = datetime.now(UTC)
        conn.push(orjson.dumps({"type": "groups", "groups": [
            self._summary(g, uid, now, pos) for g, pos in zip(records, positions, strict=True)]}).decode())

    async def on_find_group(self, conn: Conn, frame: dict[str, Any]) -> None:
        user = conn.user
        profile = parse_profile(frame["profile"], self.vocabulary)
        for g in await self._fitting(profile, user.id):
            if len(g.members) >= g.capacity and g.member(user.id) is None:
                continue
            joined = await self._try_join(g.group_id, user.id, user.name, user.role, wait=False,
                                          facilitator=user.facilitator)
            if joined is None:
                raise self._at_limit()
            if joined.status in ("joined", "member"):
                await self.store.unseek(user.id)
                await self._welcome_joiner(g.group_id, user.id)
                return
        conn.push(orjson.dumps({"type": "groups", "groups": [], "ref": "find_group"}).decode())
        await self.store.seek(user.id, {**profile.as_json(), "_role": user.role, "_name": user.name,
                                        "_fac": user.facilitator})
        position = 1
        for uid, raw in await self.store.seekers():
            if uid == user.id:
                break
            try:
                if competes(profile, parse_profile(raw, self.vocabulary)):
                    position += 1
            except ServiceError:
                continue
        conn.push(orjson.dumps({"type": "queued", "for": "group", "position": position}).decode())

    async def on_cancel_find_group(self, conn: Conn, frame: dict[str, Any]) -> None:
        await self.store.unseek(conn.user.id)
        conn.push('{"type":"cancelled","for":"group"}')

    def _at_limit(self) -> ServiceError:
        limit = self.settings.max_groups_per_user
        return ServiceError(ErrorCode.CAPACITY, f"You can be in at most {limit} groups at once.", limit=limit)

    # ---- joining and leaving -------------------------------------------------------------
    async def on_join_group(self, conn: Conn, frame: dict[str, Any]) -> None:
        user, gid = conn.user, group_id(frame)
        joined = await self._try_join(gid, user.id, user.name, user.role, wait=True, facilitator=user.facilitator)
        if joined is None:
            raise self._at_limit()
        if joined.status == "waitlisted":
            raise ServiceError(ErrorCode.GROUP_FULL, "This group is full; you are on its waitlist.",
                               group_id=gid, waitlist_position=joined.position)
        if joined.status == "member":
            g = await self.record(gid)
            await self.hub.publish_users([(user.id, await self._joined_frame(g, user.id))])
            return
        await self._welcome_joiner(gid, user.id)

    async def on_leave_group(self, conn: Conn, frame: dict[str, Any]) -> None:
        gid = group_id(frame)
        try:
            left = await self.store.leave(gid, conn.user.id)
        except ServiceError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                raise forbidden(group_id=gid) from None
            raise
        if left.was == "none":
            raise forbidden(group_id=gid)
        if left.was == "waitlisted":
            await self.hub.publish_users([(conn.user.id, {"type": "left", "group_id": gid, "waitlisted": True})])
            return
        await self.departed(gid, conn.user.id, left.name, left.promoted, {"type": "left", "group_id": gid})

    # ---- inside the conversation ----------------------------------------------------------
    async def typing(self, gid: str, uid: str, frame: dict[str, Any]) -> None:
        members = await self.store.members(gid)
        await self.hub.publish_users([(m.uid, frame) for m in members if m.uid != uid])
