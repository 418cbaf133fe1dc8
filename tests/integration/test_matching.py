"""Talk-now matching through real gateway processes on a real Redis.

Each test drives the protocol as clients do and checks that the Lua scripts
apply the rules of matcher/profile.py (tested exhaustively in
tests/unit/test_profile_rules.py).  Negative outcomes ("nobody is offered")
are read from Redis after a synchronisation point: a request is matched or
not inside the same script that publishes its ``queued`` frame, so once the
patient has seen ``queued`` the request's state is final until something
else changes.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import websockets

from core.errors import ErrorCode, ServiceError
from core.keys import Keys
from matcher.profile import Profile, parse_profile
from matcher.store import MatcherConfig, MatchStore
from matcher.vocabulary import load_vocabulary
from support.gateway import Client, token

BREAST = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}


def profile(dx=("breast",), se=("fatigue",), lang=("en",)) -> dict[str, list[str]]:
    return {"diagnoses": list(dx), "side_effects": list(se), "languages": list(lang)}


class World:
    """Clients of one test, the test Redis, and the key names under the test's prefix."""

    def __init__(self, gateways: list[Any], redis: Any, prefix: str) -> None:
        self.gws = gateways
        self.redis = redis
        self.keys = Keys(prefix)
        self.clients: list[Client] = []

    async def connect(self, role: str, name: str, gw: int = 0) -> Client:
        client = await Client.connect(self.gws[gw].ws_url, token(role, sub=name, name=name))
        self.clients.append(client)
        return client

    async def survivor(self, name: str, prof: dict = BREAST, *, gw: int = 0, max_chats: int = 1,
                       auto_accept: bool = False) -> Client:
        client = await self.connect("survivor", name, gw)
        await client.send({"type": "availability", "available": True, "profile": prof, "max_chats": max_chats,
                           "auto_accept": auto_accept})
        echo = await client.expect("availability")
        assert echo["available"] is True and echo["max_chats"] == max_chats
        return client

    async def patient(self, name: str, prof: dict = BREAST, *, gw: int = 0, queued: bool = True,
                      **extra: Any) -> Client:
        """Connect and press talk-now; with ``queued`` wait for the queued frame (the sync point)."""
        client = await self.connect("patient", name, gw)
        await client.send({"type": "talk_now", "profile": prof, **extra})
        if queued:
            await client.expect("queued")
        return client

    async def request_state(self, pid: str) -> str | None:
        return await self.redis.hget(self.keys.request(pid), "state")

    async def is_away(self, pid: str) -> bool:
        """The patient's request is on hold because their last connection went (grace period running)."""
        return float(await self.redis.hget(self.keys.request(pid), "away") or 0) > 0

    async def survivor_record(self, sid: str) -> dict[str, str]:
        return await self.redis.hgetall(self.keys.survivor(sid))

    async def eventually(self, probe, timeout: float = 5.0):
        """Poll an async probe until it is truthy (state that settles after a disconnect)."""
        deadline = time.monotonic() + timeout
        while True:
            value = await probe()
            if value or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for c in self.clients:
            try:
                await c.close()
            except Exception:
                pass


@pytest.fixture
async def world(gateways, redis, prefix):
    """``world(n, **env)``: n gateways with that environment, and a World to drive them."""
    made: list[World] = []

    def make(n: int = 1, **env: Any) -> World:
        w = World(gateways(n, **env), redis, prefix)
        made.append(w)
        return w

    yield make
    for w in made:
        await w.close()


async def accept(survivor: Client, patient: Client, patient_name: str) -> str:
    offer = await survivor.expect("offer")
    assert offer["patient"] == {"name": patient_name}
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    m_s = await survivor.expect("matched")
    m_p = await patient.expect("matched")
    assert m_s["conversation_id"] == m_p["conversation_id"]
    return m_p["conversation_id"]


# ---------------------------------------------------------------- offer and accept

