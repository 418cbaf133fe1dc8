"""Memory of idle authenticated connections: one gateway process against a bare Starlette endpoint.

Usage: ``.venv/bin/python bench/idle_conns.py [--conns 10000] [--hold 20] [--only ours|bare]``

For each server — ``aftertalk serve`` (on a private redis-server) and a bare Starlette
WebSocket endpoint under uvicorn with the very same uvicorn options (websockets-sansio,
``ws_max_size``, per-message deflate off, the same ping interval and timeout) — the script
opens ``--conns`` connections from this process, each sending one hello text frame and
reading one answer (our ``welcome``; the bare endpoint answers a fixed frame), holds them
``--hold`` seconds (answering the servers' pings), and reads the server's RSS before and
after from /proc.  RSS per connection = (RSS with the connections - RSS before) / conns.
The client is the lean protocol of load_test.py (it answers pings).  The server is warmed up with a few
hundred connections first so that one-time costs
(imports, code paths, allocator arenas) are in the baseline, not spread over the connections.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, RedisServer, free_port, machine, stamp  # noqa: E402
from load_test import LeanWebSocket  # noqa: E402

from support.gateway import GatewayProcess, token  # noqa: E402

TARGET_KIB = 26
WARMUP = 300


def raise_fd_limit() -> int:
    """Children inherit it: the servers need one descriptor per connection too."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---- the bare endpoint ------------------------------------------------------------------------
def bare_server(port: int, max_size: int, ping_interval: float, ping_timeout: float) -> None:
    """Starlette, one WebSocket route, uvicorn with the gateway's options (see gateway/cli.py)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def ws_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            await ws.send_text('{"type":"welcome"}')

    async def ready(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/readyz", ready), WebSocketRoute("/ws", ws_endpoint)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio",
                ws_max_size=max_size, ws_per_message_deflate=False, ws_ping_interval=ping_interval,
                ws_ping_timeout=ping_timeout, lifespan="on", access_log=False, proxy_headers=True,
                server_header=False)


class BareProcess:
    def __init__(self, max_size: int, ping_interval: float, ping_timeout: float) -> None:
        self.port = free_port()
        self.args = [str(max_size), str(ping_interval), str(ping_timeout)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> BareProcess:
        self.proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(self.port), *self.args],
                                     cwd=ROOT)
        import urllib.request

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                                                      timeout=1):
                return self
            time.sleep(0.1)
        raise RuntimeError("bare server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


# ---- clients --------------------------------------------------------------------------------------
async def open_idle(port: int, tokens: list[str], concurrency: int = 200) -> list[LeanWebSocket]:
    """Connect, hello, read one frame; keep the socket.  At most ``concurrency`` handshakes at once."""
    gate = asyncio.Semaphore(concurrency)
    conns: list[LeanWebSocket] = []
    failures = 0

    async def one(tok: str) -> None:
        nonlocal failures
        async with gate:
            answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            try:
                ws = await LeanWebSocket.connect("127.0.0.1", port,
                                                 lambda raw: answered.done() or answered.set_result(raw))
                ws.send({"type": "hello", "token": tok})
                await asyncio.wait_for(answered, 60)
                conns.append(ws)
            except Exception:
                failures += 1

    await asyncio.gather(*(one(t) for t in tokens))
    if failures:
        print(f"  {failures} connections failed", flush=True)
    return conns


async def close_all(conns: list[LeanWebSocket]) -> None:
    for c in conns:
        c.close()
    await asyncio.gather(*(asyncio.wait_for(c.lost, 10) for c in conns), return_exceptions=True)


async def measure(name: str, pid: int, port: int, n: int, hold: float, make_token: Any) -> dict[str, float]:
    """Open n connections in two halves: the average cost, and the marginal cost of the second half
    (which leaves out one-time growth such as the Redis connection pool filling up)."""
    warm = await open_idle(port, [make_token(f"warm-{i}") for i in range(WARMUP)])
    await close_all(warm)
    await asyncio.sleep(2)
    before = rss_kib(pid)
    started = time.monotonic()
    first = await open_idle(port, [make_token(f"idle-{i}") for i in range(n // 2)])
    await asyncio.sleep(hold / 2)
    half = rss_kib(pid)
    second = await open_idle(port, [make_token(f"idle-{i}") for i in range(n // 2, n)])
    opened_s = time.monotonic() - started
    await asyncio.sleep(hold)                     # pings go back and forth; presence refreshes run
    conns = first + second
    alive = sum(1 for c in conns if not c.lost.done())
    after = rss_kib(pid)
    per_conn = (after - before) / max(1, alive)
    marginal = (after - half) / max(1, len(second))
    print(f"  {name}: {alive} connections open after {hold:.0f} s; RSS {before / 1024:.1f} MiB -> "
          f"{half / 1024:.1f} MiB (half) -> {after / 1024:.1f} MiB = {per_conn:.1f} KiB per connection, "
          f"{marginal:.1f} KiB for each of the second half (opened in {opened_s:.1f} s)", flush=True)
    await close_all(conns)
    return {"before_kib": before, "half_kib": half, "after_kib": after, "conns": alive, "per_conn_kib": per_conn,
            "marginal_kib": marginal, "open_s": opened_s}


async def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    if args.only in (None, "ours"):
        redis = RedisServer(appendonly=False).start()
        gw = GatewayProcess(redis.url, "idle", log_dir=tempfile.mkdtemp(prefix="aftertalk-idle-"),
                            AFTERTALK_MAX_CONNS_PER_IP=str(args.conns * 2),
                            AFTERTALK_PING_INTERVAL_S=str(args.ping_interval),
                            AFTERTALK_PING_TIMEOUT_S=str(args.ping_interval))
        try:
            gw.start()
            assert gw.proc is not None
            results["ours"] = await measure("aftertalk gateway", gw.proc.pid, gw.port, args.conns, args.hold,
                                            lambda sub: token("survivor", sub=sub))
        finally:
            gw.stop()
            redis.cleanup()
    if args.only in (None, "bare"):
        bare = BareProcess(65536, args.ping_interval, args.ping_interval).start()
        try:
            assert bare.proc is not None
            results["bare"] = await measure("bare Starlette endpoint", bare.proc.pid, bare.port, args.conns,
                                            args.hold, lambda sub: "x")
        finally:
            bare.stop()
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-server":
        bare_server(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds to hold the connections open")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="server ping interval and timeout")
    parser.add_argument("--only", choices=["ours", "bare"], default=None)
    args = parser.parse_args()
    limit = raise_fd_limit()
    if limit < args.conns + 1000:
        sys.exit(f"ulimit -n is {limit}: too low for {args.conns} connections")
    print(f"# idle connections, {stamp()}\n# {machine()}\n# {args.conns} connections, hold {args.hold:.0f} s, "
          f"target {TARGET_KIB} KiB per connection", flush=True)
    results = asyncio.run(run(args))
    if "ours" in results and "bare" in results:
        ours, bare = results["ours"]["per_conn_kib"], results["bare"]["per_conn_kib"]
        print(f"ours {ours:.1f} KiB vs bare {bare:.1f} KiB per connection: {ours - bare:+.1f} KiB "
              f"({ours / bare:.2f}x); target {TARGET_KIB} KiB: {'met' if ours <= TARGET_KIB else 'NOT met'}")
        ours, bare = results["ours"]["marginal_kib"], results["bare"]["marginal_kib"]
        print(f"marginal: ours {ours:.1f} KiB vs bare {bare:.1f} KiB per connection: {ours - bare:+.1f} KiB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
