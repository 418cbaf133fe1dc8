"""Groups in Redis: the adapter for chat/lua/group_*.lua.  It translates; the scripts decide.

Guarantees
----------
* **Capacity and waitlist are one step.**  A group's members, names, waitlist, mutes and removals
  live in the group's own slot (``{c:ID}``, beside its log), and :meth:`GroupStore.join` and
  :meth:`GroupStore.leave` are single scripts on it: however many joins race through however many
  gateways, the group never holds more than its capacity, the waitlist is served first come first
  served, and a freed place goes to the head of the waitlist in the same step that freed it.
* **The per-user limit is an index.**  How many groups a user is in (or waiting for) is counted in
  the control plane (``Keys.user_groups``, slot ``{ctl}``), which no script of the group's slot can
  reach on a Cluster.  :meth:`reserve` counts the group first; a refused join gives it back.  A
  gateway that dies in between leaves a count with no membership behind it: :meth:`reserve` checks
  the user's counted groups against their slots before it refuses, and drops such leftovers.
* **Messages are the chat store's.**  A group is a conversation (kind ``group`` in its meta hash):
  ``append.lua`` checks membership and mutes in the same step as the message and wakes every
  member's user channel.  Members see names and roles only, never user ids.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from core.keys import GROUP_ID_PREFIX, Keys
from core.scripts import ScriptSet

SCRIPTS = ("group_open.lua", "group_join.lua", "group_leave.lua", "group_admin.lua", "group_reserve.lua")
US = "\x1f"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


@dataclass(frozen=True, slots=True)
class Member:
    uid: str
    name: str
    role: str
    facilitator: bool
    joined_seq: int
    order: int = 0          # the how-manieth join of the group: members are listed in this order

    @classmethod
    def parse(cls, uid: str, record: str) -> Member:
        name, role, fac, seq, order = [*record.split(US), "", "", "0", "0", "0"][:5]
        return cls(uid, name, role, fac == "1", int(seq or 0), int(order or 0))


@dataclass(frozen=True, slots=True)
class Joined:
    """The outcome of a join: ``status`` is joined, member (already was), waitlisted or full."""

    status: str
    name: str = ""
    seq: int = 0
    epoch: str = ""
    members: int = 0
    position: int = 0


@dataclass(frozen=True, slots=True)
class Left:
    """The outcome of a leave: ``was`` member, waitlisted or none; who moved up from the waitlist."""

    was: str
    uid: str
    name: str
    promoted: list[Member]


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group's meta hash, as read."""

    group_id: str
    title: str
    description: str
    kind: str
    code: str
    language: str
    capacity: int
    schedule: dict[str, Any] | None     # as given (checked by matcher.groups.parse_schedule at creation)
    state: str
    epoch: str
    seq: int
    created: int
    members: list[Member]
    pinned: dict[str, Any] | None

    @property
    def facilitators(self) -> list[str]:
        return [m.name for m in self.members if m.facilitator]

    def member(self, uid: str) -> Member | None:
        return next((m for m in self.members if m.uid == uid), None)


@dataclass(frozen=True, slots=True)
class NewGroup:
    """What a group is created with (already checked: matcher.groups.parse_group_spec)."""

    kind: str
    code: str
    language: str
    title: str
    description: str
    capacity: int
    schedule: dict[str, Any] | None