async def test_accept_tells_both_sides_the_same_conversation_across_gateways(world):
    w = world(2)
    sam = await w.survivor("sam", profile(["breast"], ["fatigue", "neuropathy"], ["en", "fr"]), gw=1)
    pat = await w.patient("pat", profile(["breast", "lung"], ["neuropathy", "nausea"], ["fr"]), gw=0)
    offer = await sam.expect("offer")
    assert offer["patient"] == {"name": "pat"}
    assert offer["shared"] == {"diagnoses": ["breast"], "side_effects": ["neuropathy"]}
    assert offer["expires_in_s"] == 30
    assert await w.request_state("pat") == "offered"
    await sam.send({"type": "accept", "offer_id": offer["offer_id"]})
    m_p, m_s = await pat.expect("matched"), await sam.expect("matched")
    assert m_p["conversation_id"] == m_s["conversation_id"]
    assert m_p["peer"] == {"name": "sam", "role": "survivor"}
    assert m_s["peer"] == {"name": "pat", "role": "patient"}
    assert m_p["shared"] == m_s["shared"] == {"diagnoses": ["breast"], "side_effects": ["neuropathy"]}
    cv = await w.redis.hgetall(w.keys.conversation(m_p["conversation_id"]))
    assert (cv["patient"], cv["survivor"], cv["state"]) == ("pat", "sam", "open")
    sv = await w.survivor_record("sam")
    assert (sv["act"], sv["pend"]) == ("1", "0")
    assert await w.request_state("pat") is None            # the request is consumed by the match
    # the offer cannot be accepted twice
    await sam.send({"type": "accept", "offer_id": offer["offer_id"]})
    err = await sam.expect("error", ref="accept")
    assert err["code"] == "not_found"


# ---------------------------------------------------------------- eligibility

async def test_no_offer_without_a_shared_topic_or_a_shared_language(world):
    w = world()
    sam = await w.survivor("sam", profile(["breast"], ["fatigue"], ["en"]))
    await w.patient("no-topic", profile(["lung"], ["nausea"], ["en"]))
    await w.patient("no-language", profile(["breast"], ["fatigue"], ["fr"]))
    assert await w.request_state("no-topic") == "waiting"
    assert await w.request_state("no-language") == "waiting"
    assert (await w.survivor_record("sam"))["idx"] == "1"      # sam is free and findable: the pairs are the problem
    # a survivor who does fit is offered the oldest of them at once
    lou = await w.survivor("lou", profile(["lung"], [], ["en"]))
    assert (await lou.expect("offer"))["patient"] == {"name": "no-topic"}
    assert sam.of_type("offer") == []


@pytest.mark.parametrize("blocker", ["patient", "survivor"])
async def test_a_blocked_pair_is_never_matched_again(world, blocker):
    w = world()
    sam = await w.survivor("sam")
    pat = await w.patient("pat")
    cid = await accept(sam, pat, "pat")
    who = pat if blocker == "patient" else sam
    await who.send({"type": "block", "conversation_id": cid})
    assert (await who.expect("blocked"))["conversation_id"] == cid
    ended_p, ended_s = await pat.expect("ended"), await sam.expect("ended")
    assert ended_p["blocked"] is True and ended_s["conversation_id"] == cid
    await pat.send({"type": "talk_now", "profile": BREAST})
    await pat.expect("queued")
    assert await w.request_state("pat") == "waiting"
    sv = await w.survivor_record("sam")
    assert (sv["act"], sv["pend"], sv["idx"]) == ("0", "0", "1")    # free, findable, but not for pat
    # another patient still gets sam, and another survivor still gets pat
    await w.patient("pia")
    assert (await sam.expect("offer"))["patient"] == {"name": "pia"}
    ann = await w.survivor("ann")
    assert (await ann.expect("offer"))["patient"] == {"name": "pat"}


