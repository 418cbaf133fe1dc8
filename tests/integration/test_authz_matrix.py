"""The authorisation matrix: every frame type and HTTP endpoint against every role.

Roles: anonymous (no ``hello``), patient, survivor, moderator, a suspended user, and a patient
and a survivor who are participants of ANOTHER conversation.  Each cell says what the role
gets for a well-formed frame aimed at the conversation under test ("A", flagged by a crisis
message so that moderators may read it): the success frame, ``silent`` (accepted, nothing comes
back), an error code, or a close code.  Frames that end a conversation are aimed, in their
allowed cells, at a conversation of their own, prepared beforehand.

Then: token cases (expired, not yet valid, wrong signature, ``alg: none``, HS512 and RS256
headers, each missing claim, unknown role, audience and issuer) close with 4401 and are
refused by ``/api/audit``; a handshake from a foreign ``Origin`` is refused (default same-host
rule and an explicit list); a suspended user's open sockets close within seconds.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from core.keys import Keys
from gateway.protocol import FRAMES
from matcher.store import MatcherConfig, MatchStore
from support.gateway import SECRET, Client, token

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}
CRISIS_TEXT = "I want to end my life"

ROLES = ("anonymous", "patient", "survivor", "moderator", "suspended", "other_patient", "other_survivor")
# Cells: a frame type to expect back; "silent"; an error code; or a close code ("4401", "4403").
# Rows that end a conversation come last: their denied cells aim at A and must leave it open.
#                   anonymous  patient           survivor          moderator    suspended  other_patient other_survivor
MATRIX: dict[str, tuple[str, ...]] = {
    "hello":         ("welcome", "bad_frame",      "bad_frame",      "bad_frame", "4403", "bad_frame",  "bad_frame"),
    "ping":          ("4401",    "pong",           "pong",           "pong",      "4403", "pong",       "pong"),
    "reauth":        ("4401",    "reauthed",       "reauthed",       "reauthed",  "4403", "reauthed",   "reauthed"),
    "availability":  ("4401",    "forbidden",      "availability",   "forbidden", "4403", "forbidden",  "availability"),
    "talk_now":      ("4401",    "queued",         "forbidden",      "forbidden", "4403", "queued",     "forbidden"),
    "cancel":        ("4401",    "cancelled",      "forbidden",      "forbidden", "4403", "cancelled",  "forbidden"),
    "accept":        ("4401",    "forbidden",      "not_found",      "forbidden", "4403", "forbidden",  "not_found"),
    "decline":       ("4401",    "forbidden",      "not_found",      "forbidden", "4403", "forbidden",  "not_found"),
    "widen":         ("4401",    "not_found",      "forbidden",      "forbidden", "4403", "not_found",  "forbidden"),
    "talk_later":    ("4401",    "later",          "forbidden",      "forbidden", "4403", "later",      "forbidden"),
    "cancel_later":  ("4401",    "not_found",      "forbidden",      "forbidden", "4403", "not_found",  "forbidden"),
    "keep_in_touch": ("4401",    "keep_in_touch_sent", "keep_in_touch_sent", "forbidden", "4403", "forbidden",
                      "forbidden"),
    "talk_again":    ("4401",    "not_found",      "forbidden",      "forbidden", "4403", "not_found",  "forbidden"),
    "end_contact":   ("4401",    "not_found",      "not_found",      "forbidden", "4403", "not_found",  "not_found"),
    "send":          ("4401",    "ack",            "ack",            "forbidden", "4403", "forbidden",  "forbidden"),
    "history":       ("4401",    "history",        "history",        "history",   "4403", "forbidden",  "forbidden"),
    "typing":        ("4401",    "silent",         "silent",         "forbidden", "4403", "forbidden",  "forbidden"),
    "report":        ("4401",    "reported",       "reported",       "forbidden", "4403", "forbidden",  "forbidden"),
    "feedback":      ("4401",    "feedback_saved", "feedback_saved", "forbidden", "4403", "forbidden",  "forbidden"),
    "watch_flags":   ("4401",    "forbidden",      "forbidden",      "flags",     "4403", "forbidden",  "forbidden"),
    "watch":         ("4401",    "forbidden",      "forbidden",      "history",   "4403", "forbidden",  "forbidden"),
    "unwatch":       ("4401",    "forbidden",      "forbidden",      "unwatched", "4403", "forbidden",  "forbidden"),
    "notice":        ("4401",    "forbidden",      "forbidden",      "ack",       "4403", "forbidden",  "forbidden"),
    "resolve":       ("4401",    "forbidden",      "forbidden",      "not_found", "4403", "forbidden",  "forbidden"),
    "suspend":       ("4401",    "forbidden",      "forbidden",      "done",      "4403", "forbidden",  "forbidden"),
    "end":           ("4401",    "ended",          "ended",          "forbidden", "4403", "forbidden",  "forbidden"),
    "block":         ("4401",    "blocked",        "blocked",        "forbidden", "4403", "forbidden",  "forbidden"),
    "moderator_end": ("4401",    "forbidden",      "forbidden",      "done",      "4403", "forbidden",  "forbidden"),
}
ERROR_CODES = {"bad_frame", "forbidden", "not_found"}

# HTTP: status per role (a Bearer token of that role; anonymous sends none).
#                           anonymous patient survivor moderator suspended other_patient other_survivor
HTTP_MATRIX: dict[tuple[str, str], tuple[int, ...]] = {
    ("GET", "/healthz"):         (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/readyz"):          (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/metrics"):         (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/api/vocabulary"):  (200, 200, 200, 200, 200, 200, 200),
    ("GET", "/api/audit"):       (401, 403, 403, 200, 403, 403, 403),
    ("POST", "/api/demo-token"): (404, 404, 404, 404, 404, 404, 404),      # demo sign-in is off
}


# the group frames (issue 12) have their own matrix, of roles x members and non-members of a group:
# tests/integration/test_groups_authz.py
GROUP_FRAMES = {"create_group", "list_groups", "find_group", "cancel_find_group", "join_group", "leave_group",
                "mute_member", "remove_member", "readmit_member", "pin", "close_group"}


def test_the_matrix_covers_every_frame_type():
    assert set(MATRIX) | GROUP_FRAMES == set(FRAMES) and not set(MATRIX) & GROUP_FRAMES
    assert all(len(row) == len(ROLES) for row in (*MATRIX.values(), *HTTP_MATRIX.values()))


def uid(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}"


@dataclass
class Pair:
    patient: Client
    survivor: Client
    cid: str


@dataclass
class World:
    """Everyone the matrix needs, and the conversations its frames aim at."""

    gws: list[Any]
    a: Pair | None = None                                  # the conversation under test (flagged)
    b: Pair | None = None                                  # the other participants' conversation
    own: dict[tuple[str, str], Pair] = field(default_factory=dict)   # (frame, role) -> its own conversation
    moderator: Client | None = None
    suspended_token: str = ""
    victim: str = ""                                        # the user the moderator's suspend cell aims at
    clients: list[Client] = field(default_factory=list)

    async def connect(self, role: str, gw: int = 0, sub: str | None = None) -> Client:
        client = await Client.connect(self.gws[gw].ws_url, token(role, sub=sub or uid(role)))
        self.clients.append(client)
        return client

    async def pair(self, *, flagged: bool = False, ended: bool = False) -> Pair:
        """A survivor on gateway 1 accepts a patient on gateway 0; every survivor stays at capacity."""
        survivor = await self.connect("survivor", 1)
        await survivor.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
        await survivor.expect("availability")
        patient = await self.connect("patient", 0)
        await patient.send({"type": "talk_now", "profile": PROFILE})
        offer = await survivor.expect("offer")
        await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
        cid = (await patient.expect("matched"))["conversation_id"]
        await survivor.expect("matched", conversation_id=cid)
        if flagged:
            await patient.send({"type": "send", "conversation_id": cid, "client_id": "crisis", "text": CRISIS_TEXT})
            await patient.expect("resources")
        if ended:
            await survivor.send({"type": "availability", "available": False})
            await survivor.expect("availability")
            await patient.send({"type": "end", "conversation_id": cid})
            await patient.expect("ended", conversation_id=cid)
            await survivor.expect("ended", conversation_id=cid)
        return Pair(patient, survivor, cid)

    def actor(self, ftype: str, role: str) -> Client:
        assert self.a and self.b and self.moderator
        if (ftype, role) in self.own and role != "moderator":
            pair = self.own[(ftype, role)]
            return pair.patient if role == "patient" else pair.survivor
        return {"patient": self.a.patient, "survivor": self.a.survivor, "moderator": self.moderator,
                "other_patient": self.b.patient, "other_survivor": self.b.survivor}[role]

    def fresh_token(self, ftype: str, role: str) -> str:
        user = (self.actor(ftype, role).welcome or {}).get("user") or {}
        return token(user.get("role", "patient"), sub=user.get("id"), name=user.get("name"))

    def frame(self, ftype: str, role: str) -> dict[str, Any]:
        assert self.a
        cid = self.own[(ftype, role)].cid if (ftype, role) in self.own else self.a.cid
        if ftype == "feedback" and ("feedback", "patient") in self.own:
            cid = self.own[("feedback", "patient")].cid                    # everyone aims at the ended one
        return {
            "hello": {"type": "hello", "token": token("patient", sub=uid("patient"))},
            "ping": {"type": "ping"},
            "reauth": {"type": "reauth", "token": self.fresh_token(ftype, role)},     # same user and role
            "availability": {"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1},
            "talk_now": {"type": "talk_now", "profile": PROFILE},
            "cancel": {"type": "cancel"},
            "accept": {"type": "accept", "offer_id": "o-does-not-exist"},
            "decline": {"type": "decline", "offer_id": "o-does-not-exist"},
            "widen": {"type": "widen", "profile": PROFILE},
            "talk_later": {"type": "talk_later", "profile": PROFILE},
            "cancel_later": {"type": "cancel_later", "request_id": "l-does-not-exist"},
            "keep_in_touch": {"type": "keep_in_touch", "conversation_id": cid},
            "talk_again": {"type": "talk_again", "contact_id": "k-does-not-exist"},
            "end_contact": {"type": "end_contact", "contact_id": "k-does-not-exist"},
            "send": {"type": "send", "conversation_id": cid, "client_id": uid("c"), "text": "hello"},
            "history": {"type": "history", "conversation_id": cid},
            "typing": {"type": "typing", "conversation_id": cid},
            "report": {"type": "report", "conversation_id": cid, "reason": "matrix"},
            "feedback": {"type": "feedback", "conversation_id": cid, "rating": 4},
            "watch_flags": {"type": "watch_flags"},
            "watch": {"type": "watch", "conversation_id": cid},
            "unwatch": {"type": "unwatch", "conversation_id": cid},
            "notice": {"type": "notice", "conversation_id": cid, "text": "A moderator is here."},
            "resolve": {"type": "resolve", "flag_id": "f-does-not-exist", "resolution": "matrix"},
            "suspend": {"type": "suspend", "user_id": self.victim, "reason": "matrix"},
            "end": {"type": "end", "conversation_id": cid},
            "block": {"type": "block", "conversation_id": cid},
            "moderator_end": {"type": "moderator_end", "conversation_id": cid, "reason": "matrix"},
        }[ftype]


async def first_frame_outcome(ws_url: str, frame: dict[str, Any] | None, tok: str | None = None) -> str:
    """Open a socket (optionally hello with ``tok``), send ``frame``; 'welcome' or the close code."""
    ws = await websockets.connect(ws_url)
    try:
        if tok is not None:
            await ws.send(orjson.dumps({"type": "hello", "token": tok}).decode())
        if frame is not None:
            await ws.send(orjson.dumps(frame).decode())
        while True:
            got = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            if got["type"] == "welcome":
                return "welcome"
    except websockets.ConnectionClosed as exc:
        return str(exc.rcvd.code if exc.rcvd else None)
    finally:
        await ws.close()


async def signed_in_outcome(client: Client, frame: dict[str, Any], expected: str) -> str:
    """Send the frame and a ping; report the error code answered, or the expected frame if it came."""
    ftype = frame["type"]
    await client.send(frame)
    await client.send({"type": "ping"})
    for _ in range(2 if ftype == "ping" else 1):
        await client.expect("pong")
    errors = [f for f in client.frames if f.get("type") == "error" and f.get("ref") == ftype]
    for e in errors:
        client.frames.remove(e)
    if errors:
        return errors[0]["code"]
    if expected in ("silent", "pong") or expected in ERROR_CODES:
        return "silent" if expected != "pong" else "pong"
    match = {"conversation_id": frame["conversation_id"]} if "conversation_id" in frame else {}
    if expected in ("ack", "done") and ftype in ("notice", "suspend", "moderator_end", "resolve"):
        match["ref"] = ftype
    try:
        await client.expect(expected, timeout=5, **match)
    except AssertionError:
        return "nothing"
    return expected


async def test_every_frame_type_against_every_role(gateways, redis, prefix):
    g1, g2 = gateways(2, AFTERTALK_TALK_NOW_REJOIN_S="0")    # patients in a chat ask for another at once
    world = World([g1, g2])
    world.a = await world.pair(flagged=True)
    world.b = await world.pair()
    for ftype, role in [("end", "patient"), ("end", "survivor"), ("block", "patient"), ("block", "survivor")]:
        world.own[(ftype, role)] = await world.pair()
    world.own[("moderator_end", "moderator")] = await world.pair(flagged=True)
    ended = await world.pair(ended=True)
    world.own[("feedback", "patient")] = world.own[("feedback", "survivor")] = ended
    world.moderator = await world.connect("moderator", 0)
    world.victim = uid("patient")
    victims = [await world.connect("patient", gw, sub=world.victim) for gw in (0, 1)]
    suspended_id = uid("survivor")
    await MatchStore(redis, Keys(prefix), MatcherConfig()).suspend(suspended_id, 0, "matrix")
    world.suspended_token = token("survivor", sub=suspended_id)

    results: dict[tuple[str, str], str] = {}
    for ftype, row in MATRIX.items():
        for role, expected in zip(ROLES, row, strict=True):
            if role == "anonymous":
                results[(ftype, role)] = await first_frame_outcome(g1.ws_url, world.frame(ftype, "patient"))
            elif role == "suspended":
                results[(ftype, role)] = await first_frame_outcome(g2.ws_url, world.frame(ftype, "survivor"),
                                                                   world.suspended_token)
            else:
                results[(ftype, role)] = await signed_in_outcome(world.actor(ftype, role),
                                                                 world.frame(ftype, role), expected)
    wrong = {cell: (got, MATRIX[cell[0]][ROLES.index(cell[1])]) for cell, got in results.items()
             if got != MATRIX[cell[0]][ROLES.index(cell[1])]}
    assert not wrong, "cells (frame, role): (got, expected)\n" + "\n".join(f"{k}: {v}" for k, v in wrong.items())

    # what the allowed cells did, seen from the other side
    assert world.a.survivor.of_type("message") and world.a.patient.of_type("message")
    for victim in victims:                                 # the moderator's suspend closed them everywhere
        assert (await victim.expect("suspended"))["reason"] == "matrix"
        assert (await victim.closed())[0] == 4403
    # conversation A is still open: no denied cell ended it
    await world.a.patient.send({"type": "send", "conversation_id": world.a.cid, "client_id": "last", "text": "ok"})
    await world.a.patient.expect("ack", client_id="last")
    for c in world.clients:
        if c.ws.close_code is None:
            await c.close()


async def test_every_http_endpoint_against_every_role(gateways, redis, prefix):
    (gw,) = gateways(1)
    suspended_moderator = uid("moderator")
    await MatchStore(redis, Keys(prefix), MatcherConfig()).suspend(suspended_moderator, 0, "matrix")
    tokens = {"anonymous": None, "patient": token("patient"), "survivor": token("survivor"),
              "moderator": token("moderator"), "suspended": token("moderator", sub=suspended_moderator),
              "other_patient": token("patient"), "other_survivor": token("survivor")}
    wrong = {}
    async with httpx.AsyncClient(base_url=gw.url, timeout=5) as http:
        for (method, path), row in HTTP_MATRIX.items():
            for role, expected in zip(ROLES, row, strict=True):
                headers = {"Authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
                body = orjson.dumps({"role": "patient", "name": "Pat"}) if method == "POST" else None
                status = (await http.request(method, path, headers=headers, content=body)).status_code
                if status != expected:
                    wrong[(method, path, role)] = (status, expected)
    assert not wrong, wrong


# ---- tokens -------------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": uid("patient"), "role": "patient", "name": "Pat", "iat": now, "exp": now + 600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any) -> str:
    """A JWT whose header says anything, HMAC-signed with our secret (algorithm confusion)."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    return signing_input + "." + _b64(hmac.new(key, signing_input.encode(), digest).digest())


