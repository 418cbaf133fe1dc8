"""``make eval-safety-live``: the independent held-out set sent through the live protocol.

A private redis-server, two ``aftertalk serve`` gateways (no workers of their own) and one separate
``aftertalk moderate`` process.  For each language a patient on gateway 1 talks with a survivor on
gateway 2 and sends that language's messages at ``--rate`` messages per second in all; a moderator
on gateway 2 watches the flag feed.  Judged only by what reaches the moderator's ``watch_flags``
feed: a message counts as flagged when a ``crisis`` flag (rules or model) or a model ``review``
flag arrives for it.  Latency is from the author's ack to the flag frame on the moderator's socket.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    sys.path.insert(0, str(p))

from support.gateway import Client, GatewayProcess, ModerateProcess, token  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}
GATEWAY_ENV = {"AFTERTALK_SEND_RATE_PER_S": "100", "AFTERTALK_SEND_BURST": "100", "AFTERTALK_SCREENING_WORKERS": "0"}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


async def pair(g1: GatewayProcess, g2: GatewayProcess, n: int) -> tuple[Client, Client, str]:
    survivor = await Client.connect(g2.ws_url, token("survivor", f"sur-{n}-{uuid.uuid4().hex[:6]}", "Sam"))
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE})
    await survivor.expect("availability")
    patient = await Client.connect(g1.ws_url, token("patient", f"pat-{n}-{uuid.uuid4().hex[:6]}", "Pat"))
    await patient.send({"type": "talk_now", "profile": PROFILE})
    offer = await survivor.expect("offer", timeout=10)
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    cid = (await patient.expect("matched", timeout=10))["conversation_id"]
    return patient, survivor, cid


async def run(rows: list[dict], rate: float, log_dir: str) -> dict:
    redis = RedisServer().start()
    prefix = "e" + uuid.uuid4().hex[:8]
    gws = [GatewayProcess(redis.url, prefix, log_dir=log_dir, **GATEWAY_ENV).start(wait=False) for _ in range(2)]
    worker = None
    try:
        for g in gws:
            g.wait_ready()
        worker = ModerateProcess(redis.url, prefix, log_dir=log_dir).start()
        mod = await Client.connect(gws[1].ws_url, token("moderator", "mod-eval", "Mo"))
        await mod.send({"type": "watch_flags"})
        await mod.expect("flags")
        flag_seen: dict[tuple[str, int], float] = {}
        feed_task = asyncio.create_task(_collect(mod, flag_seen))
        by_lang: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_lang[r["lang"]].append(r)
        chats = {lang: await pair(gws[0], gws[1], i) for i, lang in enumerate(sorted(by_lang))}
        sent: list[tuple[dict, str, int, float]] = []
        order = [(lang, r) for lang in sorted(by_lang) for r in by_lang[lang]]
        for i, (lang, r) in enumerate(order):
            patient, _, cid = chats[lang]
            await patient.send({"type": "send", "conversation_id": cid, "client_id": r["id"], "text": r["text"]})
            ack = await patient.expect("ack", client_id=r["id"], timeout=10)
            sent.append((r, cid, ack["seq"], time.monotonic()))
            await asyncio.sleep(max(0.0, 1.0 / rate))
            if i % 50 == 0:
                print(f"  sent {i + 1}/{len(order)}", flush=True)
        await asyncio.sleep(5.0)                 # the last ones are screened by now (the backlog is empty)
        feed_task.cancel()
        tp = fn = fp = tn = 0
        latencies = []
        per_lang: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for r, cid, seq, acked in sent:
            flagged = (cid, seq) in flag_seen
            crisis = r["label"] == "crisis"
            if flagged:
                latencies.append(flag_seen[(cid, seq)] - acked)
            idx = (0 if flagged else 1) if crisis else (2 if flagged else 3)
            per_lang[r["lang"]][idx] += 1
            tp, fn, fp, tn = tp + (idx == 0), fn + (idx == 1), fp + (idx == 2), tn + (idx == 3)
        return {"messages": len(sent), "recall": tp / max(tp + fn, 1), "fpr": fp / max(fp + tn, 1),
                "latency_p50_s": statistics.median(latencies) if latencies else None,
                "latency_p95_s": percentile(latencies, 0.95), "latency_max_s": max(latencies, default=None),
                "per_language": {lang: {"recall": v[0] / max(v[0] + v[1], 1), "fpr": v[2] / max(v[2] + v[3], 1)}
                                 for lang, v in sorted(per_lang.items())}}
    finally:
        if worker:
            worker.stop()
        for g in gws:
            g.stop()
        redis.cleanup()


async def _collect(mod: Client, seen: dict[tuple[str, int], float]) -> None:
    while True:
        frame = await mod.expect("flag", timeout=3600)
        if frame["category"] in ("crisis", "review"):
            seen.setdefault((frame["conversation_id"], frame["seq"]), time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second, all conversations together")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in (ROOT / "bench/data/safety_independent.jsonl").read_text("utf-8").splitlines()]
    with tempfile.TemporaryDirectory() as logs:
        result = asyncio.run(run(rows, args.rate, logs))
    print(f"\nindependent held-out set through the live protocol ({result['messages']} messages, "
          f"{args.rate:g} msgs/s, load average {os.getloadavg()[0]:.2f}):")
    print(f"  crisis recall {result['recall']:.3f}, false-positive rate {result['fpr']:.3f} "
          "(flagged = a crisis or review flag on the moderator's feed)")
    print(f"  ack -> flag on the moderator's screen: p50 {result['latency_p50_s']:.3f} s, "
          f"p95 {result['latency_p95_s']:.3f} s, max {result['latency_max_s']:.3f} s")
    for lang, v in result["per_language"].items():
        print(f"  {lang}: recall {v['recall']:.2f}  FPR {v['fpr']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
