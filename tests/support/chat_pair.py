"""Shared steps of the chat integration tests: match a pair, drive sends, read back what happened.

Fault tests read ``Client.frames`` without consuming it (``expect`` pops frames), so a
client's whole history is still there for :func:`support.checker.check` at the end.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import websockets

from support.gateway import Client, token

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}


@dataclass
class Pair:
    patient: Client
    survivor: Client
    cid: str
    epoch: str
    patient_id: str
    survivor_id: str
    patient_token: str
    survivor_token: str


async def match_pair(patient_url: str, survivor_url: str, *, patient_name: str = "Pat",
                     survivor_name: str = "Sam", survivor_id: str | None = None,
                     survivor_client: Client | None = None) -> Pair:
    """A survivor (available, one chat at a time) accepts a talk-now patient's offer."""
    survivor_id = survivor_id or f"sur-{uuid.uuid4().hex[:8]}"
    patient_id = f"pat-{uuid.uuid4().hex[:8]}"
    s_tok = token("survivor", survivor_id, survivor_name)
    p_tok = token("patient", patient_id, patient_name)
    survivor = survivor_client
    if survivor is None:
        survivor = await Client.connect(survivor_url, s_tok)
        await survivor.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
        await survivor.expect("availability")
    patient = await Client.connect(patient_url, p_tok)
    await patient.send({"type": "talk_now", "profile": PROFILE})
    offer = await survivor.expect("offer")
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    matched = await patient.expect("matched")
    await survivor.expect("matched", conversation_id=matched["conversation_id"])
    return Pair(patient, survivor, matched["conversation_id"], matched["epoch"], patient_id, survivor_id,
                p_tok, s_tok)


def send_frame(cid: str, client_id: str, text: str | None = None) -> dict[str, Any]:
    return {"type": "send", "conversation_id": cid, "client_id": client_id, "text": text or f"msg {client_id}"}


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition over frames already received (without consuming them)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def outcomes(frames: Iterable[dict[str, Any]], cid: str) -> dict[str, int | str]:
    """client_id -> acked seq or error code, from a sender's frames (the last answer wins)."""
    out: dict[str, int | str] = {}
    for f in frames:
        if f.get("conversation_id") != cid or "client_id" not in f:
            continue
        if f["type"] == "ack":
            out[f["client_id"]] = f["seq"]
        elif f["type"] == "error":
            out[f["client_id"]] = f["code"]
    return out


def messages(frames: Iterable[dict[str, Any]], cid: str) -> list[tuple[int, str]]:
    """(seq, client_id) of every message frame of a conversation, in arrival order."""
    return [(f["seq"], f["client_id"]) for f in frames if f.get("type") == "message" and f["conversation_id"] == cid]


async def metric(http_url: str, name: str) -> float:
    """One unlabelled sample of a gateway's /metrics (0 if absent)."""
    import urllib.request

    def read() -> str:
        with urllib.request.urlopen(http_url + "/metrics", timeout=5) as r:
            return r.read().decode()

    for line in (await asyncio.to_thread(read)).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def http_status(url: str, timeout: float = 3.0) -> int:
    """The status of a GET (e.g. /readyz), without raising for 5xx."""
    import urllib.error
    import urllib.request

    def get() -> int:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    return await asyncio.to_thread(get)


async def refused_at_hello(ws_url: str, tok: str, timeout: float = 5.0) -> tuple[int | None, str]:
    """Open a raw connection, say hello, and return the close (code, reason) the server answers with."""
    async with websockets.connect(ws_url) as ws:
        await ws.send(orjson.dumps({"type": "hello", "token": tok}).decode())
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout)
        except websockets.ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


class Side:
    """One participant under fault injection: every connection it had, and every send it attempted.

    ``pump`` sends numbered messages at a steady pace until stopped or the connection dies;
    ``reconnect`` resumes from the last seq this side saw; ``retry_unanswered`` re-sends, with the
    same client ids, whatever never got an answer (the idempotent retry a real client makes)."""

    def __init__(self, client: Client, tok: str, cid: str, stem: str) -> None:
        self.conns = [client]
        self.tok = tok
        self.cid = cid
        self.stem = stem
        self.attempted: list[str] = []
        self._n = 0

    @property
    def client(self) -> Client:
        return self.conns[-1]

    def frames(self) -> list[dict[str, Any]]:
        return [f for c in self.conns for f in c.frames]

    def outcomes(self) -> dict[str, int | str | None]:
        out: dict[str, int | str | None] = {k: None for k in self.attempted}
        out.update(outcomes(self.frames(), self.cid))
        return out

    def acked(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes().items() if isinstance(v, int)}

    def unanswered(self) -> list[str]:
        return [k for k, v in self.outcomes().items() if v is None]

    def seen(self) -> list[tuple[int, str]]:
        return messages(self.frames(), self.cid)

    def last_seq(self) -> int:
        return max((seq for seq, _ in self.seen()), default=0)

    async def send_one(self) -> bool:
        client_id = f"{self.stem}{self._n}"
        try:
            await self.client.send(send_frame(self.cid, client_id))
        except websockets.ConnectionClosed:
            return False
        self._n += 1
        self.attempted.append(client_id)
        return True

    async def pump(self, stop: asyncio.Event, interval: float = 0.02) -> None:
        while not stop.is_set() and not self.client._reader.done():
            if not await self.send_one():
                return
            await asyncio.sleep(interval)

    async def reconnect(self, ws_url: str, *, epoch: str | None = None) -> Client:
        seq = self.last_seq()
        resume = {self.cid: {"seq": seq, "epoch": epoch} if epoch else seq}
        self.conns.append(await Client.connect(ws_url, self.tok, resume=resume))
        return self.client

    async def retry_unanswered(self) -> None:
        for client_id in self.unanswered():
            await self.client.send(send_frame(self.cid, client_id))
