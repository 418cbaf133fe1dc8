"""The service on Redis Sentinel (``redis+sentinel://``): two gateways and a screening worker follow a failover.

A primary, a replica and three Sentinels (quorum 2, down-after 1 s) on loopback.  Chats run across two
gateways; the primary is killed with ``kill -9`` while they send; Sentinel promotes the replica.  Just
before the kill the replica's link is cut (the replica paused, its connection killed on the primary),
so the last writes acknowledged by the primary never reach it: the asynchronous-replication loss that
Redis does not promise to avoid, made certain instead of left to timing.  Then:

* every client resumes (on the other gateway) with the last ``seq`` it had and its ``epoch``.  For each
  client, either the conversation's transcript as the promoted replica has it holds every message that
  client had been shown or had acknowledged, with the same ``seq``, or the client was told
  ``recovery_failed`` (``log_behind``), never a silently shorter transcript; and it is told exactly
  when it had something the log lost;
* the service goes on: new messages are acknowledged and delivered across the two gateways, both
  gateways' pub/sub links sit on the new primary, ``/readyz`` is 200, and the screening worker
  (``aftertalk moderate`` on the same URL) screens a message sent after the failover.

(The clients stop sending between the kill and their resume: a client that kept sending after a lossy
failover would get the lost ``seq`` numbers handed out again, which the epoch check cannot see, see
"What it does not detect" in deploy/README.md.)
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from core.keys import Keys
from core.redis_client import SentinelClient, SentinelPubSub, make_redis
from gateway.link import Link
from support.chat_pair import Side, http_status, match_pair, messages, outcomes, send_frame, wait_for
from support.gateway import Client, GatewayLauncher, ModerateProcess
from support.redis_sentinel import RedisSentinelSet

pytestmark = pytest.mark.timeout(240)

PAIRS = 4
FAST_SENDS = {"AFTERTALK_SEND_RATE_PER_S": "200", "AFTERTALK_SEND_BURST": "400"}
EVERY_MESSAGE_FLAGS = {"AFTERTALK_SCREEN_CRISIS_THRESHOLD": "0.001", "AFTERTALK_SCREEN_REVIEW_THRESHOLD": "0.001",
                       "AFTERTALK_SCREENING_CLAIM_IDLE_S": "1"}


@pytest.fixture
def sentinel_set():
    nodes = RedisSentinelSet(replicas=1, sentinels=3, quorum=2, down_after_ms=1000, failover_timeout_ms=3000).start()
    yield nodes
    nodes.cleanup()


async def test_the_client_follows_the_primary_the_sentinels_name(sentinel_set):
    """Commands and pub/sub both go where the Sentinels say, before and after a failover; a pub/sub
    connection left on the old address is reported as no longer on the primary."""
    client = make_redis(sentinel_set.url, decode=True)
    assert isinstance(client, SentinelClient)
    old = sentinel_set.first_primary
    try:
        assert await client.primary_address() == ("127.0.0.1", old)
        await client.set("k", "before")
        pubsub = client.pubsub()
        await pubsub.subscribe("ch")
        assert pubsub.connection is not None and int(pubsub.connection.port) == old
        assert await pubsub.still_primary()
        await asyncio.get_running_loop().run_in_executor(None, wait_replicated, sentinel_set, old)
        sentinel_set.kill(old)
        new = await asyncio.get_running_loop().run_in_executor(None, sentinel_set.wait_failover, old)
        assert not await pubsub.still_primary()
        assert await retry_command(lambda: client.get("k")) == "before"
        assert await client.primary_address() == ("127.0.0.1", new)
        fresh = client.pubsub()
        await fresh.subscribe("ch")
        assert fresh.connection is not None and int(fresh.connection.port) == new
        assert await fresh.still_primary()
        await client.publish("ch", "hello")
        heard = [await fresh.get_message(timeout=2) for _ in range(2)]
        assert any(m and m["type"] == "message" and m["data"] == "hello" for m in heard)
        await pubsub.aclose()
        await fresh.aclose()
    finally:
        await client.aclose()


async def test_a_link_left_on_a_node_that_is_no_longer_the_primary_reconnects_through_the_sentinels(sentinel_set):
    """The link asks a Sentinel pub/sub connection every ``primary_check_s`` whether it still sits on the
    primary (a primary cut off from the Sentinels but not from this gateway would otherwise keep it,
    hearing nothing); a "no" is a lost link: it reconnects, subscribes again, and delivers."""
    client = make_redis(sentinel_set.url, decode=False)
    assert isinstance(client, SentinelClient)
    answers = [True, False]                      # the second check says the primary has moved

    class Moving(SentinelPubSub):
        async def still_primary(self) -> bool:
            return answers.pop(0) if answers else await super().still_primary()

    heard: list[bytes] = []
    connects: list[bool] = []

    async def on_connected(channels: list[bytes], reconnect: bool) -> None:
        connects.append(reconnect)

    link = Link(lambda: Moving(client.connection_pool), lambda ch, data: heard.append(data), on_connected,
                channels=[b"ch"], primary_check_s=0.3)
    link.start()
    try:
        await wait_for(lambda: connects == [False, True], 10, f"a reconnect after the 'no' ({connects})")
        await link.ready(b"ch")
        await wait_for(lambda: link.connected.is_set(), 5, "the link up again")
        await client.publish("ch", "after")
        await wait_for(lambda: b"after" in heard, 5, "a message on the new connection")
        assert connects == [False, True]         # and "yes" answers keep it
    finally:
        link.stop()
        await client.aclose()


async def test_gateways_follow_a_sentinel_failover_and_never_hide_lost_acknowledged_messages(
        sentinel_set, prefix, tmp_path):
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    keys = Keys(prefix)
    launcher = GatewayLauncher(sentinel_set.url, prefix, str(tmp_path), **FAST_SENDS)
    worker = ModerateProcess(sentinel_set.url, prefix, log_dir=str(tmp_path), **EVERY_MESSAGE_FLAGS)
    old = sentinel_set.first_primary
    (replica,) = sentinel_set.data_ports[1:]
    try:
        g1, g2 = launcher(2)
        await loop.run_in_executor(None, worker.start)
        pairs = []
        for i in range(PAIRS):            # patients and survivors on different gateways, both ways round
            a, b = (g1, g2) if i % 2 == 0 else (g2, g1)
            pairs.append(await match_pair(a.ws_url, b.ws_url, patient_name=f"Pat{i}", survivor_name=f"Sam{i}"))
        sides = {}
        for i, p in enumerate(pairs):
            sides[p.cid] = (Side(p.patient, p.patient_token, p.cid, f"p{i}-"),
                            Side(p.survivor, p.survivor_token, p.cid, f"s{i}-"))
        gateway_of = {id(p.patient): (g1, g2)[i % 2] for i, p in enumerate(pairs)}
        gateway_of.update({id(p.survivor): (g2, g1)[i % 2] for i, p in enumerate(pairs)})

        # ---- chats run; the replica's link is cut; the primary is killed while they still send ------
        # the first half of the conversations falls quiet before the cut (all they had is on the replica),
        # the other half sends until the kill: both outcomes of a resume are exercised
        stop, quiet = asyncio.Event(), asyncio.Event()
        pumps = [loop.create_task(side.pump(quiet if n < PAIRS // 2 else stop, interval=0.05))
                 for n, pair in enumerate(sides.values()) for side in pair]
        await asyncio.sleep(1.5)
        quiet.set()
        await asyncio.gather(*pumps[:PAIRS])     # (two sides per pair)
        await asyncio.sleep(0.3)                 # their last answers
        await loop.run_in_executor(None, wait_replicated, sentinel_set, old)
        sentinel_set.pause(replica)              # so that it cannot reconnect and catch up before the kill
        sentinel_set.cut_replication(old)
        await asyncio.sleep(0.4)                 # these acks come from the primary alone
        sentinel_set.kill(old)
        killed_at = time.monotonic()
        stop.set()
        sentinel_set.resume(replica)
        await asyncio.gather(*pumps)
        new = await loop.run_in_executor(None, sentinel_set.wait_failover, old)
        failover_s = time.monotonic() - killed_at
        await asyncio.sleep(0.5)                 # answers still on their way

        # ---- every client resumes on the other gateway with its last seq and its epoch ------------------
        before: dict[int, dict[str, Any]] = {}
        for cid, pair in sides.items():
            for side in pair:
                shown = dict((c, s) for s, c in side.seen())
                acked = side.acked()
                claimed = max([*shown.values(), *acked.values(), 0])
                before[id(side)] = {"shown": shown, "acked": acked, "claimed": claimed}
                old_client = side.client
                other = g2 if gateway_of[id(old_client)] is g1 else g1
                await old_client.close()
                epoch = next(p.epoch for p in pairs if p.cid == cid)
                resume = {cid: {"seq": claimed, "epoch": epoch}}
                side.conns.append(await connect_when_up(other.ws_url, side.tok, resume))
                gateway_of[id(side.client)] = other

        lost_somewhere = False
        told_sides = 0
        for n, (cid, pair) in enumerate(sides.items()):
            first = pair[0].client
            await first.send({"type": "history", "conversation_id": cid, "limit": 200})
            history = await first.expect("history", timeout=10, conversation_id=cid)
            assert not history["has_more"]
            log = {m["client_id"]: m["seq"] for m in history["messages"]}
            last = max(log.values(), default=0)
            assert sorted(log.values()) == list(range(1, last + 1)), "the promoted log has a hole"
            for side in pair:
                b = before[id(side)]
                await asyncio.sleep(0.3)         # the welcome's error frames and replay are sent together
                told = [f for f in side.client.frames if f.get("type") == "error"
                        and f.get("code") == "recovery_failed" and f.get("conversation_id") == cid]
                had = {**b["shown"], **b["acked"]}
                kept = all(log.get(client_id) == seq for client_id, seq in had.items())
                # the one rule: a client is never shown a transcript shorter than what it had, silently
                assert kept or told, f"{side.stem} had {had}, the log is {log}, and it was not told"
                # and it is told exactly when it had something the log no longer holds
                assert bool(told) == (b["claimed"] > last), (side.stem, told, b["claimed"], last)
                if n < PAIRS // 2:
                    assert not told and had, f"{side.stem} fell quiet before the cut: nothing of it may be lost"
                if told:
                    lost_somewhere = True
                    told_sides += 1
                    assert told[0]["reason"] == "log_behind"
                    # then the log as it stands, from seq 1, for the client to replace its transcript with
                    await wait_for(lambda c=side.client, last=last, cid=cid: len(messages(c.frames, cid)) >= last,
                                   10, f"the replay from seq 1 at {side.stem}")
                    assert [s for s, _ in messages(side.client.frames, cid)][:last] == list(range(1, last + 1))
        assert lost_somewhere, "the cut replication lost nothing: the recovery_failed path was not exercised"
        assert told_sides <= PAIRS

        # ---- the service goes on: acks and live delivery across the gateways, pub/sub on the new primary --
        for cid, (patient, survivor) in sides.items():
            for n, (sender, reader) in enumerate([(patient, survivor), (survivor, patient), (patient, survivor)]):
                client_id = f"{sender.stem}after{n}"
                seq = await send_until_acked(sender.client, cid, client_id)
                assert gateway_of[id(sender.client)] is not gateway_of[id(reader.client)]
                await wait_for(lambda r=reader.client, c=client_id, s=seq, cid=cid: (s, c) in messages(r.frames, cid),
                               10, f"{client_id} at the peer on the other gateway")
        assert await wait_pubsub_links(new, 2) == 2, "both gateways' hub links, on the new primary"
        for g in (g1, g2):
            assert await http_status(g.url + "/readyz") == 200

        # ---- the screening worker, on the same URL, follows too ----------------------------------------------
        assert worker.proc is not None and worker.proc.poll() is None
        probe = next(iter(sides.values()))[0]
        seq = await send_until_acked(probe.client, probe.cid, "screened-after-failover")
        screened = aioredis.Redis(port=new, decode_responses=True)
        try:
            deadline = time.monotonic() + 60
            while not await model_flag_for(screened, keys, probe.cid, seq):
                assert time.monotonic() < deadline, f"no model flag for seq {seq}: see {worker.log_path}"
                await asyncio.sleep(0.2)
        finally:
            await screened.aclose()
        print(f"failover {failover_s:.1f}s; {told_sides} of {2 * PAIRS} clients told recovery_failed; "
              f"whole test {time.monotonic() - started:.1f}s")
    finally:
        for cid_sides in locals().get("sides", {}).values():
            for side in cid_sides:
                for c in side.conns:
                    await c.close()
        worker.stop()
        launcher.stop_all()


# ---- helpers -------------------------------------------------------------------------------------------
def wait_replicated(nodes: RedisSentinelSet, primary: int, timeout: float = 10.0) -> None:
    """Until every replica holds everything ``primary`` had written when this was called."""
    with sync_redis.Redis(port=primary, decode_responses=True) as r:
        written = int(r.info("replication")["master_repl_offset"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replicas = nodes.online_replicas(primary)
        if replicas and all(offset >= written for _, offset in replicas):
            return
        time.sleep(0.05)
    raise AssertionError("replicas did not catch up")


async def retry_command(call: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except (sync_redis.ConnectionError, sync_redis.TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def connect_when_up(ws_url: str, tok: str, resume: dict, timeout: float = 20.0) -> Client:
    """Connect and say hello; a gateway still reconnecting to Redis closes with 1011/1013: try again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await Client.connect(ws_url, tok, resume=resume)
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.3)


