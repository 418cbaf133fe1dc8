"""Real gateway processes for the integration tests, and a small protocol client."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import websockets

from support.redis_server import free_port

SECRET = "test-secret-" + "x" * 40
ROOT = Path(__file__).resolve().parents[2]


class ChildProcess:
    """A service process the tests started: killed (SIGKILL) or stopped (SIGTERM, then SIGKILL)."""

    proc: subprocess.Popen[Any] | None = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


class GatewayProcess(ChildProcess):
    """``aftertalk serve`` in a child process against a given Redis."""

    def __init__(self, redis_url: str, prefix: str, *, port: int | None = None, log_dir: str | None = None,
                 **env: Any) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.port = port or free_port()
        self.env = {k.upper(): str(v) for k, v in env.items()}
        self.log_path = Path(log_dir or "/tmp") / f"gateway-{prefix}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, wait: bool = True) -> GatewayProcess:
        env = {**os.environ, "AFTERTALK_SECRET": SECRET, "AFTERTALK_KEY_PREFIX": self.prefix,
               "AFTERTALK_LOG_LEVEL": "warning",
               # the model's workers are started by the screening tests themselves (test_screening_live)
               "AFTERTALK_SCREENING_WORKERS": "0",
               # stop() is SIGTERM: a test's clients are often not reading any more when it runs, and the
               # drain would wait its whole time for them to answer the close (test_rolling_restart sets
               # its own)
               "AFTERTALK_DRAIN_S": "1", **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (the child writes it until stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), "--redis-url", self.redis_url],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")



def token(role: str, sub: str | None = None, name: str | None = None, ttl: float = 3600, *,
          facilitator: bool = False) -> str:
    """A signed token; ``facilitator=True`` adds the claim ``"facilitator": true`` (a group facilitator)."""
    from gateway.auth import issue_token

    sub = sub or f"{role}-{uuid.uuid4().hex[:8]}"
    return issue_token(SECRET, sub=sub, role=role, name=name or sub, ttl_s=ttl, facilitator=facilitator)


class Client:
    """A protocol client that keeps every frame it receives, for assertions."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.welcome: dict[str, Any] | None = None

    @classmethod
    async def connect(cls, ws_url: str, tok: str, *, resume: dict | None = None, **kw: Any) -> Client:
        ws = await websockets.connect(ws_url, max_size=2**20, **kw)
        client = cls(ws)
        hello: dict[str, Any] = {"type": "hello", "token": tok}
        if resume is not None:
            hello["resume"] = resume
        await client.send(hello)
        client.welcome = await client.expect("welcome")
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(orjson.loads(raw))
                self._new.set()
        except Exception:
            pass
        finally:
            self._new.set()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def expect(self, ftype: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Wait for (and consume) the first unconsumed frame of this type whose fields match."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i, f in enumerate(self.frames):
                if f.get("type") == ftype and all(f.get(k) == v for k, v in match.items()):
                    return self.frames.pop(i)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._reader.done():
                raise AssertionError(f"no {ftype} {match} within {timeout}s; got {self.frames[-10:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    def of_type(self, ftype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == ftype]

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        await asyncio.wait_for(self._reader, timeout)
        return self.ws.close_code, self.ws.close_reason or ""

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


class GatewayLauncher:
    """Starts gateway processes in parallel and stops every one it started (a fixture's body)."""

    def __init__(self, redis_url: str, prefix: str, log_dir: str, **default_env: Any) -> None:
        self.redis_url, self.prefix, self.log_dir, self.default_env = redis_url, prefix, log_dir, default_env
        self.started: list[GatewayProcess] = []

    def __call__(self, n: int = 1, url: str | None = None, **env: Any) -> list[GatewayProcess]:
        procs = [GatewayProcess(url or self.redis_url, self.prefix, log_dir=self.log_dir,
                                **{**self.default_env, **env}).start(wait=False) for _ in range(n)]
        for p in procs:
            p.wait_ready()
        self.started.extend(procs)
        return procs

    def stop_all(self) -> None:
        for p in self.started:              # all at once: each drains for up to AFTERTALK_DRAIN_S
            if p.proc and p.proc.poll() is None:
                p.proc.terminate()
        for p in self.started:
            p.stop()


class ModerateProcess(ChildProcess):
    """``aftertalk moderate``: one screening worker process against a given Redis."""

    def __init__(self, redis_url: str, prefix: str, *, log_dir: str | None = None, **env: Any) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.env = {k.upper(): str(v) for k, v in env.items()}
        self.log_path = Path(log_dir or "/tmp") / f"moderate-{prefix}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> ModerateProcess:
        env = {**os.environ, "AFTERTALK_KEY_PREFIX": self.prefix, "AFTERTALK_LOG_LEVEL": "warning", **self.env}
        self._log = open(self.log_path, "a")  # noqa: SIM115 (the child writes it until stop())
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "moderate", "--redis-url", self.redis_url],
                                     env=env, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:             # the worker says "ready" once its model is loaded
            if "ready" in line:
                break
            if time.monotonic() > deadline:
                break
        if self.proc.poll() is not None:
            raise RuntimeError(f"moderate exited: {self.log_path.read_text()[-2000:]}")
        return self

