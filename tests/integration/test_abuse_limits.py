"""Abuse limits, each configurable: connections per user and per address, frames per second per
connection, talk-now requests per patient per hour, and idle connections cut after a ping timeout.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import struct
import time
import urllib.request
from typing import Any

import orjson
import websockets

from support.gateway import Client, token

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}


async def refused_with(ws_url: str, tok: str | None) -> int | None:
    """Open a socket, say hello (when given a token), and return the close code the server sends."""
    ws = await websockets.connect(ws_url)
    try:
        if tok is not None:
            await ws.send(orjson.dumps({"type": "hello", "token": tok}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert frame["type"] != "welcome", "expected a refusal, got a welcome"
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    finally:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.close()


async def eventually_connects(ws_url: str, tok: str, timeout: float = 5.0) -> Client:
    """The server frees a slot when it has processed a close: retry until it has (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await Client.connect(ws_url, tok)
        except (AssertionError, websockets.ConnectionClosed):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_connections_per_user_are_capped_with_4429(gateways):
    (gw,) = gateways(1, AFTERTALK_MAX_CONNS_PER_USER=2)
    tok = token("patient")
    first, second = await Client.connect(gw.ws_url, tok), await Client.connect(gw.ws_url, tok)
    assert await refused_with(gw.ws_url, tok) == 4429
    other_user = await Client.connect(gw.ws_url, token("patient"))      # the cap is per user
    await first.close()
    third = await eventually_connects(gw.ws_url, tok)                   # a slot came back
    await third.send({"type": "ping"})
    await third.expect("pong")
    for c in (second, third, other_user):
        await c.close()


async def test_connections_per_address_are_capped_with_4429(gateways):
    (gw,) = gateways(1, AFTERTALK_MAX_CONNS_PER_IP=3)
    clients = [await Client.connect(gw.ws_url, token(role)) for role in ("patient", "survivor", "moderator")]
    assert await refused_with(gw.ws_url, token("patient")) == 4429
    assert await refused_with(gw.ws_url, None) == 4429          # counted before hello: no token needed
    await clients[0].close()
    again = await eventually_connects(gw.ws_url, token("patient"))
    for c in (*clients[1:], again):
        await c.close()


async def next_of(c: Client, types: set[str], timeout: float = 5.0) -> dict[str, Any]:
    """Pop the next received frame whose type is one of ``types``."""
    deadline = time.monotonic() + timeout
    while True:
        for i, f in enumerate(c.frames):
            if f.get("type") in types:
                return c.frames.pop(i)
        assert time.monotonic() < deadline, f"no {types} within {timeout}s"
        await asyncio.sleep(0.01)


async def test_frames_over_the_rate_get_rate_limited_then_far_over_close_with_4429(gateways):
    rate, burst = 10, 10
    (gw,) = gateways(1, AFTERTALK_FRAMES_PER_S=rate, AFTERTALK_FRAMES_BURST=burst)
    tok = token("survivor")
    c = await Client.connect(gw.ws_url, tok)
    for _ in range(burst + 3):                            # the burst, then three over
        await c.send({"type": "ping"})
    answers = [(await next_of(c, {"pong", "error"})) for _ in range(burst + 3)]
    assert [a["type"] for a in answers[:burst]] == ["pong"] * burst
    over = answers[burst:]
    assert [(a["type"], a.get("code")) for a in over].count(("error", "rate_limited")) >= 2, over
    # a little over the rate is forgiven: the connection stays open and tokens come back
    deadline = time.monotonic() + 5
    while True:
        await asyncio.sleep(3 / rate)                     # refills 3 tokens; a refused ping costs 1
        await c.send({"type": "ping"})
        if (await next_of(c, {"pong", "error"}))["type"] == "pong":
            break
        assert time.monotonic() < deadline, "the connection never recovered from being rate limited"

    flood = await Client.connect(gw.ws_url, tok)
    for _ in range(burst * 4):                            # far over: the burst, then a burst of refusals
        await flood.send({"type": "ping"})
    code, _ = await flood.closed()
    assert code == 4429
    assert len(flood.of_type("pong")) <= burst + 2
    await c.close()


async def test_talk_now_requests_per_patient_per_hour_are_limited(gateways):
    (gw,) = gateways(1, AFTERTALK_OFFERS_PER_PATIENT_HOUR=3)
    patient = await Client.connect(gw.ws_url, token("patient"))
    for _ in range(3):
        await patient.send({"type": "talk_now", "profile": PROFILE})
        await patient.expect("queued")
        await patient.send({"type": "cancel"})
        await patient.expect("cancelled")
    await patient.send({"type": "talk_now", "profile": PROFILE})
    error = await patient.expect("error", ref="talk_now")
    assert error["code"] == "rate_limited"
    assert not patient.of_type("queued")
    other = await Client.connect(gw.ws_url, token("patient"))              # per patient, not global
    await other.send({"type": "talk_now", "profile": PROFILE})
    await other.expect("queued")
    await patient.close()
    await other.close()


# ---- idle connections ------------------------------------------------------------------------
class RawWebSocket:
    """A hand-made WebSocket client over a plain TCP socket: it never answers a ping by itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """(opcode, payload), or None at end of stream."""
        try:
            b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        except asyncio.IncompleteReadError:
            return None
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    def close(self) -> None:
        self.writer.close()


async def open_connections(url: str, role: str) -> float:
    def read() -> str:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            return r.read().decode()

    match = re.search(rf'^aftertalk_connections{{role="{role}"}} (\S+)$', await asyncio.to_thread(read), re.M)
    return float(match.group(1)) if match else 0.0


async def until_connections(url: str, role: str, count: int, deadline: float, message: str) -> None:
    """Poll the gateway's connection gauge (bounded by ``deadline``) until it shows ``count``."""
    while await open_connections(url, role) != count:
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


async def test_a_client_that_never_answers_pings_is_closed_within_interval_plus_timeout(gateways):
    interval, timeout = 0.5, 0.5
    (gw,) = gateways(1, AFTERTALK_PING_INTERVAL_S=interval, AFTERTALK_PING_TIMEOUT_S=timeout)
    answering = await Client.connect(gw.ws_url, token("patient"))   # websockets answers pings by itself
    raw = await RawWebSocket.connect(gw.port)
    accepted = time.monotonic()
    raw.send_text(orjson.dumps({"type": "hello", "token": token("survivor")}).decode())
    # from here on the raw client reads nothing: the server's pings wait unread in the socket
    deadline = accepted + interval + timeout + 1.0
    await until_connections(gw.url, "survivor", 1, deadline, "the raw client never signed in")
    await until_connections(gw.url, "survivor", 0, deadline, "the silent connection outlived interval + timeout")
    closed_after = time.monotonic() - accepted
    assert closed_after >= interval, f"closed after {closed_after:.2f} s, before any ping was due"
    # now read what the server wrote: the welcome, at least one ping, the close, then end of stream
    frames: list[tuple[int, bytes]] = []
    while (frame := await raw.read_frame()) is not None:
        frames.append(frame)
    opcodes = [op for op, _ in frames]
    assert 0x9 in opcodes, f"no ping before the close: {opcodes}"
    assert orjson.loads(frames[0][1])["type"] == "welcome"
    close = [payload for op, payload in frames if op == 0x8]
    assert close and struct.unpack("!H", close[0][:2])[0] in (1011, 4410)
    raw.close()
    # a client that answers pings is left alone well past interval + timeout
    assert answering.ws.close_code is None
    await answering.send({"type": "ping"})
    await answering.expect("pong")
    assert await open_connections(gw.url, "patient") == 1
    await answering.close()
