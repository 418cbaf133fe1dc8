"""The gateway's edge: sign-in, bad frames, WebSocket-level limits, Origin, and the HTTP routes.

Most tests share one gateway process (module scope, its own key prefix) started
with ``AFTERTALK_HELLO_TIMEOUT_S=1``; each test uses fresh user ids.
"""
from __future__ import annotations

import asyncio
import base64
import time
import uuid

import httpx
import jwt
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from support.gateway import SECRET, Client, GatewayProcess, token
from support.redis_server import RedisServer

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}


@pytest.fixture(scope="module")
def gw(redis_server, tmp_path_factory):
    proc = GatewayProcess(redis_server.url, "edge" + uuid.uuid4().hex[:8],
                          log_dir=str(tmp_path_factory.mktemp("edge")), AFTERTALK_HELLO_TIMEOUT_S="1").start()
    yield proc
    proc.stop()


def uid(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}"


async def closed_with(ws, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the server closes; return (code, reason)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason or ""


async def hello_is_refused(gw, tok) -> tuple[int | None, str]:
    async with websockets.connect(gw.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "hello", "token": tok}).decode())
        return await closed_with(ws)


# ---------------------------------------------------------------- signing in

def _b64(obj) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


def _claims(**over):
    now = int(time.time())
    return {"sub": uid("patient"), "role": "patient", "name": "Pat", "exp": now + 600, **over}


BAD_TOKENS = {
    "garbage": lambda: "not-a-token",
    "empty": lambda: "",
    "expired": lambda: token("patient", ttl=-60),
    "forged": lambda: jwt.encode(_claims(), "another-secret-" + "y" * 40, algorithm="HS256"),
    "alg_none": lambda: ".".join([_b64({"alg": "none", "typ": "JWT"}), _b64(_claims()), ""]),
    "hs512": lambda: jwt.encode(_claims(), SECRET + "z" * 20, algorithm="HS512"),
    "unknown_role": lambda: jwt.encode(_claims(role="admin"), SECRET, algorithm="HS256"),
    "no_exp": lambda: jwt.encode({k: v for k, v in _claims().items() if k != "exp"}, SECRET, algorithm="HS256"),
    "not_yet_valid": lambda: jwt.encode(_claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_tokens_close_4401_with_a_reason(gw, kind):
    code, reason = await hello_is_refused(gw, BAD_TOKENS[kind]())
    assert code == 4401
    assert reason
    if kind == "expired":
        assert reason == "token expired"


async def test_token_of_the_wrong_type_closes_4401(gw):
    async with websockets.connect(gw.ws_url) as ws:
        await ws.send('{"type":"hello","token":12345}')
        code, reason = await closed_with(ws)
    assert code == 4401 and reason


async def test_no_hello_in_time_closes_4401(gw):
    async with websockets.connect(gw.ws_url) as ws:
        t0 = time.monotonic()
        code, reason = await closed_with(ws, timeout=5)
    assert code == 4401 and reason == "no hello in time"
    assert 0.8 <= time.monotonic() - t0 < 4


@pytest.mark.parametrize("first", [
    '{"type":"ping"}',
    '{"type":"talk_now","profile":{}}',
    "not json",
    "[]",
    '{"type":"hello"}',
])
async def test_anything_before_hello_closes_4401(gw, first):
    async with websockets.connect(gw.ws_url) as ws:
        await ws.send(first)
        code, reason = await closed_with(ws)
    assert code == 4401 and reason


async def test_binary_hello_closes_4401(gw):
    async with websockets.connect(gw.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "hello", "token": token("patient")}))
        code, _ = await closed_with(ws)
    assert code == 4401


async def test_valid_hello_gets_welcome(gw):
    sub = uid("patient")
    c = await Client.connect(gw.ws_url, token("patient", sub=sub, name="Pat"))
    assert c.welcome["user"] == {"id": sub, "role": "patient", "name": "Pat"}
    assert c.welcome["conversations"] == []
    assert c.welcome["limits"]["max_frame_bytes"] == 65536
    await c.close()


