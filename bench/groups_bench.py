"""Group fan-out benchmark: delivered msgs/s and latency in groups of 8 on two gateways, beside one-on-one.

Usage: ``make bench-groups`` or ``.venv/bin/python bench/groups_bench.py [--groups 100] [--size 8]
[--fixed 125] [--seconds 8] [--pairs 100] [--systems on] [--no-pin]``

On one private redis-server (append-only, fsync every second, as deployed) and two ``aftertalk
serve`` processes (the relay benchmark's machinery: bench/relaylib.py, bench/systems.py):

* ``--groups`` groups of ``--size`` members (docs/protocol.md, "Groups"): a facilitator (a survivor
  whose token carries ``"facilitator": true``) sends ``create_group`` with ``capacity`` = size, then
  the others (patients and survivors in turn) send ``join_group``; member j of group g is on gateway
  (g + j) mod 2, so every group has half its members on each process and every message crosses
  processes through Redis.  Setup fails loudly on any error frame or a group that is not full.
* every member sends at the same rate; the offered rate (``--fixed``, ``--ladder``) counts *sent*
  messages per second over all groups.  Each message is delivered to every member: the 7 others and
  the author's own connection (docs/protocol.md, "Chat": every connection of every participant gets
  ``message``), so delivered = 8 x sent, and every one of those 8 copies is checked: lost (a member
  never saw it), duplicated or out of order (per member and author).
* a step passes as in the relay benchmark: every copy delivered, nothing duplicated or out of order,
  no error, no socket closed, p99 <= 100 ms; saturation is the highest passing step before the
  first failing one (a failing step is retried once, the machine being shared).
* CPU: servers and Redis pinned to core 0, the generator to core 1; "server CPU" is the two
  gateways plus Redis (from /proc), reported per delivered message and per message sent.  Each step
  also records the CPU the rest of the machine used meanwhile ("others") and the load average.
* then, same Redis (flushed), fresh gateways, same sitting: the one-on-one relay benchmark
  (``--pairs`` conversations, bench/relay_bench.py's ladder) for the same system, so the two compare
  as ratios; ``--pairs 0`` leaves it out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Backend, machine, percentile, prioritize, stamp
from loadgen import AftertalkProtocol, Client, LoadGen
from relay_bench import DEFAULT_LADDER as RELAY_LADDER
from relay_bench import OURS, bench_system, make_system
from relaylib import (
    RESULTS,
    add_ladder_options,
    climb,
    command_line,
    cpu_split,
    cpu_us_per_msg,
    load_average,
    passed,
    run_main,
    save,
    spawning_on,
    why_failed,
)
from systems import Aftertalk

from support.gateway import token

GROUPS_LADDER = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 800, 1000, 1200, 1500, 1750, 2000, 2500, 3000]
TOPIC = {"kind": "diagnosis", "code": "breast"}
SETUP_TIMEOUT_S = 60.0
TOKEN_TTL_S = 4 * 3600        # the tests' signing (HS256; sub, role, name, iat, exp; "facilitator": true)


class GroupProtocol(AftertalkProtocol):
    """Ours, except that opening a client also puts it in its group: the facilitator (``target[3]``
    true) creates group ``target[2]``, every other member joins it once it exists.  Sending and
    reading are the one-on-one protocol's (a group is a conversation)."""

    def __init__(self, groups: int, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.ids: list[asyncio.Future[str]] = [asyncio.get_running_loop().create_future() for _ in range(groups)]
        self.members_seen = [0] * groups         # the most members a `joined` frame showed (list or count)
        self.create_ms: list[float] = []
        self.join_ms: list[float] = []

    @staticmethod
    async def expect(client: Client, kind: str) -> dict[str, Any]:
        """The next frame of this type (presence, member_joined and the like are passed over); an
        error frame, or nothing within SETUP_TIMEOUT_S, stops the run with what was received."""
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            while True:
                f = orjson.loads(await client.ws.recv())
                if f.get("type") == kind:
                    return f
                if f.get("type") == "error":
                    raise RuntimeError(f"client {client.idx}: {kind} expected, got {f}")

    async def open(self, client: Client) -> None:
        _, _, group, creator = client.target
        welcome = await self.sign_in(client)
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"unexpected welcome: {str(welcome)[:300]}")
        t0 = time.monotonic()
        if creator:
            await client.ws.send(orjson.dumps({
                "type": "create_group", "topic": TOPIC, "language": "en", "title": f"Bench circle {group}",
                "description": "fan-out benchmark", "capacity": self.capacity}).decode())
            created = (await self.expect(client, "group"))["group"]
            self.create_ms.append(1000 * (time.monotonic() - t0))
            client.conversation = created["group_id"]
            self.members_seen[group] = max(self.members_seen[group], created.get("members", 1))
            self.ids[group].set_result(created["group_id"])
            return
        gid = await asyncio.wait_for(asyncio.shield(self.ids[group]), SETUP_TIMEOUT_S)
        t0 = time.monotonic()
        await client.ws.send(orjson.dumps({"type": "join_group", "group_id": gid}).decode())
        joined = await self.expect(client, "joined")
        self.join_ms.append(1000 * (time.monotonic() - t0))
        if joined.get("conversation_id") != gid or joined.get("group_id") != gid:
            raise RuntimeError(f"client {client.idx}: joined {gid}, got {str(joined)[:300]}")
        client.conversation = gid
        count = max(len(joined.get("members") or []), (joined.get("group") or {}).get("members", 0))
        self.members_seen[group] = max(self.members_seen[group], count)


