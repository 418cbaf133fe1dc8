"""Shared pieces of the benchmarks: a private Redis, the machine line, percentiles, realistic profiles.

The benchmarks reuse the test support modules (``tests/support``) for starting a
redis-server on a free port and gateway processes, so a fresh machine needs only
``make`` and the Debian ``redis-server``.
"""
from __future__ import annotations

import datetime
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from support.redis_cluster import RedisClusterNodes  # noqa: E402
from support.redis_server import RedisServer, free_port  # noqa: E402,F401

BACKENDS = ("single", "cluster")


class Backend:
    """A benchmark's private Redis: one redis-server (``single``) or a local Redis Cluster of three
    primaries and no replicas (``cluster``, the tests' ``RedisClusterNodes``), append-only with fsync every
    second in both.  ``url`` is what the service takes (``redis://`` or ``redis+cluster://``); ``pids``
    are every redis-server process, so a CPU meter counts all the nodes."""

    def __init__(self, kind: str, *, appendonly: bool = True, primaries: int = 3) -> None:
        if kind not in BACKENDS:
            raise ValueError(f"unknown Redis backend {kind!r} (want one of {', '.join(BACKENDS)})")
        self.kind = kind
        self.appendonly = appendonly
        self.single: RedisServer | None = None
        self.cluster: RedisClusterNodes | None = None
        self.primaries = primaries

    def start(self) -> Backend:
        if self.kind == "single":
            self.single = RedisServer(appendonly=self.appendonly).start()
        else:
            self.cluster = RedisClusterNodes(primaries=self.primaries).start()
            if not self.appendonly:
                for port in self.ports:
                    subprocess.run(["redis-cli", "-p", str(port), "config", "set", "appendonly", "no"],
                                   check=True, capture_output=True)
        return self

    @property
    def url(self) -> str:
        if self.single:
            return self.single.url
        assert self.cluster
        return self.cluster.url

    @property
    def ports(self) -> list[int]:
        """Every node's port (the cluster's are all primaries)."""
        if self.single:
            return [self.single.port]
        assert self.cluster
        return list(self.cluster.ports)

    def pids(self) -> list[int]:
        if self.single:
            assert self.single.proc
            return [self.single.proc.pid]
        assert self.cluster
        return [proc.pid for proc in self.cluster.procs.values()]

    def owner_of(self, key: str) -> int:
        """The port of the node that holds ``key`` (the one node, or the primary owning its slot)."""
        if self.single:
            return self.single.port
        assert self.cluster
        return self.cluster.owner_of(key)

    def flushall(self) -> None:
        import redis as redis_lib

        for port in self.ports:
            with redis_lib.Redis(host="127.0.0.1", port=port) as r:
                r.flushall()

    def describe(self) -> str:
        if self.single:
            return f"one redis-server on port {self.single.port}"
        return f"Redis Cluster, {self.primaries} primaries on ports {', '.join(map(str, self.ports))}, no replicas"

    def cleanup(self) -> None:
        if self.single:
            self.single.cleanup()
        if self.cluster:
            self.cluster.cleanup()
        self.single = self.cluster = None

# ---- realistic profile mixes --------------------------------------------------------------
# Weights loosely follow incidence among adult survivors (breast, prostate, colorectal, lung
# dominate); every other code in the vocabulary gets a small weight so nothing is empty.
DIAGNOSIS_WEIGHTS = {
    "breast": 30, "prostate": 20, "lung": 10, "colorectal": 10, "melanoma": 4, "lymphoma_non_hodgkin": 4,
    "bladder": 3, "uterine": 3, "kidney": 2, "leukemia": 2, "thyroid": 2, "ovarian": 2, "pancreatic": 1,
    "head_neck": 1, "myeloma": 1, "lymphoma_hodgkin": 1, "cervical": 1, "testicular": 1,
}
SIDE_EFFECT_WEIGHTS = {
    "fatigue": 20, "fear_of_recurrence": 15, "anxiety": 10, "neuropathy": 8, "chemo_brain": 8, "scanxiety": 6,
    "insomnia": 5, "return_to_work": 5, "body_image": 4, "lymphedema": 4, "hair_loss": 4, "sexual_health": 4,
    "depression": 4, "pain": 4, "nausea": 3, "menopause": 3, "finances": 3, "fertility": 2, "loneliness": 2,
    "hot_flashes": 2, "joint_pain": 2, "weight_changes": 2,
}
LANGUAGE_WEIGHTS = {"en": 60, "es": 12, "fr": 6, "de": 4, "pt": 3, "it": 3, "zh": 2, "ar": 2, "hi": 2,
                    "pl": 1, "nl": 1, "ru": 1, "ja": 1, "ko": 1, "tr": 1}


def _weighted(table: dict[str, int], vocabulary: dict[str, str]) -> tuple[list[str], list[float]]:
    codes = list(vocabulary)
    weights = [float(table.get(c, 0.3)) for c in codes]
    return codes, weights


class ProfileMix:
    """Draws profiles: 1-2 diagnoses, 1-4 side effects, 1 language (25 % add English as a second)."""

    def __init__(self, seed: int = 7) -> None:
        from matcher.vocabulary import load_vocabulary

        vocab = load_vocabulary()
        self.rng = random.Random(seed)
        self._dx = _weighted(DIAGNOSIS_WEIGHTS, vocab.diagnoses)
        self._se = _weighted(SIDE_EFFECT_WEIGHTS, vocab.side_effects)
        self._lang = (list(LANGUAGE_WEIGHTS), [float(w) for w in LANGUAGE_WEIGHTS.values()])

    def _pick(self, table: tuple[list[str], list[float]], n: int) -> frozenset[str]:
        out: set[str] = set()
        while len(out) < n:
            out.add(self.rng.choices(*table)[0])
        return frozenset(out)

    def profile(self):
        from matcher.profile import Profile

        rng = self.rng
        dx = self._pick(self._dx, 1 if rng.random() < 0.85 else 2)
        se = self._pick(self._se, rng.choice((1, 1, 2, 2, 3, 4)))
        lang = set(self._pick(self._lang, 1))
        if "en" not in lang and rng.random() < 0.25:
            lang.add("en")
        return Profile(diagnoses=dx, side_effects=se, languages=frozenset(lang))


# ---- scheduling ----------------------------------------------------------------------------------
def prioritize(nice: int) -> str:
    """Raise the run's CPU priority (inherited by every process it starts); say what took effect.

    On a shared machine other people's test runs would otherwise skew the figures.  Linux with
    autogroup scheduling shares CPU between sessions first and only then by nice inside each
    session, so the session's autogroup gets the same nice value (both need root to go below 0)."""
    done = []
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        done.append(f"nice {nice}")
    except OSError:
        done.append(f"nice {os.getpriority(os.PRIO_PROCESS, 0)} (could not set {nice})")
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
            Path("/proc/self/autogroup").write_text(str(nice))
            done.append(f"autogroup nice {nice}")
    except OSError:
        pass
    return ", ".join(done)


# ---- reporting ----------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    rv = next((w[2:] for w in redis_version if w.startswith("v=")), "?")
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"redis-server {rv}")


def stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
