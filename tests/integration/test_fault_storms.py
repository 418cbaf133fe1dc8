"""Gateway crashes against the matcher's bookkeeping, and a reconnect storm after a gateway restart.

* ``kill -9`` of the gateway holding a survivor with a pending offer: nothing but the crash can end
  the offer (the offer timeout is long), so the presence lease (short here) must: the offer is
  withdrawn, the survivor's pending count and slot come back, the patient's request waits again
  (or goes to another survivor), and the survivor can be matched after reconnecting; back before
  the lease lapsed, the survivor can still answer the offer.
* ``kill -9`` of the gateway holding a survivor mid-chat: after the reconnect their slot count still
  equals their open conversations, whether they came back before or after their old lease lapsed.
* ``kill -STOP`` of a gateway past the lease: its live connections are reaped meanwhile, and must
  come back into matching by themselves once it runs again.
* Many clients reconnecting at once to a restarted gateway, each resuming its conversation while the
  peers keep sending: the queue checker (tests/support/checker.py) must find nothing acknowledged
  lost or doubled, every client gets its welcome and its catch-up, and nobody is cut or refused.
  Full size: 1,000 pairs (2,000 clients), so 1,000 reconnect at once; ``AFTERTALK_STORM_PAIRS``
  changes that.  It takes 20-40 s on the 2-core machine, most of it opening the 2,000 sockets.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from core.keys import Keys
from support.chat_pair import PROFILE, Side, messages, metric, wait_for
from support.checker import check
from support.gateway import Client, GatewayProcess, token

PRESENCE_TTL_S = 2.0
CRASH_ENV = {"AFTERTALK_OFFER_TIMEOUT_S": "30", "AFTERTALK_PRESENCE_TTL_S": str(PRESENCE_TTL_S)}
# the lease lapses at most PRESENCE_TTL_S after the crash; a tick (every 0.5 s) then reaps it
REAP_DEADLINE_S = PRESENCE_TTL_S + 2.0


async def available_survivor(ws_url: str, sid: str, *, max_chats: int = 1) -> Client:
    client = await Client.connect(ws_url, token("survivor", sid, sid))
    await client.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": max_chats})
    echo = await client.expect("availability")
    assert echo["available"] is True
    return client


async def waiting_patient(ws_url: str, pid: str) -> Client:
    client = await Client.connect(ws_url, token("patient", pid, pid))
    await client.send({"type": "talk_now", "profile": PROFILE})
    await client.expect("queued")          # the request script has run: matched, offered or waiting
    return client


async def eventually(probe, timeout: float, what: str) -> float:
    """Poll an async probe until truthy; return the seconds it took."""
    t0 = time.monotonic()
    while not await probe():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


class Ledger:
    """The matcher's records of the test's users, read straight from Redis."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)

    async def survivor(self, sid: str) -> dict[str, str]:
        return await self.redis.hgetall(self.keys.survivor(sid))

    async def pending(self, sid: str) -> int:
        return int((await self.survivor(sid)).get("pend", -1))

    async def request(self, pid: str) -> dict[str, str]:
        return await self.redis.hgetall(self.keys.request(pid))

    async def open_conversations(self, uid: str) -> list[str]:
        out = []
        for cid in await self.redis.smembers(self.keys.user_convs(uid)):
            if await self.redis.hget(self.keys.conversation(cid), "state") == "open":
                out.append(cid)
        return out

    async def slots_add_up(self, sid: str) -> bool:
        """A survivor's counters agree with what they really hold: active = open conversations,
        pending = offers outstanding, and never more than max_chats together."""
        sv = await self.survivor(sid)
        offers = await self.redis.smembers(self.keys.survivor_offers(sid))
        active, pending = int(sv["act"]), int(sv["pend"])
        return (active == len(await self.open_conversations(sid)) and pending == len(offers)
                and active + pending <= int(sv["max"]))

    async def offer_gone(self, oid: str) -> bool:
        return (not await self.redis.exists(self.keys.offer(oid))
                and await self.redis.zscore(self.keys.offer_deadlines, oid) is None)


