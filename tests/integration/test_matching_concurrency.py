"""No double booking under load: 50 survivors and 200 patients on two gateway processes at once.

Survivors (random max_chats 1-2, some auto-accepting) accept every offer as it
arrives and end each conversation after a short while, so slots free up and
the queue keeps moving.  Some patients press talk-now from two connections on
different gateways at the same instant; some cancel right after pressing.
While this runs, a monitor reads every survivor's act/pend/max from Redis
every few milliseconds.  Afterwards the frames and the store must agree:
nobody over capacity at any sample, one match per request, one patient and one
survivor per conversation, every pair eligible, every matchable patient served.
"""
from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from redis import Redis as SyncRedis

from core.keys import Keys
from matcher.profile import Profile, profiles_fit, shared
from support.gateway import token

N_SURVIVORS, N_PATIENTS, N_TWO_TABS, N_CANCELLERS = 50, 200, 25, 10
DIAGNOSES = ["breast", "lung", "prostate", "colorectal", "lymphoma_hodgkin"]
SIDE_EFFECTS = ["fatigue", "neuropathy", "insomnia", "anxiety", "lymphedema"]
DEADLINE_S = 45


def random_profile(rng: random.Random, *, patient: bool) -> dict[str, list[str]]:
    dx = rng.sample(DIAGNOSES, rng.choice([0, 1, 1, 2]))
    se = rng.sample(SIDE_EFFECTS, rng.choice([0, 1, 2]) if dx else rng.choice([1, 2]))
    if patient and rng.random() < 0.15:
        langs = [rng.choice(["fr", "es"])]          # a minority who only speak another language
    else:
        langs = ["en"] + (["fr"] if rng.random() < 0.3 else []) + (["es"] if rng.random() < 0.2 else [])
    return {"diagnoses": dx, "side_effects": se, "languages": langs}


def as_profile(raw: dict[str, list[str]]) -> Profile:
    return Profile(frozenset(raw["diagnoses"]), frozenset(raw["side_effects"]), frozenset(raw["languages"]))


@dataclass
class Peer:
    """One user: their connections, every frame each connection received, and when they asked."""

    id: str
    role: str
    profile: dict[str, list[str]]
    max_chats: int = 1
    auto_accept: bool = False
    conns: list[Any] = field(default_factory=list)
    frames: list[list[dict[str, Any]]] = field(default_factory=list)
    asked_at: float = 0.0
    matched_at: float = 0.0


async def open_conn(url: str, peer: Peer, on_frame) -> int:
    ws = await websockets.connect(url, max_size=2**20, open_timeout=20)
    await ws.send(orjson.dumps({"type": "hello", "token": token(peer.role, sub=peer.id, name=peer.id)}).decode())
    welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
    assert welcome["type"] == "welcome", welcome
    index = len(peer.conns)
    peer.conns.append(ws)
    peer.frames.append([])

    async def read() -> None:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                peer.frames[index].append(frame)
                await on_frame(peer, ws, frame)
        except websockets.ConnectionClosed:
            pass

    asyncio.get_running_loop().create_task(read())
    return index