async def test_a_survivor_already_chatting_with_the_patient_is_not_offered_again(world):
    w = world(AFTERTALK_TALK_NOW_REJOIN_S="0")
    sam = await w.survivor("sam", max_chats=2)
    pat = await w.patient("pat")
    await accept(sam, pat, "pat")
    await pat.send({"type": "talk_now", "profile": BREAST})          # a second, separate request
    await pat.expect("queued")
    assert await w.request_state("pat") == "waiting"
    sv = await w.survivor_record("sam")
    assert (sv["act"], sv["max"], sv["idx"]) == ("1", "2", "1")
    pia = await w.patient("pia")
    await accept(sam, pia, "pia")                                       # sam had room, just not for pat
    assert await w.request_state("pat") == "waiting"


async def test_a_suspended_survivor_cannot_match(world):
    w = world()
    sam = await w.survivor("sam")
    store = MatchStore(w.redis, w.keys, MatcherConfig())
    await store.suspend("sam", 0, "test")
    code, _ = await sam.closed()
    assert code == 4403
    await w.patient("pat")
    assert await w.request_state("pat") == "waiting"
    assert (await w.survivor_record("sam"))["idx"] == "0"
    # the suspended survivor cannot come back and be offered anyone
    ws = await websockets.connect(w.gws[0].ws_url)
    await ws.send(f'{{"type":"hello","token":"{token("survivor", sub="sam", name="sam")}"}}')
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4403
    # lifting the suspension (hash entry gone) makes sam findable again
    await w.redis.hdel(w.keys.suspended, "sam")
    sam2 = await w.connect("survivor", "sam")
    await sam2.send({"type": "availability", "available": True})
    assert (await sam2.expect("offer"))["patient"] == {"name": "pat"}


async def test_a_suspended_patient_cannot_match(world):
    w = world()
    pat = await w.patient("pat")
    store = MatchStore(w.redis, w.keys, MatcherConfig())
    await store.suspend("pat", 0, "test")
    assert (await pat.expect("cancelled"))["reason"] == "suspended"
    code, _ = await pat.closed()
    assert code == 4403
    assert await w.request_state("pat") is None
    sam = await w.survivor("sam")
    with pytest.raises(ServiceError) as info:
        await store.talk_now("pat", "pat", _profile_obj(BREAST))
    assert info.value.code == ErrorCode.SUSPENDED
    assert sam.of_type("offer") == [] and await w.request_state("pat") is None


def _profile_obj(raw: dict) -> Profile:
    return parse_profile(raw, load_vocabulary())


# ---------------------------------------------------------------- ranking

async def test_ranking_same_diagnosis_then_more_side_effects_then_decline_moves_on(world):
    w = world()
    patient_profile = profile(["breast"], ["fatigue", "neuropathy", "insomnia"])
    # registered oldest first, so waiting time favours the worst-fitting one
    se3 = await w.survivor("se3", profile(["lung"], ["fatigue", "neuropathy", "insomnia"]))
    dx1 = await w.survivor("dx1", profile(["breast"], ["fatigue"]))
    dx2 = await w.survivor("dx2", profile(["breast"], ["fatigue", "neuropathy"]))
    pat = await w.patient("pat", patient_profile)
    first = await dx2.expect("offer")
    assert first["shared"] == {"diagnoses": ["breast"], "side_effects": ["fatigue", "neuropathy"]}
    await dx2.send({"type": "decline", "offer_id": first["offer_id"]})
    assert (await dx2.expect("declined"))["offer_id"] == first["offer_id"]
    second = await dx1.expect("offer")
    assert second["shared"] == {"diagnoses": ["breast"], "side_effects": ["fatigue"]}
    await dx1.send({"type": "decline", "offer_id": second["offer_id"]})
    third = await se3.expect("offer")
    assert third["shared"]["diagnoses"] == []
    assert sorted(third["shared"]["side_effects"]) == ["fatigue", "insomnia", "neuropathy"]
    await se3.send({"type": "accept", "offer_id": third["offer_id"]})
    assert (await pat.expect("matched"))["peer"] == {"name": "se3", "role": "survivor"}
    # decliners were never offered the patient a second time
    assert dx2.of_type("offer") == [] and dx1.of_type("offer") == []


