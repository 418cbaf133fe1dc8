"""A session does not outlive its token (issue 11), through real gateway processes: the server warns
with ``token_expiring`` ahead of ``exp``, a ``reauth`` with a fresh token for the same user and role
keeps the connection open, and without one the connection is closed 4401 "token expired" at ``exp``."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import jwt
import websockets

from core.keys import Keys
from gateway.auth import issue_token
from support.chat_pair import match_pair, refused_at_hello, send_frame
from support.gateway import ROOT, SECRET, Client, token

SHORT = 4          # seconds: issue_token rounds exp down to a whole second, so 3 to 4 s are left


def exp_of(tok: str) -> float:
    return float(jwt.decode(tok, options={"verify_signature": False})["exp"])


async def ping_pong(c: Client) -> None:
    await c.send({"type": "ping"})
    await c.expect("pong")


async def test_without_reauth_the_connection_is_warned_then_closed_4401_at_exp(gateways):
    (gw,) = gateways(1)
    pair = await match_pair(gw.ws_url, gw.ws_url)
    short = token("patient", pair.patient_id, "Pat", ttl=SHORT)
    exp = exp_of(short)
    c = await Client.connect(gw.ws_url, short)
    # until exp it is an ordinary session
    await c.send(send_frame(pair.cid, "before", "before the token expires"))
    await c.expect("ack", client_id="before")
    await c.send({"type": "history", "conversation_id": pair.cid})
    assert [m["text"] for m in (await c.expect("history"))["messages"]] == ["before the token expires"]

    warning = await c.expect("token_expiring", timeout=SHORT)
    left = exp - time.time()
    assert 0 < warning["in_s"] <= SHORT / 2 + 0.2 and abs(warning["in_s"] - left) < 0.5, (warning, left)
    assert warning["exp"] == exp
    assert await c.closed(SHORT + 2) == (4401, "token expired")
    assert exp - 0.05 <= time.time() <= exp + 1.0, "closed at exp, not before and not much after"
    # nothing more goes through that connection
    for frame in (send_frame(pair.cid, "after", "after expiry"), {"type": "history", "conversation_id": pair.cid}):
        try:
            await c.send(frame)
        except websockets.ConnectionClosed:
            pass
    await asyncio.sleep(0.3)
    assert not [f for f in c.frames if f.get("type") in ("ack", "history")]
    # the user's other connection (a long token) and the peer are untouched, and nothing was stored after exp
    await pair.patient.send({"type": "history", "conversation_id": pair.cid})
    texts = [m["text"] for m in (await pair.patient.expect("history"))["messages"]]
    assert texts == ["before the token expires"]
    await ping_pong(pair.survivor)
    await pair.patient.close()
    await pair.survivor.close()


async def test_reauth_keeps_the_connection_open_past_exp_and_every_new_token_gets_its_own_warning(gateways):
    (gw,) = gateways(1)
    pair = await match_pair(gw.ws_url, gw.ws_url, patient_name="Pat")
    first = token("patient", pair.patient_id, "Pat", ttl=SHORT)
    c = await Client.connect(gw.ws_url, first)
    await c.expect("token_expiring", timeout=SHORT)
    second = token("patient", pair.patient_id, "Pat", ttl=SHORT + 1)     # short again: a second warning
    await c.send({"type": "reauth", "token": second})
    assert (await c.expect("reauthed"))["exp"] == exp_of(second)
    await c.expect("token_expiring", timeout=SHORT + 1)
    # a new name in the token does not rename the session: the peer keeps seeing the name it was told
    third = token("patient", pair.patient_id, "Someone Else", ttl=3600)
    await c.send({"type": "reauth", "token": third})
    assert (await c.expect("reauthed"))["exp"] == exp_of(third)

    while time.time() < exp_of(second) + 1.0:                          # past both earlier exps
        await asyncio.sleep(0.1)
    assert c.ws.close_code is None
    await c.send(send_frame(pair.cid, "later", "still here"))
    await c.expect("ack", client_id="later")
    delivered = await pair.survivor.expect("message", client_id="later")
    assert delivered["from"]["name"] == "Pat"
    await c.send({"type": "history", "conversation_id": pair.cid})
    assert [m["text"] for m in (await c.expect("history"))["messages"]] == ["still here"]
    assert not c.of_type("token_expiring") and not c.of_type("error")
    for client in (c, pair.patient, pair.survivor):
        await client.close()


async def test_reauth_for_another_user_or_role_or_with_a_bad_token_is_refused_and_the_old_clock_runs_on(gateways):
    (gw,) = gateways(1)
    uid = "pat-reauth-refused"
    short = token("patient", uid, "Pat", ttl=SHORT)
    c = await Client.connect(gw.ws_url, short)
    now = time.time()
    refusals = {
        "other_user": token("patient", "someone-else", "Pat"),
        "other_role": token("survivor", uid, "Pat"),
        "invalid_token": issue_token("another-secret-" + "y" * 40, sub=uid, role="patient", name="Pat"),
        "token_expired": issue_token(SECRET, sub=uid, role="patient", name="Pat", ttl_s=-60),
    }
    wrong_alg = issue_token(SECRET, sub=uid, role="patient", name="Pat", algorithm="HS384")   # HS256 is pinned
    for reason, tok in [*refusals.items(), ("invalid_token", wrong_alg)]:
        await c.send({"type": "reauth", "token": tok})
        err = await c.expect("error", ref="reauth")
        assert (err["code"], err["reason"]) == ("reauth_refused", reason), err
    assert not c.of_type("reauthed")
    assert time.time() - now < SHORT - 1, "the refusals took too long for the clock check below"
    await c.expect("token_expiring", timeout=SHORT)
    assert await c.closed(SHORT + 2) == (4401, "token expired")
    assert time.time() >= exp_of(short) - 0.05


async def test_reauth_with_a_token_issued_before_an_erasure_is_refused(gateways, redis, redis_server, prefix):
    (gw,) = gateways(1)
    uid = "pat-erased-reauth"
    before = token("patient", uid, "Pat")                  # issued now, before the erasure
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "erase-user", uid, "--redis-url", redis_server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    erased_at = float(await redis.hget(Keys(prefix).erasures, uid))
    while time.time() < int(erased_at) + 1:                # iat has whole seconds: a later one
        await asyncio.sleep(0.05)
    c = await Client.connect(gw.ws_url, token("patient", uid, "Pat", ttl=SHORT))
    await c.send({"type": "reauth", "token": before})
    err = await c.expect("error", ref="reauth")
    assert (err["code"], err["reason"]) == ("reauth_refused", "erased")
    assert await c.closed(SHORT + 2) == (4401, "token expired")     # still on the clock of the token it had


async def test_a_malformed_reauth_is_bad_frame_and_the_connection_stays_open(gateways):
    (gw,) = gateways(1)
    c = await Client.connect(gw.ws_url, token("survivor"))
    for frame, field in [({"type": "reauth"}, "token"), ({"type": "reauth", "token": 7}, "token"),
                         ({"type": "reauth", "token": None}, "token"), ({"type": "reauth", "token": ""}, "token"),
                         ({"type": "reauth", "token": "x" * 5000}, "token")]:
        await c.send(frame)
        err = await c.expect("error", ref="reauth")
        assert (err["code"], err.get("field")) == ("bad_frame", field), (frame, err)
    await c.send({"type": "reauth", "token": "not.a.jwt"})
    assert (await c.expect("error", ref="reauth"))["code"] == "reauth_refused"
    await ping_pong(c)
    await c.close()


async def test_a_token_already_expired_at_hello_is_refused(gateways):
    (gw,) = gateways(1)
    for ttl in (-2, -60):     # -2 is inside the signature check's clock-skew leeway, but a session ends at exp
        tok = token("patient", ttl=ttl)
        assert await refused_at_hello(gw.ws_url, tok) == (4401, "token expired")