@pytest.mark.parametrize("name", ["   ", "\u200b\u200b", "\u202e", "\u3164", "\u2800", " \u2066\u200d\u2069 \u2800"])
async def test_a_name_with_nothing_visible_is_refused_like_an_empty_one(gw, name):
    code, reason = await hello_is_refused(gw, token("patient", sub=uid("patient"), name=name))
    assert (code, reason) == (4401, "invalid token: bad name")


async def test_format_characters_are_stripped_from_the_name_in_the_token(gw):
    c = await Client.connect(gw.ws_url, token("patient", sub=uid("patient"), name="\u202eretarednoM\u200b "))
    assert c.welcome["user"]["name"] == "retarednoM"
    await c.close()


async def test_demo_sign_in_cleans_the_name_and_falls_back_to_the_role(gateways):
    (g,) = gateways(1, AFTERTALK_DEMO="1")
    cases = [("\u202eretarednoM", "retarednoM"), ("S\u200bam\u2069", "Sam"), ("\u200b\u202e\u2800", "patient"),
             ("  ", "patient")]
    async with httpx.AsyncClient() as http:
        for typed, shown in cases:
            res = await http.post(f"{g.url}/api/demo-token", json={"role": "patient", "name": typed})
            assert res.status_code == 200, res.text
            assert not any(ch in res.json()["id"] for ch in "\u202e\u200b\u2069\u2800"), repr(typed)
            c = await Client.connect(g.ws_url, res.json()["token"])
            assert c.welcome["user"]["name"] == shown, repr(typed)
            await c.close()


# ---------------------------------------------------------------- bad frames keep the connection

async def still_usable(c: Client) -> None:
    await c.send({"type": "ping"})
    await c.expect("pong")


async def raw_error(c: Client, text: str) -> dict:
    await c.ws.send(text)
    err = await c.expect("error")
    assert err["message"]
    await still_usable(c)
    return err


async def test_bad_frames_get_error_frames_and_the_connection_stays_usable(gw):
    pat = await Client.connect(gw.ws_url, token("patient", sub=uid("patient")))
    cases = [
        ("{not json", "bad_frame", None),
        ("[1, 2]", "bad_frame", None),
        ('"talk_now"', "bad_frame", None),
        ('{"no_type": 1}', "bad_frame", None),
        ('{"type": 7}', "bad_frame", None),
        ('{"type": "fly_me_to_the_moon"}', "unknown_type", "fly_me_to_the_moon"),
        ('{"type": "talk_now"}', "bad_frame", "talk_now"),
        ('{"type": "talk_now", "profile": []}', "bad_frame", "talk_now"),
        ('{"type": "talk_now", "profile": {}, "prefer_same_diagnosis_s": true}', "bad_frame", "talk_now"),
        (f'{{"type": "talk_now", "profile": {orjson.dumps(PROFILE).decode()}, "prefer_same_diagnosis_s": -1}}',
         "bad_frame", "talk_now"),
        ('{"type": "send", "conversation_id": 5, "client_id": "a", "text": "x"}', "bad_frame", "send"),
        ('{"type": "history", "conversation_id": "c", "limit": "10"}', "bad_frame", "history"),
        ('{"type": "hello", "token": "again"}', "bad_frame", "hello"),
        ('{"type": "availability", "available": true}', "forbidden", "availability"),
        ('{"type": "accept", "offer_id": "o1"}', "forbidden", "accept"),
        ('{"type": "decline", "offer_id": "o1"}', "forbidden", "decline"),
        ('{"type": "watch_flags"}', "forbidden", "watch_flags"),
        ('{"type": "suspend", "user_id": "u", "reason": "r"}', "forbidden", "suspend"),
        ('{"type": "talk_now", "profile": {"diagnoses": ["unicorn"], "languages": ["en"]}}',
         "invalid_profile", "talk_now"),
        ('{"type": "talk_now", "profile": {"languages": ["en"]}}', "invalid_profile", "talk_now"),
        ('{"type": "talk_now", "profile": {"diagnoses": ["breast"]}}', "invalid_profile", "talk_now"),
        ('{"type": "talk_now", "profile": {"diagnoses": "breast", "languages": ["en"]}}',
         "invalid_profile", "talk_now"),
        ('{"type": "cancel"}', "not_found", "cancel"),
    ]
    for text, code, ref in cases:
        err = await raw_error(pat, text)
        assert (err["code"], err["ref"]) == (code, ref), text
    # field-level errors name the field
    err = await raw_error(pat, '{"type": "send", "conversation_id": 5, "client_id": "a", "text": "x"}')
    assert err["field"] == "conversation_id"
    # after all that, the connection still does real work
    await pat.send({"type": "talk_now", "profile": PROFILE})
    assert (await pat.expect("queued"))["position"] >= 1
    await pat.send({"type": "cancel"})
    await pat.expect("cancelled")
    await pat.close()


