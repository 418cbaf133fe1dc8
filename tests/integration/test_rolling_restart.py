"""Rolling restarts with nothing lost: a gateway told to stop drains (gateway/drain.py).

* ``test_a_stopping_gateway_...``: one gateway, SIGTERM / SIGINT / SIGHUP while a ``send`` is held in
  Redis (``CLIENT PAUSE WRITE``) and one client never answers the server's close: /readyz turns 503 at
  once, a new upgrade gets HTTP 503, the held send is acknowledged *before* the socket closes with 1001,
  and the process exits 0 once the drain time is up (not before the unanswered close has had it).
* ``test_a_pending_offer_...``: a survivor's gateway drains while an offer waits for them; the patient's
  request lives on and the survivor, back on the other gateway, is offered the same patient again.
* ``test_rolling_restart_through_nginx_...``: deploy/nginx.conf in front of two gateways, 200
  conversations chatting through it, and the gateways restarted one after the other (SIGTERM, wait for
  the exit, start again on the same port).  Every client reconnects through nginx with backoff and
  resumes; nothing acknowledged is lost or doubled, every ack of a message the gateway stored reached
  its sender before the close, every close is 1001, every client is back within the drain time plus its
  backoff, and /readyz answered 503 during each drain.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from support.chat_pair import PROFILE, match_pair, outcomes, send_frame, wait_for
from support.checker import check
from support.gateway import Client, GatewayProcess, token
from support.nginx import NGINX, NginxProcess

pytestmark = [pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")]
needs_nginx = pytest.mark.skipif(not os.path.exists(NGINX), reason="needs Debian's nginx")


async def http_status(port: int, path: str = "/readyz", timeout: float = 1.0) -> int | None:
    """The status of a GET on a gateway's own port; None when nothing answers (refused, closed)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else None
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()


