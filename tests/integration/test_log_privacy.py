"""Privacy in logs: no message text and no token ever reaches a log line, even at debug level.

Two gateway processes run with ``AFTERTALK_LOG_LEVEL=debug``.  A whole session goes through
them — match, chat, typing, history, a crisis message, a report, a moderator who watches,
posts a notice, resolves and ends, feedback, a suspension — and hostile input: garbage,
unknown types, binary, invalid UTF-8 and oversized frames, forged, expired and malformed
tokens, a token in the URL and in HTTP headers.  Every person-typed string and every frame is
a unique canary.  Then every log file the run wrote (the gateways' and the Redis server's) is
searched for the canaries and for any token, whole or in part.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import httpx
import jwt
import orjson
import websockets

from support.gateway import SECRET, Client, token

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}
JWT_HEADER = "eyJhbGci"            # base64 of '{"alg' — how every JWT starts


class Canaries:
    """Unique marker strings; ``new(label)`` makes one and remembers it."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:10]
        self.all: dict[str, str] = {}

    def new(self, label: str) -> str:
        value = f"canary{self.run}{label}"
        self.all[label] = value
        return value


async def refused(ws_url: str, first: str) -> int | None:
    """Send one frame as the first frame and return the close code."""
    ws = await websockets.connect(ws_url, max_size=2**20)
    try:
        await ws.send(first)
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


async def closed_code(client: Client) -> int | None:
    code, _ = await client.closed()
    return code