# ---------------------------------------------------------------- kill -9 mid-offer

async def test_kill_9_mid_offer_gives_the_survivor_slot_back_and_the_patient_waits_again(gateways, redis, prefix):
    g_a, g_b = gateways(2, **CRASH_ENV)
    ledger = Ledger(redis, prefix)
    sam = await available_survivor(g_a.ws_url, "sam")
    pat = await waiting_patient(g_b.ws_url, "pat")
    offer = await sam.expect("offer")
    assert await ledger.pending("sam") == 1 and (await ledger.request("pat"))["state"] == "offered"

    g_a.kill()
    await sam.closed()
    took = await eventually(lambda: ledger.offer_gone(offer["offer_id"]), REAP_DEADLINE_S, "the offer withdrawn")
    assert took <= REAP_DEADLINE_S
    sv = await ledger.survivor("sam")
    assert sv["pend"] == "0" and sv["act"] == "0"
    assert sv["idx"] == "0"                                  # no connection: nobody is offered sam
    assert await redis.scard(ledger.keys.user_conns("sam")) == 0
    assert await redis.scard(ledger.keys.survivor_offers("sam")) == 0
    rq = await ledger.request("pat")
    assert rq["state"] == "waiting" and rq["offer"] == "" and float(rq["away"]) == 0   # still in the queue
    assert await redis.zscore(ledger.keys.queue, "pat") is not None
    assert not pat._reader.done() and not pat.of_type("matched")

    # sam comes back on the surviving gateway: no stale offer, the slot accounted once, and matchable
    # again, by pat too: a connection that died is not a decline (issue 11)
    back = await Client.connect(g_b.ws_url, token("survivor", "sam", "sam"))
    assert offer["offer_id"] not in [o["offer_id"] for o in back.welcome["offers"]]
    fresh = back.welcome["offers"][0] if back.welcome["offers"] else await back.expect("offer")
    assert fresh["patient"] == {"name": "pat"}
    assert back.welcome["availability"]["active"] == 0 and await ledger.slots_add_up("sam")
    await back.send({"type": "accept", "offer_id": fresh["offer_id"]})
    cid = (await pat.expect("matched"))["conversation_id"]
    assert (await back.expect("matched"))["conversation_id"] == cid
    assert await ledger.slots_add_up("sam")
    assert (await ledger.survivor("sam"))["act"] == "1"


async def test_kill_9_mid_offer_hands_the_patient_to_another_available_survivor(gateways, redis, prefix):
    g_a, g_b = gateways(2, **CRASH_ENV)
    ledger = Ledger(redis, prefix)
    sam = await available_survivor(g_a.ws_url, "sam")
    pat = await waiting_patient(g_b.ws_url, "pat")
    offer = await sam.expect("offer")
    ann = await available_survivor(g_b.ws_url, "ann")       # available after the offer went to sam: waits
    assert ann.of_type("offer") == [] and (await ledger.survivor("ann"))["idx"] == "1"

    g_a.kill()
    t0 = time.monotonic()
    handed = await ann.expect("offer", timeout=REAP_DEADLINE_S + 1, patient={"name": "pat"})
    assert time.monotonic() - t0 <= REAP_DEADLINE_S
    assert await ledger.offer_gone(offer["offer_id"])
    assert await ledger.pending("sam") == 0 and (await ledger.survivor("sam"))["idx"] == "0"
    await ann.send({"type": "accept", "offer_id": handed["offer_id"]})
    matched = await pat.expect("matched")
    assert matched["peer"]["name"] == "ann"
    assert await ledger.slots_add_up("ann") and await ledger.slots_add_up("sam")
    assert not await redis.exists(ledger.keys.request("pat"))


