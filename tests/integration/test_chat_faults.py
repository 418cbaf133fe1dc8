"""Chat under faults, through real gateway processes: a gateway killed with SIGKILL, Redis stopped and
restarted, restarted empty, paused, the pub/sub links killed, and a client that stops reading.

Every test records each send's outcome and each receiver's view, and lets the queue checker
(tests/support/checker.py) say whether anything acknowledged was lost, doubled or reordered.
Redis faults use a private redis-server, started with the shipped deploy/redis.conf (append-only,
appendfsync everysec, noeviction), so the shared one stays healthy and the real configuration is
the one under test."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from typing import Any

import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import websockets

from support.chat_pair import Side, http_status, match_pair, messages, metric, outcomes, send_frame, wait_for
from support.checker import check
from support.gateway import ROOT, Client, GatewayLauncher, GatewayProcess
from support.redis_server import RedisServer

FAST = {"AFTERTALK_SEND_RATE_PER_S": "1000", "AFTERTALK_SEND_BURST": "1000",
        "AFTERTALK_FRAMES_PER_S": "1000", "AFTERTALK_FRAMES_BURST": "1000"}


class DeployedRedis(RedisServer):
    """A redis-server running deploy/redis.conf; only port, address, directory and log file differ."""

    def start(self) -> DeployedRedis:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", str(ROOT / "deploy" / "redis.conf"),
             "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self


@pytest.fixture
def private_redis():
    server = DeployedRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def private_gateways(private_redis, prefix, tmp_path):
    """Gateway processes on the private Redis: ``private_gateways(2, **env)``."""
    launcher = GatewayLauncher(private_redis.url, prefix, str(tmp_path), **FAST)
    yield launcher
    launcher.stop_all()


@pytest_asyncio.fixture
async def private_client(private_redis):
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    await client.aclose()


async def sides(g_patient: GatewayProcess, g_survivor: GatewayProcess) -> tuple[Side, Side, str]:
    pair = await match_pair(g_patient.ws_url, g_survivor.ws_url)
    return (Side(pair.patient, pair.patient_token, pair.cid, "p"),
            Side(pair.survivor, pair.survivor_token, pair.cid, "s"), pair.epoch)


async def settle(*all_sides: Side, timeout: float = 15.0) -> None:
    """Wait until every send was answered and every acked message reached every side."""
    await wait_for(lambda: all(not s.unanswered() for s in all_sides), timeout, "an answer to every send")
    acked = {k for s in all_sides for k in s.acked()}
    await wait_for(lambda: all(acked <= {c for _, c in s.seen()} for s in all_sides), timeout,
                   "every acked message at every side")


def verdict(*all_sides: Side):
    sent: dict[str, Any] = {}
    for s in all_sides:
        sent.update(s.outcomes())
    return check(sent, {s.stem: s.seen() for s in all_sides}, expect_all_seqs=True)


async def stored(client: aioredis.Redis, prefix: str, cid: str) -> dict[str, int]:
    """client_id -> seq of every message in the conversation's log."""
    rows = await client.xrange(f"{prefix}:{{c:{cid}}}:log")
    return {fields["cid"]: int(entry_id.partition("-")[0]) for entry_id, fields in rows}


