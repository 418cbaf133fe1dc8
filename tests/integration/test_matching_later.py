"""Issue 14 through real gateway processes: honest waits, widen, talk-later requests, keeping in touch
and talking again.  Every test drives the protocol as clients do, on two gateways against one Redis;
negative outcomes ("nobody else was offered") are read after a synchronisation point (a frame the
same script published after the state changed)."""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from core.keys import Keys
from support.chat_pair import wait_for
from support.gateway import ROOT, Client, token

BREAST_FI = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["fi"]}
BREAST_EN = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}


def uid(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


class World:
    def __init__(self, gws: list[Any], redis: Any, prefix: str) -> None:
        self.gws, self.redis, self.keys = gws, redis, Keys(prefix)
        self.clients: list[Client] = []

    async def connect(self, role: str, sub: str, name: str | None = None, gw: int = 0) -> Client:
        client = await Client.connect(self.gws[gw % len(self.gws)].ws_url, token(role, sub=sub, name=name or sub))
        self.clients.append(client)
        return client

    async def survivor(self, sub: str, prof: dict = BREAST_EN, *, gw: int = 1, max_chats: int = 1,
                       auto_accept: bool = False, available: bool = True) -> Client:
        c = await self.connect("survivor", sub, gw=gw)
        await c.send({"type": "availability", "available": available, "profile": prof, "max_chats": max_chats,
                      "auto_accept": auto_accept})
        await c.expect("availability")
        return c

    async def set_available(self, c: Client, available: bool) -> None:
        await c.send({"type": "availability", "available": available})
        await c.expect("availability", available=available)

    async def pair(self, patient: Client, survivor: Client, prof: dict = BREAST_EN) -> str:
        await patient.send({"type": "talk_now", "profile": prof})
        offer = await survivor.expect("offer")
        await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
        cid = (await patient.expect("matched"))["conversation_id"]
        await survivor.expect("matched", conversation_id=cid)
        return cid

    async def keep(self, patient: Client, survivor: Client, cid: str) -> str:
        """Both keep in touch: the contact id both were told."""
        for c in (patient, survivor):
            await c.send({"type": "keep_in_touch", "conversation_id": cid})
            await c.expect("keep_in_touch_sent", conversation_id=cid)
        kid = (await patient.expect("contact"))["contact_id"]
        assert (await survivor.expect("contact"))["contact_id"] == kid
        return kid

    async def end(self, a: Client, b: Client, cid: str) -> None:
        await a.send({"type": "end", "conversation_id": cid})
        await a.expect("ended", conversation_id=cid)
        await b.expect("ended", conversation_id=cid)

    async def error(self, c: Client, ref: str) -> dict[str, Any]:
        return await c.expect("error", ref=ref)

    async def close(self) -> None:
        for c in self.clients:
            try:
                await c.close()
            except Exception:
                pass


@pytest.fixture
async def world(gateways, redis, prefix):
    made: list[World] = []

    def make(n: int = 2, **env: Any) -> World:
        w = World(gateways(n, **env), redis, prefix)
        made.append(w)
        return w

    yield make
    for w in made:
        await w.close()


async def eventually(probe, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- honest queued

async def test_nobody_fitting_online_is_said_plainly(world):
    w = world(2)
    await w.survivor("sv-en")                          # online and free, but speaks no Finnish
    pat = await w.connect("patient", uid("pat"))
    await pat.send({"type": "talk_now", "profile": BREAST_FI})
    q = await pat.expect("queued")
    assert q == {"type": "queued", "position": 1, "fitting_available": 0, "estimated_wait_s": None,
                 "reason": "nobody_fits_now"}
    again = await w.connect("patient", pat.welcome["user"]["id"], gw=1)      # the welcome says the same
    req = again.welcome["request"]
    assert req["estimated_wait_s"] is None and req["reason"] == "nobody_fits_now" and req["position"] == 1


async def test_busy_fitting_survivors_give_a_measured_estimate_that_moves_as_matches_happen(world):
    w = world(2)
    s1 = await w.survivor("s1", auto_accept=True)
    s2 = await w.survivor("s2", auto_accept=True, gw=0)
    p1, p2 = await w.connect("patient", "p1"), await w.connect("patient", "p2", gw=1)
    cids = {}
    for p in (p1, p2):
        await p.send({"type": "talk_now", "profile": BREAST_EN})
        cids[p] = (await p.expect("matched"))["conversation_id"]
    p3, p4 = await w.connect("patient", "p3"), await w.connect("patient", "p4", gw=1)
    await p3.send({"type": "talk_now", "profile": BREAST_EN})
    q3 = await p3.expect("queued")
    await p4.send({"type": "talk_now", "profile": BREAST_EN})
    q4 = await p4.expect("queued")
    # both fitting survivors are busy: nobody available, but an estimate measured from how fast they freed up
    # (2 became free in the last minute: 1 / (2 per 60 s) = 30 s for the first in line)
    assert (q3["position"], q3["fitting_available"], q3["estimated_wait_s"]) == (1, 0, 30)
    assert (q4["position"], q4["fitting_available"], q4["estimated_wait_s"]) == (2, 0, 60)
    assert "reason" not in q3
    # s1's conversation ends: a third survivor-became-free event, s1 takes p3, p4 moves up with a new estimate
    s1_patient = p1 if (await w.redis.hget(w.keys.conversation(cids[p1]), "survivor")) == "s1" else p2
    await s1_patient.send({"type": "end", "conversation_id": cids[s1_patient]})
    await p3.expect("matched")
    q4b = await p4.expect("queued", timeout=5)
    assert (q4b["position"], q4b["fitting_available"], q4b["estimated_wait_s"]) == (1, 0, 20)
    assert s1.of_type("error") == [] and s2.of_type("error") == []


# ---------------------------------------------------------------- widen

async def test_widen_keeps_the_place_in_line_with_ten_patients_waiting(world):
    w = world(2)
    pats = []
    for i in range(10):
        p = await w.connect("patient", f"line{i}", gw=i)
        await p.send({"type": "talk_now", "profile": BREAST_FI, "prefer_same_diagnosis_s": 600})
        assert (await p.expect("queued"))["position"] == i + 1
        pats.append(p)
    before = await w.redis.zrange(w.keys.queue, 0, -1)
    fifth = pats[4]
    wider = {"diagnoses": ["breast"], "side_effects": ["fatigue", "neuropathy"], "languages": ["fi", "en"]}
    await fifth.send({"type": "widen", "profile": wider, "prefer_same_diagnosis_s": 0})
    q = await fifth.expect("queued")
    assert q["position"] == 5 and q["reason"] == "nobody_fits_now"
    assert await w.redis.zrange(w.keys.queue, 0, -1) == before          # nobody moved
    assert await w.redis.zscore(w.keys.ready_lang("en"), "line4") is not None   # re-indexed under English
    assert await w.redis.zscore(w.keys.ready_se("neuropathy"), "line4") is not None
    # an English-speaking survivor who shares only a side effect: only the widened request fits
    sam = await w.survivor("sam", {"diagnoses": ["lung"], "side_effects": ["neuropathy"], "languages": ["en"]})
    offer = await sam.expect("offer")
    assert offer["patient"] == {"name": "line4"}
    for other in (pats[0], pats[9]):
        assert other.of_type("error") == []
    # widening without a request, or as a survivor
    nobody = await w.connect("patient", uid("pat"))
    await nobody.send({"type": "widen", "profile": wider})
    assert (await w.error(nobody, "widen"))["code"] == "not_found"
    await sam.send({"type": "widen", "profile": wider})
    assert (await w.error(sam, "widen"))["code"] == "forbidden"


# ---------------------------------------------------------------- talk later

async def test_a_talk_later_request_outlives_the_grace_period_and_is_found_after_accept(world):
    w = world(2, AFTERTALK_GRACE_PERIOD_S="1")
    pid = uid("pat")
    pat = await w.connect("patient", pid, "Pat")
    await pat.send({"type": "talk_later", "profile": BREAST_FI, "within_h": 24, "note": "Evenings suit me best."})
    later = await pat.expect("later")
    assert later["request_id"] and later["expires_at"] > time.time() + 23 * 3600
    await pat.close()
    await asyncio.sleep(2.5)                                   # well past the 1 s grace period and a tick
    assert await w.redis.exists(w.keys.later(pid))
    sam = await w.survivor("sam-fi", {"diagnoses": ["breast"], "side_effects": [], "languages": ["fi", "sv"]},
                           available=False)
    await w.set_available(sam, True)                           # switches available later
    card = await sam.expect("later_offer")
    assert card["patient"] == {"name": "Pat"} and card["note"] == "Evenings suit me best."
    assert card["shared"] == {"diagnoses": ["breast"], "side_effects": []}
    assert card["waiting_since"] <= time.time()
    await sam.send({"type": "accept", "offer_id": card["offer_id"]})
    cid = (await sam.expect("matched"))["conversation_id"]
    await sam.send({"type": "send", "conversation_id": cid, "client_id": "hi", "text": "Hei! I am here."})
    await sam.expect("ack", client_id="hi")
    back = await w.connect("patient", pid, "Pat", gw=1)
    convs = back.welcome["conversations"]
    assert [c["conversation_id"] for c in convs] == [cid]
    assert convs[0]["last_seq"] == 1 and convs[0]["talk_later"] is True
    assert "later" not in back.welcome                           # the request was consumed
    await back.send({"type": "history", "conversation_id": cid})
    hist = await back.expect("history")
    assert [m["text"] for m in hist["messages"]] == ["Hei! I am here."]
    assert not await w.redis.exists(w.keys.later(pid))


async def test_talk_later_expiry_and_cancel(world):
    w = world(2)
    sam = await w.survivor("sam")
    a, b = uid("pat"), uid("pat")
    pa = await w.connect("patient", a)
    await pa.send({"type": "talk_later", "profile": BREAST_EN, "within_h": 1})
    rid = (await pa.expect("later"))["request_id"]
    card = await sam.expect("later_offer")                     # sam is free: offered at once, as a card
    pb = await w.connect("patient", b, gw=1)
    await pb.send({"type": "talk_later", "profile": BREAST_FI})
    rid_b = (await pb.expect("later"))["request_id"]
    # someone else's request, or one that is not there: not_found alike
    await pb.send({"type": "cancel_later", "request_id": rid})
    theirs = await w.error(pb, "cancel_later")
    await pb.send({"type": "cancel_later", "request_id": "l-never"})
    never = await w.error(pb, "cancel_later")
    assert theirs["code"] == never["code"] == "not_found" and theirs["message"] == never["message"]
    await sam.send({"type": "cancel_later", "request_id": rid})
    assert (await w.error(sam, "cancel_later"))["code"] == "forbidden"
    # cancel: the card is withdrawn
    await pa.send({"type": "cancel_later", "request_id": rid})
    assert (await pa.expect("later_cancelled"))["request_id"] == rid
    assert (await sam.expect("offer_withdrawn"))["offer_id"] == card["offer_id"]
    await sam.send({"type": "accept", "offer_id": card["offer_id"]})
    assert (await w.error(sam, "accept"))["code"] == "not_found"
    # expiry (the deadline is brought forward in Redis: the shortest request lives an hour)
    await w.redis.zadd(w.keys.later_deadlines, {b: 1})
    assert (await pb.expect("later_expired", timeout=5))["request_id"] == rid_b
    # expired while away: told in the next welcome, once
    await pb.send({"type": "talk_later", "profile": BREAST_FI})
    rid_b2 = (await pb.expect("later"))["request_id"]
    await pb.close()
    await eventually(lambda: _no_conns(w, b))
    await w.redis.zadd(w.keys.later_deadlines, {b: 1})
    await eventually(lambda: _gone(w, b))
    back = await w.connect("patient", b)
    assert back.welcome["later_expired"] == {"request_id": rid_b2}
    again = await w.connect("patient", b, gw=1)
    assert "later_expired" not in again.welcome


async def _no_conns(w: World, pid: str) -> bool:
    return await w.redis.scard(w.keys.user_conns(pid)) == 0


async def _gone(w: World, pid: str) -> bool:
    return not await w.redis.exists(w.keys.later(pid))


# ---------------------------------------------------------------- keep in touch, talk again

async def test_keep_in_touch_needs_both_sides(world):
    w = world(2)
    pid, sid = uid("pat"), uid("sur")
    sam = await w.survivor(sid)
    pat = await w.connect("patient", pid, "Pat")
    cid = await w.pair(pat, sam)
    await pat.send({"type": "keep_in_touch", "conversation_id": cid})
    await pat.expect("keep_in_touch_sent")
    await w.end(pat, sam, cid)
    assert pat.of_type("contact") == [] and sam.of_type("contact") == []
    assert await w.redis.scard(w.keys.user_contacts(pid)) == 0
    outsider = await w.connect("survivor", uid("sur"))
    await outsider.send({"type": "keep_in_touch", "conversation_id": cid})
    assert (await w.error(outsider, "keep_in_touch"))["code"] == "forbidden"
    await sam.send({"type": "keep_in_touch", "conversation_id": cid})     # after the end: still possible
    to_pat, to_sam = await pat.expect("contact"), await sam.expect("contact")
    assert to_pat["contact_id"] == to_sam["contact_id"]
    assert to_pat["peer"] == {"name": sid, "role": "survivor"} and to_sam["peer"] == {"name": "Pat", "role": "patient"}
    kid = to_pat["contact_id"]
    assert pid not in kid and sid not in kid
    welcome = (await w.connect("patient", pid, "Pat", gw=1)).welcome
    assert welcome["contacts"] == [{"contact_id": kid, "peer": {"name": sid, "role": "survivor"}, "available": True}]
    await w.set_available(sam, False)
    welcome = (await w.connect("patient", pid, "Pat", gw=1)).welcome
    assert welcome["contacts"][0]["available"] is False
    s_welcome = (await w.connect("survivor", sid, gw=0)).welcome
    assert s_welcome["contacts"] == [{"contact_id": kid, "peer": {"name": "Pat", "role": "patient"},
                                      "available": True}]


async def test_talk_again_offers_only_that_survivor_and_waits_as_talk_later_when_away(world):
    w = world(2)
    pid, sid = uid("pat"), uid("sur")
    sam = await w.survivor(sid)
    pat = await w.connect("patient", pid, "Pat")
    cid = await w.pair(pat, sam)
    kid = await w.keep(pat, sam, cid)
    await w.end(pat, sam, cid)
    await w.set_available(sam, False)
    ann = await w.survivor(uid("sur"), gw=0)                   # fits as well, free, and must not be asked
    await pat.send({"type": "talk_again", "contact_id": kid})
    later = await pat.expect("later")
    assert later["contact_id"] == kid
    assert (await w.redis.hget(w.keys.later(pid), "target")) == sid
    await w.set_available(sam, True)
    card = await sam.expect("later_offer")
    assert card["patient"] == {"name": "Pat"}
    assert ann.of_type("later_offer") == [] and ann.of_type("offer") == []
    await sam.send({"type": "accept", "offer_id": card["offer_id"]})
    cid2 = (await pat.expect("matched"))["conversation_id"]
    await sam.expect("matched", conversation_id=cid2)
    await w.end(sam, pat, cid2)
    # available now: the normal offer flow (an offer with its timeout), to that survivor only
    await pat.send({"type": "talk_again", "contact_id": kid})
    offer = await sam.expect("offer")
    assert offer["patient"] == {"name": "Pat"} and offer["expires_in_s"] == 30
    assert (await w.redis.hget(w.keys.request(pid), "target")) == sid
    assert ann.of_type("offer") == [] and ann.of_type("later_offer") == []
    await sam.send({"type": "decline", "offer_id": offer["offer_id"]})
    assert (await pat.expect("cancelled"))["reason"] == "declined"
    assert ann.of_type("offer") == []
    # a survivor may not ask to talk again
    await sam.send({"type": "talk_again", "contact_id": kid})
    assert (await w.error(sam, "talk_again"))["code"] == "forbidden"


async def test_end_contact_and_block_end_it(world):
    w = world(2)
    pid, sid = uid("pat"), uid("sur")
    sam = await w.survivor(sid)
    pat = await w.connect("patient", pid, "Pat")
    cid = await w.pair(pat, sam)
    kid = await w.keep(pat, sam, cid)
    await w.end(pat, sam, cid)
    stranger = await w.connect("patient", uid("pat"), gw=1)
    await stranger.send({"type": "talk_again", "contact_id": kid})      # never theirs
    never = await w.error(stranger, "talk_again")
    await stranger.send({"type": "end_contact", "contact_id": kid})
    assert (await w.error(stranger, "end_contact"))["code"] == "not_found"
    await sam.send({"type": "end_contact", "contact_id": kid})
    assert (await sam.expect("contact_ended"))["contact_id"] == kid
    await pat.send({"type": "talk_again", "contact_id": kid})           # ended
    ended = await w.error(pat, "talk_again")
    assert never["code"] == ended["code"] == "not_found" and never["message"] == ended["message"]
    assert pat.of_type("contact_ended") == []                            # silently for the other side
    assert (await w.connect("patient", pid, "Pat")).welcome["contacts"] == []
    # a block ends it too
    pid2 = uid("pat")
    pat2 = await w.connect("patient", pid2, "Pia")
    cid2 = await w.pair(pat2, sam)
    kid2 = await w.keep(pat2, sam, cid2)
    await pat2.send({"type": "block", "conversation_id": cid2})
    await pat2.expect("blocked")
    assert not await w.redis.exists(w.keys.contact(kid2))
    assert await w.redis.scard(w.keys.user_contacts(sid)) == 0
    await pat2.send({"type": "talk_again", "contact_id": kid2})
    assert (await w.error(pat2, "talk_again"))["code"] == "not_found"


async def test_erasure_removes_contacts_and_talk_later_requests(world, redis_server):
    w = world(1)
    pid, sid = uid("pat"), uid("sur")
    sam = await w.survivor(sid, gw=0)
    pat = await w.connect("patient", pid, "Pat")
    cid = await w.pair(pat, sam)
    kid = await w.keep(pat, sam, cid)
    await w.end(pat, sam, cid)
    await w.set_available(sam, False)
    await pat.send({"type": "talk_later", "profile": BREAST_EN, "note": "Mornings please"})
    await pat.expect("later")
    k = w.keys
    assert await w.redis.exists(k.later(pid)) and await w.redis.exists(k.contact(kid))
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": k.prefix}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "erase-user", pid, "--redis-url", redis_server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for key in (k.later(pid), k.later_offers(pid), k.later_declined(pid), k.contact(kid), k.user_contacts(pid)):
        assert not await w.redis.exists(key), key
    assert await w.redis.smembers(k.user_contacts(sid)) == set()
    assert await w.redis.zscore(k.later_deadlines, pid) is None
    assert await w.redis.zscore(k.later_dx("breast"), pid) is None
    await w.set_available(sam, True)
    assert (await w.connect("survivor", sid)).welcome["contacts"] == []
    assert sam.of_type("later_offer") == []
    # erasing the survivor: a request another patient addressed to them goes, and that patient is told
    pid2 = uid("pat")
    pia = await w.connect("patient", pid2, "Pia")
    cid2 = await w.pair(pia, sam)
    kid2 = await w.keep(pia, sam, cid2)
    await w.end(pia, sam, cid2)
    await w.set_available(sam, False)
    await pia.send({"type": "talk_again", "contact_id": kid2})
    rid = (await pia.expect("later"))["request_id"]
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "erase-user", sid, "--redis-url", redis_server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    told = await pia.expect("later_cancelled")
    assert told == {"type": "later_cancelled", "request_id": rid, "reason": "unavailable"}
    for key in (k.later(pid2), k.contact(kid2), k.later_for(sid), k.user_contacts(sid), k.survivor_later(sid)):
        assert not await w.redis.exists(key), key
    assert await w.redis.smembers(k.user_contacts(pid2)) == set()
    for code in ("breast", "fatigue"):
        assert await w.redis.sismember(k.avail_dx(code), sid) == 0


# ---------------------------------------------------------------- no double booking

async def test_no_double_booking_with_talk_now_later_and_again_racing_for_one_survivor(world):
    """100 requests for one survivor with one slot: 40 talk-later and 10 talk-again (from patients who
    kept in touch with them; the survivor is away, so they wait as talk-later requests addressed to
    them), then the survivor switches available while 50 talk-now requests arrive at once, so talk-later
    cards and live offers are out together, and accepts everything it is shown, as fast as it can.  It
    ends up in exactly one conversation and never holds more than its slot."""
    w = world(2)
    sid = uid("sur")
    sam = await w.survivor(sid, gw=1)
    contacts: list[tuple[Client, str]] = []
    for i in range(10):
        p = await w.connect("patient", uid("again"), gw=i)
        cid = await w.pair(p, sam)
        contacts.append((p, await w.keep(p, sam, cid)))
        await w.end(p, sam, cid)
    await w.set_available(sam, False)
    nows = [await w.connect("patient", uid("now"), gw=i) for i in range(50)]
    laters = [await w.connect("patient", uid("later"), gw=i) for i in range(40)]
    sam.frames.clear()
    waiting = ([p.send({"type": "talk_later", "profile": BREAST_EN}) for p in laters]
               + [p.send({"type": "talk_again", "contact_id": kid}) for p, kid in contacts])
    random.Random(14).shuffle(waiting)
    await asyncio.gather(*waiting)                # 50 requests wait for sam as talk-later requests
    for p in laters:
        await p.expect("later")
    for p, _ in contacts:
        await p.expect("later")
    live = [p.send({"type": "talk_now", "profile": BREAST_EN}) for p in nows]
    over: list[tuple[int, int, int]] = []

    stop = asyncio.Event()

    async def watch_slot() -> None:
        while not stop.is_set():
            rec = await w.redis.hmget(w.keys.survivor(sid), "act", "pend", "max")
            act, pend, cap = (int(x or 0) for x in rec)
            if act + pend > cap:
                over.append((act, pend, cap))
            await asyncio.sleep(0.002)

    accepted: set[str] = set()

    async def accept_everything(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for f in list(sam.frames):
                if f.get("type") in ("offer", "later_offer") and f["offer_id"] not in accepted:
                    accepted.add(f["offer_id"])
                    await sam.send({"type": "accept", "offer_id": f["offer_id"]})
            await asyncio.sleep(0.002)

    # sam switches on: talk-later cards come out (at most 10 at a time); then, while sam accepts every
    # card and offer it sees, 50 talk-now requests arrive at once (live offers)
    watcher = asyncio.get_running_loop().create_task(watch_slot())
    await sam.send({"type": "availability", "available": True})
    await sam.expect("availability", available=True)
    await wait_for(lambda: len(sam.of_type("later_offer")) >= 10, 5, "ten talk-later cards")
    await asyncio.gather(accept_everything(4.0), *live)
    stop.set()
    await watcher
    assert over == []
    assert len(sam.of_type("matched")) == 1
    assert await w.redis.scard(w.keys.user_convs(sid)) == 1
    rec = await w.redis.hgetall(w.keys.survivor(sid))
    assert (rec["act"], rec["pend"]) == ("1", "0")
    matched_patients = [c for c in nows + laters + [p for p, _ in contacts] if c.of_type("matched")]
    assert len(matched_patients) == 1
    refusals = [f["code"] for f in sam.of_type("error") if f.get("ref") == "accept"]
    assert set(refusals) <= {"not_found", "capacity"}
    assert len(accepted) >= 10                   # it did race: every card (and any offer) accepted, one slot
    assert refusals                              # ... and all but one refused


# ---------------------------------------------------------------- moderators

async def test_moderators_watching_a_flagged_conversation_see_whether_a_contact_exists(world):
    w = world(2)
    sam = await w.survivor(uid("sur"), max_chats=2)
    mod = await w.connect("moderator", uid("mod"), gw=1)
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")
    seen = {}
    for keep in (True, False):
        pat = await w.connect("patient", uid("pat"))
        cid = await w.pair(pat, sam)
        if keep:
            await w.keep(pat, sam, cid)
        await pat.send({"type": "send", "conversation_id": cid, "client_id": "c1", "text": "I want to end my life"})
        await pat.expect("resources")
        await mod.expect("flag", conversation_id=cid)
        await mod.send({"type": "watch", "conversation_id": cid})
        seen[keep] = (await mod.expect("history", conversation_id=cid))["contact"]
    assert seen == {True: True, False: False}
