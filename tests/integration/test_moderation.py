"""Moderation end to end: flags, crisis resources, reports, the moderator's feed, watch and actions,
and the audit trail, on a real Redis with two gateway processes."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from chat.flags import FlagStore, forget_author
from core.errors import ErrorCode, ServiceError
from core.keys import Keys
from matcher.profile import parse_profile
from matcher.store import MatcherConfig, MatchStore
from matcher.vocabulary import load_vocabulary
from support.gateway import ROOT, Client, token

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}
CRISIS_LINES = [{"name": "Test Lifeline", "phone": "0800 000 000", "url": "https://lifeline.example"}]
CRISIS_TEXT = "I want to end my life"
MASK = "[contact info removed]"


async def start_chat(patient_url: str, survivor_url: str) -> tuple[Client, Client, str]:
    """A patient on one gateway matched with a survivor on another; returns both and the conversation id."""
    survivor = await Client.connect(survivor_url, token("survivor", name="Sam"))
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE})
    await survivor.expect("availability")
    patient = await Client.connect(patient_url, token("patient", name="Pat"))
    await patient.send({"type": "talk_now", "profile": PROFILE})
    offer = await survivor.expect("offer")
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    cid = (await patient.expect("matched"))["conversation_id"]
    await survivor.expect("matched", conversation_id=cid)
    return patient, survivor, cid


async def say(sender: Client, cid: str, client_id: str, text: str) -> dict:
    await sender.send({"type": "send", "conversation_id": cid, "client_id": client_id, "text": text})
    return await sender.expect("ack", client_id=client_id)


async def moderator(url: str, name: str = "Mo") -> tuple[Client, str]:
    sub = f"mod-{name.lower()}-{time.monotonic_ns() % 10**8}"
    return await Client.connect(url, token("moderator", sub=sub, name=name)), sub


async def audit_log(url: str, tok: str | None, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with httpx.AsyncClient() as http:
        return await http.get(f"{url}/api/audit", params=params, headers=headers)


async def test_crisis_message_reaches_the_moderator_feed_on_the_other_gateway_within_a_second(gateways):
    g1, g2 = gateways(2, AFTERTALK_CRISIS_LINES=json.dumps(CRISIS_LINES))
    mod, _ = await moderator(g2.ws_url)
    await mod.send({"type": "watch_flags"})
    assert (await mod.expect("flags"))["flags"] == []
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)

    started = time.monotonic()
    await patient.send({"type": "send", "conversation_id": cid, "client_id": "c1", "text": CRISIS_TEXT})
    flag = await mod.expect("flag", timeout=2, category="crisis")
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"crisis flag took {elapsed:.3f}s to reach the moderator"
    print(f"\ncrisis message -> moderator feed on the other gateway: {elapsed * 1000:.1f} ms")
    ack = await patient.expect("ack", client_id="c1")
    assert flag["conversation_id"] == cid and flag["seq"] == ack["seq"]
    assert flag["severity"] == "high" and flag["priority"] is True and flag["status"] == "open"
    assert flag["excerpt"] == CRISIS_TEXT and isinstance(flag["ts"], int)

    resources = await patient.expect("resources", conversation_id=cid)
    assert resources["lines"] == CRISIS_LINES and resources["message"]
    assert (await survivor.expect("message", client_id="c1"))["text"] == CRISIS_TEXT
    assert not survivor.of_type("resources"), "resources go to the author only"

    # the flag is durable: a moderator arriving later gets it in the list, first in line
    late, _ = await moderator(g1.ws_url, "Lee")
    await late.send({"type": "watch_flags"})
    listed = (await late.expect("flags"))["flags"]
    assert [(f["flag_id"], f["category"], f["status"]) for f in listed] == [(flag["flag_id"], "crisis", "open")]
    for c in (patient, survivor, mod, late):
        await c.close()


async def test_contact_info_is_masked_for_the_reader_and_intact_for_moderators(gateways):
    g1, g2 = gateways(2)
    mod, _ = await moderator(g1.ws_url)
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    original = "text me on 07700 900123 or write to sam.survivor@example.com"
    await say(survivor, cid, "s1", original)
    shown = (await patient.expect("message", client_id="s1"))["text"]
    assert MASK in shown and "900123" not in shown and "example.com" not in shown
    assert (await survivor.expect("message", client_id="s1"))["text"] == shown   # the sender's echo is masked too

    flag = await mod.expect("flag", category="contact_info")
    assert flag["severity"] == "medium" and flag["excerpt"] == original and flag["priority"] is False

    await mod.send({"type": "watch", "conversation_id": cid})
    history = await mod.expect("history", conversation_id=cid)
    assert history["watching"] is True
    assert [m["text"] for m in history["messages"]] == [original]
    assert history["participants"]["survivor"]["name"] == "Sam"
    assert [f["status"] for f in history["flags"]] == ["acknowledged"]
    assert (await mod.expect("flag_acknowledged"))["flag_id"] == flag["flag_id"]

    # live: the reader sees the masked text, the watching moderator the original
    again = "my handle is @sam_survives, find me"
    await say(survivor, cid, "s2", again)
    assert MASK in (await patient.expect("message", client_id="s2"))["text"]
    live = await mod.expect("message", client_id="s2")
    assert live["text"] == again and live["seq"] == history["messages"][-1]["seq"] + 1

    # the participant's own history stays masked; a moderator's history shows originals
    await patient.send({"type": "history", "conversation_id": cid})
    assert all("900123" not in m["text"] for m in (await patient.expect("history"))["messages"])
    await mod.send({"type": "history", "conversation_id": cid})
    assert (await mod.expect("history"))["messages"][0]["text"] == original
    for c in (patient, survivor, mod):
        await c.close()


async def test_report_and_watch_only_while_a_flag_is_unresolved(gateways):
    g1, g2 = gateways(2)
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    await say(patient, cid, "p1", "hello")
    await survivor.expect("message", client_id="p1")
    mod, _ = await moderator(g2.ws_url)
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")

    # an unflagged conversation and an unknown one get the same refusal, for watch and history alike
    for target in (cid, "no-such-conversation"):
        for kind in ("watch", "history"):
            await mod.send({"type": kind, "conversation_id": target})
            err = await mod.expect("error", ref=kind)
            assert err["code"] == "forbidden" and err["message"] == "That conversation is not open to moderators."

    # reports: outsiders and unknown conversations get the same forbidden
    outsider = await Client.connect(g1.ws_url, token("patient", name="Olly"))
    for target in (cid, "no-such-conversation"):
        await outsider.send({"type": "report", "conversation_id": target, "reason": "spam"})
        err = await outsider.expect("error", ref="report")
        assert err["code"] == "forbidden" and err["message"] == "You are not part of that conversation."
    await patient.send({"type": "report", "conversation_id": cid, "reason": "He keeps asking where I live"})
    assert await patient.expect("reported", conversation_id=cid)
    flag = await mod.expect("flag", category="report")
    assert flag["severity"] == "high" and flag["seq"] == 1
    assert flag["reported_by"] == patient.welcome["user"]["id"]
    assert flag["excerpt"] == flag["reason"] == "He keeps asking where I live"
    # a second report while the first is open adds nothing
    await patient.send({"type": "report", "conversation_id": cid, "reason": "again"})
    await patient.expect("reported", conversation_id=cid)

    patient.frames.clear()
    survivor.frames.clear()
    await mod.send({"type": "watch", "conversation_id": cid})
    history = await mod.expect("history", conversation_id=cid)
    assert [m["text"] for m in history["messages"]] == ["hello"]
    assert [f["flag_id"] for f in history["flags"]] == [flag["flag_id"]]

    # watching is silent to the participants
    for who in (patient, survivor):
        await who.send({"type": "ping"})
        await who.expect("pong")
    assert [f["type"] for f in patient.frames] == [] and [f["type"] for f in survivor.frames] == []

    await mod.send({"type": "resolve", "flag_id": flag["flag_id"], "resolution": "spoke to both; no risk"})
    done = await mod.expect("done", ref="resolve")
    assert done["resolved"] is True and done["unresolved"] == 0 and done["conversation_id"] == cid
    resolved = await mod.expect("flag_resolved", flag_id=flag["flag_id"])
    assert resolved["resolved_by"] == mod.welcome["user"]["id"] and resolved["resolution"] == "spoke to both; no risk"
    await mod.expect("watch_ended", conversation_id=cid)
    await mod.send({"type": "watch_flags"})
    assert (await mod.expect("flags"))["flags"] == []
    # resolving twice changes nothing; an unknown flag is not_found
    await mod.send({"type": "resolve", "flag_id": flag["flag_id"], "resolution": "again"})
    assert (await mod.expect("done", ref="resolve"))["resolved"] is False
    await mod.send({"type": "resolve", "flag_id": "nope", "resolution": "x"})
    assert (await mod.expect("error", ref="resolve"))["code"] == "not_found"

    # after resolution the conversation is closed to moderators again, and the live watch stopped
    await say(patient, cid, "p2", "thanks")
    for kind in ("watch", "history"):
        await mod.send({"type": kind, "conversation_id": cid})
        assert (await mod.expect("error", ref=kind))["code"] == "forbidden"
    await mod.send({"type": "ping"})
    await mod.expect("pong")
    assert not [f for f in mod.of_type("message") if f.get("client_id") == "p2"]
    for c in (patient, survivor, outsider, mod):
        await c.close()


async def test_notice_and_moderator_end_reach_both_participants(gateways):
    g1, g2 = gateways(2)
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    mod, _ = await moderator(g1.ws_url, "Morgan")
    await mod.send({"type": "notice", "conversation_id": cid, "text": "Hello from the moderators"})
    assert (await mod.expect("error", ref="notice"))["code"] == "forbidden"       # nothing flagged yet

    await say(patient, cid, "p1", "you are a worthless idiot")
    await survivor.expect("message", client_id="p1")
    await mod.send({"type": "watch", "conversation_id": cid})
    await mod.expect("history", conversation_id=cid)

    await mod.send({"type": "notice", "conversation_id": cid, "text": "Please keep this conversation kind."})
    ack = await mod.expect("ack", ref="notice")
    for who in (patient, survivor, mod):
        m = await who.expect("message", client_id=ack["client_id"])
        assert m["from"] == {"name": "Morgan", "role": "moderator"}
        assert m["text"] == "Please keep this conversation kind." and m["seq"] == ack["seq"] == 2

    await mod.send({"type": "moderator_end", "conversation_id": cid, "reason": "Ended for everyone's safety."})
    done = await mod.expect("done", ref="moderator_end")
    assert done["ended"] is True
    for who in (patient, survivor):
        ended = await who.expect("ended", conversation_id=cid)
        assert ended["by"] == "moderator" and ended["reason"] == "Ended for everyone's safety."
    await mod.expect("ended", conversation_id=cid)                   # the watching moderator is told too
    await patient.send({"type": "send", "conversation_id": cid, "client_id": "p2", "text": "hello?"})
    assert (await patient.expect("error", ref="send"))["code"] == "conversation_ended"
    for c in (patient, survivor, mod):
        await c.close()


async def test_suspended_user_is_disconnected_everywhere_and_cannot_come_back_or_match(gateways, redis, prefix):
    g1, g2 = gateways(2)
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    sid = survivor.welcome["user"]["id"]
    second = await Client.connect(g1.ws_url, token("survivor", sub=sid, name="Sam"))  # also on the other gateway
    mod, _ = await moderator(g1.ws_url)
    await mod.send({"type": "suspend", "user_id": sid, "reason": "harassment"})
    done = await mod.expect("done", ref="suspend")
    assert done["user_id"] == sid and done["ended"] == [cid]
    for conn in (survivor, second):
        suspended = await conn.expect("suspended")
        assert suspended["reason"] == "harassment"
        code, _ = await conn.closed()
        assert code == 4403
    ended = await patient.expect("ended", conversation_id=cid)
    assert ended["by"] == "moderator"

    for gw in (g1, g2):                                   # cannot reconnect on any gateway
        async with websockets.connect(gw.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token("survivor", sub=sid, name="Sam")}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd.code == 4403

    # and cannot match: the matcher refuses to make them available, and dropped them from the index
    keys = Keys(prefix)
    store = MatchStore(redis, keys, MatcherConfig())
    profile = parse_profile(PROFILE, load_vocabulary())
    with pytest.raises(ServiceError) as refused:
        await store.set_availability(sid, "Sam", available=True, profile=profile, max_chats=1, auto_accept=False)
    assert refused.value.code == ErrorCode.SUSPENDED
    newcomer = await Client.connect(g2.ws_url, token("patient", name="Nia"))
    await newcomer.send({"type": "talk_now", "profile": PROFILE})
    assert (await newcomer.expect("queued"))["position"] == 1
    with pytest.raises(AssertionError):
        await newcomer.expect("matched", timeout=1.5)
    # a moderator cannot suspend themselves
    await mod.send({"type": "suspend", "user_id": mod.welcome["user"]["id"], "reason": "x"})
    assert (await mod.expect("error", ref="suspend"))["code"] == "bad_frame"
    for c in (patient, mod, newcomer):
        await c.close()


async def test_non_moderators_cannot_use_moderator_frames(gateways):
    (g1,) = gateways(1)
    patient, survivor, cid = await start_chat(g1.ws_url, g1.ws_url)
    frames = [{"type": "watch_flags"}, {"type": "watch", "conversation_id": cid},
              {"type": "unwatch", "conversation_id": cid},
              {"type": "notice", "conversation_id": cid, "text": "hi"},
              {"type": "moderator_end", "conversation_id": cid, "reason": "x"},
              {"type": "suspend", "user_id": survivor.welcome["user"]["id"], "reason": "x"},
              {"type": "resolve", "flag_id": "f1", "resolution": "x"}]
    for who in (patient, survivor):
        for frame in frames:
            await who.send(frame)
            assert (await who.expect("error", ref=frame["type"]))["code"] == "forbidden"
    mod, _ = await moderator(g1.ws_url)
    await mod.send({"type": "report", "conversation_id": cid, "reason": "x"})
    assert (await mod.expect("error", ref="report"))["code"] == "forbidden"
    await say(patient, cid, "p1", "still here")                       # the conversation is untouched
    await survivor.expect("message", client_id="p1")
    for c in (patient, survivor, mod):
        await c.close()


async def test_every_moderator_action_is_audited_and_readable_by_moderators_only(gateways, redis_server, prefix):
    g1, g2 = gateways(2)
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    mod, mod_id = await moderator(g2.ws_url, "Ada")
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")
    await say(patient, cid, "p1", "I want to kill myself")
    flag = await mod.expect("flag", category="crisis")
    await mod.send({"type": "watch", "conversation_id": cid})
    await mod.expect("history", conversation_id=cid)
    await mod.send({"type": "history", "conversation_id": cid})
    await mod.expect("history", conversation_id=cid)
    await mod.send({"type": "notice", "conversation_id": cid, "text": "We are here with you."})
    await mod.expect("ack", ref="notice")
    await mod.send({"type": "moderator_end", "conversation_id": cid, "reason": "handing over to the care team"})
    await mod.expect("done", ref="moderator_end")
    await mod.send({"type": "resolve", "flag_id": flag["flag_id"], "resolution": "care team called"})
    await mod.expect("done", ref="resolve")
    sid = survivor.welcome["user"]["id"]
    await mod.send({"type": "suspend", "user_id": sid, "reason": "test", "until": time.time() + 3600})
    await mod.expect("done", ref="suspend")

    expected = [("watch_flags", None), ("watch", cid), ("history", cid), ("notice", cid),
                ("moderator_end", cid), ("resolve", cid), ("suspend", None)]
    mod_token = token("moderator", sub=mod_id, name="Ada")
    r = await audit_log(g1.url, mod_token)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    entries = r.json()["entries"]
    assert [(e["action"], e.get("conversation_id")) for e in entries] == expected
    assert all(e["who"] == mod_id and e["who_name"] == "Ada" for e in entries)
    assert entries[-1]["user_id"] == sid and entries[5]["flag_id"] == flag["flag_id"]
    assert entries[3]["detail"] == "We are here with you." and entries[5]["detail"] == "care team called"
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)

    # paging
    first = (await audit_log(g2.url, mod_token, limit=3)).json()
    assert [e["action"] for e in first["entries"]] == ["watch_flags", "watch", "history"]
    rest = (await audit_log(g2.url, mod_token, after=first["next"], limit=10)).json()
    assert [e["action"] for e in rest["entries"]] == [a for a, _ in expected[3:]] and rest["next"] is None
    assert (await audit_log(g2.url, mod_token, after="not-an-id")).status_code == 400
    too_big = await audit_log(g2.url, mod_token, after="99999999999999999999-0")    # was a 503 and a traceback
    assert too_big.status_code == 400 and "out of range" in too_big.json()["error"]
    last = await audit_log(g2.url, mod_token, after="18446744073709551615-18446744073709551615")
    assert last.status_code == 200 and last.json() == {"entries": [], "next": None}
    assert (await audit_log(g2.url, mod_token, limit=0)).status_code == 400

    # moderators only
    assert (await audit_log(g1.url, token("patient"))).status_code == 403
    assert (await audit_log(g1.url, token("survivor"))).status_code == 403
    no_token = await audit_log(g1.url, None)
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"].startswith("Bearer")
    assert (await audit_log(g1.url, "forged.token.value")).status_code == 401
    assert (await audit_log(g1.url, token("moderator", ttl=-60))).status_code == 401

    # the CLI prints the same entries
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "audit", "--redis-url", redis_server.url, "--since", "2000-01-01",
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert [line.split("  ")[2] for line in lines] == [a for a, _ in expected]
    assert all(mod_id in line for line in lines)
    assert f"conversation_id={cid}" in lines[1] and f"user_id={sid}" in lines[-1]
    future = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "audit", "--redis-url", redis_server.url, "--since", str(time.time() + 60),
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _ = await asyncio.wait_for(future.communicate(), 20)
    assert future.returncode == 0 and out.decode() == ""
    for c in (patient, mod):
        await c.close()


async def test_flag_queue_order_priority_then_severity_then_age(redis, prefix):
    flags = FlagStore(redis, Keys(prefix))
    contact = await flags.raise_flags("c1", 1, [("contact_info", "medium")], "call 555 0100 000")
    report = await flags.report("c2", 4, "u2", "rude")
    crisis = await flags.raise_flags("c3", 2, [("crisis", "high"), ("abuse", "medium")], "original text")
    assert await flags.raise_flags("c1", 1, [("contact_info", "medium")], "call 555 0100 000") == []  # idempotent

    def order(listed):
        return [(f["conversation_id"], f["category"]) for f in listed]

    assert order(await flags.list_unresolved()) == [
        ("c3", "crisis"), ("c3", "abuse"), ("c2", "report"), ("c1", "contact_info")]
    # a crisis in c1 puts the whole conversation under priority review, ahead of c2's report
    await flags.raise_flags("c1", 5, [("crisis", "high")], "…")
    assert order(await flags.list_unresolved()) == [
        ("c3", "crisis"), ("c1", "crisis"), ("c1", "contact_info"), ("c3", "abuse"), ("c2", "report")]
    assert (await flags.get(contact[0]["flag_id"]))["priority"] is True
    assert await flags.has_unresolved("c2") and not await flags.has_unresolved("c9")
    out = await flags.resolve(report["flag_id"], "c2", "m1", "ok", {"who": "m1", "action": "resolve"})
    assert out["resolved"] is True and out["unresolved"] == 0
    assert not await flags.has_unresolved("c2")
    assert (await flags.get(report["flag_id"]))["resolved_by"] == "m1"
    with pytest.raises(ServiceError) as wrong:
        await flags.resolve(crisis[0]["flag_id"], "c2", "m1", "ok", {"who": "m1", "action": "resolve"})
    assert wrong.value.code == ErrorCode.NOT_FOUND
    assert await flags.count_unresolved() == 4


async def test_erasing_a_user_blanks_their_words_in_flags_but_keeps_the_record(redis, prefix):
    keys = Keys(prefix)
    flags = FlagStore(redis, keys)
    (said,) = await flags.raise_flags("c1", 2, [("abuse", "medium")], "you are a worthless idiot", author="u1")
    (other,) = await flags.raise_flags("c1", 3, [("abuse", "medium")], "no, you are an idiot", author="u2")
    reported = await flags.report("c1", 3, "u1", "she insulted me first")
    assert await forget_author(redis, keys, "c1", "u1") == 2
    assert await forget_author(redis, keys, "c1", "u1") == 0                        # idempotent
    assert (await flags.get(said["flag_id"]))["excerpt"] == ""
    blanked = await flags.get(reported["flag_id"])
    assert blanked["excerpt"] == blanked["reason"] == "" and blanked["category"] == "report"
    assert (await flags.get(other["flag_id"]))["excerpt"] == "no, you are an idiot"
    assert await flags.count_unresolved() == 3
