"""Redis adapter of the matcher: availability, talk-now queue, offers and matches.

Guarantee: every state change here is ONE Lua script on the control-plane
slot, so any number of gateway processes may call these methods at once and
no survivor ever holds more conversations plus pending offers than their
``max_chats``, and no request is matched twice.  Frames for users (offer,
queued, matched, ended, ...) are published by the same script that changed
the state, so a gateway dying right after a script cannot lose them for
connections held elsewhere.  Scripts refuse with domain errors (ServiceError).
Conversations a call created are returned, so the caller can open their
chat logs (another slot) right away; the chat layer also opens them lazily.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from core.keys import Keys
from core.scripts import ScriptSet
from matcher.estimate import public_queued
from matcher.profile import Profile

SCRIPTS = ("availability.lua", "request.lua", "cancel.lua", "respond.lua", "presence.lua",
           "tick.lua", "end.lua", "suspend.lua", "forget.lua", "widen.lua", "later.lua", "again.lua",
           "contact.lua", "wait.lua")


def _iat(issued_at: float | None) -> str:
    return "" if issued_at is None else repr(float(issued_at))


@dataclass(frozen=True, slots=True)
class Created:
    """A conversation a matcher call created."""

    id: str
    epoch: str
    patient: str
    patient_name: str
    survivor: str
    survivor_name: str
    wait_s: float


@dataclass(frozen=True)
class MatcherConfig:
    offer_timeout_s: float = 30.0
    grace_s: float = 60.0
    cooldown_s: float = 0.0
    daily_cap: int = 20
    offers_per_patient_hour: int = 30
    presence_ttl_s: float = 15.0
    ewma_default_s: float = 60.0
    rejoin_window_s: float = 5.0     # a talk-now this soon after a match joins it (request.lua)
    free_half_life_s: float = 3600.0  # how fast the measured rate of survivors becoming free forgets


class MatchStore:
    def __init__(self, redis: Any, keys: Keys, config: MatcherConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self._scripts = ScriptSet(redis, "matcher", SCRIPTS)
        self._cfg_json = orjson.dumps({
            "offer_timeout_s": config.offer_timeout_s, "grace_s": config.grace_s,
            "cooldown_s": config.cooldown_s, "daily_cap": config.daily_cap,
            "ewma_default_s": config.ewma_default_s, "rejoin_window_s": config.rejoin_window_s,
            "free_half_life_s": config.free_half_life_s,
        }).decode()
        self._channel_stem = keys.user_channel("")

    async def _run(self, name: str, *args: Any) -> tuple[dict[str, Any], list[Created]]:
        raw = await self._scripts.run(
            name, [self.keys.stats],
            [self.keys.ctl, self._channel_stem, secrets.token_hex(8), self._cfg_json, *args])
        out = orjson.loads(raw)
        created = [Created(**c) for c in out.pop("created", None) or []]
        return out, created

    @staticmethod
    def _lists(profile: Profile) -> tuple[str, str, str]:
        j = profile.as_json()
        return (orjson.dumps(j["diagnoses"]).decode(), orjson.dumps(j["side_effects"]).decode(),
                orjson.dumps(j["languages"]).decode())

    async def set_availability(self, sid: str, name: str, *, available: bool, profile: Profile,
                               max_chats: int, auto_accept: bool,
                               issued_at: float | None = None) -> tuple[dict[str, Any], list[Created]]:
        """``issued_at``: the asking session's token ``iat``; refused (forbidden) if the survivor was erased
        since (a session without one counts as older than any erasure)."""
        return await self._run("availability", sid, name, int(available), max_chats, int(auto_accept),
                               *self._lists(profile), _iat(issued_at))

    async def talk_now(self, pid: str, name: str, profile: Profile, *, prefer_same_diagnosis_s: float = 0,
                       known_conversations: list[str] | None = None,
                       issued_at: float | None = None) -> tuple[dict[str, Any], list[Created]]:
        """``known_conversations``: what the asking connection has been told of (see request.lua);
        ``issued_at``: its token's ``iat``, refused (forbidden) if the patient was erased since."""
        known = "" if known_conversations is None else orjson.dumps(list(known_conversations)).decode()
        return await self._run("request", pid, name, *self._lists(profile), prefer_same_diagnosis_s,
                               self.config.offers_per_patient_hour, known, _iat(issued_at))

    async def cancel(self, pid: str) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("cancel", pid)

    # ---- issue 14: widen, talk later, keep in touch, talk again --------------------------
    async def widen(self, pid: str, profile: Profile, *,
                    prefer_same_diagnosis_s: float = 0) -> tuple[dict[str, Any], list[Created]]:
        """Change the waiting request's profile and hold, keeping its place (widen.lua); not_found without one."""
        return await self._run("widen", pid, *self._lists(profile), prefer_same_diagnosis_s)

    async def talk_later(self, pid: str, name: str, profile: Profile, *, within_s: float, note: str = "",
                         issued_at: float | None = None) -> tuple[dict[str, Any], list[Created]]:
        """Make (or replace) the patient's talk-later request (later.lua); returns request_id, expires_at."""
        return await self._run("later", "create", pid, name, *self._lists(profile), note, within_s,
                               _iat(issued_at), self.config.offers_per_patient_hour)

    async def cancel_later(self, pid: str, request_id: str) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("later", "cancel", pid, request_id)

    async def talk_again(self, pid: str, name: str, contact_id: str, *, later_s: float,
                         issued_at: float | None = None) -> tuple[dict[str, Any], list[Created]]:
        """That survivor only: a live addressed request, or a talk-later one when they are away (again.lua)."""
        return await self._run("again", pid, name, contact_id, self.config.offers_per_patient_hour,
                               _iat(issued_at), later_s)

    async def keep_in_touch(self, uid: str, cid: str) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("contact", "keep", uid, cid)

    async def end_contact(self, uid: str, contact_id: str) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("contact", "end", uid, contact_id)

    async def wait_inputs(self, pids: list[str]) -> list[dict[str, Any] | None]:
        """Each patient's ``queued`` frame as the scripts publish it, with its inputs (``fitting_available``,
        ``wait``: busy survivors, measured rates; lib.lua ``queued_frame``), or None when not queued."""
        if not pids:
            return []
        out, _ = await self._run("wait", orjson.dumps(pids).decode())
        frames = out.get("frames") or []
        if not isinstance(frames, list):
            frames = []
        frames += [""] * (len(pids) - len(frames))
        return [orjson.loads(f) if f else None for f in frames]

    async def queued_frames(self, pids: list[str]) -> list[dict[str, Any] | None]:
        """Each patient's ``queued`` frame as clients get it (matcher.estimate), or None when not queued."""
        return [public_queued(f) if f else None for f in await self.wait_inputs(pids)]

    async def contacts(self, uid: str) -> list[dict[str, Any]]:
        """A user's contacts for the welcome: contact_id, the peer's name and role, and whether the peer is
        available now (a survivor: said available and connected; a patient: connected)."""
        k = self.keys
        kids = sorted(await self.redis.smembers(k.user_contacts(uid)))
        if not kids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for kid in kids:
                pipe.hgetall(k.contact(kid))
            records = await pipe.execute()
        out = []
        for kid, ct in zip(kids, records, strict=True):
            if not ct:
                continue
            peer_role = "survivor" if ct["patient"] == uid else "patient"
            peer = ct[peer_role]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.scard(k.user_conns(peer))
                pipe.hget(k.survivor(peer), "av")
                conns, av = await pipe.execute()
            available = conns > 0 and (peer_role == "patient" or av == "1")
            out.append({"contact_id": kid, "peer": {"name": ct[f"{peer_role}_name"], "role": peer_role},
                        "available": available})
        return out

    async def contact_between(self, pid: str, sid: str) -> bool:
        """Whether a patient and a survivor keep a contact (for moderators watching their conversation)."""
        for kid in await self.redis.smembers(self.keys.user_contacts(pid)):
            if await self.redis.hget(self.keys.contact(kid), "survivor") == sid:
                return True
        return False

    async def later_state(self, uid: str) -> dict[str, Any] | None:
        """The patient's talk-later request for the welcome, or None."""
        lr = await self.redis.hgetall(self.keys.later(uid))
        if not lr:
            return None
        out: dict[str, Any] = {"request_id": lr["id"], "expires_at": float(lr["expires"]),
                               "created": float(lr["created"]), "note": lr.get("note") or None,
                               "profile": {"diagnoses": orjson.loads(lr["dx"]),
                                           "side_effects": orjson.loads(lr["se"]),
                                           "languages": orjson.loads(lr["lang"])}}
        if lr.get("target"):
            out["addressed"] = True
        return out

    async def take_later_expired(self, uid: str) -> str | None:
        """The id of a talk-later request that expired while the patient was away (then forgotten)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self.keys.later_expired, uid)
            pipe.hdel(self.keys.later_expired, uid)
            rid, _ = await pipe.execute()
        return rid

    async def respond(self, sid: str, offer_id: str, accept: bool) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("respond", sid, offer_id, "accept" if accept else "decline")

    async def connected(self, uid: str, conn_id: str) -> list[Created]:
        return (await self._run("presence", "connect", uid, conn_id, self.config.presence_ttl_s))[1]

    async def disconnected(self, uid: str, conn_id: str) -> list[Created]:
        return (await self._run("presence", "disconnect", uid, conn_id, self.config.presence_ttl_s))[1]

    async def refresh_presence(self, members: list[str]) -> list[str]:
        """Extend the lease of this process's live connections ("uid|conn" members); XX: never revive.

        Returns the members whose lease had lapsed and been reaped although the connection lives (this
        process stalled, or Redis was away, for longer than the TTL): the caller registers those again
        with :meth:`connected`, which also puts them back into matching."""
        if not members:
            return []
        t = await self.redis.time()
        expires = t[0] + t[1] / 1e6 + self.config.presence_ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.presence, {m: expires for m in members}, xx=True)
            pipe.zmscore(self.keys.presence, members)
            _, scores = await pipe.execute()
        return [m for m, score in zip(members, scores, strict=True) if score is None]

    async def tick(self, batch: int = 100) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("tick", batch)

    async def end(self, cid: str, uid: str, role: str, *, block: bool = False,
                  reason: str = "") -> tuple[dict[str, Any], list[Created]]:
        return await self._run("end", cid, uid, role, int(block), reason)

    async def suspend(self, uid: str, until: float, reason: str) -> tuple[dict[str, Any], list[Created]]:
        return await self._run("suspend", uid, until, reason)

    async def forget(self, uid: str) -> tuple[dict[str, Any], list[Created]]:
        """Erasure's first step: out of matching for good (request dropped, unindexed, offers withdrawn)."""
        return await self._run("forget", uid)

    # ---- reads (no atomicity needed) -----------------------------------------------
    async def is_suspended(self, uid: str) -> bool:
        raw = await self.redis.hget(self.keys.suspended, uid)
        if raw is None:
            return False
        until = float(raw)
        if until == 0:
            return True
        t = await self.redis.time()
        return until > t[0]

    async def conversation(self, cid: str) -> dict[str, str] | None:
        rec = await self.redis.hgetall(self.keys.conversation(cid))
        return rec or None

    async def user_state(self, uid: str, role: str) -> dict[str, Any]:
        """What a welcome frame reports: open conversations, waiting request, availability."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(k.user_convs(uid))
            pipe.hgetall(k.request(uid))
            pipe.zrank(k.queue, uid)
            pipe.hgetall(k.survivor(uid))
            convs, rq, rank, sv = await pipe.execute()
        state: dict[str, Any] = {"conversations": []}
        if convs:
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid in sorted(convs):
                    pipe.hgetall(k.conversation(cid))
                records = await pipe.execute()
            for cid, cv in zip(sorted(convs), records, strict=True):
                if not cv or cv.get("state") != "open":
                    continue
                peer_role = "survivor" if cv["patient"] == uid else "patient"
                state["conversations"].append({
                    "conversation_id": cid, "epoch": cv["epoch"],
                    "peer": {"name": cv[f"{peer_role}_name"], "role": peer_role},
                    "shared": orjson.loads(cv["shared"]), "created": float(cv["created"]),
                    **({"talk_later": True} if cv.get("later") else {}),
                })
        if rq:
            position = rank + 1 if rank is not None else None
            state["request"] = {"state": rq["state"], "position": position, "estimated_wait_s": None,
                                "fitting_available": 0}
            queued = (await self.queued_frames([uid]))[0] if position else None
            if queued:
                state["request"].update({k: v for k, v in queued.items() if k != "type"})
            if rq.get("target"):
                state["request"]["addressed"] = True
        later = await self.later_state(uid)
        if later:
            state["later"] = later
        contacts = await self.contacts(uid)
        if contacts or role != "moderator":
            state["contacts"] = contacts
        if sv:
            state["availability"] = {
                "available": sv.get("av") == "1", "max_chats": int(sv.get("max", 1)),
                "auto_accept": sv.get("auto") == "1", "active": int(sv.get("act", 0)),
                "pending": int(sv.get("pend", 0)),
                "profile": {"diagnoses": orjson.loads(sv["dx"]), "side_effects": orjson.loads(sv["se"]),
                            "languages": orjson.loads(sv["lang"])},
            }
        return state

    async def queue_positions(self, pids: list[str]) -> list[int | None]:
        if not pids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.zrank(self.keys.queue, pid)
            ranks = await pipe.execute()
        return [r + 1 if r is not None else None for r in ranks]

    async def queue_length(self) -> int:
        return await self.redis.zcard(self.keys.queue)


    async def pending_offers(self, sid: str) -> list[dict[str, Any]]:
        """A survivor's offers still waiting for an answer, as ``offer`` frames (oldest id first)."""
        oids = await self.redis.smembers(self.keys.survivor_offers(sid))
        out = []
        now = await self.server_time()
        for oid in sorted(oids):
            of = await self.redis.hgetall(self.keys.offer(oid))
            if of:
                out.append({"type": "offer", "offer_id": oid, "patient": {"name": of["pname"]},
                            "shared": orjson.loads(of["shared"]),
                            "expires_in_s": max(0, round(float(of["expires"]) - now))})
        for oid in sorted(await self.redis.smembers(self.keys.survivor_later(sid))):
            of = await self.redis.hgetall(self.keys.offer(oid))
            lr = await self.redis.hgetall(self.keys.later(of["patient"])) if of else {}
            if of and lr and lr.get("id") == of.get("later"):
                out.append({"type": "later_offer", "offer_id": oid, "patient": {"name": of["pname"]},
                            "shared": orjson.loads(of["shared"]), "note": lr.get("note") or None,
                            "waiting_since": float(lr["created"])})
        return out

    async def user_conversations(self, uid: str) -> list[str]:
        """Ids of a user's open conversations, sorted."""
        return sorted(await self.redis.smembers(self.keys.user_convs(uid)))

    async def erased_at(self, uid: str) -> float | None:
        """When ``uid`` was erased (the tombstone, Redis clock), or None."""
        raw = await self.redis.hget(self.keys.erasures, uid)
        if raw is None and await self.redis.sismember(self.keys.erased_before_tombstones, uid):
            return float("inf")         # erased by an earlier version, with no time: no token is later
        return None if raw is None else float(raw)

    async def is_erased(self, uid: str, issued_at: float | None = None) -> bool:
        """Whether a session whose token was issued at ``issued_at`` (its ``iat``; None = unknown, as
        old) belongs to an erased user: only a token issued after the erasure starts afresh."""
        at = await self.erased_at(uid)
        return at is not None and (issued_at is None or issued_at <= at)

    async def stats(self) -> dict[str, str]:
        """The matcher's counters and wait average (``keys.stats``), for /metrics."""
        return dict(await self.redis.hgetall(self.keys.stats))

    async def server_time(self) -> int:
        """Redis's clock in whole seconds: the one every gateway agrees on."""
        return int((await self.redis.time())[0])