class ReadyzProbe:
    """Polls a gateway's /readyz every few ms from before its stop until it stops answering."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[tuple[float, int | None]] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = await http_status(self.port)
            self.seen.append((time.monotonic(), status))
            if status is None:
                return
            await asyncio.sleep(0.005)

    @property
    def statuses(self) -> list[int | None]:
        return [s for _, s in self.seen]

    def first(self, status: int) -> float | None:
        return next((t for t, s in self.seen if s == status), None)


async def exited(proc: subprocess.Popen[Any], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway was still running {timeout} s after the signal")
        await asyncio.sleep(0.02)
    return proc.returncode


# ---- one gateway: what a drain does, step by step --------------------------------------------------------

DRAIN_S = 3.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
async def test_a_stopping_gateway_answers_the_frame_in_flight_refuses_newcomers_and_closes_with_1001(
        gateways, redis, sig):
    (g,) = gateways(1, AFTERTALK_DRAIN_S=DRAIN_S)
    pair = await match_pair(g.ws_url, g.ws_url)
    # a client that will never answer the server's close (it stops reading): the drain waits for it,
    # but no longer than the drain time
    mute = await Client.connect(g.ws_url, token("patient"))
    mute.ws.transport.pause_reading()

    await redis.client_pause(1500, all=False)          # writes (the append script) wait in Redis
    await pair.patient.send(send_frame(pair.cid, "in-flight"))
    await asyncio.sleep(0.3)                            # the gateway is handling it: its append is waiting
    probe = ReadyzProbe(g.port)
    signalled = time.monotonic()
    g.proc.send_signal(sig)

    # /readyz says 503 from the start of the drain, and a new connection is refused with HTTP 503
    await wait_for(lambda: 503 in probe.statuses, 2.0, "/readyz to answer 503")
    assert probe.first(503) - signalled < 1.0
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(g.ws_url, open_timeout=3)
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers.get("retry-after") == "1"
    assert "in-flight" not in outcomes(pair.patient.frames, pair.cid)     # still held in Redis meanwhile

    # the frame in flight is finished and acknowledged, and only then is the socket closed, with 1001
    assert await pair.patient.closed(timeout=DRAIN_S + 2) == (1001, "server restarting")
    assert outcomes(pair.patient.frames, pair.cid) == {"in-flight": 1}
    assert await pair.survivor.closed(timeout=DRAIN_S + 2) == (1001, "server restarting")

    # the process exits 0 within the drain time (plus closing its Redis links), having waited that long
    # for the mute client's answer to the close
    assert await exited(g.proc, DRAIN_S + 10) == 0
    took = time.monotonic() - signalled
    assert DRAIN_S - 0.5 < took < DRAIN_S + 3, took
    await probe.task
    statuses = probe.statuses
    first_503 = statuses.index(503)
    assert all(s == 200 for s in statuses[:first_503]) and set(statuses[first_503:]) <= {503, None}, statuses
    log = g.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    mute.ws.transport.abort()
    mute._reader.cancel()

    # the conversation resumes on a fresh gateway on the same port: nothing lost, nothing doubled
    again = GatewayProcess(g.redis_url, g.prefix, port=g.port, log_dir=str(g.log_path.parent)).start()
    gateways.started.append(again)
    patient = await Client.connect(again.ws_url, pair.patient_token, resume={pair.cid: 0})
    survivor = await Client.connect(again.ws_url, pair.survivor_token, resume={pair.cid: 0})
    for c in (patient, survivor):
        await c.expect("message", client_id="in-flight", seq=1)
    await patient.send(send_frame(pair.cid, "in-flight"))     # a client that never saw its ack would retry
    assert (await patient.expect("ack", client_id="in-flight"))["seq"] == 1
    await patient.send(send_frame(pair.cid, "after"))
    for c in (patient, survivor):
        await c.expect("message", client_id="after", seq=2)
        await c.close()


# ---- offers ----------------------------------------------------------------------------------------------

@pytest.mark.timeout(90)
async def test_a_pending_offer_of_a_survivor_whose_gateway_drains_is_offered_again_when_they_are_back(gateways):
    a, b = gateways(2, AFTERTALK_DRAIN_S=DRAIN_S, AFTERTALK_OFFER_TIMEOUT_S=20)
    s_tok, p_tok = token("survivor", "sur-drain", "Sam"), token("patient", "pat-drain", "Pat")
    survivor = await Client.connect(a.ws_url, s_tok)
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
    await survivor.expect("availability")
    patient = await Client.connect(b.ws_url, p_tok)
    await patient.send({"type": "talk_now", "profile": PROFILE})
    first = await survivor.expect("offer")

    a.proc.send_signal(signal.SIGTERM)
    assert await survivor.closed(timeout=DRAIN_S + 2) == (1001, "server restarting")
    assert await exited(a.proc, DRAIN_S + 10) == 0

    # back on the other gateway (as nginx would send them): the same patient is offered to them again
    survivor = await Client.connect(b.ws_url, s_tok)
    offers = survivor.welcome["offers"] or [await survivor.expect("offer", timeout=5)]
    assert [o["patient"]["name"] for o in offers] == ["Pat"], offers
    again = offers[0]
    assert again["offer_id"] != first["offer_id"]          # the first was withdrawn (no answer is not a "no")
    await survivor.send({"type": "accept", "offer_id": again["offer_id"]})
    matched = await patient.expect("matched", timeout=5)
    await survivor.expect("matched", conversation_id=matched["conversation_id"])
    assert not patient.of_type("cancelled"), patient.frames       # the request was never dropped
    # the old offer is gone for good: answering it now is refused, not a second match
    await survivor.send({"type": "accept", "offer_id": first["offer_id"]})
    assert (await survivor.expect("error", ref="accept"))["code"] == "not_found"
    for c in (survivor, patient):
        await c.close()


# ---- the rolling restart through nginx -------------------------------------------------------------------

CONVERSATIONS = int(os.environ.get("ROLLING_CONVERSATIONS", "200"))
ROLLING_DRAIN_S = 5.0
SEND_EVERY_S = 2.0                   # each participant: one message every ~2 s (200 messages/s in all)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.3, 3.0
CONNECT_SLACK_S = 5.0                # one attempt's handshake + hello + welcome, on a busy 2-core machine
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]     # clients come from 8 addresses (50 each), like real ones


def backoff(attempt: int) -> float:
    """The web client's: min(cap, base * 2^n), half of it random (gateway/static/js/protocol.js)."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)
    return ceiling / 2 + random.random() * ceiling / 2