def group_clients(system: Aftertalk, groups: int, size: int) -> tuple[GroupProtocol, list[Client]]:
    """One client per member; the facilitators first, so every group exists before its members join
    (the generator opens clients in batches, in list order)."""
    run = uuid.uuid4().hex[:6]
    creators, members = [], []
    for g in range(groups):
        for j in range(size):
            idx = g * size + j
            url = system.gateways[(g + j) % 2].ws_url
            if j == 0:
                tok = token("survivor", f"fac-{run}-{g}", f"Robin {g}", TOKEN_TTL_S, facilitator=True)
                creators.append(Client(idx, -1, (url, tok, g, True)))
            else:
                role = "patient" if j % 2 else "survivor"
                tok = token(role, f"mem-{run}-{idx}", f"{role.title()} {g}.{j}", TOKEN_TTL_S)
                members.append(Client(idx, -1, (url, tok, g, False)))
    return GroupProtocol(groups, size), creators + members


def lost_by_path(clients: list[Client], step: int, size: int) -> dict[str, int]:
    """Where a failing step's copies went missing: the copies each member is short of from each
    author in its group (what the author sent minus the highest n seen: whole copies and tails),
    summed by path: the author's own copy, another member on the author's gateway, on the other one.
    The sum equals ``lost`` unless copies went missing in the middle of a sequence ("gaps")."""
    by_idx = {c.idx: c for c in clients}
    out = {"own": 0, "same_gateway": 0, "other_gateway": 0, "receivers_short": 0}
    for rcv in clients:
        g, j = divmod(rcv.idx, size)
        short = 0
        for k in range(size):
            author = by_idx[g * size + k]
            missing = author.sent - rcv.last_seen.get((step, author.idx), 0)
            if missing <= 0:
                continue
            short += missing
            path = "own" if k == j else "same_gateway" if (g + k) % 2 == (g + j) % 2 else "other_gateway"
            out[path] += missing
        out["receivers_short"] += short > 0
    return out


def group_line(name: str, label: str, r: dict[str, Any]) -> str:
    return (f"{name:30} {label:8} sent {r['sent_per_s']:6.0f}/s delivered {r['delivered_per_s']:7.0f}/s "
            f"p50 {r['p50_ms']:6.1f} ms p99 {r['p99_ms']:7.1f} ms lost {r['lost']:5d} "
            f"| servers {r['server_cpu_pct']:4.0f}% = {cpu_us_per_msg(r):4.0f} µs/delivered "
            f"gen {r['gen_cpu_pct']:3.0f}% lag p99 {r['gen_lag_p99_ms']:5.1f} ms others {r['others_cpu_pct']:3.0f}% "
            f"load {r['load_average']}{'' if passed(r) else '  FAIL: ' + why_failed(r)}"
            + (f" (missing copies by path: {r['lost_by_path']})" if r.get("lost_by_path") else ""))