async def test_kill_9_mid_offer_then_a_quick_reconnect_can_still_answer_the_offer(gateways, redis, prefix):
    """Back before the old lease lapsed: the offer is still the survivor's (listed in the welcome), the
    lapse of the dead connection's lease withdraws nothing, and accepting it fills the one slot."""
    g_a, g_b = gateways(2, **CRASH_ENV)
    ledger = Ledger(redis, prefix)
    sam = await available_survivor(g_a.ws_url, "sam")
    pat = await waiting_patient(g_b.ws_url, "pat")
    offer = await sam.expect("offer")
    g_a.kill()
    await sam.closed()
    back = await Client.connect(g_b.ws_url, token("survivor", "sam", "sam"))
    assert [o["offer_id"] for o in back.welcome["offers"]] == [offer["offer_id"]]
    assert back.welcome["availability"]["pending"] == 1
    await eventually(lambda: _conns_are(redis, ledger, "sam", 1), REAP_DEADLINE_S, "the dead lease to lapse")
    assert not await ledger.offer_gone(offer["offer_id"]) and await ledger.slots_add_up("sam")
    assert back.of_type("offer_withdrawn") == []
    await back.send({"type": "accept", "offer_id": offer["offer_id"]})
    cid = (await pat.expect("matched"))["conversation_id"]
    assert (await back.expect("matched"))["conversation_id"] == cid
    sv = await ledger.survivor("sam")
    assert (sv["act"], sv["pend"]) == ("1", "0") and await ledger.slots_add_up("sam")


# ---------------------------------------------------------------- kill -9 mid-chat

async def test_kill_9_mid_chat_keeps_the_survivor_slot_count_equal_to_their_open_conversations(
        gateways, redis, prefix):
    """The survivor reconnects at once (their dead connection's lease still runs, then lapses while
    the new one is live) and, a second time, only after their lease lapsed (offline in between)."""
    g_a, g_b, g_c = gateways(3, **CRASH_ENV)
    ledger = Ledger(redis, prefix)
    sam_client = await available_survivor(g_a.ws_url, "sam")
    pat_client = await waiting_patient(g_b.ws_url, "pat")
    offer = await sam_client.expect("offer")
    await sam_client.send({"type": "accept", "offer_id": offer["offer_id"]})
    matched = await pat_client.expect("matched")
    cid, epoch = matched["conversation_id"], matched["epoch"]
    await sam_client.expect("matched", conversation_id=cid)
    sam = Side(sam_client, token("survivor", "sam", "sam"), cid, "s")
    pat = Side(pat_client, token("patient", "pat", "pat"), cid, "p")
    for side in (sam, pat, sam, pat):
        await side.send_one()
    await wait_for(lambda: len(sam.acked()) == 2 and len(pat.acked()) == 2 and len(sam.seen()) == 4, 5, "acks")
    # a second patient waits (on the gateway never killed): sam's only slot is taken, so no offer to sam
    pia = await waiting_patient(g_c.ws_url, "pia")

    async def crash_and_return(victim: GatewayProcess, to: GatewayProcess, *, after_lease: bool) -> None:
        victim.kill()
        await sam.client.closed()
        if after_lease:
            await eventually(lambda: _no_conns(redis, ledger, "sam"), REAP_DEADLINE_S, "sam's lease to lapse")
            assert (await ledger.survivor("sam"))["idx"] == "0"
        await sam.reconnect(to.ws_url, epoch=epoch)
        welcome = sam.client.welcome
        assert [c["conversation_id"] for c in welcome["conversations"]] == [cid]
        assert (welcome["availability"]["active"], welcome["availability"]["pending"]) == (1, 0)
        assert welcome["offers"] == []
        # whatever the old lease does meanwhile, the new connection keeps sam online
        await eventually(lambda: _conns_are(redis, ledger, "sam", 1), REAP_DEADLINE_S, "only the new connection")
        assert await ledger.slots_add_up("sam")
        sv = await ledger.survivor("sam")
        assert (sv["act"], sv["pend"], sv["idx"]) == ("1", "0", "0")
        await sam.client.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
        echo = await sam.client.expect("availability")
        assert (echo["active"], echo["pending"]) == (1, 0)
        assert (await ledger.request("pia"))["state"] == "waiting"
        await sam.retry_unanswered()
        await sam.send_one()
        await wait_for(lambda: not sam.unanswered(), 5, "sam's sends answered after the crash")

    await crash_and_return(g_a, g_b, after_lease=False)
    await pat.send_one()
    await crash_and_return(g_b, g_c, after_lease=True)     # sam is on g_b now, and so is pat: both go to g_c
    await pat.client.closed()
    await pat.reconnect(g_c.ws_url, epoch=epoch)
    await pat.retry_unanswered()
    await pat.send_one()
    await wait_for(lambda: not pat.unanswered(), 5, "pat's sends answered")
    acked = {*sam.acked(), *pat.acked()}
    await wait_for(lambda: all(acked <= {c for _, c in s.seen()} for s in (sam, pat)), 5, "every ack at both")
    report = check({**sam.outcomes(), **pat.outcomes()}, {"sam": sam.seen(), "pat": pat.seen()},
                   expect_all_seqs=True)
    assert report.ok(), report.summary()
    assert sam.client.of_type("offer") == []

    # the conversation ends: the slot frees and the waiting patient is offered to sam at once
    await pat.client.send({"type": "end", "conversation_id": cid})
    await sam.client.expect("ended", conversation_id=cid)
    nxt = await sam.client.expect("offer", patient={"name": "pia"})
    assert await ledger.slots_add_up("sam")
    assert (await ledger.survivor("sam"))["act"] == "0" and await ledger.pending("sam") == 1
    await sam.client.send({"type": "accept", "offer_id": nxt["offer_id"]})
    await pia.expect("matched")
    assert await ledger.slots_add_up("sam") and (await ledger.survivor("sam"))["act"] == "1"