async def test_equal_fit_goes_to_the_survivor_who_waited_longest_since_their_last_match(world):
    w = world()
    # max_chats 2: each stays findable after a match, so only the wait order decides.  The pauses
    # make the waits distinguishable (the index may treat waits within ~0.1 s as equal).
    survivors = []
    for name in ("s1", "s2", "s3"):
        survivors.append(await w.survivor(name, max_chats=2, auto_accept=True))
        await asyncio.sleep(0.25)
    s1, s2, s3 = survivors
    order = []
    for name in ("p1", "p2", "p3", "p4"):
        p = await w.patient(name, queued=False)
        order.append((await p.expect("matched"))["peer"]["name"])
        await asyncio.sleep(0.25)
    assert order == ["s1", "s2", "s3", "s1"]
    assert [len(s.of_type("matched")) for s in (s1, s2, s3)] == [2, 1, 1]


async def test_same_diagnosis_hold_out_then_side_effect_peers(world):
    w = world()
    se = await w.survivor("se", profile(["lung"], ["fatigue"]))
    await w.patient("long-hold", prefer_same_diagnosis_s=30)
    t0 = time.monotonic()
    await w.patient("short-hold", prefer_same_diagnosis_s=2)
    assert await w.request_state("long-hold") == "waiting"
    assert await w.request_state("short-hold") == "waiting"
    offer = await se.expect("offer", timeout=6)
    waited = time.monotonic() - t0
    assert offer["patient"] == {"name": "short-hold"}          # the older request is still holding out
    assert offer["shared"] == {"diagnoses": [], "side_effects": ["fatigue"]}
    assert waited >= 1.9, waited
    # a same-diagnosis survivor is offered to a holding-out patient at once
    dx = await w.survivor("dx", profile(["breast"], []))
    assert (await dx.expect("offer", timeout=2))["patient"] == {"name": "long-hold"}


async def test_hold_out_needs_a_diagnosis(world):
    w = world()
    pat = await w.connect("patient", "pat")
    await pat.send({"type": "talk_now", "profile": profile([], ["fatigue"]), "prefer_same_diagnosis_s": 5})
    err = await pat.expect("error", ref="talk_now")
    assert err["code"] == "invalid_profile"


async def test_oldest_waiting_patient_first_and_end_frees_the_slot(world):
    w = world()
    p1 = await w.patient("p1")
    p2 = await w.patient("p2")
    p3 = await w.patient("p3")
    state = [await w.request_state(p) for p in ("p1", "p2", "p3")]
    assert state == ["waiting"] * 3
    sam = await w.survivor("sam")
    cid = await accept(sam, p1, "p1")
    # positions move up and are pushed again
    assert (await p2.expect("queued", position=1, timeout=4))["estimated_wait_s"] >= 0
    await p3.expect("queued", position=2, timeout=4)
    await sam.send({"type": "end", "conversation_id": cid})
    assert (await p1.expect("ended"))["conversation_id"] == cid
    await sam.expect("ended")
    await accept(sam, p2, "p2")
    assert (await w.survivor_record("sam"))["act"] == "1"


async def test_queued_positions_from_the_start(world):
    w = world()
    positions = []
    for name in ("a", "b", "c"):
        client = await w.patient(name, queued=False)
        positions.append((await client.expect("queued"))["position"])
    assert positions == [1, 2, 3]


# ---------------------------------------------------------------- offer outcomes

async def test_offer_timeout_moves_the_patient_to_the_next_survivor(world):
    w = world(1, AFTERTALK_OFFER_TIMEOUT_S="1")
    s1 = await w.survivor("s1")
    s2 = await w.survivor("s2")
    pat = await w.patient("pat")
    lapsed = await s1.expect("offer")
    assert lapsed["expires_in_s"] == 1
    expired = await s1.expect("offer_expired", timeout=4)
    assert expired["offer_id"] == lapsed["offer_id"]
    moved = await s2.expect("offer", timeout=2)
    assert moved["patient"] == {"name": "pat"}
    await s1.send({"type": "accept", "offer_id": lapsed["offer_id"]})
    assert (await s1.expect("error", ref="accept"))["code"] == "not_found"
    assert (await w.survivor_record("s1"))["av"] == "1"          # one lapse is forgiven
    await s2.send({"type": "accept", "offer_id": moved["offer_id"]})
    assert (await pat.expect("matched"))["peer"]["name"] == "s2"


