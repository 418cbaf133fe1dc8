"""``aftertalk serve`` with its embedded redis-server: however serve ends, its Redis ends too.

Real ``aftertalk serve`` processes (no --redis-url), each on a private data directory and a free
port.  The redis-server a serve owns is found as its child in /proc; "nothing on the data directory"
means no redis-server process whose working directory (redis chdirs to ``--dir``) is that directory.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.gateway import ROOT
from support.redis_server import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

STOP_WITHIN_S = 15.0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie, already exited but not yet reaped, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def redis_children(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in children.read_text().split()]
    return [c for c in found if _comm(c).startswith("redis-server")]


def redis_on(data_dir: Path) -> list[int]:
    """Every live redis-server process working in ``data_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _comm(int(entry.name)).startswith("redis-server"):
            continue
        with contextlib.suppress(OSError):
            if os.path.realpath(entry / "cwd") == str(data_dir.resolve()) and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Serve:
    """One ``aftertalk serve --demo`` on ``data_dir``; its output goes to a log file."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = log_dir / f"serve-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("AFTERTALK_")}
        env = {**base, "AFTERTALK_SCREENING_WORKERS": "0", "AFTERTALK_LOG_LEVEL": "info"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--demo", "--port", str(self.port),
                 "--data-dir", str(data_dir)],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_up(self, timeout: float = 30.0) -> Serve:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not become ready:\n{self.output[-3000:]}")

    def redis_pid(self) -> int:
        children = redis_children(self.pid)
        assert len(children) == 1, (children, self.output[-2000:])
        return children[0]


@pytest.fixture
def serves(tmp_path):
    """Start serve processes; afterwards stop any still running and any redis-server on the data dirs."""
    started: list[Serve] = []

    def start(data_dir: Path | None = None) -> Serve:
        s = Serve(data_dir or tmp_path / "data", tmp_path)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    for data_dir in {s.data_dir for s in started}:       # what today's code left behind must not outlive the test
        for pid in redis_on(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_stops_serve_and_its_redis_cleanly(serves, sig):
    serve = serves().wait_up()
    redis_pid = serve.redis_pid()
    started = time.monotonic()
    serve.proc.send_signal(sig)
    try:
        code = serve.proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve still running {STOP_WITHIN_S} s after {sig.name}") from None
    assert wait_until(lambda: not _alive(redis_pid), STOP_WITHIN_S - (time.monotonic() - started)), \
        f"the embedded redis-server (PID {redis_pid}) outlived serve after {sig.name}"
    assert redis_on(serve.data_dir) == []
    # the clean path ran (uvicorn's graceful shutdown, then serve's own stop of its Redis), not merely
    # the parent-death signal: serve exits 0, and Redis was told to SHUTDOWN (flushing its AOF) by a
    # command, where a signal (the parent-death one, or a terminate) would log "Received SIGTERM"
    assert code == 0, (code, serve.output[-3000:])
    redis_log = (serve.data_dir / "redis.log").read_text()
    assert "User requested shutdown" in redis_log and "Received SIG" not in redis_log, redis_log[-2000:]
    assert "Redis is now ready to exit" in redis_log, redis_log[-2000:]
    assert "Traceback" not in serve.output, serve.output[-3000:]


def test_a_second_serve_on_the_same_data_dir_refuses_naming_the_first(serves):
    first = serves().wait_up()
    redis_pid = first.redis_pid()
    second = serves(first.data_dir)
    try:
        code = second.proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError("a second serve on the same data directory did not refuse:\n"
                             + second.output[-2000:]) from None
    assert code == 3, (code, second.output)
    assert f"PID {first.pid}" in second.output and str(first.data_dir) in second.output, second.output
    assert "Traceback" not in second.output, second.output
    assert first.proc.poll() is None
    assert redis_on(first.data_dir) == [redis_pid]          # the first's Redis only, and still running


def test_after_kill_9_the_embedded_redis_is_gone_and_serve_starts_again(serves):
    first = serves().wait_up()
    redis_pid = first.redis_pid()
    first.proc.kill()
    first.proc.wait()
    assert wait_until(lambda: not _alive(redis_pid), 5.0), \
        f"the embedded redis-server (PID {redis_pid}) outlived a kill -9 of its serve"
    assert redis_on(first.data_dir) == []
    again = serves(first.data_dir).wait_up()         # the lock left behind is stale: taken over, with a warning
    assert f"PID {first.pid}" in again.output, again.output
    assert len(redis_on(first.data_dir)) == 1
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(STOP_WITHIN_S) == 0
    assert wait_until(lambda: redis_on(first.data_dir) == [], 5.0)


def test_a_leftover_redis_on_the_data_dir_is_reported_not_joined(serves, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # a redis-server from a crashed run (as today's code left behind): still working in the data dir
    leftover = subprocess.Popen(
        ["redis-server", "--port", str(free_port()), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--save", "", "--logfile", str(data_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: redis_on(data_dir) == [leftover.pid], 10.0)
        serve = serves(data_dir)
        try:
            code = serve.proc.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError("serve joined a leftover redis-server:\n" + serve.output[-2000:]) from None
        assert code == 3, (code, serve.output)
        assert f"PID {leftover.pid}" in serve.output, serve.output
        assert "Traceback" not in serve.output, serve.output
        assert redis_on(data_dir) == [leftover.pid]
    finally:
        leftover.terminate()
        leftover.wait(10)
