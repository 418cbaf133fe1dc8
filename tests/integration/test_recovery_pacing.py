"""Paced recovery: after Redis comes back, every connection is caught up, a few at a time, none given up.

When a gateway's pub/sub link is really lost, every connection it holds needs a catch-up from the
log and every user a re-sync from the control plane.  gateway/hub.py runs them through
AFTERTALK_CATCHUP_CONCURRENCY slots and retries a failed one with backoff.  (Before: all at once,
and a catch-up that failed while Redis was still loading or the client pool was empty was given
up, so its connection missed messages until the next one arrived: bench/recovery_bench.py saw 4 of
100 connections miss theirs.)
"""
from __future__ import annotations

import asyncio

import pytest

from chat.store import ChatStore
from core.keys import Keys
from support.chat_pair import match_pair, metric, send_frame, wait_for
from support.gateway import GatewayLauncher
from support.redis_server import RedisServer

PAIRS = 40


@pytest.fixture
def own_redis():
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


async def test_every_connection_is_caught_up_after_a_redis_restart_through_few_slots(own_redis, prefix, tmp_path):
    import redis.asyncio as aioredis

    launcher = GatewayLauncher(own_redis.url, prefix, str(tmp_path), AFTERTALK_CATCHUP_CONCURRENCY="3")
    try:
        g1, g2 = launcher(2)
        pairs = [await match_pair(g1.ws_url, g2.ws_url) for _ in range(PAIRS)]    # one at a time: each its own survivor
        clients = [c for p in pairs for c in (p.patient, p.survivor)]
        filler = aioredis.Redis.from_url(own_redis.url)
        for chunk in range(30):          # a data set that takes Redis a moment to load: the links come
            await filler.mset({f"filler:{chunk}:{i}": b"x" * 64 for i in range(10_000)})   # back meanwhile
        await filler.aclose()
        await asyncio.to_thread(own_redis.stop)
        await asyncio.sleep(2.0)                  # both links lost; their reconnect backoff grows
        await asyncio.to_thread(own_redis.start)  # same port and directory: the AOF is replayed
        redis = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
        chat = ChatStore(redis, Keys(prefix))
        try:
            # written before the links are back: not seen live, each must come through a catch-up
            for i, p in enumerate(pairs):
                await chat.append(p.cid, sender_id=p.patient_id, name="Pat", role="patient",
                                  client_id=f"after-{i}", text="still here", shown="")
        finally:
            await redis.aclose()

        def arrived(i: int) -> bool:
            p = pairs[i // 2]
            client = clients[i]
            return any(f["type"] == "message" and f.get("client_id") == f"after-{i // 2}"
                       and f["conversation_id"] == p.cid for f in client.of_type("message"))

        await wait_for(lambda: all(arrived(i) for i in range(len(clients))), 30,
                       "the message written after the restart at every connection")
        for client in clients:                    # once each: no catch-up replayed it twice
            assert len([f for f in client.of_type("message") if f.get("client_id", "").startswith("after-")]) == 1
        for g in (g1, g2):                        # and the queue of catch-ups drains
            waiting = -1.0
            for _ in range(100):
                waiting = await metric(g.url, "aftertalk_catchups_waiting")
                if waiting == 0:
                    break
                await asyncio.sleep(0.2)
            assert waiting == 0
    finally:
        launcher.stop_all()


async def test_connections_open_through_lost_writes_are_told_and_given_the_log_as_it_stands(prefix, tmp_path):
    """A failover that loses acknowledged writes, seen from connections that stay open: the log comes
    back shorter than what they were shown.  Each is told (recovery_failed, log_behind) and given the
    log from seq 1, and the next message, which reuses a seq they saw, reaches them all the same."""
    import signal

    import redis.asyncio as aioredis

    server = RedisServer(appendonly=False).start()       # a snapshot stands for what the replica had
    launcher = GatewayLauncher(server.url, prefix, str(tmp_path))
    try:
        g1, g2 = launcher(2)
        pair = await match_pair(g1.ws_url, g2.ws_url)
        cid = pair.cid

        async def say(client_id: str) -> int:
            await pair.patient.send(send_frame(cid, client_id, client_id))
            seq = (await pair.patient.expect("ack", client_id=client_id))["seq"]
            await pair.survivor.expect("message", client_id=client_id)
            return int(seq)

        for i in range(3):
            await say(f"kept-{i}")
        admin = aioredis.Redis.from_url(server.url)
        await admin.save()                                 # what the replica had
        await admin.aclose()
        assert [await say(f"lost-{i}") for i in range(3)] == [4, 5, 6]   # acknowledged, then lost
        await asyncio.to_thread(server.stop, signal.SIGKILL)
        await asyncio.to_thread(server.start)              # the "promoted replica": seqs 1-3 only
        for client in (pair.patient, pair.survivor):
            err = await client.expect("error", timeout=15, code="recovery_failed")
            assert (err["conversation_id"], err["reason"], err["ref"]) == (cid, "log_behind", "resync")
        for client in (pair.patient, pair.survivor):       # the log as it stands, from seq 1
            await wait_for(lambda c=client: [m["client_id"] for m in c.of_type("message")
                                             if m["seq"] <= 3][-3:] == ["kept-0", "kept-1", "kept-2"],
                           10, "the log replayed")
        assert await say("after") == 4                     # seq 4 again: delivered, not taken for a duplicate
    finally:
        launcher.stop_all()
        server.cleanup()