async def send_until_acked(client: Client, cid: str, client_id: str, timeout: float = 20.0) -> int:
    """Send, and again with the same client id after an error ('unavailable' while Redis fails over), until
    acknowledged; returns the acked seq."""
    deadline = asyncio.get_running_loop().time() + timeout

    def answers() -> int:
        return sum(1 for f in client.frames if f.get("client_id") == client_id and f["type"] in ("ack", "error"))

    while True:
        n = answers()
        await client.send(send_frame(cid, client_id))
        await wait_for(lambda n=n: answers() > n, 10, f"an answer to {client_id}")
        outcome = outcomes(client.frames, cid).get(client_id)
        if isinstance(outcome, int):
            return outcome
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{client_id} was never acknowledged: {client.frames[-5:]}")
        await asyncio.sleep(0.3)


async def wait_pubsub_links(port: int, want: int, timeout: float = 15.0) -> int:
    """How many connections on ``port`` hold plain channel subscriptions (the Sentinels' own ``__sentinel__:hello``
    subscriptions not counted), once at least ``want`` do."""
    client = aioredis.Redis(port=port, decode_responses=True)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            links = sum(1 for c in await client.client_list(_type="pubsub")
                        if int(c.get("sub", 0)) > 0 and not c.get("name", "").startswith("sentinel-"))
            if links >= want or asyncio.get_running_loop().time() > deadline:
                return links
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def model_flag_for(redis: aioredis.Redis, keys: Keys, cid: str, seq: int) -> bool:
    for fid in await redis.zrange(keys.flags, 0, -1):
        flag = await redis.hgetall(keys.flag(fid))
        if flag.get("conversation_id") == cid and flag.get("seq") == str(seq) and flag.get("source") == "model":
            return True
    return False
