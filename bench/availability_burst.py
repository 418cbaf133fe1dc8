"""Availability burst: thousands of survivors switch available in the same second, patients waiting.

Usage: ``make bench-availability`` or ``.venv/bin/python bench/availability_burst.py [--survivors 5000]
[--waiting 60,500] [--concurrency 200]``

What it does, for each number of waiting patients, on a private redis-server it starts on a free port:

1. ``--waiting`` patients press talk-now (real ``MatchStore.talk_now``, profiles from
   bench/common.py ProfileMix) while no survivor is available, so every one of them waits.
2. ``--survivors`` survivors come online and switch available at once (``MatchStore.connected``
   then ``MatchStore.set_availability``, ``--concurrency`` calls in flight).  The first ones who fit
   get offers; the rest find every waiting patient already offered or not fitting them.
3. Reports the server-side time of the ``availability.lua`` calls (Redis SLOWLOG: each call's
   execution time inside Redis), p50 / p99 / max, and the offers made.  SLOWLOG also records every
   command a script runs, millions in this burst, so its threshold is ``--threshold-us`` (50 µs):
   the calls above it are each recorded, those below are counted, and a percentile that falls
   below the threshold is printed as "< 50 µs".  A control script (``return 1``) called every 5 ms
   during the burst shows how often the machine itself stalls Redis in the middle of a call: on a
   shared machine its slow calls are the noise floor of the figures.

To compare with an earlier revision, run this same file against that revision's tree:
``git worktree add /tmp/before <rev> && cp bench/availability_burst.py /tmp/before/bench/ &&
(cd /tmp/before && /work/main/.venv/bin/python bench/availability_burst.py)``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import redis.asyncio as aioredis
from common import ProfileMix, RedisServer, machine, prioritize, stamp

from core.keys import Keys
from matcher.store import MatcherConfig, MatchStore


def tail_percentile(tail: list[float], total: int, q: float, threshold: float) -> float:
    """Nearest-rank percentile of ``total`` samples of which only ``tail`` (sorted) exceeded the
    threshold; -1 when it falls below the threshold."""
    rank = max(0, min(total - 1, round(q / 100 * total + 0.5) - 1))
    below = total - len(tail)
    return -1.0 if rank < below else tail[rank - below]


async def burst(server_url: str, waiting: int, survivors: int, concurrency: int,
                threshold_us: int) -> dict[str, float]:
    redis = aioredis.Redis.from_url(server_url, decode_responses=True, max_connections=concurrency + 8)
    keys = Keys(f"b{waiting}")
    store = MatchStore(redis, keys, MatcherConfig(daily_cap=10**9, offers_per_patient_hour=10**6))
    patients, helpers = ProfileMix(seed=11), ProfileMix(seed=12)
    try:
        for i in range(waiting):
            await store.connected(f"p{i}", "bench")
            await store.talk_now(f"p{i}", f"Patient {i}", patients.profile())
        profiles = [helpers.profile() for _ in range(survivors)]
        sha = store._scripts.sha("availability")
        await redis.config_set("slowlog-log-slower-than", threshold_us)
        await redis.config_set("slowlog-max-len", survivors * 20)
        await redis.slowlog_reset()
        sem = asyncio.Semaphore(concurrency)
        # a control: a script that does nothing, called every 5 ms during the burst; its slow calls
        # are the machine's (Redis preempted in the middle of a call), not the script's
        probe_sha = await redis.script_load("return 1")
        probes = 0
        done = asyncio.Event()

        async def probe() -> None:
            nonlocal probes
            while not done.is_set():
                await redis.evalsha(probe_sha, 0)
                probes += 1
                await asyncio.sleep(0.005)
        prober = asyncio.get_running_loop().create_task(probe())

        async def one(i: int) -> None:
            async with sem:
                await store.connected(f"s{i}", "bench")
                await store.set_availability(f"s{i}", f"Survivor {i}", available=True,
                                                          profile=profiles[i], max_chats=1, auto_accept=False)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(survivors)))
        wall = time.perf_counter() - t0
        done.set()
        await prober
        log = await redis.slowlog_get(survivors * 20)
        await redis.config_set("slowlog-log-slower-than", 10000)
        words = [(e, e["command"].decode(errors="replace").split(maxsplit=2)) for e in log]
        us = sorted(float(e["duration"]) for e, w in words
                    if len(w) > 1 and w[0].upper() == "EVALSHA" and w[1] == sha)
        probe_us = sorted(float(e["duration"]) for e, w in words
                          if len(w) > 1 and w[0].upper() == "EVALSHA" and w[1] == probe_sha)
        states = [await redis.hget(keys.request(f"p{i}"), "state") for i in range(waiting)]
        offered = states.count("offered")
        return {"over": len(us), "over_half_ms": sum(u > 500 for u in us) / survivors,
                "probes": probes, "probe_p99": tail_percentile(probe_us, probes, 99, threshold_us),
                "probe_over_half_ms": sum(u > 500 for u in probe_us) / max(1, probes),
                "p50": tail_percentile(us, survivors, 50, threshold_us),
                "p99": tail_percentile(us, survivors, 99, threshold_us), "max": us[-1] if us else -1.0,
                "offered": offered, "wall_s": wall}
    finally:
        await redis.aclose()


async def main(args: argparse.Namespace) -> None:
    def fmt(us: float) -> str:
        return f"< {args.threshold_us} µs" if us < 0 else f"{us / 1000:.3f} ms"

    priority = prioritize(args.nice)
    print(f"# availability burst, {stamp()}, {machine()}")
    print(f"# command: {' '.join(sys.argv)}; tree {Path(__file__).resolve().parents[1]}; "
          f"load average {os.getloadavg()[0]:.2f}; {priority}")
    rows = []
    for waiting in args.waiting:
        server = RedisServer(appendonly=True).start()
        if args.pin and (os.cpu_count() or 1) >= 2:     # Redis on core 0, this client on core 1
            os.sched_setaffinity(server.proc.pid, {0})
            os.sched_setaffinity(0, {1})
        try:
            r = await burst(server.url, waiting, args.survivors, args.concurrency, args.threshold_us)
        finally:
            server.cleanup()
        rows.append((waiting, r))
        print(f"waiting={waiting} survivors={args.survivors}: availability.lua over {args.threshold_us}us "
              f"{r['over']:.0f}; p50={fmt(r['p50'])} p99={fmt(r['p99'])} max={fmt(r['max'])}; "
              f"patients offered {r['offered']:.0f}/{waiting}; wall {r['wall_s']:.1f}s; over 0.5 ms: "
              f"{r['over_half_ms']:.1%} of calls, control script {r['probe_over_half_ms']:.1%} of "
              f"{r['probes']:.0f} (its p99 {fmt(r['probe_p99'])})", flush=True)
    print()
    print("| waiting patients | survivors switching | availability.lua p50 | p99 | max | calls over 0.5 ms "
          "| control script: p99, calls over 0.5 ms | patients offered |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for waiting, r in rows:
        print(f"| {waiting:,} | {args.survivors:,} | {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['max'])} "
              f"| {r['over_half_ms']:.1%} | {fmt(r['probe_p99'])}, {r['probe_over_half_ms']:.1%} "
              f"| {r['offered']:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--survivors", type=int, default=5000)
    parser.add_argument("--waiting", type=lambda s: [int(x) for x in s.split(",")], default=[60, 500])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the OS place Redis and the client (default: Redis on core 0, client on core 1)")
    parser.add_argument("--threshold-us", type=int, default=50, help="SLOWLOG threshold (see above)")
    parser.add_argument("--nice", type=int, default=-10, help="CPU priority of the run (see common.prioritize)")
    asyncio.run(main(parser.parse_args()))