async def test_kill_9_of_a_gateway_mid_chat_then_resume_on_the_other_loses_and_doubles_nothing(gateways, redis,
                                                                                                prefix):
    g1, g2 = gateways(2, **FAST)
    patient, survivor, _ = await sides(g1, g2)
    stop = asyncio.Event()
    pumps = [asyncio.create_task(patient.pump(stop, 0.005)), asyncio.create_task(survivor.pump(stop, 0.005))]
    await wait_for(lambda: len(patient.acked()) >= 50 and len(survivor.acked()) >= 50, 10, "traffic both ways")
    g1.kill()                                   # SIGKILL: no goodbye, sends in flight get no answer
    await pumps[0]
    await patient.client.closed()
    assert survivor.client._reader.done() is False
    await patient.reconnect(g2.ws_url)
    await patient.retry_unanswered()
    pumps[0] = asyncio.create_task(patient.pump(stop, 0.005))
    await wait_for(lambda: len(patient.acked()) >= len(patient.attempted) - 5 and
                   len(patient.client.of_type("message")) >= 10, 10, "traffic after the resume")
    stop.set()
    await asyncio.gather(*pumps)
    await settle(patient, survivor)
    report = verdict(patient, survivor)
    assert report.ok(), report.summary()
    assert report.counts["lost"] == report.counts["duplicated"] == report.counts["reordered"] == 0
    log = await stored(redis, prefix, patient.cid)
    assert log == {**patient.acked(), **survivor.acked()}        # stored once each, with the acked seq
    # the resumed connection got the missed messages before any live one: seqs strictly ascending
    resumed = messages(patient.client.frames, patient.cid)
    assert resumed and [s for s, _ in resumed] == sorted({s for s, _ in resumed})
    assert resumed[0][0] == max(s for s, _ in messages(patient.conns[0].frames, patient.cid)) + 1


async def test_redis_stopped_and_restarted_keeps_every_acked_message_and_errors_the_rest(
        private_redis, private_gateways, private_client, prefix):
    g1, g2 = private_gateways(2)
    patient, survivor, _ = await sides(g1, g2)
    stop = asyncio.Event()
    pumps = [asyncio.create_task(patient.pump(stop, 0.05)), asyncio.create_task(survivor.pump(stop, 0.05))]
    await wait_for(lambda: len(patient.acked()) >= 5 and len(survivor.acked()) >= 5, 10, "traffic both ways")
    await asyncio.to_thread(private_redis.stop)          # SIGTERM: Redis flushes its AOF and exits
    down_at = len(patient.attempted) + len(survivor.attempted)
    for g in (g1, g2):
        await wait_for_status(g.url + "/readyz", 503, 5)
    await wait_for(lambda: len(patient.attempted) + len(survivor.attempted) >= down_at + 20, 10,
                   "sends while Redis is down")
    assert not patient.client._reader.done() and not survivor.client._reader.done()   # connections stay open
    await asyncio.to_thread(private_redis.start)         # same port, same directory: the AOF is replayed
    for g in (g1, g2):
        await wait_for_status(g.url + "/readyz", 200, 12)  # reconnected by themselves
    acked_before = len(patient.acked()) + len(survivor.acked())
    await wait_for(lambda: len(patient.acked()) + len(survivor.acked()) >= acked_before + 10, 15,
                   "acks again after the restart")
    stop.set()
    await asyncio.gather(*pumps)
    await settle(patient, survivor, timeout=20)
    sent = {**patient.outcomes(), **survivor.outcomes()}
    refused = {k: v for k, v in sent.items() if not isinstance(v, int)}
    assert refused and set(refused.values()) == {"unavailable"}, refused
    log = await stored(private_client, prefix, patient.cid)
    acked = {**patient.acked(), **survivor.acked()}
    assert {k: log.get(k) for k in acked} == acked                # every acked message survived
    assert set(log) - set(acked) <= set(refused)                   # anything else stored was a failed send
    report = verdict(patient, survivor)
    assert report.ok(), report.summary()


async def wait_for_status(url: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await http_status(url, timeout=2)
        except OSError as exc:
            last = repr(exc)
        if last == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} gave {last}, not {status}, for {timeout}s")


