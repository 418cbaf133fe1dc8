"""The matching rules of matcher/profile.py (the specification) and the Lua scripts production runs
(matcher/lua/lib.lua) decide alike, on generated states, on the suite's real Redis.

Each generated case is a set of survivors (profiles, availability, connections, slots, pending
offers, times of last match, cool-downs, daily counts, suspensions, auto-accept) and a patient
(profile, same-diagnosis hold, blocks, current peers, survivors who already declined this
request, suspension).  The state goes into Redis through MatchStore's public methods where they
exist (availability, talk-now) and otherwise by writing what the scripts read under core/keys.py's
names, as the scripts themselves leave it (a live connection, counters and times on the survivor's
record, block/peer/declined sets, the suspension hash).  Then the patient presses talk-now, and the
survivor the scripts offered (or matched) must be the one matcher.profile.best_survivor picks, or
both none; a request left waiting must count the same fitting survivors, open and busy, as
matcher.profile.fitting_counts (what its ``queued`` frame reports).  A second property does the
same for a survivor who frees up and the queue of waiting requests (matcher.profile.offers_for,
lib.lua serve_survivor).  When they differ, the failure lists every survivor with the rules' verdict
and rank key.

One Redis database of its own, flushed between cases; Hypothesis derandomized, no example
database, so the run is the same every time.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from core.errors import ErrorCode, ServiceError
from core.keys import Keys
from core.scripts import control_plane_keys, key_table
from matcher.profile import (
    QUEUE_SCAN,
    Candidate,
    Profile,
    Request,
    best_survivor,
    conversations_today,
    day_of,
    eligible,
    fitting_counts,
    offers_for,
    rank_key,
    suspended_at,
)
from matcher.store import MatcherConfig, MatchStore
from matcher.vocabulary import load_vocabulary

PATIENT_CASES = 2000
SURVIVOR_CASES = 400
DB = 13                              # this test's own database on the suite's redis-server: FLUSHDB is safe
VOCAB = load_vocabulary()
DX = list(VOCAB.diagnoses)[:4]       # small pools, so that profiles overlap often
SE = list(VOCAB.side_effects)[:5]
CAPS = (0, 1, 2, 20)
HOLD_S = 600                         # prefer_same_diagnosis_s of a request that holds out
CROWD = 40                           # survivors ranked first yet not allowed: first_eligible reads past a page


def table(*weighted: tuple[Any, int]) -> list[Any]:
    """Values with integer weights, the first the default: table((a, 5), (b, 1))."""
    return [v for v, w in weighted for _ in range(w)]


class Bits:
    """Fields decoded from one drawn string of bytes, so that a whole survivor costs Hypothesis one
    draw (a case of eight survivors would otherwise take a few hundred, and most of the test's time).
    Each field reads its own byte(s); zero bytes decode to each field's first value, the default, so
    shrinking still leads to a simple case."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, values: list[Any]) -> Any:
        width = 1 if len(values) <= 256 else 2
        raw = int.from_bytes(self.data[self.at:self.at + width], "big")
        self.at += width
        return values[raw % len(values)]


WORD = st.binary(min_size=32, max_size=32)
HALF = table((False, 3), (True, 2))
QUARTER = table((False, 3), (True, 1))           # patients name fewer side effects: more cases reach stage 2
LANG_SETS = table((frozenset(["en"]), 8), (frozenset(["en", "fr"]), 5), (frozenset(["fr"]), 2),
                  (frozenset(["en", "ko"]), 2), (frozenset(["ko"]), 1), (frozenset(["th"]), 1),
                  (frozenset(["ko", "th"]), 1))
AVAILABLE = table((True, 15), (False, 1))
ONLINE = AVAILABLE
MAX_CHATS = table((1, 3), (2, 2), (3, 1))
ACTIVE = table((0, 16), (1, 2), (2, 1))
PENDING = table((0, 16), (1, 2))
COOLDOWN = table((None, 14), (-100, 1), (100, 1))                 # seconds from now
DAY = table((None, 4), (0, 3), (-1, 1))                           # never matched, today, yesterday
COUNT = table((0, 3), (1, 3), (2, 1), (20, 1), (25, 1))
SUSPENDED = table((None, 25), (0, 1), (1000, 1), (-1000, 1))      # none, until lifted, for 1000 s, ended
WAIT_SCALE = table((1, 3), (1000, 1), (0, 2))     # last matched seconds apart, far apart, or within ms
RELATIONS = table(("", 20), ("blocked", 1), ("peer", 1), ("declined", 1))
CAP = table((20, 10), (0, 1), (1, 2), (2, 2))
HOLD = table((0, 3), (HOLD_S, 1))
CROWDS = table((0, 15), (CROWD, 1))
PATIENT_IDS = table(("p", 30), ("s0", 1))                         # now and then a survivor asks for a peer
WAITS = list(range(1024))
JITTER = list(range(16))
SIZES = table(*((i, 1) for i in range(3)), *((i, 3) for i in range(3, 9)))    # survivors, or queued requests
REQUEST_STATE = table(("", 10), ("offered", 1), ("away", 1))


def profile_of(b: Bits, se_odds: list[bool] = HALF) -> Profile:
    dx = frozenset(c for c in DX if b.take(HALF))
    se = frozenset(c for c in SE if b.take(se_odds))
    return Profile(dx, se if dx or se else frozenset(SE[:1]), b.take(LANG_SETS))


@dataclass(frozen=True)
class SurvivorState:
    id: str
    profile: Profile
    available: bool = True
    online: bool = True
    max_chats: int = 1
    active: int = 0
    pending: int = 0
    waited_ms: int = 0               # since their last match (unique within a case)
    cooldown: int | None = None      # cool-down end, seconds from now
    day: int | None = None           # the day their daily counter counts for, relative to today
    count: int = 0                   # the daily counter
    suspended: int | None = None     # None: never; 0: until lifted; else the end, seconds from now
    auto_accept: bool = False


def survivor_of(sid: str, b: Bits) -> SurvivorState:
    day = b.take(DAY)
    return SurvivorState(
        id=sid, profile=profile_of(b), available=b.take(AVAILABLE), online=b.take(ONLINE),
        max_chats=b.take(MAX_CHATS), active=b.take(ACTIVE), pending=b.take(PENDING),
        waited_ms=b.take(WAITS) * b.take(WAIT_SCALE) * 16 + b.take(JITTER),
        cooldown=b.take(COOLDOWN), day=day, count=0 if day is None else b.take(COUNT),
        suspended=b.take(SUSPENDED), auto_accept=b.take(HALF))


@dataclass(frozen=True)
class PatientCase:
    survivors: list[SurvivorState]
    relation: dict[str, str]         # survivor id -> "", "blocked", "peer" or "declined"
    crowd: int                       # extra survivors, ranked first, each blocked, a peer or declined
    patient_id: str
    profile: Profile
    hold: int
    suspended: int | None
    cap: int


@st.composite
def patient_cases(draw: st.DrawFn) -> PatientCase:
    n = draw(st.sampled_from(SIZES))
    words = [Bits(w) for w in draw(st.lists(WORD, min_size=n, max_size=n))]
    survivors, waits = [], set()
    for i, bits in enumerate(words):
        sv = survivor_of(f"s{i}", bits)
        while sv.waited_ms in waits:             # times of last match are distinct (see matcher.profile)
            sv = replace(sv, waited_ms=sv.waited_ms + 1)
        waits.add(sv.waited_ms)
        survivors.append(sv)
    b = Bits(draw(WORD))
    return PatientCase(
        survivors=survivors, relation={s.id: words[i].take(RELATIONS) for i, s in enumerate(survivors)},
        profile=profile_of(b, QUARTER), hold=b.take(HOLD), suspended=b.take(SUSPENDED), cap=b.take(CAP),
        crowd=b.take(CROWDS), patient_id=b.take(PATIENT_IDS))


@dataclass
class Tally:
    cases: int = 0
    picked: int = 0
    nobody: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def count(self, *kinds: str) -> None:
        for kind in kinds:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1


class Lab:
    """One event loop, one client on this test's database, a MatchStore per daily cap.

    A case costs a handful of round trips whatever its size: direct writes go in one pipeline,
    the survivors' availability calls run concurrently (no request is waiting yet, so their
    order does not matter)."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/{DB}", decode_responses=True)
        self.keys = Keys("eq")
        self.stores = {cap: MatchStore(self.redis, self.keys, MatcherConfig(daily_cap=cap,
                                                                            offers_per_patient_hour=10**6))
                       for cap in CAPS}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    async def fresh(self) -> float:
        """Empty the database; the server's time now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.flushdb()
            pipe.time()
            _, (sec, usec) = await pipe.execute()
        return sec + usec / 1e6

    async def settle(self, now: float) -> None:
        """Reject a case that straddled midnight (UTC) or took long enough to cross a time it set."""
        sec, usec = await self.redis.time()
        later = sec + usec / 1e6
        if day_of(later) != day_of(now) or later - now > 50:
            reject()

    def write_survivor(self, pipe: Any, sv: SurvivorState, now: float) -> Candidate:
        """Queue the state earlier scripts would have left for one survivor (connection, counters and
        times on their record, suspension); return the survivor as the rules see them."""
        k = self.keys
        last = (round(now * 1000) - sv.waited_ms) / 1000
        if sv.online:                                   # what presence.lua records for a connection
            pipe.sadd(k.user_conns(sv.id), "c1")
            pipe.zadd(k.presence, {f"{sv.id}|c1": now + 600})
        record: dict[str, Any] = {"act": sv.active, "pend": sv.pending, "last": repr(last), "to": 0, "idx": "0"}
        if sv.cooldown is not None:
            record["cool"] = repr(now + sv.cooldown)
        if sv.day is not None:
            record["day"] = day_of(now) + sv.day
            record["today"] = sv.count
        pipe.hset(k.survivor(sv.id), mapping=record)
        until = self.until(sv.suspended, now)
        if until is not None:
            pipe.hset(k.suspended, sv.id, repr(until))
        return Candidate(
            id=sv.id, profile=sv.profile, available=sv.available, online=sv.online, max_chats=sv.max_chats,
            active=sv.active, pending=sv.pending, last_match=last,
            cooldown_until=0.0 if sv.cooldown is None else now + sv.cooldown,
            today=conversations_today(None if sv.day is None else day_of(now) + sv.day, sv.count, now),
            suspended=suspended_at(until, now), auto_accept=sv.auto_accept)

    @staticmethod
    def until(suspended: int | None, now: float) -> float | None:
        return None if suspended is None else (0.0 if suspended == 0 else now + suspended)

    async def available(self, store: MatchStore, sv: SurvivorState, cand: Candidate) -> list[Any]:
        """The survivor says available (or not) with their profile: availability.lua indexes them."""
        try:
            return (await store.set_availability(sv.id, sv.id, available=sv.available, profile=sv.profile,
                                                 max_chats=sv.max_chats, auto_accept=sv.auto_accept))[1]
        except ServiceError as exc:                     # asking to be available while suspended
            assert exc.code == ErrorCode.SUSPENDED and sv.available and cand.suspended, exc
            return []

    def relate(self, pipe: Any, pid: str, sid: str, relation: str) -> None:
        k = self.keys
        if relation == "blocked":                       # as end.lua records a block: both ways
            pipe.sadd(k.blocks(pid), sid)
            pipe.sadd(k.blocks(sid), pid)
        elif relation == "peer":                        # as create_conversation records an open one
            pipe.sadd(k.peers(pid), sid)
        elif relation == "declined":                    # as release_offer records a declined offer
            pipe.sadd(k.request_declined(pid), sid)

    async def offered_to(self, pids: list[str]) -> dict[str, str]:
        """patient -> the survivor their request's pending offer went to (requests with one)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.hmget(self.keys.request(pid), "state", "offer")
            states = await pipe.execute()
        out = {pid: oid for pid, (state, oid) in zip(pids, states, strict=True) if state == "offered" and oid}
        if not out:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for oid in out.values():
                pipe.hget(self.keys.offer(oid), "survivor")
            owners = await pipe.execute()
        return {pid: sid for pid, sid in zip(out, owners, strict=True) if sid}

    # ---------------------------------------------------------------- the two properties
    async def patient_case(self, case: PatientCase, tally: Tally) -> None:
        store, now = self.stores[case.cap], await self.fresh()
        pid = case.patient_id
        survivors = list(case.survivors)
        relation = dict(case.relation)
        for i in range(case.crowd):          # the patient's own profile, waited longest: read first, never allowed
            crowd = SurvivorState(f"c{i:02d}", Profile(case.profile.diagnoses, case.profile.side_effects,
                                                       frozenset(["en", *case.profile.languages])),
                                  max_chats=2, waited_ms=10**8 + i)
            survivors.append(crowd)
            relation[crowd.id] = ("blocked", "peer", "declined")[i % 3]
        async with self.redis.pipeline(transaction=False) as pipe:
            pool = [self.write_survivor(pipe, sv, now) for sv in survivors]
            for sid, rel in relation.items():
                self.relate(pipe, pid, sid, rel)
            own = [c for c in pool if c.id == pid]      # a patient who is also a survivor: one suspension
            until = None if own else self.until(case.suspended, now)
            if until is not None:
                pipe.hset(self.keys.suspended, pid, repr(until))
            await pipe.execute()
        await asyncio.gather(*(self.available(store, sv, c) for sv, c in zip(survivors, pool, strict=True)))
        suspended = own[0].suspended if own else suspended_at(until, now)
        req = Request(patient_id=pid, profile=case.profile, strict_until=now + case.hold if case.hold else 0.0,
                      blocked=frozenset(s for s, r in relation.items() if r == "blocked"),
                      current_peers=frozenset(s for s, r in relation.items() if r == "peer"),
                      declined=frozenset(s for s, r in relation.items() if r == "declined"),
                      suspended=suspended)

        lua: str | None = None
        created: list[Any] = []
        try:
            out, created = await store.talk_now(pid, "Pat", case.profile, prefer_same_diagnosis_s=case.hold)
        except ServiceError as exc:
            assert exc.code == ErrorCode.SUSPENDED and suspended, exc
        else:
            lua = created[0].survivor if created else (await self.offered_to([pid])).get(pid)
            assert (lua is None) == (out["state"] == "waiting"), out
        await self.settle(now)

        python = best_survivor(req, pool, now=now, daily_cap=case.cap)
        expected = python.id if python else None
        if lua != expected:
            lines = [f"{c.id}: eligible={eligible(req, c, now=now, daily_cap=case.cap)} rank={rank_key(req, c)} {c}"
                     for c in pool]
            pytest.fail(f"the Lua offered {lua!r}, the rules pick {expected!r}\n{req}\ncap={case.cap}\n"
                        + "\n".join(lines))
        if lua is None and not suspended:        # still waiting: who fits it now (honest waits, issue 14)
            (raw,) = await store.wait_inputs([pid])
            assert raw is not None
            counted = (raw["fitting_available"], raw["wait"]["busy"])
            rules = fitting_counts(req, pool, now=now, daily_cap=case.cap)
            if counted != rules:
                pytest.fail(f"the Lua counts (open, busy) {counted}, the rules {rules}\n{req}\ncap={case.cap}\n"
                            + "\n".join(str(c) for c in pool))
            tally.count("fitting counted")
        tally.cases += 1
        tally.picked += expected is not None
        tally.nobody += expected is None
        shares_dx = bool(python and python.profile.diagnoses & case.profile.diagnoses)
        tally.count(*(kind for kind, yes in (
            ("held", bool(case.hold)), ("3+ diagnoses", len(case.profile.diagnoses) > 2), ("crowd", bool(case.crowd)),
            ("auto-accepted", bool(created)), ("patient suspended", suspended),
            ("picked with a shared diagnosis", shares_dx),
            ("picked on side effects alone", bool(python) and not shares_dx),
        ) if yes))

    async def survivor_case(self, case: SurvivorCase, tally: Tally) -> None:
        store, now = self.stores[case.cap], await self.fresh()
        sid = case.survivor.id
        pids = [f"p{i}" for i in range(len(case.patients))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid, p in zip(pids, case.patients, strict=True):
                self.relate(pipe, pid, sid, p.relation)
                until = self.until(p.suspended, now)
                if until is not None:
                    pipe.hset(self.keys.suspended, pid, repr(until))
            await pipe.execute()
        queue: list[Request] = []
        for pid, p in zip(pids, case.patients, strict=True):         # one after the other: the queue's order
            suspended = suspended_at(self.until(p.suspended, now), now)
            try:
                await store.talk_now(pid, pid, p.profile, prefer_same_diagnosis_s=p.hold)
            except ServiceError as exc:
                assert exc.code == ErrorCode.SUSPENDED and suspended, exc
            queue.append(Request(
                patient_id=pid, profile=p.profile, strict_until=now + p.hold if p.hold else 0.0,
                blocked=frozenset([sid] if p.relation == "blocked" else []),
                current_peers=frozenset([sid] if p.relation == "peer" else []),
                declined=frozenset([sid] if p.relation == "declined" else []),
                suspended=suspended, offered=p.state == "offered", away=p.state == "away"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid, p in zip(pids, case.patients, strict=True):
                if p.state == "offered":                # waits on an offer to someone else
                    pipe.hset(self.keys.request(pid), mapping={"state": "offered", "offer": "o-elsewhere"})
                elif p.state == "away":                 # lost their connections, inside the grace period
                    pipe.hset(self.keys.request(pid), "away", repr(now - 5))
                    pipe.zadd(self.keys.away, {pid: now - 5})
            cand = self.write_survivor(pipe, case.survivor, now)
            await pipe.execute()
        created = await self.available(store, case.survivor, cand)       # says available: serve_survivor
        lua = [pid for pid, owner in (await self.offered_to(pids)).items() if owner == sid]
        lua += [c.patient for c in created]
        await self.settle(now)

        expected = [r.patient_id for r in offers_for(cand, queue, now=now, daily_cap=case.cap)]
        if sorted(lua) != expected:
            pytest.fail(f"the Lua offered {sid} to {sorted(lua)}, the rules to {expected}\n{cand}\ncap={case.cap}\n"
                        + "\n".join(map(str, queue)))
        tally.cases += 1
        tally.picked += bool(expected)
        tally.nobody += not expected
        tally.count(f"{len(expected)} offered", *(["auto-accepted"] if created else []))

    @property
    def store_any(self) -> MatchStore:
        return self.stores[CAPS[-1]]


@dataclass(frozen=True)
class WaitingPatient:
    profile: Profile
    hold: int
    relation: str
    state: str                       # "", "offered" (an offer to someone else is out) or "away"
    suspended: int | None


@dataclass(frozen=True)
class SurvivorCase:
    survivor: SurvivorState
    patients: list[WaitingPatient]
    cap: int


@st.composite
def survivor_cases(draw: st.DrawFn) -> SurvivorCase:
    b = Bits(draw(WORD))
    survivor = replace(survivor_of("s", b), online=True, available=True)
    patients = []
    n = draw(st.sampled_from(SIZES))
    for word in draw(st.lists(WORD, min_size=n, max_size=n)):
        p = Bits(word)
        patients.append(WaitingPatient(profile=profile_of(p), hold=p.take(HOLD), relation=p.take(RELATIONS),
                                       state=p.take(REQUEST_STATE), suspended=p.take(SUSPENDED)))
    return SurvivorCase(survivor, patients, b.take(CAP))


@pytest.fixture(scope="module")
def lab(redis_server):
    lab = Lab(redis_server.port)
    yield lab
    lab.run(lab.redis.flushdb())
    lab.close()


def test_the_lua_offers_a_new_request_the_survivor_the_rules_pick(lab):
    tally = Tally()
    started = time.monotonic()

    @settings(max_examples=PATIENT_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(patient_cases())
    def check(case: PatientCase) -> None:
        lab.run(lab.patient_case(case, tally))

    check()
    print(f"\n{tally.cases} patient cases in {time.monotonic() - started:.1f}s: {tally.picked} matched, "
          f"{tally.nobody} nobody; {dict(sorted(tally.kinds.items()))}")
    assert tally.cases >= PATIENT_CASES
    assert tally.picked > PATIENT_CASES // 4 and tally.nobody > PATIENT_CASES // 10
    assert all(tally.kinds.get(kind, 0) >= 20 for kind in (
        "held", "3+ diagnoses", "crowd", "auto-accepted", "patient suspended",
        "picked with a shared diagnosis", "picked on side effects alone", "fitting counted")), tally.kinds


def test_a_survivor_who_frees_up_is_offered_to_the_requests_the_rules_pick(lab):
    tally = Tally()
    started = time.monotonic()

    @settings(max_examples=SURVIVOR_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(survivor_cases())
    def check(case: SurvivorCase) -> None:
        lab.run(lab.survivor_case(case, tally))

    check()
    print(f"\n{tally.cases} survivor cases in {time.monotonic() - started:.1f}s: {tally.picked} offered, "
          f"{tally.nobody} nobody; {dict(sorted(tally.kinds.items()))}")
    assert tally.cases >= SURVIVOR_CASES
    assert tally.picked > SURVIVOR_CASES // 4 and tally.kinds.get("2 offered", 0) >= 10, tally.kinds


def test_a_survivor_who_frees_up_looks_past_requests_out_of_reach(lab):
    """lib.lua serve_survivor reads the oldest QUEUE_SCAN requests in the survivor's reach (the request
    index: a shared topic and language), so QUEUE_SCAN requests in another language ahead in the queue
    do not hide the two behind them; the rules say the same."""
    far = Profile(frozenset(["breast"]), frozenset(), frozenset(["th"]))
    near = Profile(frozenset(["breast"]), frozenset(), frozenset(["en"]))
    survivor = SurvivorState("s", near, max_chats=3)

    async def scenario() -> tuple[list[str], list[str]]:
        store, now = lab.store_any, await lab.fresh()
        queue = []
        for i in range(QUEUE_SCAN + 1):          # everyone before the last two speaks another language
            prof = near if i >= QUEUE_SCAN - 1 else far
            await store.talk_now(f"p{i:03d}", "P", prof)
            queue.append(Request(patient_id=f"p{i:03d}", profile=prof))
        async with lab.redis.pipeline(transaction=False) as pipe:
            cand = lab.write_survivor(pipe, survivor, now)
            await pipe.execute()
        await lab.available(store, survivor, cand)
        offered = await lab.offered_to([r.patient_id for r in queue[-2:]])
        return sorted(offered), [r.patient_id for r in offers_for(cand, queue, now=now, daily_cap=CAPS[-1])]

    lua, python = lab.run(scenario())
    assert python == [f"p{QUEUE_SCAN - 1:03d}", f"p{QUEUE_SCAN:03d}"]
    assert lua == python


def test_a_survivor_capped_for_the_day_is_looked_at_again_at_midnight(lab):
    """The rules count a daily cap per UTC day, so a capped survivor is eligible again the next day,
    even if nothing happens to them in between: the scripts must look at them again at midnight."""
    survivor = SurvivorState("s", Profile(frozenset(["breast"]), frozenset(), frozenset(["en"])), max_chats=3,
                             auto_accept=True)
    store = MatchStore(lab.redis, lab.keys, MatcherConfig(daily_cap=1, cooldown_s=5))

    async def scenario() -> None:
        now = await lab.fresh()
        midnight = (day_of(now) + 1) * 86400
        if midnight - now < 30:
            pytest.skip("too close to midnight UTC")
        async with lab.redis.pipeline(transaction=False) as pipe:
            lab.write_survivor(pipe, survivor, now)
            await pipe.execute()
        await store.set_availability("s", "s", available=True, profile=survivor.profile, max_chats=3,
                                     auto_accept=True)
        _, created = await store.talk_now("p1", "P", survivor.profile)
        assert [c.survivor for c in created] == ["s"]
        assert await lab.redis.zscore(lab.keys.cooldowns, "s") == midnight        # capped: look again then
        await store.end(created[0].id, "p1", "patient")                          # a 5 s cool-down ends sooner
        assert await lab.redis.zscore(lab.keys.cooldowns, "s") == midnight
        _, created = await store.talk_now("p2", "P", survivor.profile)
        assert created == []                                                      # capped for today

        # midnight passes: the counter is yesterday's, the cool-down is over, the wake-up is due
        await lab.redis.hset(lab.keys.survivor("s"), mapping={"day": day_of(now) - 1, "cool": repr(now - 1)})
        await lab.redis.zadd(lab.keys.cooldowns, {"s": now - 1})
        sv = await lab.redis.hgetall(lab.keys.survivor("s"))
        cand = Candidate("s", survivor.profile, max_chats=3, active=int(sv["act"]), pending=int(sv["pend"]),
                         cooldown_until=float(sv["cool"]),
                         today=conversations_today(int(sv["day"]), int(sv["today"]), now))
        assert eligible(Request("p2", survivor.profile), cand, now=now, daily_cap=1)
        _, created = await store.tick()
        assert [(c.patient, c.survivor) for c in created] == [("p2", "s")]

    lab.run(scenario())


def test_the_scripts_key_table_names_every_key_as_core_keys_does(lab):
    """KEY (generated by core/scripts.py) run by Redis's Lua gives exactly core/keys.py's names."""
    names = control_plane_keys()
    calls = [f"KEY.{n}({', '.join(repr(f'a{i}') for i in range(len(p)))})" if p else f"KEY.{n}"
             for n, p in names.items()]
    script = key_table() + "return {" + ", ".join(calls) + "}"
    got = lab.run(lab.redis.eval(script, 1, lab.keys.stats, lab.keys.ctl))
    want = [getattr(lab.keys, n)(*(f"a{i}" for i in range(len(p)))) if p else getattr(lab.keys, n)
            for n, p in names.items()]
    assert got == want
