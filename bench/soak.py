"""Soak test: 500 conversations across two gateway processes, both sides sending, then a full count.

Usage: ``make bench-soak`` or ``.venv/bin/python bench/soak.py [--pairs 500] [--seconds 60] [--rate 1]``

A private redis-server (append-only) and two ``aftertalk serve`` processes; ``--pairs``
conversations made by the real matcher scripts, the patient on process 0 and the survivor on
process 1; every participant sends ``--rate`` messages a second for ``--seconds`` (bench/loadgen.py)
while keeping every ``ack`` and every ``message`` frame it gets.  Afterwards each conversation's
history goes through the Jepsen-style checker of the test suite (tests/support/checker.py): every
acked message must reach both participants (the peer and the sender's own echo) exactly once, with
its acked seq, in seq order, with no gaps.  Exit status 1 if anything was lost, duplicated, out of
order, unanswered or refused.

Moderation stays on and the per-user send limit (5/s) is the service default: at 1 msg/s nobody is
near it.  Only the connections-per-address limit is raised (one load generator holds 1,000 sockets).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RedisServer, machine, prioritize, stamp
from loadgen import LoadGen
from systems import Aftertalk

from support.checker import check


async def main(args: argparse.Namespace) -> int:
    command = " ".join([Path(sys.executable).name, *sys.argv])
    priority = prioritize(args.nice)
    print(f"# soak, {stamp()}, {machine()}, load average {os.getloadavg()[0]:.2f}, {priority}")
    print(f"# command: {command}", flush=True)
    log_dir = Path(__file__).resolve().parent / "results"
    log_dir.mkdir(exist_ok=True)
    redis = RedisServer(appendonly=True).start()
    system = Aftertalk(moderation=True, log_dir=str(log_dir),
                       extra_env={"AFTERTALK_SEND_RATE_PER_S": "5", "AFTERTALK_SEND_BURST": "20",
                                  "AFTERTALK_FRAMES_PER_S": "30", "AFTERTALK_FRAMES_BURST": "60"})
    try:
        system.start(redis.url)
        protocol, clients = await system.make_clients(args.pairs, keep_history=True)
        gen = LoadGen(protocol, clients)
        await gen.connect_all()
        print(f"{len(clients)} sockets open on 2 gateway processes; sending for {args.seconds:.0f} s", flush=True)
        r = await gen.run_step(1, args.rate * len(clients), args.seconds, drain_s=30)
        print(f"offered {r['offered_per_s']:.0f}/s, sent {r['sent']}, peer deliveries {r['received']}, "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, "
              f"sockets closed {r['closed']}, generator lag p99 {r['gen_lag_p99_ms']:.1f} ms", flush=True)
        await asyncio.sleep(1)
        totals: Counter[str] = Counter()
        bad = []
        for i in range(0, len(clients), 2):
            patient, survivor = clients[i], clients[i + 1]
            sent: dict[str, int | str | None] = {}
            for c in (patient, survivor):
                for n in range(1, c.sent + 1):
                    cid = f"1.{c.idx}.{n}"
                    sent[cid] = c.acks.get(cid)
            rep = check(sent, {"patient": patient.seen, "survivor": survivor.seen}, expect_all_seqs=True)
            totals.update(rep.counts)
            if not rep.ok():
                bad.append((patient.conversation, rep.summary()))
        await gen.close_all()
    finally:
        system.stop()
        redis.cleanup()
    conversations = len(clients) // 2
    faults = {k: totals[k] for k in ("lost", "duplicated", "reordered", "wrong_seq", "unexpected", "gaps",
                                     "unanswered", "refused")}
    print(f"\n{conversations} conversations, {totals['delivered'] + totals['recovered']} messages checked "
          f"({totals['delivered']} delivered to both participants exactly once, in order)")
    print("faults: " + ", ".join(f"{k} {v}" for k, v in faults.items()))
    for cid, summary in bad[:10]:
        print(f"  {cid}: {summary}")
    ok = not bad and r["closed"] == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per participant")
    parser.add_argument("--nice", type=int, default=-10, help="CPU priority of the run (see common.prioritize)")
    args = parser.parse_args()
    try:
        import uvloop
        sys.exit(uvloop.run(main(args)))
    except ImportError:
        sys.exit(asyncio.run(main(args)))