async def test_killed_pubsub_links_are_rebuilt_and_catch_up_what_was_published_meanwhile(
        private_gateways, private_client):
    g1, g2 = private_gateways(2)
    patient, survivor, _ = await sides(g1, g2)
    for _ in range(5):
        await patient.send_one()
    await settle(patient, survivor)
    # kill every pub/sub link and keep the gateways from subscribing again for a moment, so that
    # messages are certainly published while no gateway listens (PUBLISH itself stays allowed)
    await private_client.execute_command("ACL", "SETUSER", "default", "-subscribe")
    try:
        killed = await private_client.client_kill_filter(_type="pubsub")
        assert killed >= 2                               # one link per gateway process
        for _ in range(3):
            await patient.send_one()
            await survivor.send_one()
        await wait_for(lambda: not patient.unanswered() and not survivor.unanswered(), 10, "acks while deaf")
        published_meanwhile = {*patient.acked(), *survivor.acked()} - {c for _, c in patient.seen()}
        assert len(published_meanwhile) == 6              # nobody heard them live
    finally:
        await private_client.execute_command("ACL", "SETUSER", "default", "+subscribe")
    t0 = time.monotonic()
    await settle(patient, survivor, timeout=10)          # caught up from the log, with no later message
    caught_up_s = time.monotonic() - t0
    for g in (g1, g2):
        await wait_for_metric(g.url, "aftertalk_pubsub_reconnects_total", 1, 10)
    # live delivery works again on both processes
    for _ in range(5):
        await patient.send_one()
        await survivor.send_one()
    await settle(patient, survivor, timeout=10)
    assert caught_up_s < 10
    report = verdict(patient, survivor)
    assert report.ok(), report.summary()


async def wait_for_metric(url: str, name: str, at_least: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = await metric(url, name)
        if value >= at_least:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} stayed at {value} on {url}")


async def test_resume_after_redis_restarted_empty_says_recovery_failed_instead_of_restarting_at_seq_1(
        private_redis, private_gateways):
    g1, g2 = private_gateways(2)
    patient, survivor, epoch = await sides(g1, g2)
    for _ in range(3):
        await patient.send_one()
    await settle(patient, survivor)
    last = patient.last_seq()
    await patient.client.close()
    await asyncio.to_thread(private_redis.restart, empty=True)
    for g in (g1, g2):
        await wait_for_status(g.url + "/readyz", 200, 12)
    back = await Client.connect(g2.ws_url, patient.tok, resume={patient.cid: {"seq": last, "epoch": epoch}})
    err = await back.expect("error", code="recovery_failed")
    assert err["conversation_id"] == patient.cid and err["ref"] == "hello"
    assert back.welcome["conversations"] == []
    # nothing silently restarts the conversation at seq 1, on the resumed or the surviving connection
    await back.send(send_frame(patient.cid, "after-wipe"))
    assert (await back.expect("error", client_id="after-wipe"))["code"] == "forbidden"
    await survivor.client.send(send_frame(patient.cid, "after-wipe-2"))
    assert (await survivor.client.expect("error", client_id="after-wipe-2"))["code"] == "forbidden"
    assert not messages(back.frames, patient.cid)


async def test_redis_paused_five_seconds_loses_nothing_acked_and_recovers(private_redis, private_gateways,
                                                                         private_client, prefix):
    g1, g2 = private_gateways(2)
    patient, survivor, _ = await sides(g1, g2)
    stop = asyncio.Event()
    pumps = [asyncio.create_task(patient.pump(stop, 0.05)), asyncio.create_task(survivor.pump(stop, 0.05))]
    await wait_for(lambda: len(patient.acked()) >= 5 and len(survivor.acked()) >= 5, 10, "traffic both ways")
    private_redis.pause()
    try:
        await asyncio.sleep(5)                           # the fault itself: Redis frozen for 5 s
    finally:
        private_redis.resume()
    acked_before = len(patient.acked()) + len(survivor.acked())
    await wait_for(lambda: len(patient.acked()) + len(survivor.acked()) >= acked_before + 10, 15,
                   "acks again after the pause")
    stop.set()
    await asyncio.gather(*pumps)
    await settle(patient, survivor, timeout=15)
    for g in (g1, g2):
        await wait_for_status(g.url + "/readyz", 200, 10)
    sent = {**patient.outcomes(), **survivor.outcomes()}
    assert {v for v in sent.values() if not isinstance(v, int)} <= {"unavailable"}
    log = await stored(private_client, prefix, patient.cid)
    acked = {**patient.acked(), **survivor.acked()}
    assert {k: log.get(k) for k in acked} == acked
    report = verdict(patient, survivor)
    assert report.ok(), report.summary()


