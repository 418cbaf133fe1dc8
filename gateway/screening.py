"""Screening workers as processes: ``aftertalk moderate``, and the ones ``aftertalk serve`` starts.

``aftertalk moderate`` loads the model (a failure stops it with the reason and exit status 3),
says ``ready`` on its standard output, and screens until SIGTERM or SIGINT.  Run as many as the
load needs, on any machine that reaches Redis: they share one consumer group.

``aftertalk serve`` starts ``AFTERTALK_SCREENING_WORKERS`` of them beside itself (default 1, so
``make run`` needs nothing else) and supervises them:

* start-up waits for each worker's ``ready``; a worker that cannot load the model stops ``serve``
  with its error, so screening never silently stays off;
* a worker that dies later is started again (with backoff) and its unfinished batch is claimed
  from the consumer group, so nothing queued is lost;
* the workers run at a lower CPU priority than the gateway (nice +10): under saturation the relay
  keeps the CPU and the screening backlog grows, which the moderators' feed and /metrics show;
* each child dies with its parent (``PR_SET_PDEATHSIG``), however the parent ends, even by
  SIGKILL, and is stopped explicitly on a clean exit.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from chat.crisis import parse_crisis_lines
from chat.flags import FlagStore
from chat.moderation import RuleSet
from chat.screening.policy import Thresholds
from chat.screening.queue import ScreenQueue
from chat.screening.scorer import Scorer
from chat.screening.worker import ScreeningWorker, WorkerConfig
from chat.store import ChatStore
from core.keys import Keys
from core.redis_client import make_redis
from gateway.limits import backoff
from gateway.settings import Settings

log = logging.getLogger("aftertalk.screening")
READY = "aftertalk moderate: ready"
WORKER_NICE = 10
START_TIMEOUT_S = 180.0
PR_SET_PDEATHSIG = 1


def thresholds(settings: Settings) -> Thresholds:
    return Thresholds(crisis=settings.screen_crisis_threshold, review=settings.screen_review_threshold,
                      abuse=settings.screen_abuse_threshold, medical_advice=settings.screen_medical_threshold)


async def run_worker(settings: Settings, scorer: Scorer, stop: asyncio.Event) -> None:
    """One worker loop until ``stop`` is set (the process's composition root for screening)."""
    redis = make_redis(settings.redis_url, decode=True)
    keys = Keys(settings.key_prefix)
    consumer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    worker = ScreeningWorker(
        queue=ScreenQueue(redis, keys), chat=ChatStore(redis, keys), flags=FlagStore(redis, keys), scorer=scorer,
        thresholds=thresholds(settings), crisis_lines=parse_crisis_lines(settings.crisis_lines), redis=redis,
        keys=keys, config=WorkerConfig(consumer=consumer, batch=settings.screening_batch,
                                       claim_idle_s=settings.screening_claim_idle_s),
        rule_severity={name: c.severity for name, c in RuleSet.load(settings.moderation_rules_path or None)
                       .categories.items()})
    task = asyncio.create_task(worker.run())
    try:
        await stop.wait()
        worker.stop()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()


def moderate(settings: Settings) -> int:
    """``aftertalk moderate``: load the model, say ready, screen until told to stop."""
    try:
        scorer = Scorer.load(settings.screening_model_path or None, batch_size=settings.screening_batch)
    except RuntimeError as exc:
        print(f"aftertalk moderate: {exc}", file=sys.stderr, flush=True)
        return 3

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(READY, flush=True)
        await run_worker(settings, scorer, stop)

    asyncio.run(main())
    return 0


def _die_with_parent() -> None:          # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)


class WorkerSupervisor:
    """Runs ``count`` ``aftertalk moderate`` children with the parent's settings (see the module doc)."""

    def __init__(self, count: int, redis_url: str) -> None:
        self.count = count
        self.env = {**os.environ, "AFTERTALK_REDIS_URL": redis_url}
        self._procs: list[subprocess.Popen[str] | None] = [None] * count
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "moderate"], env=self.env, text=True,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    @staticmethod
    def _await_ready(proc: subprocess.Popen[str], timeout_s: float) -> None:
        """Wait for the child's ``ready`` line; its output is drained afterwards so it never blocks."""
        seen = threading.Event()
        ended = threading.Event()

        def read() -> None:
            for line in proc.stdout or ():
                if line.strip() == READY:
                    seen.set()
            ended.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not seen.is_set() and not ended.is_set() and time.monotonic() < deadline:
            seen.wait(0.1)
        if seen.is_set():
            return
        if ended.is_set():
            proc.wait()
            raise RuntimeError(f"the screening worker could not start (exit status {proc.returncode}); "
                               "its reason is printed above")
        proc.kill()
        raise RuntimeError(f"the screening worker did not load its model within {timeout_s:.0f} s")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every worker and wait until each is ready; raises RuntimeError (and stops them) if one fails."""
        try:
            for i in range(self.count):
                proc = self._procs[i] = self._spawn()
                self._await_ready(proc, timeout_s)
        except BaseException:
            self.stop()
            raise
        for i in range(self.count):
            threading.Thread(target=self._watch, args=(i,), daemon=True, name=f"screening-worker-{i}").start()

    def _watch(self, i: int) -> None:
        delays = backoff()
        while not self._stopping.is_set():
            proc = self._procs[i]
            if proc is None:
                return
            proc.wait()
            if self._stopping.is_set():
                return
            log.error("screening worker %d exited with status %s; starting it again", i, proc.returncode)
            time.sleep(next(delays))
            try:
                with self._lock:        # never held while waiting: stop() must not wait for a model to load
                    if self._stopping.is_set():
                        return
                    self._procs[i] = new = self._spawn()
                self._await_ready(new, START_TIMEOUT_S)
            except Exception:
                if not self._stopping.is_set():
                    log.exception("screening worker %d could not be restarted; trying again", i)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            procs = [p for p in self._procs if p is not None and p.poll() is None]
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
