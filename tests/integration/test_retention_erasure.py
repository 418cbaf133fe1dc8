"""Retention and erasure, end to end: transcripts leave Redis after the retention period, readers are
told plainly afterwards, and ``aftertalk erase-user`` removes a user's words, name and sign-in."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from chat.retention import purge_expired
from core.keys import Keys
from support.chat_pair import PROFILE, match_pair, refused_at_hello, send_frame
from support.gateway import ROOT, Client, token

DELETED = "Deleted user"


def conv_keys(prefix: str, cid: str) -> list[str]:
    k = Keys(prefix)
    return [k.conv_meta(cid), k.conv_log(cid), k.conv_client_ids(cid), k.conversation(cid)]


async def chat_a_little(pair, n: int = 3) -> None:
    for i in range(n):
        await pair.patient.send(send_frame(pair.cid, f"p{i}", f"patient line {i}"))
        await pair.survivor.send(send_frame(pair.cid, f"s{i}", f"survivor line {i}"))
    for i in range(n):
        await pair.patient.expect("ack", client_id=f"p{i}")
        await pair.survivor.expect("ack", client_id=f"s{i}")


async def test_retention_purges_ended_conversations_only_and_readers_are_told_plainly(gateways, redis, prefix):
    g1, g2 = gateways(2)
    ended = await match_pair(g1.ws_url, g2.ws_url)
    await chat_a_little(ended)
    still_open = await match_pair(g1.ws_url, g2.ws_url, survivor_name="Sue")
    await chat_a_little(still_open)
    await ended.patient.send({"type": "end", "conversation_id": ended.cid})
    await ended.survivor.expect("ended", conversation_id=ended.cid)
    last_seq = 6
    now = (await redis.time())[0] + 1
    assert await purge_expired(redis, Keys(prefix), now_s=now, retention_s=3600) == 0     # not due yet
    assert await purge_expired(redis, Keys(prefix), now_s=now, retention_s=0) == 1
    assert await redis.exists(*conv_keys(prefix, ended.cid)) == 0
    assert await redis.zscore(Keys(prefix).ended, ended.cid) is None
    assert await redis.exists(*conv_keys(prefix, still_open.cid)) == 4                   # open: kept
    # a participant asking for the purged transcript hears what a stranger would
    await ended.patient.send({"type": "history", "conversation_id": ended.cid})
    assert (await ended.patient.expect("error", ref="history"))["code"] == "forbidden"
    # resuming it with the epoch it knew: told plainly that recovery failed, never a fresh seq 1
    back = await Client.connect(g2.ws_url, ended.patient_token,
                                resume={ended.cid: {"seq": last_seq, "epoch": ended.epoch}})
    err = await back.expect("error", code="recovery_failed")
    assert err["conversation_id"] == ended.cid
    assert not back.of_type("message")
    # the open conversation is untouched
    await still_open.patient.send({"type": "history", "conversation_id": still_open.cid})
    assert len((await still_open.patient.expect("history"))["messages"]) == 6


async def test_the_housekeeping_loop_applies_the_configured_retention(gateways, redis, prefix):
    env = {"AFTERTALK_RETENTION_DAYS": "0.00002"}          # 1.7 s
    g1, = gateways(1, **env)
    pair = await match_pair(g1.ws_url, g1.ws_url)
    await chat_a_little(pair, 1)
    await pair.patient.send({"type": "end", "conversation_id": pair.cid})
    await pair.survivor.expect("ended", conversation_id=pair.cid)
    await asyncio.sleep(2.0)                               # let the retention period pass
    # a gateway's housekeeping purges on its first pass after start-up (then every minute)
    gateways(1, **env)
    meta = Keys(prefix).conv_meta(pair.cid)

    async def purged() -> bool:
        return await redis.exists(meta) == 0

    await wait_for_async(purged, 10, "the housekeeping loop to purge")
    assert await redis.exists(*conv_keys(prefix, pair.cid)) == 0


async def test_erase_user_cli_removes_their_words_and_name_and_refuses_their_token(gateways, redis, redis_server,
                                                                                   prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url, patient_name="Priya")
    secret = f"my oncologist at St Elsewhere said {prefix}"
    await pair.patient.send(send_frame(pair.cid, "secret", secret))
    await pair.patient.expect("ack", client_id="secret")
    await chat_a_little(pair, 2)
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "erase-user", pair.patient_id,
                         "--redis-url", redis_server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"erased user {pair.patient_id}: 3 messages" in done.stdout
    # the log keeps every seq and the peer's words; the erased user's entries are emptied and renamed
    rows = await redis.xrange(Keys(prefix).conv_log(pair.cid))
    assert [int(i.partition("-")[0]) for i, _ in rows] == list(range(1, 6))
    theirs = [f for _, f in rows if f["from"] == pair.patient_id]
    assert len(theirs) == 3 and all(f["text"] == "" and f["name"] == DELETED and "shown" not in f for f in theirs)
    assert [f["text"] for _, f in rows if f["from"] == pair.survivor_id] == ["survivor line 0", "survivor line 1"]
    assert not any(secret in v or "Priya" in v for _, f in rows for v in f.values())
    leftovers = await everything_under(redis, prefix)
    assert secret not in leftovers and "Priya" not in leftovers, "the erased user's words or name remain in Redis"
    # the peer's transcript shows a deleted user
    await pair.survivor.send({"type": "history", "conversation_id": pair.cid})
    history = (await pair.survivor.expect("history"))["messages"]
    from_them = [m for m in history if m["from"]["role"] == "patient"]
    assert from_them and all(m["from"]["name"] == DELETED and m["text"] == "" for m in from_them)
    # the session that was open is closed; their token no longer opens a session, on any gateway
    assert await pair.patient.closed(5) == (4401, "this account was erased")
    for g in (g1, g2):
        code, _ = await refused_at_hello(g.ws_url, pair.patient_token)
        assert code == 4401
    # the AOF was rewritten, so the words are gone from the disk as well
    await wait_for_aof_rewrite(redis)
    aof = b"".join(p.read_bytes() for p in Path(redis_server.dir).rglob("*.aof*") if p.is_file())
    assert aof and secret.encode() not in aof


async def wait_for_aof_rewrite(redis, timeout: float = 20.0) -> None:
    async def idle() -> bool:
        info = await redis.info("persistence")
        return not int(info["aof_rewrite_in_progress"]) and not int(info["aof_rewrite_scheduled"])

    await wait_for_async(idle, timeout, "the AOF rewrite")


async def wait_for_async(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def everything_under(redis, prefix: str) -> str:
    """Every key name and value under a prefix, as one string to search (strings, hashes, sets, zsets,
    lists, streams)."""
    parts: list[str] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        kind = await redis.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(await redis.get(key) or "")
        elif kind == "hash":
            parts += [f"{k}={v}" for k, v in (await redis.hgetall(key)).items()]
        elif kind == "set":
            parts += list(await redis.smembers(key))
        elif kind == "zset":
            parts += list(await redis.zrange(key, 0, -1))
        elif kind == "list":
            parts += list(await redis.lrange(key, 0, -1))
        elif kind == "stream":
            parts += [f"{k}={v}" for _, f in await redis.xrange(key) for k, v in f.items()]
    return "\n".join(parts)


async def test_erasing_an_available_survivor_takes_them_out_of_matching(gateways, redis, redis_server, prefix):
    """Found by the matching property test's author: the survivor's record went, their index entries
    stayed, and the next talk-now that picked them failed inside the matcher's script."""
    (g,) = gateways(1)
    survivor_id = f"sur-{prefix}"
    survivor = await Client.connect(g.ws_url, token("survivor", survivor_id, "Sam"))
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
    await survivor.expect("availability")
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "erase-user", survivor_id, "--redis-url", redis_server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    patient = await Client.connect(g.ws_url, token("patient", name="Pat"))
    await patient.send({"type": "talk_now", "profile": PROFILE})
    queued = await patient.expect("queued")
    assert queued["position"] == 1
    assert patient.of_type("error") == [] and patient.of_type("matched") == []
    assert not await redis.exists(Keys(prefix).survivor(survivor_id))
    await patient.close()


