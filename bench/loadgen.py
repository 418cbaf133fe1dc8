"""The load generator shared by the relay benchmarks and the soak test: one asyncio process.

Clients come in pairs (one conversation or room each), or in groups (``recipients``: how many
clients should see each message, the author's own copy counted when ``own_copy``); every client
sends at a fixed offered rate and reads everything it is sent.  A message's text starts with four
words, ``step sender n send_ns`` (send_ns: CLOCK_MONOTONIC when the frame was written, the same
clock in every process of the machine), so the receiver measures end-to-end latency and counts per
sender and step: lost (sent, never seen by a recipient), duplicated or out of order (n not above
the last n seen from that sender).  The numbers are written in letters (base 26): a long run of
digits is a phone number to the moderation rules, which would mask it, as they should.

Sending is driven by one pacing loop for all clients (not a task per client): every tick it writes
each client's due frames, so the generator's own cost stays per frame, not per timer.  How late the
loop runs behind schedule is reported (``gen_lag_p99_ms``): a late generator means the figures
measure the generator, not the server.

Two wire protocols, one interface (:class:`Protocol`): ours (hello/welcome, ``send`` -> ``ack`` +
``message``) and the Channels tutorial's (``{"message": text}`` both ways).
"""
from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from common import percentile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

SENTENCES = [
    "How did your scan go yesterday? I kept thinking about you all afternoon.",
    "I finished my last round of chemo on Friday and I'm still so tired.",
    "The neuropathy in my feet got better once they lowered the dose.",
    "Did you have trouble going back to work after radiation?",
    "Honestly the hair loss was harder than I expected, even knowing it was coming.",
    "Thank you so much for listening, it really helps to talk to someone who gets it.",
    "My husband doesn't really understand the fear of recurrence.",
    "We tried ginger tea for the nausea, it helped a bit in the mornings.",
    "Chemo brain is the worst, I forget words in the middle of a sentence.",
    "Sending you a big hug. One day at a time, you've got this.",
]
now_ns = time.monotonic_ns


def letters(n: int) -> str:
    """n in base 26 with the digits a..z."""
    out = []
    while True:
        n, r = divmod(n, 26)
        out.append(chr(97 + r))
        if n == 0:
            return "".join(reversed(out))


def number(word: str) -> int:
    n = 0
    for ch in word:
        n = n * 26 + ord(ch) - 97
    return n


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class StepStats:
    """Counters of one load step (messages carry their step id, so stragglers land here too)."""

    step: int
    recipients: int = 1                 # clients that should see each message
    sent: int = 0
    received: int = 0                   # deliveries seen (first sightings)
    received_in_window: int = 0         # ... before the step's sending window closed
    duplicated_or_reordered: int = 0
    acked: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    window_end_ns: int = 1 << 62

    @property
    def lost(self) -> int:
        return self.sent * self.recipients - self.received


class Client:
    __slots__ = (
        "acks",
        "closed",
        "conversation",
        "idx",
        "last_seen",
        "peer",
        "phase",
        "reader",
        "seen",
        "sent",
        "target",
        "ws",
    )

    def __init__(self, idx: int, peer: int, target: Any) -> None:
        self.idx = idx
        self.peer = peer
        self.target = target              # protocol-specific: (ws_url, token) or a room URL
        self.ws: Any = None
        self.sent = 0
        self.last_seen: dict[tuple[int, int], int] = {}     # (step, sender) -> highest n seen
        self.closed: tuple[int | None, str] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.conversation = ""
        self.acks: dict[str, int | str] = {}    # soak: client_id -> acked seq or error code
        self.seen: list[tuple[int, str]] = []   # soak: (seq, client_id) of every message frame
        self.phase = 0.0


class Protocol:
    """How to connect, frame a text, and read frames, for one system under test."""

    keep_history = False                # soak: keep every ack and message for the checker

    async def open(self, client: Client) -> None:
        raise NotImplementedError

    def frame(self, client: Client, text: str, client_id: str) -> str:
        raise NotImplementedError

    def text_of(self, raw: str | bytes, client: Client, gen: LoadGen) -> str | None:
        """The chat text of a relayed message (None for anything else, after accounting for it)."""
        raise NotImplementedError