async def test_no_canary_and_no_token_in_any_log_line(gateways, redis_server, tmp_path):
    c = Canaries()
    g1, g2 = gateways(2, AFTERTALK_LOG_LEVEL="debug")
    tokens: list[str] = []

    def tok(role: str, label: str, **kw) -> str:
        t = token(role, sub=f"{role}-{uuid.uuid4().hex[:8]}", name=c.new(label), **kw)
        tokens.append(t)
        return t

    # ---- a whole session, every typed string a canary -----------------------------------------
    survivor = await Client.connect(g2.ws_url, s_tok := tok("survivor", "survivorname"))
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE})
    await survivor.expect("availability")
    patient = await Client.connect(g1.ws_url, tok("patient", "patientname"))
    await patient.send({"type": "talk_now", "profile": PROFILE})
    offer = await survivor.expect("offer")
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    cid = (await patient.expect("matched"))["conversation_id"]
    await survivor.expect("matched")
    for i in range(3):
        await patient.send({"type": "send", "conversation_id": cid, "client_id": c.new(f"clientid{i}"),
                            "text": c.new(f"message{i}")})
        await survivor.expect("message", seq=i + 1)
    await survivor.send({"type": "typing", "conversation_id": cid})
    await survivor.send({"type": "send", "conversation_id": cid, "client_id": "s1",
                         "text": f"call me on 555 123 4567 {c.new('contact')}"})
    await patient.expect("message", seq=4)
    await patient.send({"type": "send", "conversation_id": cid, "client_id": "crisis",
                        "text": f"I want to end my life {c.new('crisis')}"})
    await patient.expect("resources")
    await patient.send({"type": "history", "conversation_id": cid})
    await patient.expect("history")
    await survivor.send({"type": "report", "conversation_id": cid, "reason": c.new("reportreason")})
    await survivor.expect("reported")

    moderator = await Client.connect(g1.ws_url, mod_tok := tok("moderator", "moderatorname"))
    await moderator.send({"type": "watch_flags"})
    flags = (await moderator.expect("flags"))["flags"]
    await moderator.send({"type": "watch", "conversation_id": cid})
    await moderator.expect("history", conversation_id=cid)
    await moderator.send({"type": "notice", "conversation_id": cid, "text": c.new("notice")})
    await patient.expect("message", seq=6)
    await moderator.send({"type": "resolve", "flag_id": flags[0]["flag_id"], "resolution": c.new("resolution")})
    await moderator.expect("done", ref="resolve")
    await moderator.send({"type": "moderator_end", "conversation_id": cid, "reason": c.new("endreason")})
    await patient.expect("ended")
    await patient.send({"type": "feedback", "conversation_id": cid, "rating": 5, "comment": c.new("feedback")})
    await patient.expect("feedback_saved")
    victim = await Client.connect(g2.ws_url, tok("patient", "victimname"))
    await moderator.send({"type": "suspend", "user_id": victim.welcome["user"]["id"], "reason": c.new("suspend")})
    await moderator.expect("done", ref="suspend")
    assert await closed_code(victim) == 4403

    # ---- hostile input, canaries inside -----------------------------------------------------------
    for frame in [c.new("garbage"), '{"type":"' + c.new("unknowntype") + '"}',
                  '{"type":"send","text":"' + c.new("missingfields") + '"}',
                  '{"type":"send","conversation_id":"' + c.new("othercid") + '","client_id":"x","text":"'
                  + c.new("forbiddentext") + '"}',
                  '{"type":"ping","x":"' + c.new("surrogate") + '\\ud800"}']:
        await patient.ws.send(frame)
    await patient.send({"type": "ping"})
    await patient.expect("pong")
    for first, text, code in [(c.new("binary").encode(), False, 1003),
                              (c.new("invalidutf8").encode() + b"\xed\xa0\x80", True, 1007),
                              ('{"type":"send","text":"' + c.new("oversized") + "x" * 70000 + '"}', True, 1009)]:
        for gw in (g1, g2):
            closer = await Client.connect(gw.ws_url, tok("survivor", f"closer{code}{gw.port}"))
            await closer.ws.send(first, text=text) if isinstance(first, bytes) else await closer.ws.send(first)
            assert await closed_code(closer) == code

    now = int(time.time())
    bad_tokens = {
        "forged": jwt.encode({"sub": "x", "role": "patient", "name": c.new("forgedname"), "exp": now + 600},
                             "not-the-secret-" + "y" * 40, algorithm="HS256"),
        "expired": tok("patient", "expiredname", ttl=-600),
        "alg_none": jwt.encode({"sub": "x", "role": "patient", "name": "n", "exp": now + 600}, None,
                               algorithm="none"),
        "garbage": c.new("garbagetoken"),
        "unknown_role": jwt.encode({"sub": "x", "role": c.new("role"), "name": "n", "exp": now + 600}, SECRET,
                                   algorithm="HS256"),
    }
    tokens += [t for k, t in bad_tokens.items() if k != "garbage"]
    for gw in (g1, g2):
        for bad in bad_tokens.values():
            assert await refused(gw.ws_url, orjson.dumps({"type": "hello", "token": bad}).decode()) == 4401
        assert await refused(gw.ws_url, c.new("beforehello")) == 4401
        assert await refused(gw.ws_url, orjson.dumps({"type": "ping", "token": s_tok}).decode()) == 4401
    # a token where it does not belong: the URL and headers of the handshake
    in_url = await Client.connect(g1.ws_url + "?token=" + s_tok + "&q=" + c.new("query"), s_tok,
                                  additional_headers={"Authorization": f"Bearer {s_tok}",
                                                      "Cookie": f"session={s_tok}; c={c.new('cookie')}",
                                                      "X-Note": c.new("header")})
    await in_url.close()
    async with httpx.AsyncClient(base_url=g1.url, timeout=5) as http:
        assert (await http.get("/api/audit", headers={"Authorization": f"Bearer {mod_tok}"})).status_code == 200
        assert (await http.get("/api/audit", headers={"Authorization": f"Bearer {s_tok}"})).status_code == 403
        assert (await http.get("/api/audit", headers={"Authorization": f"Bearer {bad_tokens['forged']}"})
                ).status_code == 401
        assert (await http.get("/api/audit?after=" + c.new("auditafter"),
                               headers={"Authorization": f"Bearer {mod_tok}"})).status_code in (200, 400)
        assert (await http.post("/api/demo-token", content=orjson.dumps({"role": "patient",
                                                                         "name": c.new("demoname")}))
                ).status_code == 404
        assert (await http.get("/api/vocabulary?" + c.new("querystring"))).status_code == 200

    for client in (patient, survivor, moderator):
        await client.close()
    for gw in (g1, g2):
        gw.stop()                  # flush and close the logs

    # ---- every log the run wrote -------------------------------------------------------------------
    logs = [*sorted(Path(tmp_path).glob("*.log")), Path(redis_server.dir) / "redis.log"]
    gateway_logs = [p for p in logs if p.name.startswith("gateway-")]
    assert len(gateway_logs) == 2
    assert all("DEBUG" in p.read_text(errors="replace") for p in gateway_logs), "not logging at debug level"
    secrets = {**c.all, **{f"token {i}": t for i, t in enumerate(tokens)},
               **{f"token {i} signature": t.rsplit(".", 1)[1] for i, t in enumerate(tokens) if t.count(".") == 2
                  and len(t.rsplit(".", 1)[1]) >= 16},
               **{f"token {i} claims": t.split(".")[1][:24] for i, t in enumerate(tokens)},
               "a JWT": JWT_HEADER}
    leaks = []
    for path in logs:
        text = path.read_text(errors="replace")
        for label, secret in secrets.items():
            for line in text.splitlines():
                if secret in line:
                    leaks.append(f"{path.name}: {label}: {line[:200]}")
    assert not leaks, "\n".join(leaks[:20])