# ---------------------------------------------------------------- a stall past the lease

LUNG = {"diagnoses": ["lung"], "side_effects": ["nausea"], "languages": ["en"]}


async def test_a_gateway_stalled_past_the_presence_lease_puts_its_live_connections_back_into_matching(
        gateways, redis, prefix):
    """SIGSTOP, not SIGKILL: the process and its sockets live on, but another gateway's tick reaps its
    leases meanwhile.  Once it runs again its connections must count as online again, or a connected
    survivor would never be offered anyone and a connected patient's request would be dropped."""
    g_a, g_b = gateways(2, **CRASH_ENV)
    ledger = Ledger(redis, prefix)
    pia = await waiting_patient(g_b.ws_url, "pia")           # nobody to offer her yet: she waits
    ann = await Client.connect(g_b.ws_url, token("survivor", "ann", "ann"))
    await ann.send({"type": "availability", "available": True, "profile": LUNG, "max_chats": 1})
    await ann.expect("availability")
    assert (await ledger.request("pia"))["state"] == "waiting"
    g_b.proc.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: _no_conns(redis, ledger, "ann"), REAP_DEADLINE_S + 1, "ann's lease reaped")
        await eventually(lambda: _no_conns(redis, ledger, "pia"), 2, "pia's lease reaped")
        assert (await ledger.survivor("ann"))["idx"] == "0" and float((await ledger.request("pia"))["away"]) > 0
    finally:
        g_b.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: _conns_are(redis, ledger, "ann", 1), PRESENCE_TTL_S + 1, "ann online again")
    await eventually(lambda: _conns_are(redis, ledger, "pia", 1), 1, "pia online again")
    assert (await ledger.survivor("ann"))["idx"] == "1"
    assert float((await ledger.request("pia"))["away"]) == 0 and await ledger.request("pia")
    # and both are matchable again without reconnecting
    lou = await Client.connect(g_a.ws_url, token("patient", "lou", "lou"))
    await lou.send({"type": "talk_now", "profile": LUNG})
    assert (await ann.expect("offer"))["patient"] == {"name": "lou"}
    sam = await available_survivor(g_a.ws_url, "sam")
    assert (await sam.expect("offer"))["patient"] == {"name": "pia"}
    assert not pia._reader.done() and not ann._reader.done()


async def _no_conns(redis: aioredis.Redis, ledger: Ledger, uid: str) -> bool:
    return await redis.scard(ledger.keys.user_conns(uid)) == 0


