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
from support.chat_pair import match_pair, metric, wait_for
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
