"""What the relay benchmarks share (one-on-one ``relay_bench.py``, group fan-out ``groups_bench.py``).

* the pass rule of a ladder step (every message delivered, nothing duplicated or out of order, no
  error, no socket closed, p99 <= 100 ms) and why a step failed;
* CPU meters: a set of processes (from /proc/<pid>/stat, as % of one core) and the whole machine
  (from /proc/stat), so each step says how much CPU *other* work on the machine took meanwhile;
* the CPU split (servers and Redis on core 0, the load generator on core 1) and spawning onto it;
* the ladder: a warm-up, a fixed load, then rising rates until a step fails (a failing step is
  retried once, the machine being shared); saturation is the highest step passed;
* the options every relay benchmark takes, saving raw figures, running under uvloop.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadgen import LoadGen
from systems import proc_cpu_seconds

P99_LIMIT_MS = 100.0
RESULTS = Path(__file__).resolve().parent / "results"


def passed(r: dict[str, Any]) -> bool:
    return (r["lost"] == 0 and r["dup_or_reordered"] == 0 and not r["errors"] and r["closed"] == 0
            and r["p99_ms"] <= P99_LIMIT_MS)


def why_failed(r: dict[str, Any]) -> str:
    out = []
    if r["lost"]:
        out.append(f"{r['lost']} lost")
    if r["dup_or_reordered"]:
        out.append(f"{r['dup_or_reordered']} dup/reordered")
    if r["errors"]:
        out.append(f"errors {r['errors']}")
    if r["closed"]:
        out.append(f"{r['closed']} sockets closed {r.get('close_reasons', '')}")
    if r["p99_ms"] > P99_LIMIT_MS:
        out.append(f"p99 {r['p99_ms']:.0f} ms")
    return ", ".join(out)


def cpu_us_per_msg(r: dict[str, Any]) -> float:
    """CPU of the server side (server processes + Redis) per delivered message, in µs."""
    return r["server_cpu_pct"] / 100 / max(1e-9, r["delivered_per_s"]) * 1e6


class Meter:
    """CPU used by a set of processes between two readings, as % of one core."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.reset()

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = sum(proc_cpu_seconds(p) for p in self.pids)

    def pct(self) -> float:
        return 100 * (sum(proc_cpu_seconds(p) for p in self.pids) - self.c0) / max(1e-9, time.monotonic() - self.t0)


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (every core: all but idle and iowait), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]       # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class MachineMeter(Meter):
    """The whole machine's busy CPU between two readings, as % of one core (200 % = both cores of two)."""

    def __init__(self) -> None:
        super().__init__([])

    def reset(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = machine_busy_seconds()

    def pct(self) -> float:
        return 100 * (machine_busy_seconds() - self.c0) / max(1e-9, time.monotonic() - self.t0)


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, generator CPUs): core 0 and core 1 when pinning on a machine of two or more."""
    if pin and (os.cpu_count() or 1) >= 2:
        return {0}, {1}
    return None, None


@contextmanager
def spawning_on(server_cpus: set[int] | None, gen_cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside the block land on the server CPUs (children inherit the affinity);
    afterwards this process (the load generator) moves to its own."""
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)
    try:
        yield
    finally:
        if gen_cpus:
            os.sched_setaffinity(0, gen_cpus)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


async def climb(gen: LoadGen, server_pids: list[int], redis_pids: list[int], *, fixed: float, seconds: float,
                ladder: list[float], show: Callable[[str, dict[str, Any]], None],
                gen_pids: list[int] | None = None) -> dict[str, Any]:
    """Warm-up (3 s) and fixed load at ``fixed``, then the ``ladder`` until a step fails.  Each step's
    figures get the server side's CPU (servers + every Redis node, % of one core), each Redis node's,
    the rest of the machine's (busy CPU not used by the servers, Redis or the generator) and the
    load average; ``show(label, r)`` prints them."""
    meter = Meter([*server_pids, *redis_pids])
    node_meters = [Meter([pid]) for pid in redis_pids]
    ours = Meter([*server_pids, *redis_pids, *(gen_pids or [os.getpid()])])
    machine_meter = MachineMeter()
    out: dict[str, Any] = {"fixed": None, "ladder": [], "saturation": None}
    step = 0

    async def run(rate: float, label: str, length: float) -> dict[str, Any]:
        nonlocal step
        step += 1
        for m in (meter, ours, machine_meter, *node_meters):
            m.reset()
        r = await gen.run_step(step, rate, length)
        r["server_cpu_pct"] = meter.pct()
        r["redis_node_cpu_pct"] = [m.pct() for m in node_meters]
        r["others_cpu_pct"] = max(0.0, machine_meter.pct() - ours.pct())
        r["load_average"] = load_average()
        show(label, r)
        return r

    await run(fixed, "warm-up", 3)
    out["fixed"] = await run(fixed, "fixed", seconds)
    for rate in ladder:
        r = await run(rate, "ladder", seconds)
        if not passed(r) and not gen.closed_clients and r["lost"] == 0:
            r = await run(rate, "retry", seconds)
        out["ladder"].append(r)
        if not passed(r):
            break
        out["saturation"] = r
    return out


def add_ladder_options(parser: argparse.ArgumentParser, *, ladder: Sequence[float], fixed: float, unit: str) -> None:
    """The options every relay benchmark takes (``unit`` names what a rate counts)."""
    parser.add_argument("--fixed", type=float, default=fixed, help=f"fixed offered load, {unit} in total")
    parser.add_argument("--seconds", type=float, default=8, help="length of each step")
    parser.add_argument("--ladder", type=lambda s: [float(x) for x in s.split(",") if x], default=list(ladder),
                        help=f"offered rates ({unit} in total) tried in order to find saturation")
    parser.add_argument("--report", default="", help="only print the tables of a saved results file")
    parser.add_argument("--no-aof", dest="aof", action="store_false",
                        help="run Redis without its append-only file (default: appendonly yes, fsync every second)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="let the OS place the processes")
    parser.add_argument("--nice", type=int, default=-10,
                        help="scheduling priority of the run and every process it starts (negative needs root; "
                             "on a shared machine it keeps other work from skewing the figures)")


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def save(kind: str, payload: dict[str, Any]) -> Path:
    """Write the raw figures to bench/results/<kind>-<time>.json; return its path for printing."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(payload, indent=1))
    return out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out


def run_main(main: Coroutine[Any, Any, Any]) -> Any:
    """Run the benchmark's coroutine under uvloop when it is installed (the gateways use it too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