def narrow_socket(port: int) -> socket.socket:
    """A connected socket with a 4 KiB receive buffer, so that the server's writes back up quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_a_client_that_stops_reading_is_cut_with_4408_without_slowing_the_sender(gateways):
    g1, g2 = gateways(2, AFTERTALK_OUTBOX_LIMIT="8", **FAST)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    # a second survivor connection that says hello and then stops reading: a tiny receive buffer and
    # a tiny client-side queue so the server's buffers fill quickly
    slow = await websockets.connect(g2.ws_url, sock=narrow_socket(g2.port), max_queue=1, max_size=2**20)
    await slow.send(orjson.dumps({"type": "hello", "token": pair.survivor_token}).decode())
    assert orjson.loads(await slow.recv())["type"] == "welcome"
    # ~6 MB: more than the kernel's socket buffers (up to 4 MB) and the transport's hold; the sender keeps
    # a window of sends in flight so the reading survivor (same test process) never falls behind
    text, n, window = "x" * 3900, 1600, 10
    t0 = time.monotonic()
    for i in range(n):
        await pair.patient.send(send_frame(cid, f"f{i}", f"{i} {text}"))
        if i % window == window - 1:
            await wait_for(lambda i=i: len(pair.patient.of_type("ack")) > i - window, 10, "acks to keep flowing")
    await wait_for(lambda: len(outcomes(pair.patient.frames, cid)) == n, 20, "an ack for every send")
    flood_s = time.monotonic() - t0
    sent = outcomes(pair.patient.frames, cid)
    assert all(isinstance(v, int) for v in sent.values())
    await wait_for(lambda: len(messages(pair.survivor.frames, cid)) == n, 20, "the reading survivor got everything")
    # only the connection that stopped reading was cut; the one that kept reading is still open
    assert await metric(g2.url, "aftertalk_slow_consumer_closes_total") == 1
    assert not pair.survivor._reader.done()
    await asyncio.sleep(2.5)            # the client stays away a while longer (longer than the close waits to flush)
    # now read what the slow connection had buffered: a prefix in order, then the 4408 close
    got: list[tuple[int, str]] = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            f = orjson.loads(await asyncio.wait_for(slow.recv(), 10))
            if f.get("type") == "message":
                got.append((f["seq"], f["client_id"]))
    assert slow.close_code == 4408, (slow.close_code, slow.close_reason)
    assert len(got) < n
    back = await Client.connect(g1.ws_url, pair.survivor_token, resume={cid: max((s for s, _ in got), default=0)})
    await wait_for(lambda: len(messages(back.frames, cid)) >= n - len(got), 10, "the rest after resuming")
    report = check(sent, {"slow": got + messages(back.frames, cid), "reader": messages(pair.survivor.frames, cid)},
                   expect_all_seqs=True)
    assert report.ok(), report.summary()
    assert flood_s < 15, f"the sender was held up: {n} acks took {flood_s:.1f}s"
    # a reader on a narrow socket (think of a phone on a slow link) resuming the whole conversation:
    # the catch-up of well over a thousand messages paces itself instead of tripping the 4408 cut
    phone = await Client.connect(g2.ws_url, pair.survivor_token, resume={cid: 0}, sock=narrow_socket(g2.port))
    await wait_for(lambda: len(messages(phone.frames, cid)) == n or phone._reader.done(), 20, "the whole log")
    assert [s for s, _ in messages(phone.frames, cid)] == list(range(1, n + 1)), phone.ws.close_code