# ---- erasure of a connected user (issue 11) ---------------------------------------------------

async def erase_via_cli(redis_server, prefix: str, uid: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "erase-user", uid, "--redis-url", redis_server.url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


async def token_issued_after_erasure(redis, prefix: str, role: str, uid: str, name: str) -> str:
    """A fresh token whose ``iat`` (whole seconds) is later than the erasure tombstone."""
    at = float(await redis.hget(Keys(prefix).erasures, uid))
    while time.time() < int(at) + 1:
        await asyncio.sleep(0.05)
    return token(role, uid, name)


async def test_erasure_closes_every_live_session_and_only_a_later_token_signs_in_again(gateways, redis,
                                                                                      redis_server, prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url, patient_name="Priya")
    await chat_a_little(pair, 1)
    second = await Client.connect(g2.ws_url, pair.patient_token)      # the same user on the other gateway
    await erase_via_cli(redis_server, prefix, pair.patient_id)
    for client in (pair.patient, second):
        assert await client.closed(5) == (4401, "this account was erased")
    assert not pair.survivor.ws.close_code                              # the peer stays connected
    # the old token is refused on every gateway
    for g in (g1, g2):
        assert await refused_at_hello(g.ws_url, pair.patient_token) == (4401, "this account was erased")
    # a token without iat counts as old
    import jwt

    from support.gateway import SECRET
    no_iat = jwt.encode({"sub": pair.patient_id, "role": "patient", "name": "Priya",
                         "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    assert await refused_at_hello(g1.ws_url, no_iat) == (4401, "this account was erased")
    # a token issued after the erasure starts afresh: no conversations, no request
    fresh = await token_issued_after_erasure(redis, prefix, "patient", pair.patient_id, "Priya")
    back = await Client.connect(g1.ws_url, fresh)
    assert back.welcome is not None and back.welcome["conversations"] == [] and "request" not in back.welcome
    await back.send({"type": "talk_now", "profile": PROFILE})
    await back.expect("queued")
    await asyncio.sleep(0.3)
    assert not back.ws.close_code
    await back.close()


def mentions(key: str, uid: str, prefix: str, cids: set[str]) -> str:
    """Where in the key space a mention of ``uid`` was found, with ids replaced by placeholders."""
    k = key.removeprefix(f"{prefix}:")
    k = k.replace(uid, "<uid>")
    for cid in cids:
        k = k.replace(cid, "<cid>")
    return re.sub(r"^\{ctl\}:peers:(?!<uid>)[^:]+$", "{ctl}:peers:<other>", k)


async def where_mentioned(redis, prefix: str, uid: str, cids: set[str]) -> set[str]:
    """Every place (key, and the field holding the id) under the prefix where ``uid`` appears."""
    found: set[str] = set()
    async for key in redis.scan_iter(match=f"{prefix}:*", count=500):
        name = mentions(key, uid, prefix, cids)
        if uid in key:
            found.add(f"key {name}")
        kind = await redis.type(key)
        if kind == "string":
            if uid in (await redis.get(key) or ""):
                found.add(f"{name} value")
        elif kind == "hash":
            for f, v in (await redis.hgetall(key)).items():
                if uid in f or uid in v:
                    found.add(f"{name} field {f.replace(uid, '<uid>')}")
        elif kind in ("set", "zset", "list"):
            members = (await redis.smembers(key) if kind == "set" else await redis.zrange(key, 0, -1)
                       if kind == "zset" else await redis.lrange(key, 0, -1))
            if any(uid in m for m in members):
                found.add(f"{name} member")
        elif kind == "stream":
            for _, fields in await redis.xrange(key):
                for f, v in fields.items():
                    if uid in f or uid in v:
                        found.add(f"{name} entry field {f}")
    return found


# Where an erased user's id may still appear (chat/erasure.py's docstring, docs/protocol.md "Erasure"):
KEPT = {
    "{ctl}:erased-at field <uid>",                       # the tombstone
    "{ctl}:cv:<cid> field patient", "{ctl}:cv:<cid> field survivor",   # the matcher's record, until retention
    "{c:<cid>}:meta field patient", "{c:<cid>}:meta field survivor",  # the log's participants
    "{c:<cid>}:meta field erased:<uid>",                 # append refuses them there
    "{c:<cid>}:log entry field from",                    # their emptied entries keep the seq and sender id
    "{ctl}:peers:<other> member",                        # another patient's "talked with" list
}


async def test_erasing_a_connected_user_leaves_only_the_documented_traces(gateways, redis, redis_server, prefix):
    g1, g2 = gateways(2, AFTERTALK_TALK_NOW_REJOIN_S="0")     # a second talk-now right after a match
    uid = f"both-{prefix}"
    # as a survivor: available, matched with a patient, chatting
    as_survivor = await match_pair(g2.ws_url, g1.ws_url, survivor_id=uid, survivor_name="Uma")
    await chat_a_little(as_survivor, 2)
    # as a patient (same subject, another role): matched with another survivor, chatting
    as_patient_tok = token("patient", uid, "Uma")
    other = f"sur-other-{prefix}"
    other_client = await Client.connect(g2.ws_url, token("survivor", other, "Olga"))
    await other_client.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
    await other_client.expect("availability")
    patient = await Client.connect(g1.ws_url, as_patient_tok)
    await patient.send({"type": "talk_now", "profile": PROFILE})
    offer = await other_client.expect("offer")
    await other_client.send({"type": "accept", "offer_id": offer["offer_id"]})
    matched = await patient.expect("matched")
    cid2 = matched["conversation_id"]
    await patient.send(send_frame(cid2, "u1", "words of the patient side"))
    await patient.expect("ack", client_id="u1")
    # and a waiting request: everyone who could take it is busy
    await patient.send({"type": "talk_now", "profile": PROFILE})
    await patient.expect("queued")
    # issue 14: a contact kept with the patient they talked with as a survivor, a one-sided keep-in-touch
    # request, and a talk-later request with a note naming them
    for c in (as_survivor.patient, as_survivor.survivor):
        await c.send({"type": "keep_in_touch", "conversation_id": as_survivor.cid})
    kid = (await as_survivor.patient.expect("contact"))["contact_id"]
    await patient.send({"type": "keep_in_touch", "conversation_id": cid2})
    await patient.expect("keep_in_touch_sent", conversation_id=cid2)
    await patient.send({"type": "talk_later", "profile": PROFILE, "note": "mornings suit Uma"})
    await patient.expect("later")
    k = Keys(prefix)
    for key in (k.peers(uid), k.user_history(uid), k.user_convs(uid), k.request(uid), k.survivor(uid),
                k.later(uid), k.user_contacts(uid), k.contact(kid), k.keep_in_touch(cid2)):
        assert await redis.exists(key), key

    await erase_via_cli(redis_server, prefix, uid)
    for client in (as_survivor.survivor, patient):
        assert await client.closed(5) == (4401, "this account was erased")
    # a session that raced the close (signed in with a token from before the erasure) can write nothing
    from chat.store import ChatStore
    from core.errors import ErrorCode, ServiceError
    from gateway.auth import verify_token
    from matcher.profile import parse_profile
    from matcher.store import MatcherConfig, MatchStore
    from matcher.vocabulary import load_vocabulary
    from support.gateway import SECRET

    old_iat = verify_token(as_patient_tok, SECRET).iat
    match = MatchStore(redis, k, MatcherConfig())
    profile = parse_profile(PROFILE, load_vocabulary())
    for attempt in (match.talk_now(uid, "Uma", profile, issued_at=old_iat),
                    match.talk_now(uid, "Uma", profile),
                    match.set_availability(uid, "Uma", available=True, profile=profile, max_chats=1,
                                           auto_accept=False, issued_at=old_iat)):
        try:
            await attempt
        except ServiceError as exc:
            assert exc.code == ErrorCode.FORBIDDEN
        else:
            raise AssertionError("an erased session's matcher call went through")
    try:
        await ChatStore(redis, k).append(cid2, sender_id=uid, name="Uma", role="patient", client_id="late",
                                         text="after erasure", shown="")
    except ServiceError as exc:
        assert exc.code == ErrorCode.FORBIDDEN
    else:
        raise AssertionError("an erased sender's append went through")
    cids = {as_survivor.cid, cid2}

    async def settled() -> bool:        # the closed sessions' presence is cleared by their gateways
        return await where_mentioned(redis, prefix, uid, cids) <= KEPT

    try:
        await wait_for_async(settled, 10, "only the documented traces")
    except AssertionError:
        extra = sorted(await where_mentioned(redis, prefix, uid, cids) - KEPT)
        raise AssertionError(f"undocumented traces: {extra}") from None
    for key in (k.peers(uid), k.user_history(uid), k.user_convs(uid), k.request(uid), k.survivor(uid),
                k.user_conns(uid), k.blocks(uid), k.survivor_offers(uid), k.request_declined(uid),
                k.later(uid), k.user_contacts(uid), k.contact(kid), k.survivor_later(uid)):
        assert not await redis.exists(key), key
    assert await redis.smembers(k.user_contacts(as_survivor.patient_id)) == set()   # ended for the other side
    leftovers = await everything_under(redis, prefix)
    assert "words of the patient side" not in leftovers and "Uma" not in leftovers


async def test_a_user_erased_by_an_earlier_version_stays_refused(gateways, redis, prefix):
    """Before tombstones had a time, erasure added the id to a plain set: every token stays refused."""
    (g,) = gateways(1)
    uid = f"old-{prefix}"
    await redis.sadd(Keys(prefix).erased_before_tombstones, uid)
    code, reason = await refused_at_hello(g.ws_url, token("patient", uid, "Old"))
    assert (code, reason) == (4401, "this account was erased")