class AftertalkProtocol(Protocol):
    def __init__(self, *, keep_history: bool = False) -> None:
        self.keep_history = keep_history

    async def sign_in(self, client: Client) -> dict[str, Any]:
        """Connect and say hello with the client's token (``target[:2]`` is the URL and the token);
        return the first frame, the welcome."""
        url, tok = client.target[:2]
        client.ws = await connect(url, compression=None, max_size=2**20, open_timeout=30, ping_interval=None)
        await client.ws.send(orjson.dumps({"type": "hello", "token": tok}).decode())
        return orjson.loads(await client.ws.recv())

    async def open(self, client: Client) -> None:
        welcome = await self.sign_in(client)
        if welcome.get("type") != "welcome" or not welcome.get("conversations"):
            raise RuntimeError(f"unexpected welcome: {str(welcome)[:300]}")
        client.conversation = welcome["conversations"][0]["conversation_id"]

    def frame(self, client: Client, text: str, client_id: str) -> str:
        return orjson.dumps({"type": "send", "conversation_id": client.conversation, "client_id": client_id,
                             "text": text}).decode()

    def text_of(self, raw: str | bytes, client: Client, gen: LoadGen) -> str | None:
        f = orjson.loads(raw)
        kind = f.get("type")
        if kind == "message":
            if self.keep_history:
                client.seen.append((f["seq"], f["client_id"]))
            return f["text"]
        if kind == "ack":
            if self.keep_history:
                client.acks[f["client_id"]] = f["seq"]
            gen.step_of_client_id(f["client_id"]).acked += 1
        elif kind == "error":
            cid = f.get("client_id")
            if self.keep_history and cid:
                client.acks[cid] = f.get("code", "error")
            stats = gen.step_of_client_id(cid) if cid else gen.current
            stats.errors[f.get("code", "?")] = stats.errors.get(f.get("code", "?"), 0) + 1
        return None


class ChannelsProtocol(Protocol):
    async def open(self, client: Client) -> None:
        client.ws = await connect(client.target, compression=None, max_size=2**20, open_timeout=30,
                                  ping_interval=None)

    def frame(self, client: Client, text: str, client_id: str) -> str:
        return orjson.dumps({"message": text}).decode()

    def text_of(self, raw: str | bytes, client: Client, gen: LoadGen) -> str | None:
        return orjson.loads(raw).get("message")


