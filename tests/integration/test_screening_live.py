"""The learned screening end to end: two gateways, a separate ``aftertalk moderate`` process, real
Redis, the packaged model.  What reaches a moderator's ``watch_flags`` feed is what is judged."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from test_moderation import moderator, say, start_chat

from support.gateway import Client, GatewayProcess

# clear cases for the packaged model (far from its thresholds); quality is measured by make eval-safety
INDIRECT_CRISIS = "I've been saving up my morphine for weeks. Tonight I'm going to take all of it."
BENIGN = "My scan is on Thursday at 10, I'll tell you how it went."


async def test_model_flag_reaches_the_moderator_and_the_author_gets_resources(gateways, moderators):
    g1, g2 = gateways(2)
    moderators(1)
    mod = await watching_flags(g2.ws_url)
    assert (await mod.expect("screening"))["behind"] is False
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)

    ack = await say(patient, cid, "c1", INDIRECT_CRISIS)
    acked = time.monotonic()
    flag = await mod.expect("flag", timeout=10, category="crisis")
    assert flag["source"] == "model" and flag["seq"] == ack["seq"] and flag["conversation_id"] == cid
    assert flag["severity"] == "high" and 0.5 < flag["score"] <= 1.0
    assert flag["excerpt"].startswith("I've been saving up my morphine")
    print(f"model flag on the moderator's screen {time.monotonic() - acked:.3f}s after the ack")
    resources = await patient.expect("resources", timeout=5, conversation_id=cid)
    assert resources["lines"]
    assert survivor.of_type("resources") == []          # the author's, not the peer's

    await say(patient, cid, "c2", BENIGN)
    await say(survivor, cid, "s1", "Good luck! Thinking of you.")
    await asyncio.sleep(3)
    assert [f for f in mod.of_type("flag") if f["seq"] > ack["seq"]] == []
    for c in (patient, survivor, mod):
        await c.close()


async def test_a_rule_hit_and_a_model_hit_are_one_flag_and_one_resources_frame(gateways, moderators):
    g1, g2 = gateways(2)
    moderators(1)
    mod = await watching_flags(g1.ws_url)
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    await say(patient, cid, "c1", "I want to end my life, I can't do this any more")
    flag = await mod.expect("flag", timeout=2, category="crisis")
    assert flag["source"] == "rules"
    await patient.expect("resources")
    await asyncio.sleep(4)                               # the model has screened it by now
    assert [f["flag_id"] for f in mod.of_type("flag") if f["category"] == "crisis"] == []
    assert patient.of_type("resources") == []
    for c in (patient, survivor, mod):
        await c.close()


async def test_screening_behind_notice_and_backlog_metrics(gateways, moderators):
    (g,) = gateways(1, AFTERTALK_SCREENING_BEHIND_S=1)
    mod = await watching_flags(g.ws_url)
    patient, survivor, cid = await start_chat(g.ws_url, g.ws_url)
    await say(patient, cid, "c1", BENIGN)                # no worker runs: it waits in the queue
    behind = await mod.expect("screening", timeout=8, behind=True)
    assert behind["waiting"] >= 1 and behind["oldest_age_s"] > 1
    async with httpx.AsyncClient() as http:
        text = (await http.get(g.url + "/metrics")).text
    assert "aftertalk_screening_backlog 1.0" in text
    moderators(1)
    caught_up = await mod.expect("screening", timeout=30, behind=False)
    assert caught_up["waiting"] == 0
    for c in (patient, survivor, mod):
        await c.close()


async def test_serve_starts_its_own_worker_and_it_dies_with_serve(redis_server, prefix, tmp_path):
    g = GatewayProcess(redis_server.url, prefix, log_dir=str(tmp_path), AFTERTALK_SCREENING_WORKERS=1)
    g.start(wait=False)
    try:
        g.wait_ready(timeout=120)
        mod = await watching_flags(g.ws_url)
        patient, _survivor, cid = await start_chat(g.ws_url, g.ws_url)
        await say(patient, cid, "c1", INDIRECT_CRISIS)
        assert (await mod.expect("flag", timeout=10, category="crisis"))["source"] == "model"
        children = _children(g.proc.pid)
        assert children, "serve started no worker process"
        g.kill()                                         # SIGKILL: no clean-up code runs in serve
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(_alive(pid) for pid in children), "the worker outlived serve"
    finally:
        g.stop()


async def test_a_worker_that_dies_is_started_again_and_screens(redis_server, prefix, tmp_path):
    g = GatewayProcess(redis_server.url, prefix, log_dir=str(tmp_path), AFTERTALK_SCREENING_WORKERS=1,
                       AFTERTALK_SCREENING_CLAIM_IDLE_S=1)
    g.start(wait=False)
    try:
        g.wait_ready(timeout=120)
        assert g.proc is not None
        (first,) = _children(g.proc.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not [pid for pid in _children(g.proc.pid) if pid != first and _alive(pid)]:
            assert time.monotonic() < deadline, "no new worker"
            await asyncio.sleep(0.2)
        mod = await watching_flags(g.ws_url)
        patient, _survivor, cid = await start_chat(g.ws_url, g.ws_url)
        await say(patient, cid, "c1", INDIRECT_CRISIS)
        assert (await mod.expect("flag", timeout=60, category="crisis"))["source"] == "model"
        assert "exited with status -9; starting it again" in g.log_path.read_text()
    finally:
        g.stop()


def test_sigterm_of_serve_stops_its_worker_too(redis_server, prefix, tmp_path):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so serve's own clean-up may not run:
    the worker must go anyway (it dies with its parent)."""
    g = GatewayProcess(redis_server.url, prefix, log_dir=str(tmp_path), AFTERTALK_SCREENING_WORKERS=1)
    g.start(wait=False)
    try:
        g.wait_ready(timeout=120)
        assert g.proc is not None
        children = _children(g.proc.pid)
        assert children
        g.proc.terminate()
        g.proc.wait(30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children), "the worker outlived serve"
    finally:
        g.stop()


def test_serve_refuses_to_start_when_the_model_cannot_load(redis_server, prefix, tmp_path):
    broken = tmp_path / "head.npz"
    broken.write_bytes(b"not a model")
    g = GatewayProcess(redis_server.url, prefix, log_dir=str(tmp_path), AFTERTALK_SCREENING_WORKERS=1,
                       AFTERTALK_SCREENING_MODEL_PATH=str(broken))
    g.start(wait=False)
    assert g.proc is not None
    assert g.proc.wait(120) == 3
    log = g.log_path.read_text()
    assert "screening model failed to load" in log and "could not start" in log


async def watching_flags(ws_url: str) -> Client:
    """A moderator on the flag feed, past its first ``flags`` list."""
    mod, _ = await moderator(ws_url)
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")
    return mod


def _children(pid: int) -> list[int]:
    import pathlib

    out = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


pytestmark = pytest.mark.timeout(300)
