"""The learning loop: a moderator marks a flag a true or a false alarm when resolving it; that is kept
with the flag and in the audit log, and ``aftertalk export-labels`` writes the reviewed messages."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from test_moderation import moderator, say, start_chat

from support.gateway import ROOT


def export(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "export-labels", "--redis-url", redis_url, *args],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


async def test_reviewed_flags_are_recorded_and_exported(gateways, redis_server, prefix, tmp_path):
    g1, g2 = gateways(2)
    mod, _ = await moderator(g1.ws_url)
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")
    patient, survivor, cid = await start_chat(g1.ws_url, g2.ws_url)
    crisis_text = "I want to end my life, I can't do this any more"
    await say(patient, cid, "c1", crisis_text)
    crisis = await mod.expect("flag", category="crisis")
    abuse_text = "you are a worthless idiot"
    await say(survivor, cid, "s1", abuse_text)
    abuse = await mod.expect("flag", category="abuse")
    await say(patient, cid, "c2", "call me on 07700 900123")
    unreviewed = await mod.expect("flag", category="contact_info")
    await patient.send({"type": "report", "conversation_id": cid, "reason": "please look at this"})
    report = await mod.expect("flag", category="report")

    await mod.send({"type": "resolve", "flag_id": crisis["flag_id"], "resolution": "called them", "outcome": "maybe"})
    assert (await mod.expect("error", ref="resolve"))["code"] == "bad_frame"
    await mod.send({"type": "resolve", "flag_id": crisis["flag_id"], "resolution": "stayed with them",
                    "outcome": "true_alarm"})
    done = await mod.expect("done", ref="resolve")
    assert done["outcome"] == "true_alarm"
    assert (await mod.expect("flag_resolved", flag_id=crisis["flag_id"]))["outcome"] == "true_alarm"
    await mod.send({"type": "resolve", "flag_id": abuse["flag_id"], "resolution": "banter between them",
                    "outcome": "false_alarm"})
    await mod.expect("done", ref="resolve")
    await mod.send({"type": "resolve", "flag_id": unreviewed["flag_id"], "resolution": "reminded them"})
    assert (await mod.expect("done", ref="resolve"))["outcome"] == ""
    await mod.send({"type": "resolve", "flag_id": report["flag_id"], "resolution": "ok", "outcome": "true_alarm"})
    await mod.expect("done", ref="resolve")

    out = export(redis_server.url, prefix)
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {crisis["flag_id"], abuse["flag_id"]}      # not the unreviewed one, not the report
    assert rows[crisis["flag_id"]]["text"] == crisis_text and rows[crisis["flag_id"]]["labels"] == ["crisis"]
    assert rows[abuse["flag_id"]]["text"] == abuse_text and rows[abuse["flag_id"]]["labels"] == []
    assert rows[abuse["flag_id"]]["outcome"] == "false_alarm" and rows[abuse["flag_id"]]["source"] == "rules"
    assert all(r["split"] in ("train", "dev", "test") for r in rows.values())
    assert "exported 2" in out.stderr

    exported = tmp_path / "reviewed.jsonl"          # what a retraining run reads
    exported.write_text(out.stdout)
    from chat.screening.train import read_rows
    parsed, _ = read_rows([exported])
    assert {r.id for r in parsed if r.split != "test"} | {r for r in rows if rows[r]["split"] == "test"} == set(rows)

    later = export(redis_server.url, prefix, "--since", "2999-01-01")
    assert later.returncode == 0 and later.stdout == ""
    bad = export(redis_server.url, prefix, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr

    import redis.asyncio as aioredis

    from chat import audit
    from core.keys import Keys
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    entries = (await audit.page(client, Keys(prefix), limit=100))["entries"]
    await client.aclose()
    resolved = [e for e in entries if e["action"] == "resolve" and e["flag_id"] == crisis["flag_id"]]
    assert resolved and resolved[0]["detail"] == "[true_alarm] stayed with them"
    for c in (patient, survivor, mod):
        await c.close()