@dataclass
class Outage:
    closed_at: float
    code: int | None
    reason: str
    back_at: float | None = None
    slept: float = 0.0
    attempts: int = 0


@dataclass
class Talker:
    """One participant through nginx: chats, and after any close reconnects with backoff and resumes
    (hello with ``resume``), then sends again, with the same client ids, whatever got no ack."""

    url: str
    role: str
    name: str
    source: str
    tok: str = ""
    cid: str | None = None
    epoch: str | None = None
    seen: list[tuple[int, str]] = field(default_factory=list)       # the transcript, over every connection
    acks: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, None] = field(default_factory=dict)          # sent, no ack yet (in order)
    resent_at: dict[str, float] = field(default_factory=dict)
    late_acks: list[str] = field(default_factory=list)              # stored before their resend: ack lost
    errors: list[dict[str, Any]] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    conn_no: int = 0
    n: int = 0
    ws: Any = None
    matched: asyncio.Event = field(default_factory=asyncio.Event)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    failed: str = ""                          # why the last connection attempt failed

    def __str__(self) -> str:
        return f"{self.name} online={self.online} outages={self.outages[-1:]} last failure={self.failed!r}"

    def __post_init__(self) -> None:
        self.tok = token(self.role, f"{self.role[:3]}-{self.name}", self.name)

    @property
    def online(self) -> bool:
        return self.ws is not None and self.welcomed.is_set()

    async def connect(self) -> None:
        ws = await websockets.connect(self.url, local_addr=(self.source, 0), open_timeout=CONNECT_SLACK_S,
                                      ping_interval=None, max_size=2**20)
        hello: dict[str, Any] = {"type": "hello", "token": self.tok}
        if self.cid:
            hello["resume"] = {self.cid: {"seq": max((s for s, _ in self.seen), default=0), "epoch": self.epoch}}
        try:
            await ws.send(orjson.dumps(hello).decode())
            welcome = orjson.loads(await asyncio.wait_for(ws.recv(), CONNECT_SLACK_S))
            assert welcome["type"] == "welcome", welcome
        except BaseException:
            await ws.close()
            raise
        self.conn_no += 1
        self.ws = ws
        self.welcomed.set()

    async def run(self) -> None:
        """Read frames; on a close, reconnect with backoff; until stopped."""
        while not self.stopping:
            ws = self.ws
            try:
                async for raw in ws:
                    self._on_frame(orjson.loads(raw))
            except websockets.ConnectionClosed:
                pass
            if self.stopping:
                return
            self.welcomed.clear()
            self.ws = None
            outage = Outage(time.monotonic(), ws.close_code, ws.close_reason or "")
            self.outages.append(outage)
            while True:
                delay = backoff(outage.attempts)
                await asyncio.sleep(delay)
                outage.slept += delay
                outage.attempts += 1
                try:
                    await self.connect()
                    break
                except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                    self.failed = repr(exc)
                    continue
            outage.back_at = time.monotonic()
            await self._resend()

    def _on_frame(self, f: dict[str, Any]) -> None:
        kind = f["type"]
        if kind == "matched":
            self.cid, self.epoch = f["conversation_id"], f["epoch"]
            self.matched.set()
        elif kind == "message" and f["conversation_id"] == self.cid:
            self.seen.append((f["seq"], f["client_id"]))
        elif kind == "ack":
            client_id = f["client_id"]
            self.acks[client_id] = f["seq"]
            self.unacked.pop(client_id, None)
            if client_id in self.resent_at and f["ts"] / 1000 < self.resent_at[client_id] - 0.05:
                # sent again after a reconnect, yet stored before that: a gateway handled it but closed
                # the connection without writing its ack
                self.late_acks.append(client_id)
        elif kind == "error":
            self.errors.append(f)

    async def send(self, client_id: str) -> None:
        self.unacked[client_id] = None
        try:
            await self.ws.send(orjson.dumps(send_frame(self.cid, client_id, f"{self.name} says {client_id}")).decode())
        except (websockets.ConnectionClosed, AttributeError):
            pass                                 # sent again after the reconnect

    async def _resend(self) -> None:
        now = time.time()
        for client_id in list(self.unacked):
            self.resent_at[client_id] = now
            await self.send(client_id)

    async def chat(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(random.random() * SEND_EVERY_S)
        while not stop.is_set():
            if self.online:
                self.n += 1
                await self.send(f"{self.name}.{self.n}")
            await asyncio.sleep(SEND_EVERY_S * (0.75 + random.random() / 2))

    def sent(self) -> dict[str, int | str | None]:
        out: dict[str, int | str | None] = {c: None for c in self.unacked}
        out.update(self.acks)
        return out


async def back_in_rotation(proxy: NginxProcess, g: GatewayProcess, timeout: float = 30.0) -> None:
    """Wait until a GET through nginx is answered by ``g`` (its /healthz names its gateway id)."""
    import json
    import urllib.request

    def gateway_id(url: str) -> str:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return str(json.load(r)["gateway"])

    want = await asyncio.to_thread(gateway_id, g.url)
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(gateway_id, proxy.url) != want:
        assert time.monotonic() < deadline, "nginx never sent a request to the restarted gateway"
        await asyncio.sleep(0.25)


async def in_batches(coros: list[Any], size: int = 50) -> None:
    for i in range(0, len(coros), size):
        await asyncio.gather(*coros[i:i + size])


@needs_nginx
@pytest.mark.timeout(300)
async def test_rolling_restart_through_nginx_loses_nothing_acknowledged(gateways, tmp_path):
    started = time.monotonic()
    env = {"AFTERTALK_DRAIN_S": ROLLING_DRAIN_S}
    gws = gateways(2, **env)
    proxy = NginxProcess([g.port for g in gws], tmp_path / "nginx").start()
    loop = asyncio.get_running_loop()
    survivors = [Talker(proxy.ws_url, "survivor", f"s{i}", SOURCES[i % len(SOURCES)]) for i in range(CONVERSATIONS)]
    patients = [Talker(proxy.ws_url, "patient", f"p{i}", SOURCES[i % len(SOURCES)]) for i in range(CONVERSATIONS)]
    talkers = survivors + patients
    tasks: list[asyncio.Task[None]] = []
    stop_chat = asyncio.Event()
    try:
        # match through the gateways: survivors available with auto-accept, then every patient asks
        async def enter(t: Talker, first: dict[str, Any]) -> None:
            await t.connect()
            tasks.append(loop.create_task(t.run()))
            await t.ws.send(orjson.dumps(first).decode())

        await in_batches([enter(s, {"type": "availability", "available": True, "profile": PROFILE,
                                    "max_chats": 1, "auto_accept": True}) for s in survivors])
        await asyncio.sleep(0.5)
        await in_batches([enter(p, {"type": "talk_now", "profile": PROFILE}) for p in patients])
        await asyncio.wait_for(asyncio.gather(*(t.matched.wait() for t in talkers)), 60)
        by_cid: dict[str, list[Talker]] = {}
        for t in talkers:
            by_cid.setdefault(t.cid, []).append(t)
        assert len(by_cid) == CONVERSATIONS and all(len(v) == 2 for v in by_cid.values())
        matched_at = time.monotonic()

        tasks += [loop.create_task(t.chat(stop_chat)) for t in talkers]
        await asyncio.sleep(3)
        restarts = []
        for i, g in enumerate(list(gws)):
            probe = ReadyzProbe(g.port)
            signalled = time.monotonic()
            g.proc.send_signal(signal.SIGTERM)
            assert await exited(g.proc, ROLLING_DRAIN_S + 15) == 0
            down = time.monotonic()
            await probe.task
            fresh = GatewayProcess(g.redis_url, g.prefix, port=g.port, log_dir=str(g.log_path.parent), **env)
            fresh.start(wait=False)
            gateways.started.append(fresh)
            gws[i] = fresh
            await asyncio.to_thread(fresh.wait_ready, 60)
            try:
                await wait_for(lambda: all(t.online for t in talkers), ROLLING_DRAIN_S + 20, "every client back")
            except AssertionError:
                offline = [str(t) for t in talkers if not t.online]
                raise AssertionError(f"{len(offline)} clients not back: {offline[:5]}") from None
            restarts.append({"signalled": signalled, "exit_s": down - signalled, "probe": probe})
            # as an operator does before the next: wait until nginx sends traffic to the restarted one again.
            # (nginx's passive checks took it out when it refused connections; it is tried again after
            # fail_timeout, and only a request that *completes* there puts it back for good: a WebSocket
            # does not complete, so with WebSocket traffic only it would get one new socket per 5 s.)
            await back_in_rotation(proxy, fresh)
        await asyncio.sleep(2)
        stop_chat.set()

        # every send answered, and both sides of every conversation have every acked message
        def settled() -> bool:
            return all(not t.unacked for t in talkers) and all(
                {c for _, c in a.seen} == {c for _, c in b.seen} == {*a.acks, *b.acks}
                for a, b in by_cid.values())
        await wait_for(settled, 30, "every send acknowledged and delivered to both sides")
        finished = time.monotonic()
    finally:
        stop_chat.set()
        for t in talkers:
            t.stopping = True
            if t.ws is not None:
                await t.ws.close()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        proxy.stop()
    crashed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    assert not crashed, crashed[:3]

    # nothing acknowledged lost, doubled, reordered or with a gap; each transcript is exactly the acked set
    total = 0
    for cid, (a, b) in by_cid.items():
        sent = {**a.sent(), **b.sent()}
        report = check(sent, {a.name: a.seen, b.name: b.seen}, expect_all_seqs=True)
        assert report.ok(), f"{cid}: {report.summary()}"
        for t in (a, b):
            assert [c for _, c in t.seen] == [c for c, _ in sorted(sent.items(), key=lambda kv: kv[1])], cid
            assert [s for s, _ in t.seen] == list(range(1, len(sent) + 1)), cid
        total += len(sent)
    # the frame a gateway was handling when its drain began was answered before the close: no message
    # was found stored already when its sender, reconnected, sent it again
    assert [c for t in talkers for c in t.late_acks] == []
    assert [e for t in talkers for e in t.errors] == []

    # every close was 1001; every client was back within the drain time plus its backoff
    outages = [(t, o) for t in talkers for o in t.outages]
    assert {(o.code, o.reason) for _, o in outages} == {(1001, "server restarting")}, \
        {(o.code, o.reason) for _, o in outages}
    per_restart = [0] * len(restarts)
    for _, o in outages:
        per_restart[max(i for i, r in enumerate(restarts) if r["signalled"] <= o.closed_at)] += 1
    # the first gateway held about half of the 400 clients; they all moved to the second, which held them all
    assert per_restart[0] >= CONVERSATIONS // 2 and per_restart[1] >= CONVERSATIONS, per_restart
    for t, o in outages:
        restart = max(r["signalled"] for r in restarts if r["signalled"] <= o.closed_at)
        assert o.back_at is not None
        assert o.closed_at - restart <= ROLLING_DRAIN_S, (t.name, o)
        assert o.back_at - restart <= ROLLING_DRAIN_S + o.slept + CONNECT_SLACK_S, (t.name, o)
    # /readyz answered 503 from the drain's start until the gateway stopped answering
    for r in restarts:
        statuses = r["probe"].statuses
        assert 503 in statuses, statuses
        first = statuses.index(503)
        assert set(statuses[:first]) <= {200} and set(statuses[first:]) <= {503, None}, statuses
        assert r["exit_s"] <= ROLLING_DRAIN_S + 3, r["exit_s"]

    back = sorted(o.back_at - o.closed_at for _, o in outages)
    print(f"\nrolling restart: {CONVERSATIONS} conversations, {total} messages, {len(outages)} reconnects "
          f"{per_restart} (attempts max {max(o.attempts for _, o in outages)}), "
          f"back after median {back[len(back) // 2]:.2f} s "
          f"max {back[-1]:.2f} s; exits {[round(r['exit_s'], 2) for r in restarts]} s after SIGTERM; "
          f"503 from /readyz {[r['probe'].statuses.count(503) for r in restarts]} times; matched in "
          f"{matched_at - started:.1f} s, whole test {finished - started:.1f} s")
