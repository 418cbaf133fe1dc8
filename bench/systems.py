"""The systems under test: two Aftertalk gateway processes, or two Django Channels relay processes.

Each system starts its server processes against a Redis URL, makes ``pairs`` conversations (or
rooms), and hands the load generator one client per participant: the first of a pair on server
process 0, the second on server process 1, so every message crosses processes through Redis.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from common import free_port
from loadgen import AftertalkProtocol, ChannelsProtocol, Client, Protocol

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
PEERS_PYTHON = BENCH / ".venv-peers" / "bin" / "python"

# Limits meant for people (5 msgs/s per user, 200 sockets per address) would refuse a load
# generator; everything else runs with the service's defaults.
GATEWAY_BENCH_ENV = {
    "AFTERTALK_SEND_RATE_PER_S": "100000", "AFTERTALK_SEND_BURST": "100000",
    "AFTERTALK_FRAMES_PER_S": "100000", "AFTERTALK_FRAMES_BURST": "100000",
    "AFTERTALK_MAX_CONNS_PER_IP": "100000",
}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class System:
    name = ""

    def start(self, redis_url: str) -> None:
        raise NotImplementedError

    async def make_clients(self, pairs: int) -> tuple[Protocol, list[Client]]:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Aftertalk(System):
    """Two ``aftertalk serve`` processes; conversations are made through the real matcher scripts."""

    def __init__(self, *, moderation: bool = True, log_dir: str = "/tmp", extra_env: dict | None = None,
                 code_dir: str = "") -> None:
        self.moderation = moderation
        self.name = f"aftertalk, moderation {'on' if moderation else 'off'}" + (f" [{code_dir}]" if code_dir else "")
        self.code_dir = code_dir          # run the gateways from another copy of the code (before/after figures)
        self.prefix = "b" + uuid.uuid4().hex[:8]
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        self.gateways: list[Any] = []
        self.redis_url = ""

    def start(self, redis_url: str) -> None:
        import support.gateway
        from support.gateway import GatewayProcess

        if self.code_dir:
            support.gateway.ROOT = Path(self.code_dir)     # `python -m gateway.cli` runs from there
        self.redis_url = redis_url
        env = {**GATEWAY_BENCH_ENV, "AFTERTALK_MODERATION": "1" if self.moderation else "0", **self.extra_env}
        self.gateways = [GatewayProcess(redis_url, self.prefix, log_dir=self.log_dir, **env).start(wait=False)
                         for _ in range(2)]
        for g in self.gateways:
            g.wait_ready(timeout=120)

    async def make_conversations(self, pairs: int) -> list[tuple[str, str]]:
        """(patient id, survivor id) of ``pairs`` open conversations, made by the matcher's scripts:
        an auto-accepting survivor is available, a patient presses talk-now, the chat log is opened."""
        from chat.store import ChatStore
        from core.keys import Keys
        from core.redis_client import make_redis
        from matcher.profile import Profile
        from matcher.store import MatcherConfig, MatchStore

        redis = make_redis(self.redis_url, decode=True)     # one node or a cluster, as the gateways
        keys = Keys(self.prefix)
        match, chat = MatchStore(redis, keys, MatcherConfig(daily_cap=10**9)), ChatStore(redis, keys)
        profile = Profile(frozenset({"breast"}), frozenset({"fatigue"}), frozenset({"en"}))
        out = []
        try:
            for i in range(pairs):
                sid, pid = f"sur{i}", f"pat{i}"
                await match.connected(sid, "setup")
                await match.set_availability(sid, f"Survivor {i}", available=True, profile=profile, max_chats=1,
                                             auto_accept=True)
                _, created = await match.talk_now(pid, f"Patient {i}", profile)
                assert len(created) == 1 and created[0].survivor == sid, created
                c = created[0]
                await chat.open(c.id, epoch=c.epoch, patient=(c.patient, c.patient_name),
                                survivor=(c.survivor, c.survivor_name))
                await match.disconnected(sid, "setup")
                out.append((pid, sid))
        finally:
            await redis.aclose()
        return out

    async def make_clients(self, pairs: int, *, keep_history: bool = False) -> tuple[Protocol, list[Client]]:
        from support.gateway import token

        clients = []
        for i, (pid, sid) in enumerate(await self.make_conversations(pairs)):
            clients.append(Client(2 * i, 2 * i + 1, (self.gateways[0].ws_url, token("patient", pid, f"Patient {i}"))))
            clients.append(Client(2 * i + 1, 2 * i, (self.gateways[1].ws_url, token("survivor", sid, f"Survivor {i}"))))
        return AftertalkProtocol(keep_history=keep_history), clients

    def pids(self) -> list[int]:
        return [g.proc.pid for g in self.gateways if g.proc]

    def stop(self) -> None:
        for g in self.gateways:
            g.stop()


class ChannelsRelay(System):
    """Two uvicorn processes serving bench/peers/channels_relay with one channels_redis layer."""

    def __init__(self, layer: str, *, log_dir: str = "/tmp") -> None:
        self.layer = layer
        self.name = {"core": "Channels, RedisChannelLayer", "pubsub": "Channels, RedisPubSubChannelLayer"}[layer]
        self.log_dir = log_dir
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, redis_url: str) -> None:
        if not PEERS_PYTHON.exists():
            raise SystemExit(f"{PEERS_PYTHON} is missing: run `make bench-relay` (it creates bench/.venv-peers)")
        env = {**os.environ, "CHANNEL_LAYER": self.layer, "REDIS_URL": redis_url,
               "DJANGO_SETTINGS_MODULE": "channels_relay.settings", "PYTHONPATH": str(PEERS)}
        for _ in range(2):
            port = free_port()
            log = open(Path(self.log_dir) / f"channels-{self.layer}-{port}.log", "ab")  # noqa: SIM115 (the child's)
            # the same server stack as ours: uvicorn, uvloop, httptools, websockets-sansio, no deflate
            self.procs.append(subprocess.Popen(
                [str(PEERS_PYTHON), "-m", "uvicorn", "channels_relay.asgi:application", "--port", str(port),
                 "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
                 "--ws-per-message-deflate", "false", "--no-access-log", "--log-level", "warning",
                 "--lifespan", "off"],
                cwd=PEERS, env=env, stdout=log, stderr=subprocess.STDOUT))
            self.ports.append(port)
        for port, proc in zip(self.ports, self.procs, strict=True):
            self._wait(port, proc)

    @staticmethod
    def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"channels relay exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                except urllib.error.HTTPError:
                    pass                  # 404: Django answers
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("channels relay did not start")

    async def make_clients(self, pairs: int, **_: Any) -> tuple[Protocol, list[Client]]:
        clients = []
        for i in range(pairs):
            for side in (0, 1):
                url = f"ws://127.0.0.1:{self.ports[side]}/ws/chat/room{i}/"
                clients.append(Client(2 * i + side, 2 * i + 1 - side, url))
        return ChannelsProtocol(), clients

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
