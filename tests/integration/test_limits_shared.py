"""Per-user and per-address limits hold across gateway processes and reconnects (issue 11).

Every limit here is kept in Redis (gateway/quotas.py, chat/lua/append_bucket.lua, matcher/lua/request.lua),
so it counts every connection of a user, on every gateway, and survives the user's last connection
closing.  Each test but the talk-now one failed against the per-process limits the gateways had before
(a bucket per process dropped with the user's last connection, typing throttled per connection,
connection counters per process); talk-now was already counted in Redis and is checked so it stays so.
"""
from __future__ import annotations

import asyncio
import time
import uuid

from test_abuse_limits import eventually_connects, refused_with

from support.chat_pair import PROFILE, match_pair, messages, outcomes, send_frame, wait_for
from support.gateway import Client, token

RATE, BURST = 5, 20          # the documented defaults: AFTERTALK_SEND_RATE_PER_S / AFTERTALK_SEND_BURST


def acked(frames: list[dict], cid: str) -> int:
    return sum(isinstance(v, int) for v in outcomes(frames, cid).values())


async def test_reconnecting_does_not_refill_the_send_bucket(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    await pair.patient.close()          # the user's last connection: the old code dropped the bucket here
    total, rounds, start = 0, 5, time.monotonic()
    for r in range(rounds):             # connect, send 20 as fast as possible, close; five times
        c = await Client.connect((g1, g2)[r % 2].ws_url, pair.patient_token)
        for i in range(20):
            await c.send(send_frame(cid, f"r{r}-{i}"))
        await wait_for(lambda c=c: len(outcomes(c.frames, cid)) == 20, 10, "an answer to every send")
        total += acked(c.frames, cid)
        await c.close()
    elapsed = time.monotonic() - start
    # the bucket allows its burst, then the rate: 100 were acknowledged when reconnecting refilled it
    assert BURST <= total <= BURST + RATE * elapsed + 1, (total, elapsed)
    await wait_for(lambda: len(messages(pair.survivor.frames, cid)) >= total, 5, "acked messages delivered")
    assert len(messages(pair.survivor.frames, cid)) == total
    await pair.survivor.close()


async def test_one_user_on_two_gateways_gets_one_send_rate(gateways):
    # frames per connection are raised so that only the per-user send rate decides
    g1, g2 = gateways(2, AFTERTALK_FRAMES_PER_S=100000, AFTERTALK_FRAMES_BURST=100000)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    second = await Client.connect(g2.ws_url, pair.patient_token)
    seconds = 5.0

    async def flood(c: Client, tag: str, stop_at: float) -> int:
        n = 0
        while time.monotonic() < stop_at:
            await c.send(send_frame(cid, f"{tag}{n}"))
            n += 1
            await asyncio.sleep(0.005)              # ~150 offered per second per connection: 30x the rate
        return n

    start = time.monotonic()
    sent = await asyncio.gather(flood(pair.patient, "a", start + seconds), flood(second, "b", start + seconds))
    for c, n in zip((pair.patient, second), sent, strict=True):
        await wait_for(lambda c=c, n=n: len(outcomes(c.frames, cid)) >= n, 15, "an answer to every send")
    elapsed = time.monotonic() - start          # the last answers may have taken tokens refilled meanwhile
    total = acked(pair.patient.frames, cid) + acked(second.frames, cid)
    allowed = RATE * elapsed + BURST
    assert sum(sent) > 5 * allowed, sent        # both really sent far faster than the rate
    # per process, each gateway allowed its own burst and rate: about twice this
    assert total <= allowed + 1, (total, elapsed)
    assert total >= 0.8 * (RATE * seconds + BURST), (total, elapsed)   # and the rate is not starved either
    codes = {v for c in (pair.patient, second) for v in outcomes(c.frames, cid).values() if not isinstance(v, int)}
    assert codes == {"rate_limited"}
    for c in (pair.patient, second, pair.survivor):
        await c.close()


async def test_eight_connections_typing_within_a_second_send_the_peer_one_hint(gateways):
    g1, g2 = gateways(2)                        # AFTERTALK_TYPING_INTERVAL_S: the default 2 s
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    tabs = [await Client.connect((g1, g2)[i % 2].ws_url, pair.patient_token) for i in range(8)]
    await asyncio.gather(*(t.send({"type": "typing", "conversation_id": cid}) for t in tabs))
    await pair.survivor.expect("typing", conversation_id=cid)
    await asyncio.sleep(1.0)                    # the others would have arrived by now
    assert pair.survivor.of_type("typing") == []
    # the interval is per user and conversation: after it, the next hint goes out again
    await asyncio.sleep(1.2)
    await tabs[3].send({"type": "typing", "conversation_id": cid})
    await pair.survivor.expect("typing", conversation_id=cid)
    for c in (*tabs, pair.patient, pair.survivor):
        await c.close()


async def test_ten_connections_per_user_in_total_across_two_gateways_by_default(gateways):
    g1, g2 = gateways(2)                        # AFTERTALK_MAX_CONNS_PER_USER: the default 10
    tok = token("patient")
    conns = [await Client.connect((g1, g2)[i % 2].ws_url, tok) for i in range(10)]
    assert await refused_with(g1.ws_url, tok) == 4429
    assert await refused_with(g2.ws_url, tok) == 4429
    other = await Client.connect(g2.ws_url, token("patient"))           # the cap is per user
    await conns[0].close()                      # a slot on g1 comes back, and g2 may take it
    again = await eventually_connects(g2.ws_url, tok)
    assert await refused_with(g1.ws_url, tok) == 4429
    for c in (*conns[1:], again, other):
        await c.close()


async def test_connections_per_address_in_total_across_two_gateways(gateways):
    g1, g2 = gateways(2, AFTERTALK_MAX_CONNS_PER_IP=6)
    conns = [await Client.connect((g1, g2)[i % 2].ws_url, token("patient")) for i in range(6)]
    assert await refused_with(g2.ws_url, token("patient")) == 4429
    assert await refused_with(g1.ws_url, None) == 4429            # counted before hello, on either gateway
    await conns[1].close()                                         # was on g2
    again = await eventually_connects(g1.ws_url, token("survivor"))
    for c in (*conns[:1], *conns[2:], again):
        await c.close()


async def test_a_crashed_gateways_connections_stop_counting_after_the_lease(gateways):
    ttl = 1.0
    g1, g2 = gateways(2, AFTERTALK_MAX_CONNS_PER_USER=2, AFTERTALK_PRESENCE_TTL_S=ttl)
    tok = token("patient")
    held = [await Client.connect(g1.ws_url, tok) for _ in range(2)]
    assert await refused_with(g2.ws_url, tok) == 4429
    await asyncio.sleep(2 * ttl)                # renewed meanwhile: still counted while g1 lives
    assert await refused_with(g2.ws_url, tok) == 4429
    g1.kill()                                   # no close, no release: only the lease's expiry frees the slots
    crashed = time.monotonic()
    c = await eventually_connects(g2.ws_url, tok, timeout=ttl + 5)
    assert time.monotonic() - crashed < ttl + 5
    for x in (*held, c):
        await x.close()


async def test_talk_now_per_hour_is_counted_across_two_gateways_and_reconnects(gateways):
    if 3600 - time.time() % 3600 < 15:           # the count is per clock hour: do not straddle two
        await asyncio.sleep(3600 - time.time() % 3600 + 1)
    g1, g2 = gateways(2, AFTERTALK_OFFERS_PER_PATIENT_HOUR=3)
    tok = token("patient", f"pat-{uuid.uuid4().hex[:8]}")
    tabs = [await Client.connect(g1.ws_url, tok), await Client.connect(g2.ws_url, tok)]
    for i in range(3):
        tab = tabs[i % 2]
        await tab.send({"type": "talk_now", "profile": PROFILE})
        await tab.expect("queued")
        await tab.send({"type": "cancel"})
        await tab.expect("cancelled")
        await asyncio.sleep(0.2)                # the other tab's copies of these frames, then forget them
        for t in tabs:
            t.frames.clear()
    await tabs[1].send({"type": "talk_now", "profile": PROFILE})
    assert (await tabs[1].expect("error", ref="talk_now"))["code"] == "rate_limited"
    for t in tabs:
        await t.close()
    again = await Client.connect(g1.ws_url, tok)                  # a reconnect does not reset the count
    await again.send({"type": "talk_now", "profile": PROFILE})
    assert (await again.expect("error", ref="talk_now"))["code"] == "rate_limited"
    assert not again.of_type("queued")
    await again.close()