class GroupStore:
    def __init__(self, redis: Any, keys: Keys, *, max_groups_per_user: int) -> None:
        self.redis = redis
        self.keys = keys
        self.max_groups = max_groups_per_user
        self.scripts = ScriptSet(redis, "chat", SCRIPTS)

    def _slot(self, gid: str) -> list[str]:
        k = self.keys
        return [k.conv_meta(gid), k.group_members(gid), k.group_names(gid), k.group_waitlist(gid),
                k.group_waiting(gid), k.group_removed(gid), k.group_muted(gid)]

    # ---- lifecycle ----------------------------------------------------------------------
    @staticmethod
    def new_id() -> str:
        return GROUP_ID_PREFIX + secrets.token_hex(8)

    async def create(self, gid: str, spec: NewGroup, *, uid: str, name: str, role: str, facilitator: bool,
                     member: bool = True) -> None:
        """Create a group; its creator is its first member unless ``member`` is false (a moderator leads it
        from outside).  A member creator must have been counted first (:meth:`reserve` of ``gid``)."""
        schedule = orjson.dumps(spec.schedule).decode() if spec.schedule else ""
        k = self.keys
        created = await self.scripts.run(
            "group_open", [k.conv_meta(gid), k.group_members(gid), k.group_names(gid)],
            ["e" + secrets.token_hex(6), spec.title, spec.description, spec.kind, spec.code, spec.language,
             spec.capacity, schedule, uid if member else "", name, role, "1" if facilitator else "0"])
        await self.redis.zadd(k.group_index(spec.kind, spec.code), {gid: int(created)})

    async def reserve(self, uid: str, gid: str) -> int:
        """Count ``gid`` against ``uid``'s limit: 2 counted already, 1 counted now, 0 at the limit."""
        k = self.keys
        args = [k.user_groups(uid), k.user_history(uid)]
        got = int(await self.scripts.run("group_reserve", args, [gid, self.max_groups]))
        if got == 0 and await self._drop_leftovers(uid):
            got = int(await self.scripts.run("group_reserve", args, [gid, self.max_groups]))
        return got

    async def release(self, uid: str, gid: str) -> None:
        await self.redis.srem(self.keys.user_groups(uid), gid)

    async def _drop_leftovers(self, uid: str) -> bool:
        """Counted groups the user is neither in nor waiting for (a crash between reserve and join)."""
        gids = [_s(g) for g in await self.redis.smembers(self.keys.user_groups(uid))]
        stale = []
        for gid in gids:
            member = await self.redis.hexists(self.keys.group_members(gid), uid)
            waiting = await self.redis.zscore(self.keys.group_waitlist(gid), uid)
            if not member and waiting is None:
                stale.append(gid)
        if stale:
            await self.redis.srem(self.keys.user_groups(uid), *stale)
        return bool(stale)

    async def join(self, gid: str, *, uid: str, name: str, role: str, facilitator: bool,
                   wait: bool = True) -> Joined:
        """Join, or wait on the list (``wait``), or only if there is room.  Refusals as group_join.lua."""
        k = self.keys
        res = await self.scripts.run(
            "group_join", [k.conv_meta(gid), k.group_members(gid), k.group_names(gid), k.group_waitlist(gid),
                           k.group_waiting(gid), k.group_removed(gid)],
            [uid, name, role, "1" if facilitator else "0", "wait" if wait else "room"])
        status = _s(res[0])
        if status in ("joined", "member"):
            return Joined(status, _s(res[1]), int(res[2]), _s(res[3]), int(res[4]))
        if status == "waitlisted":
            return Joined(status, position=int(res[1]), members=int(res[2]))
        return Joined(status)

    async def leave(self, gid: str, who: str, *, mode: str = "leave", actor: str = "",
                    actor_is_moderator: bool = False) -> Left:
        """``who``: a user id, or for ``mode="remove"`` a member's name.  See group_leave.lua."""
        res = await self.scripts.run("group_leave", self._slot(gid),
                                     [who, mode, actor, "1" if actor_is_moderator else "0"])
        raw = [_s(x) for x in res]
        promoted = [Member(raw[i], raw[i + 1], raw[i + 2], raw[i + 3] == "1", 0) for i in range(3, len(raw), 4)]
        left = Left(raw[0], raw[1], raw[2], promoted)
        if left.was != "none":
            await self.release(left.uid, gid)
        return left

    async def admin(self, gid: str, op: str, *, actor: str, actor_is_moderator: bool, arg: str = "",
                    extra: str | int = "") -> list[str]:
        """The one-field facilitator tools (group_admin.lua): mute, pin, close, readmit."""
        k = self.keys
        res = await self.scripts.run(
            "group_admin", [k.conv_meta(gid), k.group_members(gid), k.group_names(gid), k.group_muted(gid),
                            k.group_removed(gid)],
            [op, actor, "1" if actor_is_moderator else "0", arg, extra])
        return [_s(x) for x in res]

    async def closed(self, record: GroupRecord) -> list[str]:
        """After a close: out of the index, off the members' and waitlist's counts, onto the retention
        work list.  Returns who was on the waitlist."""
        k = self.keys
        now = (await self.redis.time())[0]
        waiting = [_s(u) for u in await self.redis.zrange(k.group_waitlist(record.group_id), 0, -1)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(k.group_index(record.kind, record.code), record.group_id)
            for uid in [m.uid for m in record.members] + waiting:
                pipe.srem(k.user_groups(uid), record.group_id)
            pipe.zadd(k.ended, {record.group_id: int(now)})
            await pipe.execute()
        return waiting

    # ---- reading ------------------------------------------------------------------------
    async def members(self, gid: str) -> list[Member]:
        raw = await self.redis.hgetall(self.keys.group_members(gid))
        return sorted((Member.parse(_s(u), _s(r)) for u, r in raw.items()), key=lambda m: m.order)

    async def member(self, gid: str, uid: str) -> Member | None:
        raw = await self.redis.hget(self.keys.group_members(gid), uid)
        return Member.parse(uid, _s(raw)) if raw is not None else None

    async def records(self, gids: list[str]) -> list[GroupRecord]:
        """The groups that exist, in the order asked (a purged id is left out)."""
        if not gids:
            return []
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for gid in gids:
                pipe.hgetall(k.conv_meta(gid))
                pipe.hgetall(k.group_members(gid))
            raw = await pipe.execute()
        out = []
        for i, gid in enumerate(gids):
            meta = {_s(a): _s(b) for a, b in raw[2 * i].items()}
            if meta.get("kind") != "group":
                continue
            members = sorted((Member.parse(_s(u), _s(r)) for u, r in raw[2 * i + 1].items()),
                             key=lambda m: m.order)
            pinned = ({"text": meta["pinned_text"], "by": meta.get("pinned_by", ""),
                       "ts": int(meta.get("pinned_ts") or 0)} if meta.get("pinned_text") else None)
            out.append(GroupRecord(
                group_id=gid, title=meta.get("title", ""), description=meta.get("description", ""),
                kind=meta.get("topic_kind", ""), code=meta.get("topic_code", ""), language=meta.get("language", ""),
                capacity=int(meta.get("capacity") or 0),
                schedule=orjson.loads(meta["schedule"]) if meta.get("schedule") else None,
                state=meta.get("state", "open"), epoch=meta.get("epoch", ""), seq=int(meta.get("seq") or 0),
                created=int(meta.get("created") or 0), members=members, pinned=pinned))
        return out

    async def record(self, gid: str) -> GroupRecord | None:
        found = await self.records([gid])
        return found[0] if found else None

    async def waitlist_positions(self, gids: list[str], uid: str) -> list[int | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for gid in gids:
                pipe.zrank(self.keys.group_waitlist(gid), uid)
            ranks = await pipe.execute()
        return [None if r is None else int(r) + 1 for r in ranks]

    async def indexed(self, topics: list[tuple[str, str]]) -> list[str]:
        """The open groups on any of these (kind, code) topics."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind, code in topics:
                pipe.zrange(self.keys.group_index(kind, code), 0, -1)
            found = await pipe.execute()
        return list(dict.fromkeys(_s(g) for gids in found for g in gids))

    async def of_user(self, uid: str) -> list[str]:
        """The groups a user is in or waiting for, and the closed groups they were in."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:     # one round trip: this runs at every hello
            pipe.smembers(k.user_groups(uid))
            pipe.smembers(k.user_history(uid))
            in_groups, history = await pipe.execute()
        current = {_s(g) for g in in_groups}
        past = {_s(c) for c in history if _s(c).startswith(GROUP_ID_PREFIX)}
        gids = sorted(current | past)
        if not gids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gid in gids:
                pipe.hexists(k.group_members(gid), uid)
            member = await pipe.execute()
        return [g for g, m in zip(gids, member, strict=True) if m or g in current]

    async def current(self, uid: str) -> tuple[list[str], bool]:
        """The open groups a user is in or waiting for, and whether they wait for a group (find_group)."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(k.user_groups(uid))
            pipe.zscore(k.group_seekers, uid)
            gids, since = await pipe.execute()
        return sorted(_s(g) for g in gids), since is not None

    async def online(self, uids: list[str]) -> set[str]:
        """Those with a live connection on any gateway (the matcher's presence registry)."""
        if not uids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in uids:
                pipe.scard(self.keys.user_conns(uid))
            counts = await pipe.execute()
        return {u for u, n in zip(uids, counts, strict=True) if int(n)}

    async def blocked_by(self, viewers: list[str], uid: str) -> set[str]:
        """Which of ``viewers`` have blocked ``uid`` (blocks do not keep people out of groups)."""
        if not viewers:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for v in viewers:
                pipe.sismember(self.keys.blocks(v), uid)
            hits = await pipe.execute()
        return {v for v, hit in zip(viewers, hits, strict=True) if hit}

    async def blocks_of(self, uid: str) -> set[str]:
        return {_s(u) for u in await self.redis.smembers(self.keys.blocks(uid))}

    # ---- people waiting for a group (find_group) ----------------------------------------
    async def seek(self, uid: str, profile: dict[str, Any]) -> None:
        k = self.keys
        sec, usec = await self.redis.time()     # in microseconds: people are served in the order they came
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(k.group_seekers, {uid: int(sec) * 1_000_000 + int(usec)}, nx=True)
            pipe.hset(k.group_seeker_profiles, uid, orjson.dumps(profile))
            await pipe.execute()

    async def unseek(self, uid: str) -> bool:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(k.group_seekers, uid)
            pipe.hdel(k.group_seeker_profiles, uid)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def seekers(self) -> list[tuple[str, dict[str, Any]]]:
        """Everyone waiting for a group, longest first, with the profile they wait with."""
        k = self.keys
        uids = [_s(u) for u in await self.redis.zrange(k.group_seekers, 0, -1)]
        if not uids:
            return []
        profiles = await self.redis.hmget(k.group_seeker_profiles, uids)
        return [(u, orjson.loads(p)) for u, p in zip(uids, profiles, strict=True) if p]