async def test_role_table_enforced_for_survivors_and_moderators(gw):
    sv = await Client.connect(gw.ws_url, token("survivor", sub=uid("survivor")))
    for frame in ({"type": "talk_now", "profile": PROFILE}, {"type": "cancel"},
                  {"type": "watch", "conversation_id": "c1"}, {"type": "resolve", "flag_id": "f", "resolution": "x"}):
        err = await raw_error(sv, orjson.dumps(frame).decode())
        assert (err["code"], err["ref"]) == ("forbidden", frame["type"])
    err = await raw_error(sv, '{"type":"availability","available":true,"profile":{"side_effects":["x"],'
                              '"languages":["en"]}}')
    assert (err["code"], err["ref"]) == ("invalid_profile", "availability")
    err = await raw_error(sv, '{"type":"availability","available":1}')
    assert (err["code"], err["ref"], err["field"]) == ("bad_frame", "availability", "available")
    mod = await Client.connect(gw.ws_url, token("moderator", sub=uid("moderator")))
    for frame in ({"type": "talk_now", "profile": PROFILE}, {"type": "availability", "available": True},
                  {"type": "accept", "offer_id": "o"}, {"type": "send", "conversation_id": "c", "client_id": "x",
                                                       "text": "hi"}, {"type": "end", "conversation_id": "c"}):
        err = await raw_error(mod, orjson.dumps(frame).decode())
        assert (err["code"], err["ref"]) == ("forbidden", frame["type"])
    await sv.close()
    await mod.close()


# ---------------------------------------------------------------- WebSocket-level limits

async def test_binary_frame_closes_1003(gw):
    c = await Client.connect(gw.ws_url, token("patient", sub=uid("patient")))
    await c.ws.send(b'{"type":"ping"}')
    code, reason = await c.closed()
    assert code == 1003 and reason


async def test_frame_larger_than_64_kib_closes_1009(gw):
    c = await Client.connect(gw.ws_url, token("patient", sub=uid("patient")))
    padding = "x" * (60 * 1024)
    await c.send({"type": "ping", "padding": padding})             # under the limit: fine
    await c.expect("pong")
    await c.send({"type": "ping", "padding": "x" * (64 * 1024 + 1)})
    code, _ = await c.closed()
    assert code == 1009


async def test_invalid_utf8_closes_1007(gw):
    c = await Client.connect(gw.ws_url, token("patient", sub=uid("patient")))
    await c.ws.send(b'{"type":"ping","x":"\xff\xfe"}', text=True)
    code, _ = await c.closed()
    assert code == 1007


async def test_foreign_origin_is_refused(gw):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(gw.ws_url, origin="http://evil.example")
    assert info.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        await websockets.connect(gw.ws_url, origin="http://127.0.0.1:1")       # same host, other port
    same = await Client.connect(gw.ws_url, token("patient", sub=uid("patient")),
                                origin=f"http://127.0.0.1:{gw.port}")
    await still_usable(same)
    await same.close()


