"""Matching benchmark: talk-now -> offer latency and matches per second, from 1,000 to 100,000 survivors.

Usage: ``make bench-match`` or ``.venv/bin/python bench/match_bench.py [--scales 1000,10000,100000]
[--samples 3000] [--matches 2000] [--workers 4] [--every 10] [--lib-rev GIT_REV] [--redis single,cluster]``

What it does, on a private redis-server it starts on a free port:

1. Registers survivors through the real scripts (``MatchStore.set_availability``; every tenth one
   (``--every``) available, with a live presence through ``MatchStore.connected``), with realistic
   skewed profile mixes (bench/common.py ProfileMix).  Scales are filled incrementally.
2. Latency: one client, one request at a time: ``talk_now`` for a fresh patient (the script picks
   the best survivor and publishes the offer before it returns), then ``cancel`` so the survivor
   goes back to the pool.  Reports the client round trip and the server-side time of the request
   script alone (Redis SLOWLOG with a 0 µs threshold records each call's execution time).
3. Throughput: ``--workers`` concurrent clients each loop talk_now -> read the offer id -> accept;
   matches/s counts completed accepts over that wall time.  The conversations are then ended
   (untimed) so the pool is back to its size before the next round.

Redis (``--redis``): ``single`` (the default), one redis-server; ``cluster``, a local Redis Cluster of three
primaries (tests/support/redis_cluster.py) reached through the service's own cluster client
(``core.redis_client.make_redis`` on its ``redis+cluster://`` URL); ``single,cluster`` runs both, one
after the other, with the same survivors and the same patients.  Every matcher key carries the
``{ctl}`` hash tag, so on a cluster all of the matching runs on the one primary owning that slot: the
server-side times come from that node's SLOWLOG, and the run prints how many commands each node served.

The daily cap is lifted for the run (the same 100 survivors of the smallest scale would otherwise
hit the default 20 matches a day); every other rule runs as in production.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import redis.asyncio as aioredis
from common import BACKENDS, Backend, ProfileMix, machine, percentile, prioritize, stamp

from core.keys import Keys
from core.redis_client import make_redis
from matcher.store import MatcherConfig, MatchStore

FILL_CONCURRENCY = 200


async def fill(store: MatchStore, mix: ProfileMix, start: int, stop: int, every: int = 10) -> None:
    """Register survivors start..stop-1; every ``every``-th one is available and connected."""
    sem = asyncio.Semaphore(FILL_CONCURRENCY)

    async def one(i: int) -> None:
        sid = f"s{i}"
        async with sem:
            available = i % every == 0
            if available:
                await store.connected(sid, "bench")
            await store.set_availability(sid, f"Survivor {i}", available=available, profile=mix.profile(),
                                         max_chats=1, auto_accept=False)

    await asyncio.gather(*(one(i) for i in range(start, stop)))


async def latency(store: MatchStore, redis: aioredis.Redis, mix: ProfileMix, samples: int,
                  request_sha: str) -> dict[str, float]:
    """Sequential talk_now + cancel; client round trips and server-side script times (µs).  ``redis`` is a
    plain client of the node that runs the scripts (the one node, or the primary owning ``{ctl}``): its
    SLOWLOG has them."""
    await redis.config_set("slowlog-log-slower-than", 0)
    await redis.config_set("slowlog-max-len", samples * 3)
    await redis.slowlog_reset()
    client_us: list[float] = []
    offered = 0
    for _ in range(samples):
        pid = "p" + uuid.uuid4().hex[:12]
        profile = mix.profile()
        t0 = time.perf_counter()
        state, _ = await store.talk_now(pid, "Patient", profile)
        client_us.append((time.perf_counter() - t0) * 1e6)
        offered += state["state"] == "offered"
        await store.cancel(pid)
    log = await redis.slowlog_get(samples * 3)
    await redis.config_set("slowlog-log-slower-than", 10000)
    commands = [(e, (c.decode(errors="replace") if isinstance(c := e["command"], bytes) else str(c)).split(maxsplit=2))
                for e in log]
    server_us = sorted(float(e["duration"]) for e, words in commands
                       if len(words) > 1 and words[0].upper() == "EVALSHA" and words[1] == request_sha)
    client_us.sort()
    return {"p50": percentile(client_us, 50), "p99": percentile(client_us, 99), "max": client_us[-1],
            "srv_p50": percentile(server_us, 50), "srv_p99": percentile(server_us, 99),
            "srv_n": len(server_us), "offered": offered / samples}


async def throughput(store: MatchStore, redis: aioredis.Redis, keys: Keys, mix: ProfileMix, matches: int,
                     workers: int, pool: int) -> float:
    """talk_now + accept by concurrent workers, in rounds of at most half the pool; matches/s."""
    total_s, done = 0.0, 0
    per_round = max(workers, min(matches, pool // 2))
    while done < matches:
        n = min(per_round, matches - done)
        made: list[tuple[str, str]] = []
        counter = iter(range(n))

        async def worker(counter: Iterator[int], made: list[tuple[str, str]]) -> None:
            for _ in counter:
                pid = "p" + uuid.uuid4().hex[:12]
                state, _ = await store.talk_now(pid, "Patient", mix.profile())
                if state["state"] != "offered":
                    await store.cancel(pid)
                    continue
                oid = await redis.hget(keys.request(pid), "offer")
                sid = await redis.hget(keys.offer(oid), "survivor")
                out, _created = await store.respond(sid, oid, True)
                made.append((out["conversation_id"], pid))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(counter, made) for _ in range(workers)))
        total_s += time.perf_counter() - t0
        done += len(made)
        for cid, pid in made:              # untimed: give the survivors back
            await store.end(cid, pid, "patient")
        if not made:
            break
    return done / total_s if total_s else 0.0


async def index_sizes(redis: aioredis.Redis, keys: Keys) -> tuple[int, int]:
    """Indexed (offerable) survivors, and the size of the largest diagnosis index."""
    wait = await redis.zcard(keys.wait_index)
    sizes = []
    for d in ("breast", "prostate"):
        for key in (keys.rank_dx(d), f"{keys.ctl}ix:dx:{d}"):   # ranked index, or the plain sets of older lib.lua
            kind = await redis.type(key)
            if kind == "zset":
                sizes.append(await redis.zcard(key))
            elif kind == "set":
                sizes.append(await redis.scard(key))
    return wait, max(sizes, default=0)


def use_lib_from(rev: str) -> None:
    """Run the matcher scripts with matcher/lua/lib.lua as of a git revision (before/after figures)."""
    import core.scripts as scripts

    old_lib = subprocess.run(["git", "show", f"{rev}:matcher/lua/lib.lua"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    current = scripts.load_source

    def load_source(package: str, name: str) -> str:
        text = current(package, name)
        if package == "matcher" and name != "lib.lua":
            own = (Path(__file__).resolve().parents[1] / "matcher" / "lua" / name).read_text("utf-8")
            text = scripts.key_table() + old_lib + "\n" + own.partition("\n")[2]   # KEY: today's scripts use it
        return text

    scripts.load_source = load_source


async def node_commands(ports: list[int]) -> dict[int, int]:
    """Commands each node has processed so far (INFO stats total_commands_processed)."""
    out = {}
    for port in ports:
        node = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            out[port] = int((await node.info("stats"))["total_commands_processed"])
        finally:
            await node.aclose()
    return out


async def bench_backend(kind: str, args: argparse.Namespace, request_sha: str) -> list[dict[str, float]]:
    """Every scale on a fresh Redis of this kind; the same survivors and patients on every kind."""
    backend = Backend(kind).start()
    redis = make_redis(backend.url, decode=True)     # the service's client: one node or a cluster
    keys = Keys("bench")
    store = MatchStore(redis, keys, MatcherConfig(daily_cap=10**9, offers_per_patient_hour=10**6))
    owner = backend.owner_of(keys.request("x"))       # where the {ctl} slot lives: every matcher script runs there
    script_node = aioredis.Redis(host="127.0.0.1", port=owner, decode_responses=True)
    # Load every matcher script up front (on a cluster: on every primary).  Left to the first calls, 200
    # concurrent NOSCRIPT -> SCRIPT LOAD through redis-py's cluster client sometimes failed the fill with
    # "Connection lost" (seen once in four runs).
    import core.scripts
    import matcher.store

    for name in matcher.store.SCRIPTS:
        await redis.script_load(core.scripts.load_source("matcher", name))
    fill_mix, ask_mix = ProfileMix(seed=1), ProfileMix(seed=2)
    rows: list[dict[str, float]] = []
    print(f"# redis: {backend.describe()}; matcher scripts run on port {owner}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        registered = 0
        for scale in args.scales:
            t0 = time.perf_counter()
            await fill(store, fill_mix, registered, scale, args.every)
            registered = scale
            fill_s = time.perf_counter() - t0
            indexed, biggest = await index_sizes(redis, keys)
            before = await node_commands(backend.ports)
            lat = await latency(store, script_node, ask_mix, args.samples, request_sha)
            rate = await throughput(store, redis, keys, ask_mix, args.matches, args.workers, indexed)
            after = await node_commands(backend.ports)
            served = {port: after[port] - before[port] for port in backend.ports}
            row = {"registered": scale, "available": indexed, "biggest_dx_set": biggest, **lat,
                   "matches_per_s": rate, "fill_s": fill_s}
            rows.append(row)
            spread = (" | commands per node " + " / ".join(
                f"{port}{'*' if port == owner else ''}: {n:,}" for port, n in served.items())
                if len(served) > 1 else "")
            print(f"[{kind}] registered={scale:>7} available={indexed:>6} (largest diagnosis set {biggest:>5}) "
                  f"talk_now->offer client p50={lat['p50']:7.0f}us p99={lat['p99']:7.0f}us "
                  f"| server p50={lat['srv_p50']:6.0f}us p99={lat['srv_p99']:6.0f}us "
                  f"| offered {lat['offered']:.0%} | matches/s={rate:6.0f} "
                  f"(fill {fill_s:.0f}s, load average {os.getloadavg()[0]:.2f}){spread}", flush=True)
    finally:
        await script_node.aclose()
        await redis.aclose()
        backend.cleanup()
    return rows


async def main(args: argparse.Namespace) -> None:
    if bad := [k for k in args.redis if k not in BACKENDS]:
        raise SystemExit(f"--redis: unknown {', '.join(bad)} (want {' or '.join(BACKENDS)})")
    if args.lib_rev:
        use_lib_from(args.lib_rev)
    priority = prioritize(args.nice)
    import core.scripts

    request_sha = hashlib.sha1(core.scripts.load_source("matcher", "request.lua").encode()).hexdigest()
    print(f"# matching benchmark, {stamp()}, {machine()}")
    print(f"# command: {' '.join(sys.argv)}; lib.lua {'from ' + args.lib_rev if args.lib_rev else 'as checked out'}; "
          f"load average {os.getloadavg()[0]:.2f}; {priority}; redis: {', '.join(args.redis)}")
    results = {kind: await bench_backend(kind, args, request_sha) for kind in args.redis}
    print()
    print("| redis | registered | available | talk_now→offer p50 | p99 | server-side p50 | p99 | offered "
          "| matches/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, rows in results.items():
        for r in rows:
            print(f"| {kind} | {r['registered']:,} | {r['available']:,} | {r['p50'] / 1000:.2f} ms "
                  f"| {r['p99'] / 1000:.2f} ms | {r['srv_p50'] / 1000:.2f} ms | {r['srv_p99'] / 1000:.2f} ms "
                  f"| {r['offered']:.0%} | {r['matches_per_s']:,.0f} |")
    if "single" in results and "cluster" in results:
        print()
        print("cluster / single:")
        for one, clu in zip(results["single"], results["cluster"], strict=True):
            print(f"  {one['registered']:,} registered: client p50 {clu['p50'] / one['p50']:.2f}x, "
                  f"p99 {clu['p99'] / one['p99']:.2f}x, server p50 {clu['srv_p50'] / one['srv_p50']:.2f}x, "
                  f"p99 {clu['srv_p99'] / one['srv_p99']:.2f}x, "
                  f"matches/s {clu['matches_per_s'] / one['matches_per_s']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000, 100000])
    parser.add_argument("--samples", type=int, default=3000, help="sequential talk_now calls per scale")
    parser.add_argument("--matches", type=int, default=2000, help="matches per scale in the throughput phase")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients in the throughput phase")
    parser.add_argument("--every", type=int, default=10,
                        help="every N-th registered survivor is available (10: 10 %%)")
    parser.add_argument("--nice", type=int, default=-10, help="CPU priority of the run (see common.prioritize)")
    parser.add_argument("--redis", type=lambda s: s.split(","), default=["single"],
                        help="single: one redis-server; cluster: a local Redis Cluster of 3 primaries; "
                             "single,cluster: both, one after the other, in this run")
    parser.add_argument("--cluster", dest="redis", action="store_const", const=["cluster"],
                        help="the same as --redis cluster")
    parser.add_argument("--lib-rev", default="", help="use matcher/lua/lib.lua from this git revision (comparisons)")
    asyncio.run(main(parser.parse_args()))
