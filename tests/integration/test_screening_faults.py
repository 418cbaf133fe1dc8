"""Fault test of the screening workers: ``kill -9`` of a worker in the middle of a batch.

Every message is made to flag (thresholds near zero for these workers), so the expected outcome is
exact: every queued message gets one crisis flag, announced once, although the batch the dead
worker held is scored again by the worker that claims it."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
import redis.asyncio as aioredis

from chat.screening.queue import GROUP, ScreenQueue
from chat.store import ChatStore
from core.keys import Keys

MESSAGES = 160
EVERYTHING_FLAGS = {"AFTERTALK_SCREEN_CRISIS_THRESHOLD": "0.001", "AFTERTALK_SCREEN_REVIEW_THRESHOLD": "0.001",
                    "AFTERTALK_SCREEN_ABUSE_THRESHOLD": "1", "AFTERTALK_SCREEN_MEDICAL_THRESHOLD": "1",
                    "AFTERTALK_SCREENING_BATCH": str(MESSAGES), "AFTERTALK_SCREENING_CLAIM_IDLE_S": "1"}


async def test_kill_9_mid_batch_every_message_is_screened_and_flagged_once(redis_server, prefix, moderators):
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(prefix)
    chat = ChatStore(redis, keys, screening=True)
    queue = ScreenQueue(redis, keys)
    await queue.ensure_group()
    expected = set()
    for c in range(4):
        cid = f"c{c}"
        await chat.open(cid, epoch="e1", patient=(f"p{c}", "Pat"), survivor=(f"s{c}", "Sam"))
        for i in range(MESSAGES // 4):
            sender = f"p{c}" if i % 2 == 0 else f"s{c}"
            appended = await chat.append(cid, sender_id=sender, name="x", role="patient", client_id=f"m{i}",
                                         text=f"message {i}: I keep thinking about the pills in the drawer", shown="")
            expected.add((cid, appended.seq))

    announced: Counter[str] = Counter()
    flagged: set[tuple[str, int]] = set()
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.flag_channel)

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                frame = orjson.loads(msg["data"])
                if frame.get("type") == "flag":
                    announced[frame["flag_id"]] += 1
                    flagged.add((frame["conversation_id"], frame["seq"]))

    listener = asyncio.create_task(listen())
    try:
        (first,) = moderators(1, **EVERYTHING_FLAGS)
        deadline = time.monotonic() + 60
        while True:      # wait until it holds its batch, best while raising its flags (one batch: all)
            pending = await redis.xpending(keys.screen_queue, GROUP)
            raising = 0 < len(flagged) < MESSAGES * 3 // 4      # the rest takes far longer than a kill
            if pending["pending"] > 0 and (raising or time.monotonic() > deadline - 50):
                break
            assert time.monotonic() < deadline, "the worker never took a batch"
            await asyncio.sleep(0.001)
        first.kill()
        held = (await redis.xpending(keys.screen_queue, GROUP))["pending"]
        assert held > 0, "the worker was not killed mid-batch"
        done_before = len(flagged)

        moderators(1, **EVERYTHING_FLAGS)
        deadline = time.monotonic() + 120
        while (await queue.backlog()).waiting > 0 or len(flagged) < len(expected):
            assert time.monotonic() < deadline, f"backlog left: {await queue.backlog()}, flagged {len(flagged)}"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)                  # any duplicate announcement would arrive by now
    finally:
        listener.cancel()
        await pubsub.aclose()
    assert flagged == expected
    assert set(announced.values()) == {1}, [f for f, n in announced.items() if n > 1]
    assert len(announced) == len(expected) == MESSAGES
    assert await redis.zcard(keys.flags) == MESSAGES
    print(f"killed with {held} entries held; {done_before} flags raised before the kill")
    await redis.aclose()


async def test_idle_consumers_without_pending_entries_are_forgotten_and_busy_ones_kept(redis_server, prefix):
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(prefix)
    queue = ScreenQueue(redis, keys)
    await queue.ensure_group()
    for i in range(2):
        await redis.xadd(keys.screen_queue, {"c": "c1", "s": i + 1})
    (done,) = await queue.read("exited-worker", 1, 100)
    await queue.ack([done.entry_id])
    await queue.read("dead-worker", 1, 100)                  # took an entry and never acknowledged it
    await asyncio.sleep(0.05)
    assert await queue.forget_idle_consumers(idle_s=0.01) == 1
    names = {c["name"] for c in await redis.xinfo_consumers(keys.screen_queue, GROUP)}
    assert names == {"dead-worker"}                          # its entry keeps an owner until it is claimed
    await redis.aclose()


async def test_a_rule_flag_lost_with_its_gateway_is_raised_by_the_worker(redis_server, prefix, moderators):
    """The gateway acknowledged a message the rules flagged and died before raising the flag: the
    categories stored with the message are raised by the worker, as the rules' flags."""
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = Keys(prefix)
    chat = ChatStore(redis, keys, screening=True)
    await chat.open("c1", epoch="e1", patient=("p1", "Pat"), survivor=("s1", "Sam"))
    await chat.append("c1", sender_id="p1", name="Pat", role="patient", client_id="m1",
                      text="call me on 07700 900123", shown="[contact info removed]", flags="contact_info")
    moderators(1)
    deadline = time.monotonic() + 30
    while not await redis.zcard(keys.flags):
        assert time.monotonic() < deadline, "no flag raised"
        await asyncio.sleep(0.1)
    (fid,) = await redis.zrange(keys.flags, 0, -1)
    flag = await redis.hgetall(keys.flag(fid))
    assert (flag["category"], flag["severity"], flag["source"], flag["seq"]) == ("contact_info", "medium", "rules", "1")
    await redis.aclose()