async def _conns_are(redis: aioredis.Redis, ledger: Ledger, uid: str, n: int) -> bool:
    return await redis.scard(ledger.keys.user_conns(uid)) == n


# ---------------------------------------------------------------- reconnect storm

STORM_PAIRS = int(os.environ.get("AFTERTALK_STORM_PAIRS", "1000"))
STORM_SEND_INTERVAL_S = 2.0          # each survivor sends one message every this often, all along


@dataclass
class StormReport:
    """What one storm measured; every time is seconds."""

    pairs: int
    setup_s: float = 0.0                 # conversations made through the matcher scripts
    connect_s: float = 0.0               # every client connected before the crash
    down_s: float = 0.0                  # kill -9 until the restarted gateway was ready
    missed: int = 0                      # messages the patients missed (crash to catch-up) and got back
    welcome_s: list[float] = field(default_factory=list)     # storm start -> each welcome
    caught_up_s: list[float] = field(default_factory=list)   # storm start -> each client caught up
    all_back_s: float = 0.0              # storm start -> the last client caught up
    failures: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)     # checker classes over every conversation
    faults: list[str] = field(default_factory=list)          # checker summaries of bad conversations
    slow_closes: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        w, c = sorted(self.welcome_s), sorted(self.caught_up_s)

        def pct(v: list[float], q: float) -> float:
            return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
        return [f"{self.pairs} pairs ({2 * self.pairs} clients); {self.pairs} reconnecting at once",
                f"setup {self.setup_s:.1f} s, connect {self.connect_s:.1f} s, gateway down {self.down_s:.1f} s, "
                f"{self.missed} messages missed meanwhile",
                f"welcome p50 {pct(w, .5):.2f} s, p99 {pct(w, .99):.2f} s, max {pct(w, 1):.2f} s",
                f"caught up p50 {pct(c, .5):.2f} s, p99 {pct(c, .99):.2f} s; all back and caught up in "
                f"{self.all_back_s:.2f} s",
                f"checker {dict(sorted(self.counts.items()))}; failures {len(self.failures)}, "
                f"slow-consumer cuts {self.slow_closes:.0f}, error frames {len(self.errors)}"]


async def make_conversations(redis_url: str, prefix: str, pairs: int) -> list[tuple[str, str, str, str]]:
    """(patient, survivor, conversation, epoch) of ``pairs`` open conversations, made by the matcher's
    scripts (an auto-accepting survivor with one slot, a talk-now) and the chat store, as a gateway
    would, without a client round trip each."""
    from chat.store import ChatStore
    from matcher.profile import parse_profile
    from matcher.store import MatcherConfig, MatchStore
    from matcher.vocabulary import load_vocabulary

    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    match, chat = MatchStore(redis, keys, MatcherConfig(daily_cap=10**9)), ChatStore(redis, keys)
    profile = parse_profile(PROFILE, load_vocabulary())
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> tuple[str, str, str, str]:
        sid, pid = f"sur{i}", f"pat{i}"
        async with gate:
            await match.connected(sid, "setup")
            await match.set_availability(sid, sid, available=True, profile=profile, max_chats=1, auto_accept=True)
            _, created = await match.talk_now(pid, pid, profile)
            assert len(created) == 1, created
            c = created[0]
            await chat.open(c.id, epoch=c.epoch, patient=(c.patient, c.patient_name),
                            survivor=(c.survivor, c.survivor_name))
            await match.disconnected(sid, "setup")
            return c.patient, c.survivor, c.id, c.epoch
    try:
        made = await asyncio.gather(*(one(i) for i in range(pairs)))
    finally:
        await redis.aclose()
    assert len({s for _, s, _, _ in made}) == pairs          # one conversation per survivor
    return made


