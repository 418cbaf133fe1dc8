"""A local Redis Cluster for the tests: N primaries (and optional replicas) on free ports, private dirs."""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from support.redis_server import free_port, stop_processes


def _cli(*args: str, timeout: float = 30.0) -> str:
    out = subprocess.run([shutil.which("redis-cli") or "redis-cli", *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return out.stdout


class RedisClusterNodes:
    """``redis-server --cluster-enabled yes`` N times, joined with ``redis-cli --cluster create``."""

    def __init__(self, primaries: int = 3, replicas: int = 0, *, node_timeout_ms: int = 2000) -> None:
        self.count = primaries * (1 + replicas)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="aftertalk-cluster-"))
        self.ports = [free_port() for _ in range(self.count)]
        self.bus_ports = [free_port() for _ in range(self.count)]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """The service's cluster URL: every node, though any one would do."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _spawn(self, i: int) -> None:
        port, node_dir = self.ports[i], self.dir / str(self.ports[i])
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[i]),
             "--cluster-config-file", str(node_dir / "nodes.conf"),
             "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(node_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 20.0) -> RedisClusterNodes:
        for i in range(self.count):
            self._spawn(i)
        for i in range(self.count):
            if not self._wait_ping(self.ports[i], timeout, self.procs[self.ports[i]]):
                # it exited: its port was taken between our check and its bind; once more, elsewhere
                del self.procs[self.ports[i]]
                self.ports[i], self.bus_ports[i] = free_port(), free_port()
                self._spawn(i)
                self._wait_ping(self.ports[i], timeout, self.procs[self.ports[i]], must=True)
        _cli("--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes")
        self.wait_ok(timeout)
        return self

    @staticmethod
    def _wait_ping(port: int, timeout: float, proc: subprocess.Popen, must: bool = False) -> bool:
        """True once the node answers; False if its process exited first (unless ``must``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None and not must:
                return False
            try:
                if _cli("-p", str(port), "ping", timeout=2).strip() == "PONG":
                    return True
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"cluster node {port} did not start")

    def info(self, port: int) -> dict[str, str]:
        text = _cli("-p", str(port), "cluster", "info", timeout=2)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self, timeout: float = 20.0, ports: list[int] | None = None) -> None:
        """Until every (live) node says cluster_state:ok and knows every slot."""
        ports = ports or [p for p in self.ports if self.alive(p)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [self.info(p) for p in ports]
                if all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos):
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    def wait_failover(self, dead: int, timeout: float = 20.0) -> None:
        """After ``dead`` was killed: until every live node has marked it failed, its slots have moved
        to a promoted replica, and the cluster is ok again.  (Right after a kill the live nodes still
        say ok: they have not noticed yet.)"""
        live = [p for p in self.ports if self.alive(p)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done = True
                for port in live:
                    info = self.info(port)
                    line = next(line for line in _cli("-p", str(port), "cluster", "nodes", timeout=2).splitlines()
                                if f":{dead}@" in line)
                    fields = line.split()
                    done &= ("fail" in fields[2] and "fail?" not in fields[2] and len(fields) <= 8
                             and info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == "16384")
                if done:
                    return
            except (RuntimeError, subprocess.TimeoutExpired, StopIteration):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no failover of node {dead} within {timeout}s")

    def owner_of(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot."""
        slot = int(_cli("-p", str(self.ports[0]), "cluster", "keyslot", key, timeout=2))
        for line in _cli("-p", str(self.ports[0]), "cluster", "nodes", timeout=2).splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for rng in fields[8:]:
                lo, _, hi = rng.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise LookupError(f"no primary owns the slot of {key!r}")

    def role(self, port: int) -> str:
        """"master" or "slave", as the node itself says."""
        return _cli("-p", str(port), "role", timeout=2).split()[0]

    def alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        stop_processes(self.procs.values())

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