class CapacityMonitor:
    """A thread that snapshots every survivor's act/pend/max atomically (MULTI) every ~2 ms.

    A thread with its own client keeps sampling at full speed however busy the test's event loop
    is with 275 WebSocket clients.  Scripts are atomic, so a MULTI snapshot never sees half a change.
    """

    def __init__(self, url: str, keys: Keys, survivor_ids: list[str]) -> None:
        self.client = SyncRedis.from_url(url, decode_responses=True)
        self.keys = keys
        self.ids = survivor_ids
        self.samples = 0
        self.peak_busy = 0
        self.violations: list[tuple[str, str, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.client.pipeline(transaction=True)
            for sid in self.ids:
                pipe.hmget(self.keys.survivor(sid), "act", "pend", "max")
            busy = 0
            for sid, (act, pend, cap) in zip(self.ids, pipe.execute(), strict=True):
                if act is None:
                    continue
                if int(act) + int(pend) > int(cap) or int(act) < 0 or int(pend) < 0:
                    self.violations.append((sid, act, pend, cap))
                busy += int(act) + int(pend) > 0
            self.peak_busy = max(self.peak_busy, busy)
            self.samples += 1
            time.sleep(0.002)


async def test_two_hundred_patients_fifty_survivors_two_gateways(gateways, redis, redis_server, prefix):
    rng = random.Random(20240601)
    g = gateways(2, AFTERTALK_MAX_CONNS_PER_IP="1000", AFTERTALK_OFFERS_PER_PATIENT_HOUR="100")
    keys = Keys(prefix)
    survivors = [Peer(f"s{i:02d}", "survivor", random_profile(rng, patient=False), max_chats=rng.choice([1, 2]),
                      auto_accept=rng.random() < 0.3) for i in range(N_SURVIVORS)]
    patients = [Peer(f"p{i:03d}", "patient", random_profile(rng, patient=True)) for i in range(N_PATIENTS)]
    two_tabs = {p.id for p in patients[:N_TWO_TABS]}
    cancellers = {p.id for p in patients[N_TWO_TABS:N_TWO_TABS + N_CANCELLERS]}
    by_id = {p.id: p for p in survivors + patients}
    pending_ends: set[asyncio.Task[None]] = set()
    progress = asyncio.Event()
    errors: list[dict[str, Any]] = []

    async def end_later(ws: Any, cid: str, patient: str) -> None:
        # a two-tab patient's second talk-now joins the match only while it is open: under a loaded
        # machine the second tab's frame can take longer than 50 ms, so their chats stay open longer
        await asyncio.sleep(rng.uniform(0.05, 0.4) + (2.0 if patient in two_tabs else 0.0))
        try:
            await ws.send(orjson.dumps({"type": "end", "conversation_id": cid}).decode())
        except websockets.ConnectionClosed:
            pass

    async def survivor_frame(peer: Peer, ws: Any, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "offer":
            await ws.send(orjson.dumps({"type": "accept", "offer_id": frame["offer_id"]}).decode())
        elif kind == "matched":
            task = asyncio.get_running_loop().create_task(
                end_later(ws, frame["conversation_id"], frame["peer"]["name"]))
            pending_ends.add(task)
            task.add_done_callback(pending_ends.discard)
        elif kind == "error" and frame.get("code") != "not_found":     # not_found: offer withdrawn by a cancel
            errors.append(frame)

    async def patient_frame(peer: Peer, ws: Any, frame: dict[str, Any]) -> None:
        if frame["type"] in ("matched", "cancelled"):
            peer.matched_at = peer.matched_at or time.monotonic()
            progress.set()
        elif frame["type"] == "error":
            expected = ((peer.id in cancellers and frame.get("ref") == "cancel")      # matched before the cancel
                        or (peer.id in two_tabs and frame.get("code") == "already_matched"))  # the other tab won
            if not expected:
                errors.append(frame)

    # ---- watch capacity continuously while everything below runs
    monitor = CapacityMonitor(redis_server.url, keys, [s.id for s in survivors])
    monitor.start()
    t_start = time.monotonic()

    # ---- survivors come online on both gateways at once
    async def bring_survivor(i: int, s: Peer) -> None:
        await open_conn(g[i % 2].ws_url, s, survivor_frame)
        await s.conns[0].send(orjson.dumps({"type": "availability", "available": True, "profile": s.profile,
                                            "max_chats": s.max_chats, "auto_accept": s.auto_accept}).decode())

    await asyncio.gather(*(bring_survivor(i, s) for i, s in enumerate(survivors)))

    # ---- patients connect, then all press talk-now together
    async def bring_patient(i: int, p: Peer) -> None:
        await open_conn(g[i % 2].ws_url, p, patient_frame)
        if p.id in two_tabs:
            await open_conn(g[(i + 1) % 2].ws_url, p, patient_frame)

    await asyncio.gather(*(bring_patient(i, p) for i, p in enumerate(patients)))
    t_connected = time.monotonic()

    async def press(p: Peer) -> None:
        frame = orjson.dumps({"type": "talk_now", "profile": p.profile}).decode()
        p.asked_at = time.monotonic()
        await asyncio.gather(*(ws.send(frame) for ws in p.conns))          # two tabs: the same instant
        if p.id in cancellers:
            await p.conns[0].send('{"type":"cancel"}')

    await asyncio.gather(*(press(p) for p in patients))

    # ---- wait until every patient who can be served has been (or has cancelled)
    matchable = {p.id for p in patients
                 if any(profiles_fit(as_profile(p.profile), as_profile(s.profile)) for s in survivors)}

    def outstanding() -> set[str]:
        return {pid for pid in matchable if not by_id[pid].matched_at}

    deadline = time.monotonic() + DEADLINE_S
    while outstanding() and time.monotonic() < deadline:
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), 1.0)
        except TimeoutError:
            pass
    t_served = time.monotonic()
    while pending_ends and time.monotonic() < deadline + 5:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)                          # the last 'end' frames reach Redis
    monitor.stop()

    # ---- frames: one match per request, one patient and one survivor per conversation
    assert not outstanding(), f"never served: {sorted(outstanding())[:10]}"
    assert errors == [], errors[:5]
    patient_of: dict[str, str] = {}
    survivor_of: dict[str, str] = {}
    for p in patients:
        per_conn = [[f for f in frames if f["type"] == "matched"] for frames in p.frames]
        cids = {m["conversation_id"] for ms in per_conn for m in ms}
        assert all(len({m["conversation_id"] for m in ms}) == len(ms) for ms in per_conn), (p.id, per_conn)
        # both tabs of a two-tab patient press at once: one request, one match, heard by every tab once
        # (a press that crossed the "matched" frame joins the match: request.lua's rejoin window)
        assert all(len(m) <= 1 for m in per_conn), (p.id, per_conn)
        assert len(cids) <= 1, (p.id, cids)
        if p.id in two_tabs and cids:
            assert all({m["conversation_id"] for m in ms} == cids for ms in per_conn), (p.id, per_conn)
        cancelled = any(f["type"] == "cancelled" for frames in p.frames for f in frames)
        assert not (cids and cancelled), p.id
        if p.id in matchable and p.id not in cancellers:
            assert len(cids) == 1, p.id
        for cid in cids:
            assert cid not in patient_of, (cid, p.id, patient_of.get(cid))
            patient_of[cid] = p.id
    for s in survivors:
        matched = [f for frames in s.frames for f in frames if f["type"] == "matched"]
        for m in matched:
            assert m["conversation_id"] not in survivor_of, m
            survivor_of[m["conversation_id"]] = s.id
        if s.auto_accept:
            assert not [f for frames in s.frames for f in frames if f["type"] == "offer"], s.id
    assert set(patient_of) == set(survivor_of)

    # ---- every pair is eligible, and the frames agree with the store
    for cid, pid in patient_of.items():
        sid = survivor_of[cid]
        pp, sp = as_profile(by_id[pid].profile), as_profile(by_id[sid].profile)
        assert profiles_fit(pp, sp), (cid, pid, sid)
        frame = next(f for frames in by_id[pid].frames for f in frames
                     if f["type"] == "matched" and f["conversation_id"] == cid)
        assert {k: sorted(v) for k, v in frame["shared"].items()} == shared(pp, sp)
        assert frame["peer"] == {"name": sid, "role": "survivor"}
        cv = await redis.hgetall(keys.conversation(cid))
        assert (cv["patient"], cv["survivor"]) == (pid, sid)
    stats = await redis.hgetall(keys.stats)
    assert int(stats["matches"]) == len(patient_of)
    assert int(stats["requests"]) == N_PATIENTS                       # two tabs made one request each

    # ---- capacity: never exceeded while running (store and frames), all slots free at the end
    assert monitor.samples >= 100, monitor.samples
    assert monitor.violations == [], monitor.violations[:10]
    assert monitor.peak_busy >= 2                     # the monitor did see survivors at work
    for s in survivors:
        open_now = peak = 0
        for f in s.frames[0]:                         # one channel: frames arrive in the store's order
            open_now += {"matched": 1, "ended": -1}.get(f["type"], 0)
            peak = max(peak, open_now)
        assert peak <= s.max_chats and open_now == 0, (s.id, peak, s.max_chats)
    for s in survivors:
        act, pend = await redis.hmget(keys.survivor(s.id), "act", "pend")
        assert (act, pend) == ("0", "0"), (s.id, act, pend)
    waits = sorted(p.matched_at - p.asked_at for p in patients if p.matched_at and p.id not in cancellers)
    print(f"\nconnect {t_connected - t_start:.1f}s, serve {t_served - t_connected:.1f}s, "
          f"{len(patient_of)} matches, {monitor.samples} capacity samples, "
          f"wait p50 {statistics.median(waits):.2f}s max {waits[-1]:.2f}s")
    for peer in survivors + patients:
        for ws in peer.conns:
            await ws.close()
