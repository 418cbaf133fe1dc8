"""Connection load: thousands of WebSocket connections over two gateway processes, matching and chatting.

Usage: ``.venv/bin/python bench/load_test.py [--conns 5000] [--duration 300] [--think 10] [--json out.json]``

Starts a private redis-server (append-only, as deployed) and two ``aftertalk serve`` processes,
then opens ``--conns`` connections from this one process, half of them on each gateway: a
few moderators watching the flag feed, and patients and survivors in equal numbers.  Every
connection signs in; RSS of the gateways is read before and after, so the memory per
authenticated connection is known before any chatting starts.  Then, for ``--duration``
seconds, survivors are available (one chat at a time) and accept offers after a human pause;
patients press talk-now, chat, end and come back for another chat; both sides send a typing
hint and a message every ``--think`` seconds on average (exponential), about 1 message in 50
with contact details and 1 in 500 a crisis phrase, so moderation and the flag feed run too.

Reported: memory per connection, CPU of each process over the hold (per cent of one core),
latency p50/p99/max of message delivery to the peer, of acks and of matches, messages sent /
acknowledged / delivered, error frames by code, unexpected closes by code.

The client is a lean asyncio WebSocket protocol (below) rather than the websockets library:
on a 2-core machine the load generator shares the CPU with the servers it measures, and the
library's per-connection cost would make the client, not the gateways, the bottleneck.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import resource
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ProfileMix, RedisServer, machine, percentile, stamp  # noqa: E402

from support.gateway import GatewayProcess, token  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTACT = "you can text me on 555 201 7788"
CRISIS = "some nights I want to end my life"
WORDS = ("scan", "chemo", "tired", "hope", "week", "doctor", "family", "walk", "sleep", "better", "today",
         "nurse", "results", "fear", "hair", "work", "kids", "garden", "tea", "appointment")


# ---- a lean WebSocket client ------------------------------------------------------------------------
class LeanWebSocket(asyncio.Protocol):
    """Just enough RFC 6455 for a load generator: the handshake, unfragmented text frames, pongs
    for the server's pings, and the closing handshake.  Frames are sent with an all-zero masking
    key (legal; servers cannot tell) so masking costs nothing.  ``on_text`` gets each text frame."""

    def __init__(self, host: str, port: int, on_text: Callable[[bytes], None]) -> None:
        self.request = (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self.on_text = on_text
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, host: str, port: int, on_text: Callable[[bytes], None]) -> LeanWebSocket:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(host, port, on_text), host, port)
        await asyncio.wait_for(asyncio.shield(proto.upgraded), 30)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)      # a TCP connection: always a full Transport
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                assert self.transport
                self.transport.close()
                return
            self.upgraded.set_result(None)
        while len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                (n,), at = struct.unpack_from("!H", buf, 2), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                (n,), at = struct.unpack_from("!Q", buf, 2), 10
            if len(buf) < at + n:
                return
            opcode, payload = buf[0] & 0x0F, bytes(buf[at:at + n])
            del buf[:at + n]
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x9:
                self._write(0xA, payload)
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._write(0x8, payload[:2])
                assert self.transport
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("lost before the handshake"))
        if not self.lost.done():
            self.lost.set_result(self.close_code)

    def _write(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head + b"\x00\x00\x00\x00" + payload)

    def send(self, frame: dict[str, Any]) -> None:
        self._write(0x1, orjson.dumps(frame))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(0x8, struct.pack("!H", 1000))
            self.transport.close()


# ---- measurements ----------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK        # utime + stime


class Stats:
    def __init__(self) -> None:
        self.deliver_ms: list[float] = []
        self.ack_ms: list[float] = []
        self.match_s: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[int | None] = collections.Counter()
        self.sent = self.acked = self.delivered = self.matches = self.unmatched = self.flags_seen = 0
        self.connect_failures = 0
        self.sent_at: dict[str, float] = {}        # client_id -> send time, until delivered to the peer
        self.ack_wait: dict[str, float] = {}       # client_id -> send time, until acknowledged
        self.timeline: list[tuple[float, float]] = []   # (sent at, delivery ms): latency over the run
        self.ping_rtt: dict[str, list[float]] = collections.defaultdict(list)   # gateway -> app-level ping RTTs
        self.client_lag_ms: list[float] = []       # how late this process's event loop runs (the generator's own lag)
        self.recording = False


def windows(timeline: list[tuple[float, float]], start: float, width: float) -> list[float]:
    """p99 of delivery latency per ``width`` seconds of the run (is the tail steady or one burst?)."""
    buckets: dict[int, list[float]] = collections.defaultdict(list)
    for sent, ms in timeline:
        buckets[int((sent - start) // width)].append(ms)
    return [round(percentile(sorted(buckets[k]), 99), 1) for k in sorted(buckets)]


# ---- simulated people --------------------------------------------------------------------------------
class Person:
    """One connection: reads frames, reacts; subclasses drive the behaviour."""

    role = "patient"

    def __init__(self, run: LoadRun, n: int, gw: Any, profile: dict[str, list[str]]) -> None:
        self.run, self.stats, self.rng = run, run.stats, random.Random(n)
        self.sub = f"{self.role}-{n}"
        self.gw = gw
        self.profile = profile
        self.ws: LeanWebSocket | None = None
        self.welcome: asyncio.Future[dict[str, Any]] | None = None
        self.cid: str | None = None
        self.chat_done: asyncio.Event = asyncio.Event()
        self.counter = 0

    async def connect(self) -> None:
        self.welcome = asyncio.get_running_loop().create_future()
        self.ws = await LeanWebSocket.connect("127.0.0.1", self.gw.port, self.on_text)
        self.ws.send({"type": "hello", "token": token(self.role, sub=self.sub, name=self.sub, ttl=24 * 3600)})
        await asyncio.wait_for(self.welcome, 60)

    def on_text(self, raw: bytes) -> None:
        frame = orjson.loads(raw)
        kind = frame.get("type")
        if kind == "welcome":
            if self.welcome and not self.welcome.done():
                self.welcome.set_result(frame)
        elif kind == "message":
            self.on_message(frame)
        elif kind == "ack":
            sent = self.stats.ack_wait.pop(frame["client_id"], None)
            if sent is not None:
                self.stats.acked += 1
                self.stats.ack_ms.append((time.monotonic() - sent) * 1000)
        elif kind == "error":
            self.stats.errors[frame.get("code", "?")] += 1
        else:
            self.on_frame(kind, frame)

    def on_message(self, frame: dict[str, Any]) -> None:
        if frame["from"]["role"] == self.role:
            return                                   # my own message, echoed to all my connections
        sent = self.stats.sent_at.pop(frame.get("client_id") or "", None)
        if sent is not None:
            self.stats.delivered += 1
            self.stats.deliver_ms.append((time.monotonic() - sent) * 1000)
            self.stats.timeline.append((sent, self.stats.deliver_ms[-1]))

    def on_frame(self, kind: str, frame: dict[str, Any]) -> None:
        if kind == "matched":
            self.cid = frame["conversation_id"]
            self.chat_done.clear()
            asyncio.get_running_loop().create_task(self.chat(frame["conversation_id"]))
        elif kind == "ended" and frame.get("conversation_id") == self.cid:
            self.cid = None
            self.chat_done.set()

    async def chat(self, cid: str) -> None:
        """Type and send at a human pace until the conversation ends."""
        assert self.ws
        while self.cid == cid and self.run.running:
            await asyncio.sleep(self.rng.expovariate(1 / self.run.think))
            if self.cid != cid or self.ws.transport is None or self.ws.transport.is_closing():
                return
            self.counter += 1
            r = self.rng.random()
            text = CRISIS if r < 0.002 else CONTACT if r < 0.022 else " ".join(self.rng.choices(WORDS, k=8))
            client_id = f"{self.sub}:{self.counter}"
            self.ws.send({"type": "typing", "conversation_id": cid})
            if self.stats.recording:
                self.stats.sent_at[client_id] = self.stats.ack_wait[client_id] = time.monotonic()
                self.stats.sent += 1
            self.ws.send({"type": "send", "conversation_id": cid, "client_id": client_id, "text": text})


class Survivor(Person):
    role = "survivor"

    async def behave(self) -> None:
        assert self.ws
        await asyncio.sleep(self.rng.uniform(0, self.run.stagger))     # volunteers come online over time
        self.ws.send({"type": "availability", "available": True, "profile": self.profile, "max_chats": 1})

    def on_frame(self, kind: str, frame: dict[str, Any]) -> None:
        if kind == "offer":
            asyncio.get_running_loop().create_task(self.answer(frame["offer_id"]))
        else:
            super().on_frame(kind, frame)

    async def answer(self, offer_id: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))         # reading who it is
        if self.ws:
            self.ws.send({"type": "accept", "offer_id": offer_id})


class Patient(Person):
    role = "patient"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.matched: asyncio.Future[None] | None = None

    def on_frame(self, kind: str, frame: dict[str, Any]) -> None:
        if kind == "matched" and self.matched and not self.matched.done():
            self.matched.set_result(None)
        super().on_frame(kind, frame)

    async def behave(self) -> None:
        assert self.ws
        await asyncio.sleep(self.rng.uniform(0, self.run.stagger))
        while self.run.running:
            self.matched = asyncio.get_running_loop().create_future()
            asked = time.monotonic()
            self.ws.send({"type": "talk_now", "profile": self.profile})
            try:
                await asyncio.wait_for(asyncio.shield(self.matched), self.run.match_timeout)
            except TimeoutError:
                self.ws.send({"type": "cancel"})
                self.stats.unmatched += 1
                await asyncio.sleep(self.rng.uniform(5, 15))
                continue
            if self.stats.recording:
                self.stats.matches += 1
                self.stats.match_s.append(time.monotonic() - asked)
            cid = self.cid
            length = self.rng.uniform(0.5, 1.5) * self.run.chat_s
            try:
                await asyncio.wait_for(self.chat_done.wait(), length)
            except TimeoutError:
                if cid and self.cid == cid:
                    self.ws.send({"type": "end", "conversation_id": cid})
                    with_timeout = asyncio.wait_for(self.chat_done.wait(), 30)
                    try:
                        await with_timeout
                    except TimeoutError:
                        pass
            await asyncio.sleep(self.rng.uniform(2, 10))           # a breath before the next chat


class Moderator(Person):
    role = "moderator"

    async def behave(self) -> None:
        assert self.ws
        self.ws.send({"type": "watch_flags"})

    def on_frame(self, kind: str, frame: dict[str, Any]) -> None:
        if kind == "flag" and self.stats.recording:
            self.stats.flags_seen += 1


class Prober(Person):
    """One per gateway: an application-level ping every second.  Its round trip is the gateway's
    responsiveness (event-loop lag plus queueing), independent of Redis and of matching."""

    role = "patient"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.sub = f"prober-{self.sub}"
        self.pinged: float | None = None

    async def behave(self) -> None:
        assert self.ws
        while self.run.running:
            self.pinged = time.monotonic()
            self.ws.send({"type": "ping"})
            await asyncio.sleep(1.0)

    def on_frame(self, kind: str, frame: dict[str, Any]) -> None:
        if kind == "pong" and self.pinged is not None and self.stats.recording:
            self.stats.ping_rtt[f"gateway {self.gw.port}"].append((time.monotonic() - self.pinged) * 1000)
            self.pinged = None


# ---- the run --------------------------------------------------------------------------------------------
class LoadRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.think = args.think
        self.chat_s = args.chat_s
        self.stagger = args.stagger
        self.match_timeout = args.match_timeout
        self.running = True
        self.stats = Stats()

    async def connect_all(self, people: list[Person], concurrency: int = 200) -> list[Person]:
        gate = asyncio.Semaphore(concurrency)

        async def one(p: Person) -> Person | None:
            async with gate:
                try:
                    await p.connect()
                    return p
                except Exception:
                    self.stats.connect_failures += 1
                    return None

        return [p for p in await asyncio.gather(*(one(p) for p in people)) if p is not None]

    async def watch_lag(self) -> None:
        """A late generator measures itself, not the servers: record how late a 100 ms sleep wakes."""
        while self.running:
            asked = time.monotonic()
            await asyncio.sleep(0.1)
            if self.stats.recording:
                self.stats.client_lag_ms.append((time.monotonic() - asked - 0.1) * 1000)

    async def main(self, gws: list[Any], redis_pid: int) -> dict[str, Any]:
        a, st = self.args, self.stats
        mix = ProfileMix(seed=11)
        moderators = a.moderators
        pairs = (a.conns - moderators - len(gws)) // 2
        people: list[Person] = [Moderator(self, i, gws[i % 2], {}) for i in range(moderators)]
        people += [Prober(self, i, gw, {}) for i, gw in enumerate(gws)]
        for i in range(pairs):
            people.append(Survivor(self, i, gws[i % 2], mix.profile().as_json()))
            people.append(Patient(self, i, gws[(i + 1) % 2], mix.profile().as_json()))
        pids = [g.proc.pid for g in gws]
        rss_before = [rss_kib(p) for p in pids]
        t0 = time.monotonic()
        live = await self.connect_all(people)
        ramp_s = time.monotonic() - t0
        await asyncio.sleep(3)
        rss_connected = [rss_kib(p) for p in pids]
        per_conn = (sum(rss_connected) - sum(rss_before)) / max(1, len(live))
        print(f"  {len(live)} connections signed in over {ramp_s:.1f} s ({st.connect_failures} failed); gateway "
              f"RSS {sum(rss_before) / 1024:.0f} -> {sum(rss_connected) / 1024:.0f} MiB = {per_conn:.1f} KiB per "
              "connection", flush=True)
        for p in live:
            asyncio.get_running_loop().create_task(p.behave())
        asyncio.get_running_loop().create_task(self.watch_lag())
        await asyncio.sleep(min(a.stagger, a.duration / 4))          # let matching get going
        st.recording = True
        cpu0 = {"gateways": sum(cpu_s(p) for p in pids), "redis": cpu_s(redis_pid), "client": sum(os.times()[:2])}
        started = time.monotonic()
        next_report = started + 30
        while (now := time.monotonic()) < started + a.duration:
            await asyncio.sleep(min(1.0, started + a.duration - now))
            if time.monotonic() >= next_report:
                next_report += 30
                open_now = sum(1 for p in live if p.ws and p.ws.lost.done() is False)
                print(f"  t={time.monotonic() - started:4.0f}s open={open_now} sent={st.sent} delivered={st.delivered}"
                      f" matches={st.matches} errors={sum(st.errors.values())}", flush=True)
        wall = time.monotonic() - started
        cpu1 = {"gateways": sum(cpu_s(p) for p in pids), "redis": cpu_s(redis_pid), "client": sum(os.times()[:2])}
        rss_end = [rss_kib(p) for p in pids]
        st.recording = False
        self.running = False
        await asyncio.sleep(5)                                          # in-flight deliveries land
        open_end = sum(1 for p in live if p.ws and not p.ws.lost.done())
        for p in live:
            if p.ws and p.ws.lost.done():
                st.closes[p.ws.close_code] += 1
        for p in live:
            if p.ws:
                p.ws.close()
        deliver, ack, match = sorted(st.deliver_ms), sorted(st.ack_ms), sorted(st.match_s)
        return {
            "connections": len(live), "connect_failures": st.connect_failures, "ramp_s": round(ramp_s, 1),
            "open_at_end": open_end, "duration_s": round(wall),
            "rss_mib_before": round(sum(rss_before) / 1024, 1),
            "rss_mib_connected": round(sum(rss_connected) / 1024, 1),
            "rss_mib_end": round(sum(rss_end) / 1024, 1), "kib_per_connection": round(per_conn, 1),
            "kib_per_connection_end": round((sum(rss_end) - sum(rss_before)) / max(1, len(live)), 1),
            "cpu_pct": {k: round(100 * (cpu1[k] - cpu0[k]) / wall, 1) for k in cpu0},
            "messages": {"sent": st.sent, "acked": st.acked, "delivered": st.delivered,
                         "per_s": round(st.sent / wall, 1), "undelivered": len(st.sent_at)},
            "deliver_ms": {"p50": round(percentile(deliver, 50), 1), "p99": round(percentile(deliver, 99), 1),
                           "max": round(deliver[-1], 1) if deliver else None},
            "ack_ms": {"p50": round(percentile(ack, 50), 1), "p99": round(percentile(ack, 99), 1),
                       "max": round(ack[-1], 1) if ack else None},
            "match_s": {"p50": round(percentile(match, 50), 2), "p99": round(percentile(match, 99), 2),
                        "count": len(match)},
            f"deliver_ms_p99_by_{a.window:g}s": windows(st.timeline, started, a.window),
            "ping_rtt_ms": {name: {"p50": round(percentile(sorted(v), 50), 1),
                                   "p99": round(percentile(sorted(v), 99), 1),
                                   "max": round(max(v), 1) if v else None} for name, v in st.ping_rtt.items()},
            "client_loop_lag_ms": {"p99": round(percentile(sorted(st.client_lag_ms), 99), 1),
                                   "max": round(max(st.client_lag_ms), 1) if st.client_lag_ms else None},
            "unmatched_timeouts": st.unmatched, "flags_seen_by_moderators": st.flags_seen,
            "errors": dict(st.errors), "unexpected_closes": {str(k): v for k, v in st.closes.items()},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=5000, help="connections in all (default 5000)")
    parser.add_argument("--duration", type=float, default=300, help="seconds of measured load (default 300)")
    parser.add_argument("--think", type=float, default=20, help="mean seconds between a person's messages")
    parser.add_argument("--chat-s", type=float, default=120, help="mean length of a chat in seconds")
    parser.add_argument("--stagger", type=float, default=60,
                        help="survivors come online and patients first press talk-now over this many seconds")
    parser.add_argument("--match-timeout", type=float, default=60, help="a patient cancels after this")
    parser.add_argument("--moderators", type=int, default=10)
    parser.add_argument("--window", type=float, default=30, help="report delivery p99 per this many seconds")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))       # the gateways inherit it
    if hard < args.conns + 2000:
        sys.exit(f"ulimit -n is {hard}: too low for {args.conns} connections")
    print(f"# connection load, {stamp()}\n# {machine()}\n# {args.conns} connections over 2 gateway processes, "
          f"{args.duration:.0f} s, a message every {args.think:g} s per person", flush=True)
    logs = tempfile.mkdtemp(prefix="aftertalk-load-")
    redis = RedisServer().start()
    env = {"AFTERTALK_MAX_CONNS_PER_IP": str(args.conns * 2), "AFTERTALK_SURVIVOR_DAILY_CAP": "1000",
           "AFTERTALK_OFFERS_PER_PATIENT_HOUR": "1000"}
    gws = [GatewayProcess(redis.url, "load", log_dir=logs, **env).start(wait=False) for _ in range(2)]
    try:
        for g in gws:
            g.wait_ready()
        assert redis.proc is not None
        load_before = os.getloadavg()
        result = asyncio.run(LoadRun(args).main(gws, redis.proc.pid))
        result["loadavg_1m"] = {"before": round(load_before[0], 1), "after": round(os.getloadavg()[0], 1)}
    finally:
        for g in gws:
            g.stop()
        redis.cleanup()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"(gateway logs and result.json in {logs})")
    for path in filter(None, (args.json, str(Path(logs) / "result.json"))):
        Path(path).write_bytes(orjson.dumps({"when": stamp(), "machine": machine(), "args": vars(args),
                                                  **result}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