async def test_configured_origins_are_allowed(gateways):
    (g,) = gateways(1, AFTERTALK_ALLOWED_ORIGINS="https://app.example, https://other.example")
    ok = await Client.connect(g.ws_url, token("patient"), origin="https://app.example")
    await still_usable(ok)
    await ok.close()
    with pytest.raises(InvalidStatus):
        await websockets.connect(g.ws_url, origin=f"http://127.0.0.1:{g.port}")


# ---------------------------------------------------------------- HTTP

async def test_crisis_lines_for_a_page_that_must_show_them_before_any_flag(gw):
    """The waiting screen when nobody fits shows the lines before anything was flagged: the same lines
    a resources frame would carry for that locale (here the shipped default, in the page's language)."""
    async with httpx.AsyncClient(base_url=gw.url) as http:
        spanish = (await http.get("/api/crisis-lines", params={"locale": "es-MX"})).json()
        english = (await http.get("/api/crisis-lines")).json()
    assert spanish["locale"] == "es" and [line["name"] for line in spanish["lines"]] == ["Servicios de emergencia"]
    assert english["locale"] == "en" and [line["name"] for line in english["lines"]] == ["Emergency services"]
    assert spanish["message"] != english["message"]


async def test_health_ready_and_vocabulary(gw):
    async with httpx.AsyncClient(base_url=gw.url) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        vocab = (await http.get("/api/vocabulary")).json()
    assert set(vocab) == {"diagnoses", "side_effects", "languages"}
    for section, minimum in (("diagnoses", 20), ("side_effects", 20), ("languages", 20)):
        entries = vocab[section]
        assert len(entries) >= minimum
        assert all(set(e) == {"code", "label"} and e["code"] and e["label"] for e in entries)
        assert len({e["code"] for e in entries}) == len(entries)
    codes = {e["code"] for e in vocab["side_effects"]}
    assert {"fatigue", "neuropathy", "lymphedema", "chemo_brain", "fear_of_recurrence", "fertility",
            "return_to_work"} <= codes
    assert all(len(e["code"]) == 2 for e in vocab["languages"])


async def test_metrics_expose_the_service_figures(gw):
    sam = await Client.connect(gw.ws_url, token("survivor", sub=uid("survivor"), name="Sam"))
    await sam.send({"type": "availability", "available": True, "profile": PROFILE, "auto_accept": True})
    await sam.expect("availability")
    pat = await Client.connect(gw.ws_url, token("patient", sub=uid("patient")))
    await pat.send({"type": "talk_now", "profile": PROFILE})
    await pat.expect("matched")
    async with httpx.AsyncClient(base_url=gw.url) as http:
        resp = await http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    for name in ("aftertalk_connections", "aftertalk_matches_total", "aftertalk_queue_length",
                 "aftertalk_offer_outcomes_total", "aftertalk_match_latency_seconds"):
        assert f"# TYPE {name}" in text, name
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['aftertalk_connections{role="patient"}'] >= 1
    assert samples['aftertalk_connections{role="survivor"}'] >= 1
    assert samples["aftertalk_matches_total"] >= 1
    assert samples['aftertalk_offer_outcomes_total{outcome="accepted"}'] >= 1
    assert samples["aftertalk_match_latency_seconds_count"] >= 1
    assert 'aftertalk_match_latency_seconds_bucket{le="+Inf"}' in samples
    assert "aftertalk_queue_length" in samples
    await sam.close()
    await pat.close()


async def test_readyz_is_503_while_redis_is_down(tmp_path):
    private = RedisServer(appendonly=False).start()
    proc = GatewayProcess(private.url, "ready", log_dir=str(tmp_path)).start()
    try:
        async with httpx.AsyncClient(base_url=proc.url) as http:
            assert (await http.get("/readyz")).status_code == 200
            private.stop()
            resp = await http.get("/readyz")
            assert resp.status_code == 503 and resp.json()["redis"] is False
            assert (await http.get("/healthz")).status_code == 200         # the process itself is up
            private.start()
            deadline = time.monotonic() + 10
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "never ready again"
                await asyncio.sleep(0.1)
    finally:
        proc.stop()
        private.cleanup()
