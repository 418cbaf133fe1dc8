"""Recovery after a Redis restart: how long until thousands of connections are caught up, at what Redis CPU.

Usage: ``make bench-recovery`` or ``.venv/bin/python bench/recovery_bench.py [--pairs 2500] [--down-s 3]
[--code-dir DIR] [--env NAME=VALUE ...]``

What it does:

1. Starts a redis-server (append-only) and two ``aftertalk serve`` processes (bench/systems.py
   ``Aftertalk``; ``--code-dir`` runs the gateways from another copy of the code, for before/after
   figures), makes ``--pairs`` conversations with the real matcher scripts and connects both sides
   of each (patient on gateway 0, survivor on gateway 1): 2 x pairs WebSocket connections.
2. Stops Redis (SIGTERM: a clean restart, the append-only file keeps everything) for ``--down-s``
   seconds, then starts it again on the same port and directory.  Every gateway's pub/sub link
   notices, reconnects with its backoff, and re-syncs every connection it holds: each user's
   state from the control plane and a catch-up of each conversation from the log.
3. The moment Redis answers again, one message is appended to every conversation directly through
   ``ChatStore.append`` (as its patient).  The gateways' links are not back yet, so these messages
   are not seen live: each must reach both participants through the re-sync's catch-up.
4. Reports the time from Redis being back until every connection has its message ("caught up"),
   the connections that never got it within ``--deadline-s`` (dropped catch-ups), the Redis
   process's peak CPU over 100 ms windows and its CPU seconds during the recovery, and the error
   and close frames the clients saw.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
import redis.asyncio as aioredis
from common import RedisServer, machine, prioritize, stamp
from loadgen import AftertalkProtocol, Client
from systems import Aftertalk, proc_cpu_seconds
from websockets.exceptions import ConnectionClosed

MARK = "after-restart"


async def open_client(client: Client, got: dict[int, float], errors: dict[str, int]) -> None:
    await AftertalkProtocol().open(client)                 # hello, welcome, its conversation

    async def read() -> None:
        try:
            async for raw in client.ws:
                f = orjson.loads(raw)
                kind = f.get("type")
                if kind == "message" and f.get("client_id", "").startswith(MARK):
                    got.setdefault(client.idx, time.monotonic())
                elif kind == "error":
                    errors[f.get("code", "?")] = errors.get(f.get("code", "?"), 0) + 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            errors[f"closed {code}"] = errors.get(f"closed {code}", 0) + 1
    client.reader = asyncio.get_running_loop().create_task(read())


class CpuSampler:
    """Samples a process's CPU time every 100 ms; peak = the busiest window, as a share of one core."""

    def __init__(self) -> None:
        self.pid = 0
        self.peak = 0.0
        self.total = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self, pid: int) -> None:
        self.pid, self.peak, self.total = pid, 0.0, 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        first = last = proc_cpu_seconds(self.pid)
        t_last = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now, cpu = time.monotonic(), proc_cpu_seconds(self.pid)
            self.peak = max(self.peak, (cpu - last) / (now - t_last))
            self.total = cpu - first
            last, t_last = cpu, now

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def run(args: argparse.Namespace) -> dict[str, float | str]:
    from chat.store import ChatStore
    from core.keys import Keys

    server = RedisServer(appendonly=True).start()
    env = dict(kv.split("=", 1) for kv in args.env)
    system = Aftertalk(moderation=True, log_dir=tempfile.mkdtemp(prefix="recovery-"), extra_env=env,
                       code_dir=args.code_dir)
    system.start(server.url)
    errors: dict[str, int] = {}
    got: dict[int, float] = {}
    clients: list[Client] = []
    try:
        _, clients = await system.make_clients(args.pairs)
        sem = asyncio.Semaphore(200)

        async def one(c: Client) -> None:
            async with sem:
                await open_client(c, got, errors)
        await asyncio.gather(*(one(c) for c in clients))
        await asyncio.sleep(2)                       # every subscription settled
        conversations = {c.conversation: c for c in clients if c.idx % 2 == 0}     # patient side
        server.stop()
        await asyncio.sleep(args.down_s)
        server.start()
        t_back = time.monotonic()
        sampler = CpuSampler()
        sampler.start(server.proc.pid)
        redis = aioredis.Redis.from_url(server.url, decode_responses=True, max_connections=64)
        chat = ChatStore(redis, Keys(system.prefix))
        for i, (cid, c) in enumerate(conversations.items()):
            await chat.append(cid, sender_id=f"pat{c.idx // 2}", name=f"Patient {c.idx // 2}", role="patient",
                              client_id=f"{MARK}-{i}", text="still here", shown="")
        t_written = time.monotonic()
        deadline = t_back + args.deadline_s
        while len(got) < len(clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await sampler.stop()
        await redis.aclose()
        times = sorted(t - t_back for t in got.values())

        def share(q: float) -> float:      # seconds until q of all connections had their message
            k = int(q * len(clients) + 0.999999) - 1
            return times[k] if k < len(times) else float("nan")
        return {"connections": len(clients), "caught_up": len(got), "missing": len(clients) - len(got),
                "half_s": share(0.5), "p99_s": share(0.99), "all_caught_up_s": share(1.0),
                "writes_s": t_written - t_back,
                "redis_peak_core": sampler.peak, "redis_cpu_s": sampler.total,
                "errors": ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"}
    finally:
        for c in clients:
            if c.ws is not None:
                await c.ws.close()
        system.stop()
        server.cleanup()


async def main(args: argparse.Namespace) -> None:
    priority = prioritize(args.nice)
    print(f"# recovery after a Redis restart, {stamp()}, {machine()}")
    print(f"# command: {' '.join(sys.argv)}; load average {os.getloadavg()[0]:.2f}; {priority}")
    r = await run(args)
    print(f"connections={r['connections']} caught up={r['caught_up']} missing={r['missing']} "
          f"caught up: half after {r['half_s']:.1f}s, 99 % after {r['p99_s']:.1f}s, all after "
          f"{r['all_caught_up_s']:.1f}s (appends took {r['writes_s']:.1f}s); "
          f"redis peak {r['redis_peak_core']:.0%} of a core, {r['redis_cpu_s']:.1f} CPU s; "
          f"client-side errors/closes: {r['errors']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2500)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument("--code-dir", default="", help="run the gateways from this copy of the code")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateways (repeatable)")
    parser.add_argument("--nice", type=int, default=-10, help="CPU priority of the run (see common.prioritize)")
    asyncio.run(main(parser.parse_args()))