async def connect_patiently(ws_url: str, tok: str, *, resume: dict | None = None,
                            timeout: float = 60.0) -> Client:
    """Client.connect with a deadline fit for a storm (the handshake and the welcome both wait)."""
    import websockets

    ws = await websockets.connect(ws_url, max_size=2**20, open_timeout=timeout)
    client = Client(ws)
    hello: dict[str, Any] = {"type": "hello", "token": tok}
    if resume is not None:
        hello["resume"] = resume
    await client.send(hello)
    client.welcome = await client.expect("welcome", timeout=timeout)
    return client


async def reached(client: Client, cid: str, seq: int, timeout: float) -> None:
    """Wait until ``client`` has received message ``seq`` of ``cid`` (frames are scanned once each)."""
    loop = asyncio.get_running_loop()
    deadline, scanned = loop.time() + timeout, 0
    while True:
        for f in client.frames[scanned:]:
            if f.get("type") == "message" and f.get("conversation_id") == cid and f["seq"] >= seq:
                return
        scanned = len(client.frames)
        if client._reader.done() or loop.time() > deadline:
            raise AssertionError(f"never got seq {seq} of {cid} (closed: {client.ws.close_code})")
        client._new.clear()
        try:
            await asyncio.wait_for(client._new.wait(), deadline - loop.time())
        except TimeoutError:
            pass


async def settled(sides: list[tuple[Side, Side]], timeout: float) -> None:
    """Every send answered, and every acked message at both sides of its conversation."""
    def done() -> bool:
        for p, s in sides:
            if p.unanswered() or s.unanswered():
                return False
            acked = {*p.acked(), *s.acked()}
            if not (acked <= {c for _, c in p.seen()} and acked <= {c for _, c in s.seen()}):
                return False
        return True
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout}s")
        await asyncio.sleep(0.25)