async def bench_groups(key: str, redis: Backend, args: argparse.Namespace, server_cpus: set[int] | None,
                       gen_cpus: set[int] | None) -> dict[str, Any]:
    system = make_system(key, str(RESULTS))
    assert isinstance(system, Aftertalk)
    name = f"{system.name}, groups of {args.size}"
    with spawning_on(server_cpus, gen_cpus):          # the gateways land on the server core
        system.start(redis.url)
    result: dict[str, Any] = {"system": name, "kind": "groups", "groups": args.groups, "size": args.size,
                              "deliveries_per_send": args.size}
    try:
        protocol, clients = group_clients(system, args.groups, args.size)
        gen = LoadGen(protocol, clients, recipients=args.size, own_copy=True)
        t0 = time.monotonic()
        await gen.connect_all()
        setup_s = time.monotonic() - t0
        not_full = [g for g, n in enumerate(protocol.members_seen) if n != args.size]
        create, join = sorted(protocol.create_ms), sorted(protocol.join_ms)
        result["setup"] = {
            "seconds": setup_s, "create_p50_ms": percentile(create, 50), "create_p99_ms": percentile(create, 99),
            "join_p50_ms": percentile(join, 50), "join_p99_ms": percentile(join, 99),
            "groups_not_full": not_full}
        print(f"# {len(clients)} members signed in and in {args.groups} groups in {setup_s:.1f} s "
              f"(create_group p50 {percentile(create, 50):.1f} ms, join_group p50 {percentile(join, 50):.1f} / "
              f"p99 {percentile(join, 99):.1f} ms); load average {load_average()}", flush=True)
        if not_full:
            raise RuntimeError(f"{len(not_full)} groups did not reach {args.size} members: {not_full[:10]} "
                               f"(largest member lists seen: {[protocol.members_seen[g] for g in not_full[:10]]})")
        def show(label: str, r: dict[str, Any]) -> None:
            if r["lost"]:
                r["lost_by_path"] = lost_by_path(clients, r["step"], args.size)
            print(group_line(name, label, r), flush=True)

        result |= await climb(gen, system.pids(), redis.pids(), fixed=args.fixed, seconds=args.seconds,
                              ladder=args.ladder, show=show)
        await gen.close_all()
    finally:
        system.stop()
    return result


def cell(r: dict[str, Any] | None, deliveries_per_send: int) -> str:
    """offered sent/s | delivered/s | p50 | p99 | lost | server CPU per delivered | per send."""
    if r is None:
        return "none passed | – | – | – | – | – | –"
    per = cpu_us_per_msg(r)
    return (f"{r['sent_per_s']:,.0f}/s | {r['delivered_per_s']:,.0f}/s | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms "
            f"| {r['lost']} | {per:,.0f} µs | {per * deliveries_per_send:,.0f} µs")


def ratios(results: list[dict[str, Any]]) -> list[str]:
    """Each group run against the one-on-one run that followed it (same system, same sitting)."""
    out = []
    for grp, one in pairwise(results):
        if grp.get("kind") != "groups" or one.get("kind") == "groups":
            continue
        a, b = grp["saturation"], one["saturation"]
        parts = []
        if a and b:
            parts.append(f"at saturation {a['delivered_per_s'] / b['delivered_per_s']:.2f}× the delivered messages/s "
                         f"({a['sent_per_s'] / b['sent_per_s']:.2f}× the messages sent/s) for "
                         f"{cpu_us_per_msg(a) / cpu_us_per_msg(b):.2f}× the server CPU per delivered message")
        if grp["fixed"] and one["fixed"]:
            parts.append(f"at the fixed loads ({grp['fixed']['delivered_per_s']:,.0f} and "
                         f"{one['fixed']['delivered_per_s']:,.0f} delivered/s) "
                         f"{cpu_us_per_msg(grp['fixed']) / cpu_us_per_msg(one['fixed']):.2f}× the server CPU per "
                         "delivered message")
        if parts:
            out += ["", f"{grp['system']} against {one['system']}: " + "; ".join(parts) + "."]
    return out