async def test_two_lapsed_offers_in_a_row_switch_the_survivor_off(world):
    w = world(1, AFTERTALK_OFFER_TIMEOUT_S="1")
    sam = await w.survivor("sam")
    await w.patient("p1")
    await w.patient("p2")
    first = await sam.expect("offer")
    await sam.expect("offer_expired", offer_id=first["offer_id"], timeout=4)
    second = await sam.expect("offer", timeout=2)
    assert second["patient"] == {"name": "p2"}
    await sam.expect("offer_expired", offer_id=second["offer_id"], timeout=4)
    off = await sam.expect("availability", timeout=2)
    assert off["available"] is False and off["reason"] == "missed_offers"
    sv = await w.survivor_record("sam")
    assert (sv["av"], sv["idx"], sv["pend"]) == ("0", "0", "0")
    await w.patient("p3")
    assert await w.request_state("p3") == "waiting"
    assert [await w.request_state(p) for p in ("p1", "p2")] == ["waiting", "waiting"]
    assert sam.of_type("offer") == []
    # switching back on: offered again, but not the patients whose offers lapsed
    await sam.send({"type": "availability", "available": True})
    assert (await sam.expect("availability"))["available"] is True
    assert (await sam.expect("offer"))["patient"] == {"name": "p3"}


async def test_a_decline_between_lapses_resets_the_streak(world):
    w = world(1, AFTERTALK_OFFER_TIMEOUT_S="1")
    sam = await w.survivor("sam")
    for name in ("p1", "p2", "p3"):
        await w.patient(name)
    first = await sam.expect("offer")
    await sam.expect("offer_expired", offer_id=first["offer_id"], timeout=4)
    second = await sam.expect("offer", timeout=2)
    await sam.send({"type": "decline", "offer_id": second["offer_id"]})
    third = await sam.expect("offer", timeout=2)
    await sam.expect("offer_expired", offer_id=third["offer_id"], timeout=4)
    assert [f for f in sam.of_type("availability") if f.get("available") is False] == []
    assert (await w.survivor_record("sam"))["av"] == "1"


async def test_auto_accept_skips_the_offer(world):
    w = world()
    sam = await w.survivor("sam", auto_accept=True)
    pat = await w.patient("pat", queued=False)
    m_p, m_s = await pat.expect("matched"), await sam.expect("matched")
    assert m_p["conversation_id"] == m_s["conversation_id"]
    assert sam.of_type("offer") == []
    assert int((await w.redis.hget(w.keys.stats, "offers_accepted")) or 0) == 1


async def test_max_chats_two_allows_two_conversations_never_a_third_offer(world):
    w = world()
    sam = await w.survivor("sam", max_chats=2)
    p1 = await w.patient("p1")
    p2 = await w.patient("p2")
    o1, o2 = await sam.expect("offer"), await sam.expect("offer")
    await w.patient("p3")
    sv = await w.survivor_record("sam")
    assert (sv["act"], sv["pend"], sv["idx"]) == ("0", "2", "0")    # pending offers count
    assert await w.request_state("p3") == "waiting"
    for o in (o1, o2):
        await sam.send({"type": "accept", "offer_id": o["offer_id"]})
    c1, c2 = (await p1.expect("matched"))["conversation_id"], (await p2.expect("matched"))["conversation_id"]
    assert c1 != c2
    assert len([await sam.expect("matched") for _ in range(2)]) == 2
    sv = await w.survivor_record("sam")
    assert (sv["act"], sv["pend"]) == ("2", "0")
    assert await w.request_state("p3") == "waiting" and sam.of_type("offer") == []
    await sam.send({"type": "end", "conversation_id": c1})
    assert (await sam.expect("offer"))["patient"] == {"name": "p3"}


