"""Shared steps of the group integration tests (docs/protocol.md, "Groups"): create, join, read back.

``Client.expect`` consumes frames; the helpers that only look (``of``, ``group_messages``) do not, so a
client's whole history stays available for the checks at the end of a test.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from support.chat_pair import wait_for
from support.gateway import Client, GatewayLauncher, GatewayProcess, token

TOPIC = {"kind": "diagnosis", "code": "breast"}
CRISIS_TEXT = "I want to end my life"
CRISIS_LINES = [{"name": "Test Lifeline", "phone": "0800 000 000", "url": "https://lifeline.example"}]
# the module's gateways: 200+ sockets from one address, and a few pollers faster than a person
GROUP_ENV = {"AFTERTALK_MAX_CONNS_PER_IP": "2000", "AFTERTALK_FRAMES_PER_S": "300", "AFTERTALK_FRAMES_BURST": "600"}


def uid(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


@dataclass
class Pair:
    """Two gateway processes of a test module, with the key prefix they share."""

    g1: GatewayProcess
    g2: GatewayProcess
    prefix: str
    launcher: GatewayLauncher

    @property
    def gws(self) -> tuple[GatewayProcess, GatewayProcess]:
        return (self.g1, self.g2)


@dataclass
class User:
    """Someone with a token: connect as many times as needed, on any gateway."""

    sub: str
    role: str
    name: str
    facilitator: bool = False

    @property
    def token(self) -> str:
        return token(self.role, sub=self.sub, name=self.name, facilitator=self.facilitator)

    async def connect(self, gw: GatewayProcess, **kw: Any) -> Client:
        return await Client.connect(gw.ws_url, self.token, **kw)


def person(role: str, name: str, *, facilitator: bool = False) -> User:
    return User(uid(role[:3]), role, name, facilitator)


def facilitator(name: str) -> User:
    return person("survivor", name, facilitator=True)


def create_frame(*, topic: dict[str, str] | None = None, language: str = "en", title: str = "A circle",
                 description: str = "We talk about what helps.", capacity: int | None = 8,
                 schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "create_group", "topic": topic or TOPIC, "language": language,
                             "title": title, "description": description}
    if capacity is not None:
        frame["capacity"] = capacity
    if schedule is not None:
        frame["schedule"] = schedule
    return frame


async def create_group(client: Client, **kw: Any) -> dict[str, Any]:
    """Create a group; returns its summary (``group`` of the answer)."""
    await client.send(create_frame(**kw))
    return (await client.expect("group", timeout=10))["group"]


async def join(client: Client, gid: str, timeout: float = 5.0) -> dict[str, Any]:
    await client.send({"type": "join_group", "group_id": gid})
    return await client.expect("joined", timeout=timeout, group_id=gid)


async def leave(client: Client, gid: str) -> dict[str, Any]:
    await client.send({"type": "leave_group", "group_id": gid})
    return await client.expect("left", group_id=gid)


async def error(client: Client, ref: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
    return await client.expect("error", timeout=timeout, ref=ref, **match)


def of(client: Client, ftype: str, **match: Any) -> list[dict[str, Any]]:
    """Frames of a type (and fields) received so far, without consuming them."""
    return [f for f in client.frames if f.get("type") == ftype and all(f.get(k) == v for k, v in match.items())]


async def wait_frame(client: Client, ftype: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
    """Wait until a frame of this type has arrived and return the first; does not consume it."""
    await wait_for(lambda: bool(of(client, ftype, **match)), timeout, f"{ftype} {match}")
    return of(client, ftype, **match)[0]


def group_messages(frames: Iterable[dict[str, Any]], gid: str) -> list[tuple[int, str]]:
    return [(f["seq"], f["client_id"]) for f in frames if f.get("type") == "message" and
            f.get("conversation_id") == gid]


async def presence(client: Client, gid: str, online: set[str], timeout: float = 8.0) -> dict[str, Any]:
    """Consume ``presence`` frames of the group until one lists exactly ``online``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: dict[str, Any] | None = None
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no presence {sorted(online)} for {gid}; last was {last}")
        try:
            last = await client.expect("presence", timeout=remaining, group_id=gid)
        except AssertionError:
            raise AssertionError(f"no presence {sorted(online)} for {gid}; last was {last}") from None
        if set(last["online"]) == online:
            return last


async def audit_entries(http_url: str, moderator: User, **match: str) -> list[dict[str, Any]]:
    """Every entry of ``GET /api/audit`` (moderator token) whose fields match, oldest first."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as http:
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
            r = await http.get("/api/audit", params=params, headers={"Authorization": f"Bearer {moderator.token}"})
            assert r.status_code == 200, r.text
            body = r.json()
            out += [e for e in body["entries"] if all(e.get(k) == v for k, v in match.items())]
            after = body["next"]
            if not after:
                return out


async def close_all(clients: Iterable[Client]) -> None:
    async def close(c: Client) -> None:
        if c.ws.close_code is None:
            try:
                await c.close()
            except Exception:                     # a socket on a killed gateway
                pass

    await asyncio.gather(*(close(c) for c in clients))