BAD_TOKENS = {
    "expired": lambda: jwt.encode(_claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"),
    "not_yet_valid": lambda: jwt.encode(_claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"),
    "wrong_signature": lambda: jwt.encode(_claims(), "another-secret-" + "q" * 40, algorithm="HS256"),
    "tampered_claims": lambda: (lambda t: t.split(".")[0] + "." + _b64(orjson.dumps(_claims(role="moderator")))
                                + "." + t.split(".")[2])(jwt.encode(_claims(), SECRET, algorithm="HS256")),
    "alg_none": lambda: f"{_b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{_b64(orjson.dumps(_claims()))}.",
    "alg_none_upper": lambda: f"{_b64(orjson.dumps({'alg': 'None'}))}.{_b64(orjson.dumps(_claims()))}.",
    "hs512_right_secret": lambda: jwt.encode(_claims(), SECRET, algorithm="HS512"),
    "rs256_header": lambda: _hand_signed({"alg": "RS256", "typ": "JWT"}, _claims(), SECRET.encode(), hashlib.sha256),
    "missing_exp": lambda: jwt.encode(_claims(exp=None), SECRET, algorithm="HS256"),
    "missing_sub": lambda: jwt.encode(_claims(sub=None), SECRET, algorithm="HS256"),
    "missing_role": lambda: jwt.encode(_claims(role=None), SECRET, algorithm="HS256"),
    "missing_name": lambda: jwt.encode(_claims(name=None), SECRET, algorithm="HS256"),
    "unknown_role": lambda: jwt.encode(_claims(role="admin"), SECRET, algorithm="HS256"),
    "role_not_a_string": lambda: jwt.encode(_claims(role=["moderator"]), SECRET, algorithm="HS256"),
    "not_a_jwt": lambda: "not.a.jwt",
    "empty": lambda: "",
}


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")     # HS512 with our HS256 secret
async def test_bad_tokens_close_4401_and_are_refused_by_the_audit_endpoint(gateways):
    (gw,) = gateways(1)
    ws_results = {kind: await first_frame_outcome(gw.ws_url, None, make()) for kind, make in BAD_TOKENS.items()}
    assert ws_results == {kind: "4401" for kind in BAD_TOKENS}
    async with httpx.AsyncClient(base_url=gw.url, timeout=5) as http:
        statuses = {kind: (await http.get("/api/audit", headers={"Authorization": f"Bearer {make()}"})).status_code
                    for kind, make in BAD_TOKENS.items() if kind != "empty"}
    assert statuses == {kind: 401 for kind in BAD_TOKENS if kind != "empty"}
    assert await first_frame_outcome(gw.ws_url, None, jwt.encode(_claims(), SECRET, algorithm="HS256")) == "welcome"


async def test_audience_and_issuer_are_checked_when_configured(gateways):
    (gw,) = gateways(1, AFTERTALK_JWT_AUDIENCE="aftertalk", AFTERTALK_JWT_ISSUER="https://id.example")
    cases = {
        "right": (_claims(aud="aftertalk", iss="https://id.example"), "welcome"),
        "no_aud": (_claims(iss="https://id.example"), "4401"),
        "wrong_aud": (_claims(aud="another-app", iss="https://id.example"), "4401"),
        "no_iss": (_claims(aud="aftertalk"), "4401"),
        "wrong_iss": (_claims(aud="aftertalk", iss="https://evil.example"), "4401"),
    }
    got = {k: await first_frame_outcome(gw.ws_url, None, jwt.encode(c, SECRET, algorithm="HS256"))
           for k, (c, _) in cases.items()}
    assert got == {k: want for k, (_, want) in cases.items()}


# ---- cross-site WebSocket hijacking -------------------------------------------------------------
async def handshake_status(ws_url: str, origin: str | None) -> int:
    try:
        ws = await websockets.connect(ws_url, origin=origin)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


async def test_foreign_origins_are_refused_at_the_handshake(gateways):
    (default,) = gateways(1)
    (listed,) = gateways(1, AFTERTALK_ALLOWED_ORIGINS="https://app.example,https://care.example")
    same = f"http://127.0.0.1:{default.port}"
    cases = [
        (default, same, 101), (default, None, 101),                       # the page's own origin; not a browser
        (default, "http://evil.example", 403), (default, "null", 403),
        (default, "http://127.0.0.1:1", 403), (default, f"https://127.0.0.1.evil.example:{default.port}", 403),
        (listed, "https://app.example", 101), (listed, "https://care.example", 101),
        (listed, "http://evil.example", 403), (listed, "https://app.example.evil.example", 403),
        (listed, "http://app.example", 403),                              # scheme matters
    ]
    got = [(gw.port, origin, await handshake_status(gw.ws_url, origin)) for gw, origin, _ in cases]
    assert got == [(gw.port, origin, want) for gw, origin, want in cases]


# ---- suspension -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["moderator_frame", "store"])
async def test_a_suspended_users_open_sockets_close_within_seconds(gateways, redis, prefix, how):
    g1, g2 = gateways(2)
    sub = uid("survivor")
    sockets = [await Client.connect(gw.ws_url, token("survivor", sub=sub)) for gw in (g1, g2, g2)]
    started = time.monotonic()
    if how == "moderator_frame":
        mod = await Client.connect(g1.ws_url, token("moderator"))
        await mod.send({"type": "suspend", "user_id": sub, "reason": "matrix"})
        await mod.expect("done", ref="suspend")
        await mod.close()
    else:
        await MatchStore(redis, Keys(prefix), MatcherConfig()).suspend(sub, 0, "matrix")
    codes = await asyncio.gather(*(s.closed(timeout=3) for s in sockets))
    assert [c for c, _ in codes] == [4403] * 3
    assert time.monotonic() - started < 3
    assert await first_frame_outcome(g1.ws_url, None, token("survivor", sub=sub)) == "4403"