async def test_cancel_withdraws_the_pending_offer(world):
    w = world()
    sam = await w.survivor("sam")
    pat = await w.patient("pat")
    offer = await sam.expect("offer")
    await pat.send({"type": "cancel"})
    await pat.expect("cancelled")
    assert (await sam.expect("offer_withdrawn"))["offer_id"] == offer["offer_id"]
    await sam.send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await sam.expect("error", ref="accept"))["code"] == "not_found"
    sv = await w.survivor_record("sam")
    assert (sv["pend"], sv["idx"]) == ("0", "1")
    assert await w.request_state("pat") is None
    assert await w.redis.zcard(w.keys.queue) == 0
    await pat.send({"type": "cancel"})
    assert (await pat.expect("error", ref="cancel"))["code"] == "not_found"
    assert pat.of_type("matched") == []


async def test_cancel_while_waiting(world):
    w = world()
    pat = await w.patient("pat")
    await pat.send({"type": "cancel"})
    await pat.expect("cancelled")
    sam = await w.survivor("sam")
    assert await w.request_state("pat") is None and sam.of_type("offer") == []


# ---------------------------------------------------------------- one request per patient

async def test_second_talk_now_from_another_connection_joins_the_request(world):
    w = world(2)
    tab = await w.connect("patient", "pat", gw=0)
    phone = await w.connect("patient", "pat", gw=1)
    await tab.send({"type": "talk_now", "profile": BREAST})
    assert (await tab.expect("queued"))["position"] == 1
    assert (await phone.expect("queued"))["position"] == 1
    await phone.send({"type": "talk_now", "profile": profile(["lung"], ["nausea"])})
    await phone.expect("queued")
    assert await w.redis.zcard(w.keys.queue) == 1
    assert await w.redis.hget(w.keys.stats, "requests") == "1"
    sam = await w.survivor("sam", gw=1)
    offer = await sam.expect("offer")
    await sam.send({"type": "accept", "offer_id": offer["offer_id"]})
    m_tab, m_phone = await tab.expect("matched"), await phone.expect("matched")
    assert m_tab["conversation_id"] == m_phone["conversation_id"]
    await sam.expect("matched")
    assert sam.of_type("offer") == [] and await w.redis.hget(w.keys.stats, "matches") == "1"


async def test_a_talk_now_racing_a_match_joins_it_instead_of_starting_another(world):
    w = world()
    sam = await w.survivor("sam", max_chats=2, auto_accept=True)
    pat = await w.patient("pat", queued=False)
    cid = (await pat.expect("matched"))["conversation_id"]
    await sam.expect("matched")
    store = MatchStore(w.redis, w.keys, MatcherConfig())
    # a tab that has not heard of the match yet: its press belonged to the request just matched
    with pytest.raises(ServiceError) as info:
        await store.talk_now("pat", "pat", _profile_obj(BREAST), known_conversations=[])
    assert info.value.code == ErrorCode.ALREADY_MATCHED
    assert await w.request_state("pat") is None and await w.redis.hget(w.keys.stats, "requests") == "1"
    # a tab that has been sent it, pressing within the rejoin window: that press crossed the
    # "matched" frame on the wire, so it joins too
    with pytest.raises(ServiceError) as info:
        await store.talk_now("pat", "pat", _profile_obj(BREAST), known_conversations=[cid])
    assert info.value.code == ErrorCode.ALREADY_MATCHED
    # a tab that has seen it, after the window, asks for a second conversation on purpose: a new request
    store = MatchStore(w.redis, w.keys, MatcherConfig(rejoin_window_s=0))
    state, _ = await store.talk_now("pat", "pat", _profile_obj(BREAST), known_conversations=[cid])
    assert state["state"] == "waiting" and state["joined"] is False
    assert sam.of_type("offer") == []           # and never with the survivor they are already talking to


# ---------------------------------------------------------------- presence