class LoadGen:
    def __init__(self, protocol: Protocol, clients: list[Client], *, seed: int = 3, recipients: int = 1,
                 own_copy: bool = False) -> None:
        self.protocol = protocol
        self.clients = clients
        self.recipients = recipients      # a pair: 1 (the peer); a group of 8 counting the author's copy: 8
        self.own_copy = own_copy
        self.steps: dict[int, StepStats] = {}
        self.current = StepStats(-1)
        self.rng = random.Random(seed)
        self._sentences = list(SENTENCES)

    def step_of_client_id(self, client_id: str) -> StepStats:
        step = int(client_id.split(".", 1)[0])
        return self.steps.get(step) or self.current

    # ---- connections ---------------------------------------------------------------------------
    async def connect_all(self, batch: int = 50) -> None:
        for i in range(0, len(self.clients), batch):
            chunk = self.clients[i:i + batch]
            await asyncio.gather(*(self.protocol.open(c) for c in chunk))
            for c in chunk:
                c.reader = asyncio.get_running_loop().create_task(self._read(c))

    async def close_all(self) -> None:
        async def close(c: Client) -> None:
            if c.ws is not None:
                try:
                    await asyncio.wait_for(c.ws.close(), 5)
                except Exception:
                    pass
            if c.reader is not None:
                c.reader.cancel()
        await asyncio.gather(*(close(c) for c in self.clients))

    @property
    def closed_clients(self) -> list[Client]:
        return [c for c in self.clients if c.closed is not None]

    async def _read(self, c: Client) -> None:
        text_of, me, steps, own_copy = self.protocol.text_of, c.idx, self.steps, self.own_copy
        try:
            async for raw in c.ws:
                text = text_of(raw, c, self)
                if text is None:
                    continue
                t = now_ns()
                head = text.split(" ", 4)
                sender = number(head[1])
                if sender == me and not own_copy:
                    continue                # our own message echoed back to us
                step, n = number(head[0]), number(head[2])
                stats = steps.get(step)
                if stats is None:
                    continue
                last = c.last_seen.get((step, sender), 0)
                if n <= last:
                    stats.duplicated_or_reordered += 1
                    continue
                c.last_seen[step, sender] = n
                stats.received += 1
                if t <= stats.window_end_ns:
                    stats.received_in_window += 1
                stats.latencies_ns.append(t - number(head[3]))
        except ConnectionClosed as exc:
            c.closed = (exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:       # a bug in the reader must not hang the run silently
            c.closed = (None, f"reader error {type(exc).__name__}: {exc}")

    # ---- one step ------------------------------------------------------------------------------
    async def run_step(self, step: int, rate_total: float, seconds: float, *, drain_s: float = 5.0,
                       tick_s: float = 0.005, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
        """Offer ``rate_total`` msgs/s spread evenly over all clients for ``seconds``; then wait for
        stragglers (up to ``drain_s``) and return the step's figures."""
        stats = self.steps[step] = self.current = StepStats(step, self.recipients)
        clients = [c for c in self.clients if c.closed is None]
        per_client = rate_total / len(self.clients)
        interval_ns = int(1e9 / per_client)
        for c in clients:
            c.sent = 0
            c.phase = self.rng.random()
        names = {c.idx: letters(c.idx) for c in clients}
        step_word = letters(step)
        frame, pick = self.protocol.frame, self._sentences
        lags: list[int] = []
        cpu0, t0 = cpu_seconds(), now_ns()
        end = t0 + int(seconds * 1e9)
        stats.window_end_ns = end
        while True:
            t = now_ns()
            if t >= end:
                break
            worst = 0
            for c in clients:
                due = int((t - t0) / interval_ns + c.phase)
                while c.sent < due:
                    c.sent += 1
                    n = c.sent
                    late = t - (t0 + int((n - c.phase) * interval_ns))
                    if late > worst:
                        worst = late
                    ts = now_ns()
                    text = f"{step_word} {names[c.idx]} {letters(n)} {letters(ts)} {pick[n % len(pick)]}"
                    try:
                        await c.ws.send(frame(c, text, f"{step}.{c.idx}.{n}"))
                    except ConnectionClosed:
                        break
                    stats.sent += 1
            lags.append(worst)
            if on_tick is not None:
                on_tick()
            await asyncio.sleep(tick_s)
        send_cpu = cpu_seconds() - cpu0
        wall = (now_ns() - t0) / 1e9
        deadline = time.monotonic() + drain_s
        while stats.lost > 0 and time.monotonic() < deadline and not self.closed_clients:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)         # late duplicates, errors and acks
        lat = sorted(stats.latencies_ns)
        lags.sort()
        return {
            "step": step, "offered_per_s": rate_total, "seconds": seconds,
            "sent": stats.sent, "sent_per_s": stats.sent / seconds, "received": stats.received, "lost": stats.lost,
            "delivered_per_s": stats.received_in_window / seconds,
            "p50_ms": percentile(lat, 50) / 1e6, "p99_ms": percentile(lat, 99) / 1e6,
            "max_ms": (lat[-1] / 1e6) if lat else float("nan"),
            "dup_or_reordered": stats.duplicated_or_reordered, "errors": dict(stats.errors),
            "acked": stats.acked, "closed": len(self.closed_clients),
            "close_reasons": sorted({str(c.closed) for c in self.closed_clients})[:3],
            "gen_cpu_pct": 100 * send_cpu / wall, "gen_lag_p99_ms": percentile(lags, 99) / 1e6,
        }