async def reconnect_storm(launch, redis_url: str, prefix: str, pairs: int, *, say=print) -> StormReport:
    """The whole scenario; ``launch(n, **env)`` starts gateway processes (the ``gateways`` fixture)."""
    rep = StormReport(pairs)
    g_a, g_b = launch(2, AFTERTALK_MAX_CONNS_PER_IP=str(4 * pairs + 100))
    t = time.monotonic()
    convs = await make_conversations(redis_url, prefix, pairs)
    rep.setup_s = time.monotonic() - t

    t = time.monotonic()
    gate = asyncio.Semaphore(64)

    async def side(url: str, role: str, uid: str, cid: str, stem: str) -> Side:
        tok = token(role, uid, uid)
        async with gate:
            return Side(await connect_patiently(url, tok), tok, cid, stem)
    patients, survivors = await asyncio.gather(
        asyncio.gather(*(side(g_a.ws_url, "patient", p, c, "p") for p, _, c, _ in convs)),
        asyncio.gather(*(side(g_b.ws_url, "survivor", s, c, "s") for _, s, c, _ in convs)))
    rep.connect_s = time.monotonic() - t
    epochs = {c: e for _, _, c, e in convs}
    pairs_ = list(zip(patients, survivors, strict=True))
    for p in patients:
        assert [c["conversation_id"] for c in p.client.welcome["conversations"]] == [p.cid]

    # some conversation first, both ways
    for _ in range(2):
        await asyncio.gather(*(s.send_one() for pair in pairs_ for s in pair))
    await settled(pairs_, 60)

    stop = asyncio.Event()

    async def pump() -> None:
        """Survivors keep sending, round robin, ~pairs / STORM_SEND_INTERVAL_S messages a second."""
        tick, i = 0.05, 0
        per_tick = max(1, round(pairs * tick / STORM_SEND_INTERVAL_S))
        while not stop.is_set():
            for _ in range(per_tick):
                await survivors[i % pairs].send_one()
                i += 1
            await asyncio.sleep(tick)
    pumping = asyncio.create_task(pump())
    await asyncio.sleep(1.0)

    # the crash: every patient's socket drops; the gateway comes back on the same port
    t = time.monotonic()
    g_a.kill()
    g_a.stop()                                 # (closes its log file; the process is gone already)
    await asyncio.gather(*(p.client.closed(10) for p in patients))
    before = {p.cid: p.last_seq() for p in patients}
    await asyncio.to_thread(g_a.start)         # blocking: waits for /readyz; the pump goes on meanwhile
    rep.down_s = time.monotonic() - t

    # the storm: every patient at once, each resuming its conversation from the last seq it saw
    t0 = time.monotonic()

    async def come_back(p: Side) -> None:
        seq = p.last_seq()
        try:
            p.conns.append(await connect_patiently(g_a.ws_url, p.tok,
                                                   resume={p.cid: {"seq": seq, "epoch": epochs[p.cid]}}))
        except Exception as exc:
            rep.failures.append(f"{p.cid}: {type(exc).__name__}: {exc}"[:300])
            return
        rep.welcome_s.append(time.monotonic() - t0)
        convs_ = {c["conversation_id"]: c for c in p.client.welcome["conversations"]}
        if p.cid not in convs_:
            rep.failures.append(f"{p.cid}: not in the welcome")
            return
        target = convs_[p.cid]["last_seq"]
        try:
            if target > seq:
                await reached(p.client, p.cid, target, 60)
        except AssertionError as exc:
            rep.failures.append(str(exc))
            return
        rep.caught_up_s.append(time.monotonic() - t0)
    await asyncio.gather(*(come_back(p) for p in patients))
    rep.all_back_s = time.monotonic() - t0
    rep.missed = sum(max(0, p.last_seq() - before[p.cid]) for p in patients)
    if rep.failures:
        stop.set()
        await pumping
        return rep

    # live again both ways: the patients answer, the pump runs a little longer, then everything settles
    await asyncio.gather(*(p.retry_unanswered() for p in patients if not p.client._reader.done()))
    await asyncio.gather(*(p.send_one() for p in patients if not p.client._reader.done()))
    await asyncio.sleep(1.0)
    stop.set()
    await pumping
    await settled(pairs_, 60)

    for p, s in pairs_:
        report = check({**p.outcomes(), **s.outcomes()}, {"patient": p.seen(), "survivor": s.seen()},
                       expect_all_seqs=True)
        for k, v in report.counts.items():
            rep.counts[k] = rep.counts.get(k, 0) + v
        if not report.ok():
            rep.faults.append(f"{p.cid}: {report.summary()}")
        # the resumed connection got the missed messages first, in order, from right after its last seq
        resumed = [seq for c in p.conns[1:] for seq, _ in messages(c.frames, p.cid)]
        if resumed != sorted(set(resumed)) or (resumed and resumed[0] != before[p.cid] + 1):
            rep.faults.append(f"{p.cid}: resumed from {before[p.cid]} with {resumed[:5]}...")
    rep.slow_closes = sum([await metric(g.url, "aftertalk_slow_consumer_closes_total") for g in (g_a, g_b)])
    for p, s in pairs_:
        for c in (*p.conns[1:], s.client):
            rep.errors += c.of_type("error")
            if c._reader.done():
                rep.failures.append(f"{p.cid}: a connection was closed: {c.ws.close_code} {c.ws.close_reason}")
    for line in rep.lines():
        say(line)
    return rep


async def test_a_restarted_gateway_takes_back_every_client_at_once_losing_and_doubling_nothing(
        gateways, redis_server, prefix):
    rep = await reconnect_storm(gateways, redis_server.url, prefix, STORM_PAIRS)
    assert not rep.failures, rep.failures[:10]
    assert not rep.faults, rep.faults[:10]
    assert not rep.errors, rep.errors[:10]                       # nobody refused, nothing recovery_failed
    assert rep.slow_closes == 0                                  # nobody cut as a slow consumer
    assert len(rep.welcome_s) == len(rep.caught_up_s) == STORM_PAIRS
    assert rep.missed > 0                                        # there was something to catch up on
    assert rep.counts.get("delivered", 0) > 0
    assert all(rep.counts.get(k, 0) == 0 for k in ("lost", "duplicated", "reordered", "unanswered", "gaps"))
    assert rep.all_back_s < 45, rep.lines()                      # measured: 5-10 s for 1,000