async def test_patient_keeps_their_place_within_the_grace_period(world):
    w = world(1, AFTERTALK_GRACE_PERIOD_S="2")
    first = await w.patient("first")
    await w.patient("second")
    await first.close()
    assert await w.eventually(lambda: w.is_away("first"))
    # while away nobody is offered them ...
    sam = await w.survivor("sam")
    assert (await sam.expect("offer"))["patient"] == {"name": "second"}
    # ... and back within the grace period they still hold position 1
    back = await w.connect("patient", "first")
    assert back.welcome["request"]["position"] == 1
    assert back.welcome["request"]["state"] == "waiting"
    ann = await w.survivor("ann")
    assert (await ann.expect("offer"))["patient"] == {"name": "first"}


async def test_patient_request_is_dropped_after_the_grace_period(world):
    w = world(1, AFTERTALK_GRACE_PERIOD_S="1")
    pat = await w.patient("pat")
    t0 = time.monotonic()
    await pat.close()

    async def gone():
        return not await w.redis.exists(w.keys.request("pat"))
    assert await w.eventually(gone, timeout=6)
    assert time.monotonic() - t0 >= 0.9
    back = await w.connect("patient", "pat")
    assert "request" not in back.welcome
    sam = await w.survivor("sam")
    assert await w.redis.zcard(w.keys.queue) == 0 and sam.of_type("offer") == []


async def test_reconnect_resumes_matching_for_a_patient_who_came_back(world):
    w = world(1, AFTERTALK_GRACE_PERIOD_S="30")
    pat = await w.patient("pat")
    await pat.close()
    assert await w.eventually(lambda: w.is_away("pat"))
    sam = await w.survivor("sam")
    assert await w.request_state("pat") == "waiting" and sam.of_type("offer") == []
    back = await w.connect("patient", "pat")
    offer = await sam.expect("offer")
    await sam.send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await back.expect("matched"))["peer"]["name"] == "sam"


async def test_survivor_without_connections_gets_no_offers(world):
    w = world()
    sam = await w.survivor("sam")
    await sam.close()

    async def unindexed():
        return (await w.survivor_record("sam")).get("idx") == "0"
    assert await w.eventually(unindexed)
    await w.patient("pat")
    assert await w.request_state("pat") == "waiting"
    # a pending offer is withdrawn when the survivor's last connection goes
    ann = await w.survivor("ann")
    offer = await ann.expect("offer")
    await ann.close()
    assert await w.eventually(lambda: _state_is(w, "pat", "waiting"))
    assert not await w.redis.exists(w.keys.offer(offer["offer_id"]))
    bob = await w.survivor("bob")
    assert (await bob.expect("offer"))["patient"] == {"name": "pat"}


async def test_a_dropped_connection_is_not_a_decline(world):
    """Issue 11: an offer withdrawn because the survivor's connection died put the survivor on the
    patient's "not again" list, so coming back within the grace period changed nothing."""
    w = world()
    ann = await w.survivor("ann")
    await w.patient("pat")
    offer = await ann.expect("offer")
    await ann.close()
    assert await w.eventually(lambda: _state_is(w, "pat", "waiting"))
    assert not await w.redis.exists(w.keys.offer(offer["offer_id"]))
    assert not await w.redis.sismember(w.keys.request_declined("pat"), "ann")
    back = await w.connect("survivor", "ann")                   # back, still available
    again = await back.expect("offer")
    assert again["patient"] == {"name": "pat"} and again["offer_id"] != offer["offer_id"]


async def _state_is(w: World, pid: str, state: str) -> bool:
    return await w.request_state(pid) == state


async def test_a_survivor_with_another_connection_left_stays_findable(world):
    w = world(2)
    sam = await w.survivor("sam", gw=0)
    other = await w.connect("survivor", "sam", gw=1)
    await sam.close()
    await w.eventually(lambda: _scard_is(w, "sam", 1))
    await w.patient("pat")
    assert (await other.expect("offer"))["patient"] == {"name": "pat"}


async def _scard_is(w: World, uid: str, n: int) -> bool:
    return await w.redis.scard(w.keys.user_conns(uid)) == n


# ---------------------------------------------------------------- availability and welcome