def report(results: list[dict[str, Any]], command: str, date: str, machine_line: str) -> str:
    out = [f"Command: `{command}`  ", f"Date: {date}  ", f"Machine: {machine_line}", "",
           "Saturation (highest step with every copy delivered, nothing duplicated or reordered, no error, "
           "p99 ≤ 100 ms) and the fixed load; server CPU = two gateways + Redis, per delivered message and per "
           "message sent:", "",
           "| system | step | sent | delivered | p50 | p99 | lost | server CPU / delivered | / sent "
           "| next step failed with |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        per_send = res.get("deliveries_per_send", 1)
        failed = next((r for r in res["ladder"] if not passed(r)), None)
        nxt = f"{failed['offered_per_s']:,.0f}/s sent: {why_failed(failed)}" if failed else "(ladder exhausted)"
        out.append(f"| {res['system']} | fixed | {cell(res['fixed'], per_send)} | |")
        out.append(f"| {res['system']} | **saturation** | {cell(res['saturation'], per_send)} | {nxt} |")
    out += ratios(results)
    out += ["", "Every step (offered sent/s: delivered/s, lost, p50 / p99, server CPU % of one core, µs per "
            "delivered; others = CPU the rest of the machine used, % of one core; load average):"]
    for res in results:
        steps = ([res["fixed"]] if res["fixed"] else []) + res["ladder"]
        out.append(f"- {res['system']}: " + "; ".join(
            f"{r['offered_per_s']:,.0f}: {r['delivered_per_s']:,.0f}/s, {r['lost']} lost, "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:,.0f} ms, {r['server_cpu_pct']:.0f} %, {cpu_us_per_msg(r):,.0f} µs, "
            f"others {r.get('others_cpu_pct', float('nan')):.0f} %, load {r.get('load_average', '?')}"
            for r in steps))
    return "\n".join(out)


async def main(args: argparse.Namespace) -> None:
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(report(saved["results"], saved["command"], saved["date"], saved["machine"]))
        return
    if bad := [k for k in args.systems if k not in OURS]:
        raise SystemExit(f"--systems: {', '.join(bad)} not ours (want some of {', '.join(OURS)})")
    command = command_line()
    priority = prioritize(args.nice)
    server_cpus, gen_cpus = cpu_split(args.pin)
    print(f"# group fan-out benchmark, {stamp()}, {machine()}, load average {load_average()}")
    print(f"# {args.groups} groups of {args.size} on 2 gateways, then {args.pairs or 'no'} one-on-one pairs; "
          f"servers + redis on CPU {server_cpus or 'any'}, load generator on CPU {gen_cpus or 'any'}; {priority}",
          flush=True)
    RESULTS.mkdir(exist_ok=True)
    relay_args = argparse.Namespace(pairs=args.pairs, fixed=args.relay_fixed, seconds=args.seconds,
                                    ladder=args.relay_ladder)
    results = []
    with spawning_on(server_cpus, gen_cpus):
        redis = Backend("single", appendonly=args.aof).start()
    print(f"# redis: {redis.describe()}", flush=True)
    try:
        for key in args.systems:
            results.append(await bench_groups(key, redis, args, server_cpus, gen_cpus))
            redis.flushall()
            if args.pairs:
                one = make_system(key, str(RESULTS))
                one.name += ", one-on-one"
                results.append(await bench_system(one, redis, relay_args, server_cpus, gen_cpus))
                redis.flushall()
    finally:
        redis.cleanup()
    text = report(results, command, stamp(), machine())
    print()
    print(text)
    out = save("groups", {"command": command, "machine": machine(), "date": stamp(), "results": results})
    print(f"\n(raw figures: {out})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--size", type=int, default=8, help="members per group (and each group's capacity)")
    add_ladder_options(parser, ladder=GROUPS_LADDER, fixed=125, unit="messages sent/s")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=["on"],
                        help="ours, as in relay_bench.py: on/off (moderation), screen-on/screen-off")
    parser.add_argument("--pairs", type=int, default=100,
                        help="then the one-on-one relay benchmark with this many pairs, same sitting (0: skip)")
    parser.add_argument("--relay-fixed", type=float, default=1000, help="its fixed load (msgs/s)")
    parser.add_argument("--relay-ladder", type=lambda s: [float(x) for x in s.split(",") if x],
                        default=RELAY_LADDER, help="its ladder (msgs/s)")
    run_main(main(parser.parse_args()))
