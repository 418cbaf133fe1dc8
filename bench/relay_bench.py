"""Relay benchmark: delivered msgs/s and end-to-end latency, ours against Django Channels, same run.

Usage: ``make bench-relay`` or ``.venv/bin/python bench/relay_bench.py [--pairs 100] [--fixed 1000]
[--seconds 8] [--systems on,off,core,pubsub] [--redis single,cluster] [--no-pin]``

For each system in turn, on one private redis-server (append-only, fsync every second, as deployed):
two server processes, ``--pairs`` conversations (ours: made by the real matcher scripts, patient on
process 0, survivor on process 1; Channels: one room per pair, one member on each process), and one
load-generator process (bench/loadgen.py) in which every client sends at the same fixed rate.

* fixed load: ``--fixed`` msgs/s in total (after a short warm-up);
* saturation: the offered rate steps up (``--ladder``); a step passes when every message reached the
  peer (0 lost, nothing duplicated or out of order, no errors, no socket closed) with p99 <= 100 ms.
  Saturation is the highest passing rate below the first failing one (a failing step is retried once,
  the machine being shared).

Redis (``--redis``): ``single`` (the default) is the one redis-server above; ``cluster`` is a local Redis
Cluster of three primaries (tests/support/redis_cluster.py), and our gateways get its
``redis+cluster://`` URL (sharded pub/sub for chat messages, one EVALSHA per append routed to the
conversation's slot).  ``--redis single,cluster`` runs every system on one, then on the other, in the
same session.  Django Channels' layers are not cluster clients, so the Channels systems run only on
``single`` (skipped, with a note, on ``cluster``).

CPU split (2 cores): with pinning (the default) the redis-server (every cluster node) and all server
processes run on core 0 and the load generator on core 1 (``os.sched_setaffinity`` before/after spawning them), so
every system gets the same one core for Redis plus two server processes.  Each step records the
servers' CPU use (% of one core, from /proc: the server processes and every Redis node) and each Redis
node's alone, and the generator's, and how late the generator ran.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BACKENDS, Backend, machine, prioritize, stamp
from loadgen import LoadGen
from relaylib import (
    RESULTS,
    add_ladder_options,
    climb,
    command_line,
    cpu_split,
    cpu_us_per_msg,
    passed,
    run_main,
    save,
    spawning_on,
    why_failed,
)
from systems import Aftertalk, ChannelsRelay, System

DEFAULT_LADDER = [250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 8000, 10000]
CPU_PROBE = 500.0           # the ladder step at which CPU per message is compared
OURS = ("on", "off", "screen-on", "screen-off")   # the systems that can run on a Redis Cluster


def make_system(key: str, log_dir: str, code_dir: str = "") -> System:
    """on/off: the phrase rules on or off, no learned screening (as before it existed);
    screen-on/screen-off: rules on, and the learned screening on (each gateway runs its worker
    process beside it, as ``serve`` does by default) or off."""
    if key in ("on", "off"):
        return Aftertalk(moderation=key == "on", log_dir=log_dir, code_dir=code_dir,
                         extra_env={"AFTERTALK_SCREENING": "0"})
    if key in ("screen-on", "screen-off"):
        env = ({"AFTERTALK_SCREENING": "1", "AFTERTALK_SCREENING_WORKERS": "1"} if key == "screen-on"
               else {"AFTERTALK_SCREENING": "0"})
        system = Aftertalk(moderation=True, log_dir=log_dir, code_dir=code_dir, extra_env=env)
        system.name = f"aftertalk, screening {key.removeprefix('screen-')}"
        return system
    return ChannelsRelay(key, log_dir=log_dir)


def line(name: str, label: str, r: dict[str, Any]) -> str:
    return (f"{name:36} {label:10} offered {r['offered_per_s']:6.0f}/s delivered {r['delivered_per_s']:7.0f}/s "
            f"p50 {r['p50_ms']:6.1f} ms p99 {r['p99_ms']:7.1f} ms lost {r['lost']:5d} "
            f"| servers {r['server_cpu_pct']:4.0f}% gen {r['gen_cpu_pct']:3.0f}% lag p99 {r['gen_lag_p99_ms']:5.1f} ms "
            f"others {r['others_cpu_pct']:3.0f}%"
            f"{'' if passed(r) else '  FAIL: ' + why_failed(r)}")


async def bench_system(system: System, redis: Backend, args: argparse.Namespace,
                       server_cpus: set[int] | None, gen_cpus: set[int] | None) -> dict[str, Any]:
    with spawning_on(server_cpus, gen_cpus):          # the servers land on the server core
        system.start(redis.url)
    result: dict[str, Any] = {"system": system.name, "redis": redis.kind}
    try:
        protocol, clients = await system.make_clients(args.pairs)
        gen = LoadGen(protocol, clients)
        await gen.connect_all()
        result |= await climb(gen, system.pids(), redis.pids(), fixed=args.fixed, seconds=args.seconds,
                              ladder=args.ladder, show=lambda label, r: print(line(system.name, label, r), flush=True))
        await gen.close_all()
    finally:
        system.stop()
    return result


def report(results: list[dict[str, Any]], command: str, date: str, machine_line: str) -> str:
    out = [f"Command: `{command}`  ", f"Date: {date}  ", f"Machine: {machine_line}", "",
           "| system | fixed load: offered | delivered | p50 | p99 | lost "
           "| saturation: offered | delivered | p50 | p99 | lost | next step failed with "
           f"| server CPU per delivered msg at {CPU_PROBE:,.0f}/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        f, s = res["fixed"], res["saturation"]
        failed = next((r for r in res["ladder"] if not passed(r)), None)
        fixed = (f"{f['offered_per_s']:,.0f}/s | {f['delivered_per_s']:,.0f}/s | {f['p50_ms']:.1f} ms "
                 f"| {f['p99_ms']:.1f} ms | {f['lost']}") if f else "– | – | – | – | –"
        sat = (f"{s['offered_per_s']:,.0f}/s | {s['delivered_per_s']:,.0f}/s | {s['p50_ms']:.1f} ms "
               f"| {s['p99_ms']:.1f} ms | {s['lost']}") if s else "none passed | – | – | – | –"
        nxt = f"{failed['offered_per_s']:,.0f}/s: {why_failed(failed)}" if failed else "(ladder exhausted)"
        probe = next((r for r in res["ladder"] if r["offered_per_s"] == CPU_PROBE), None)
        cpu = f"{cpu_us_per_msg(probe):,.0f} µs" if probe else "–"
        out.append(f"| {res['system']} | {fixed} | {sat} | {nxt} | {cpu} |")
    out.append("")
    out.append("Every step (offered/s: lost, p99, server CPU % of one core; with several Redis nodes, each "
               "node's CPU % in brackets):")
    for res in results:
        steps = ([res["fixed"]] if res["fixed"] else []) + res["ladder"]
        out.append(f"- {res['system']}: " + "; ".join(
            f"{r['offered_per_s']:,.0f}: {r['lost']} lost, {r['p99_ms']:,.0f} ms, {r['server_cpu_pct']:.0f} %"
            + (f" [{' / '.join(f'{c:.0f}' for c in r['redis_node_cpu_pct'])}]"
               if len(r.get("redis_node_cpu_pct", [])) > 1 else "")
            for r in steps))
    return "\n".join(out)


async def main(args: argparse.Namespace) -> None:
    if bad := [k for k in args.redis if k not in BACKENDS]:
        raise SystemExit(f"--redis: unknown {', '.join(bad)} (want {' or '.join(BACKENDS)})")
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(report(saved["results"], saved["command"], saved["date"], saved["machine"]))
        return
    command = command_line()
    priority = prioritize(args.nice)
    server_cpus, gen_cpus = cpu_split(args.pin)
    print(f"# relay benchmark, {stamp()}, {machine()}, load average {os.getloadavg()[0]:.2f}")
    print(f"# {args.pairs} pairs; servers + redis on CPU {server_cpus or 'any'}, load generator on CPU "
          f"{gen_cpus or 'any'}; {priority}; redis: {', '.join(args.redis)}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    results = []
    for kind in args.redis:
        systems = [key for key in args.systems if kind == "single" or key in OURS]
        for key in args.systems:
            if key not in systems:
                print(f"# {key}: skipped on {kind} (Django Channels' redis layers are not Redis Cluster clients)")
        if not systems:
            continue
        with spawning_on(server_cpus, gen_cpus):      # every Redis node on the server core
            redis = Backend(kind, appendonly=args.aof).start()
        print(f"# redis: {redis.describe()}, load average {os.getloadavg()[0]:.2f}", flush=True)
        try:
            for key in systems:
                system = make_system(key, str(RESULTS), args.gateway_code)
                if len(args.redis) > 1 or kind != "single":
                    system.name += ", single Redis" if kind == "single" else ", Redis Cluster"
                results.append(await bench_system(system, redis, args, server_cpus, gen_cpus))
                redis.flushall()
        finally:
            redis.cleanup()
    text = report(results, command, stamp(), machine())
    print()
    print(text)
    out = save("relay", {"command": command, "machine": machine(), "date": stamp(), "redis": args.redis,
                         "results": results})
    print(f"\n(raw figures: {out})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100)
    add_ladder_options(parser, ladder=DEFAULT_LADDER, fixed=1000, unit="msgs/s")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=["on", "off", "core", "pubsub"],
                        help="on/off: ours with moderation on/off; core/pubsub: the Channels layers")
    parser.add_argument("--redis", type=lambda s: s.split(","), default=["single"],
                        help="single: one redis-server; cluster: a local Redis Cluster of 3 primaries (our "
                             "systems only); single,cluster: both, one after the other, in this run")
    parser.add_argument("--cluster", dest="redis", action="store_const", const=["cluster"],
                        help="the same as --redis cluster")
    parser.add_argument("--gateway-code", default="",
                        help="run our gateways from this directory (a copy of gateway/, chat/, matcher/): "
                             "before/after figures of a change")
    run_main(main(parser.parse_args()))