async def test_going_unavailable_does_not_end_an_open_conversation(world):
    w = world()
    sam = await w.survivor("sam")
    pat = await w.patient("pat")
    cid = await accept(sam, pat, "pat")
    await sam.send({"type": "availability", "available": False})
    off = await sam.expect("availability")
    assert off["available"] is False and off["active"] == 1
    assert (await w.redis.hgetall(w.keys.conversation(cid)))["state"] == "open"
    await sam.send({"type": "send", "conversation_id": cid, "client_id": "m1", "text": "still here"})
    assert (await pat.expect("message"))["text"] == "still here"
    assert pat.of_type("ended") == [] and sam.of_type("ended") == []
    again = await w.connect("survivor", "sam")
    assert [c["conversation_id"] for c in again.welcome["conversations"]] == [cid]
    assert again.welcome["availability"]["available"] is False
    await w.patient("pia")
    assert await w.request_state("pia") == "waiting"


async def test_welcome_reports_request_availability_and_conversations(world):
    w = world()
    await w.patient("pat")
    tab = await w.connect("patient", "pat")
    assert tab.welcome["user"] == {"id": "pat", "role": "patient", "name": "pat"}
    assert tab.welcome["request"]["state"] == "waiting" and tab.welcome["request"]["position"] == 1
    assert tab.welcome["conversations"] == []
    prof = profile(["breast"], ["fatigue", "lymphedema"], ["en", "de"])
    sam = await w.survivor("sam", prof, max_chats=2)
    cid = await accept(sam, tab, "pat")
    s2 = await w.connect("survivor", "sam")
    av = s2.welcome["availability"]
    assert av["available"] is True and av["max_chats"] == 2 and av["auto_accept"] is False
    assert av["profile"] == {k: sorted(v) for k, v in prof.items()} and av["active"] == 1
    assert [(c["conversation_id"], c["peer"]) for c in s2.welcome["conversations"]] == [
        (cid, {"name": "pat", "role": "patient"})]
    p2 = await w.connect("patient", "pat")
    assert "request" not in p2.welcome
    assert [(c["conversation_id"], c["peer"]) for c in p2.welcome["conversations"]] == [
        (cid, {"name": "sam", "role": "survivor"})]


async def test_availability_without_profile_reuses_the_stored_one(world):
    w = world()
    sam = await w.connect("survivor", "sam")
    await sam.send({"type": "availability", "available": True})
    assert (await sam.expect("error", ref="availability"))["code"] == "invalid_profile"
    await sam.send({"type": "availability", "available": True, "profile": BREAST, "max_chats": 9})
    assert (await sam.expect("error", ref="availability"))["code"] == "bad_frame"
    await sam.send({"type": "availability", "available": True, "profile": {"diagnoses": ["nope"],
                                                                          "languages": ["en"]}})
    assert (await sam.expect("error", ref="availability"))["code"] == "invalid_profile"


# ---------------------------------------------------------------- volunteer protections

async def test_cooldown_delays_the_next_offer(world):
    w = world(1, AFTERTALK_SURVIVOR_COOLDOWN_S="2")
    sam = await w.survivor("sam")
    p1 = await w.patient("p1")
    cid = await accept(sam, p1, "p1")
    await w.patient("p2")
    await sam.send({"type": "end", "conversation_id": cid})
    await sam.expect("ended")
    t0 = time.monotonic()
    assert await w.request_state("p2") == "waiting"
    offer = await sam.expect("offer", timeout=6)
    assert offer["patient"] == {"name": "p2"}
    assert time.monotonic() - t0 >= 1.8


async def test_daily_cap_stops_offers(world):
    w = world(1, AFTERTALK_SURVIVOR_DAILY_CAP="1")
    sam = await w.survivor("sam")
    p1 = await w.patient("p1")
    cid = await accept(sam, p1, "p1")
    await sam.send({"type": "end", "conversation_id": cid})
    await sam.expect("ended")
    await w.patient("p2")
    assert await w.request_state("p2") == "waiting"
    sv = await w.survivor_record("sam")
    assert (sv["today"], sv["act"], sv["idx"]) == ("1", "0", "0")
