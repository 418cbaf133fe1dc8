"""A local Sentinel set-up for the tests: a primary, replicas and three Sentinels, on free ports, private dirs.

Every process is a plain ``redis-server`` (Sentinels are ``redis-server sentinel.conf --sentinel``: Debian's
package has no separate ``redis-sentinel`` binary).  Each Sentinel gets its own config file in its own
directory, because a Sentinel rewrites its file as it learns the topology.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis as sync_redis

from support.redis_server import free_port, stop_processes

MASTER = "aftertalk"


class RedisSentinelSet:
    """``primary`` + ``replicas`` redis-servers (append-only, as deploy/redis.conf) and ``sentinels`` Sentinels
    monitoring them as :data:`MASTER` with quorum 2."""

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, quorum: int = 2, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aftertalk-sentinel-"))
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.quorum, self.down_after_ms, self.failover_timeout_ms = quorum, down_after_ms, failover_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # ---- addresses ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The service's Sentinel URL: every Sentinel, then the master name."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{MASTER}"

    @property
    def first_primary(self) -> int:
        return self.data_ports[0]

    # ---- processes ------------------------------------------------------------------
    def _spawn(self, port: int, args: list[str]) -> None:
        self.procs[port] = subprocess.Popen([shutil.which("redis-server") or "redis-server", *args],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _spawn_data(self, port: int, replica_of: int | None) -> None:
        node_dir = self.dir / f"redis-{port}"
        node_dir.mkdir(exist_ok=True)
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--logfile", str(node_dir / "redis.log")]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, args)

    def _spawn_sentinel(self, port: int) -> None:
        node_dir = self.dir / f"sentinel-{port}"
        node_dir.mkdir(exist_ok=True)
        conf = node_dir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {node_dir}\nlogfile {node_dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.first_primary} {self.quorum}\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        self._spawn(port, [str(conf), "--sentinel"])

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        self._spawn_data(self.first_primary, None)
        for port in self.data_ports[1:]:
            self._spawn_data(port, self.first_primary)
        for port in self.data_ports:
            self._wait_ping(port, timeout)
        # replicas first: a Sentinel reads the primary's INFO (its list of replicas) as soon as it starts,
        # then only every 10 s
        self.wait_replicas_online(timeout)
        for port in self.sentinel_ports:
            self._spawn_sentinel(port)
        for port in self.sentinel_ports:
            self._wait_ping(port, timeout)
        self.wait_sentinels_agree(timeout)
        return self

    def _wait_ping(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[port].poll() is not None:
                raise RuntimeError(f"redis process on {port} exited (see {self.dir})")
            try:
                with sync_redis.Redis(port=port, socket_timeout=1) as r:
                    if r.ping():
                        return
            except sync_redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis process on {port} did not start")

    def wait_replicas_online(self, timeout: float = 30.0) -> None:
        """Until the current primary has every other live data node online as its replica."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            primary = self.primary_port()
            want = len([p for p in self.data_ports if p != primary and self.alive(p)])
            if primary is not None and len(self.online_replicas(primary)) >= want:
                return
            time.sleep(0.05)
        raise RuntimeError("replicas did not come online")

    def wait_sentinels_agree(self, timeout: float = 30.0, primary: int | None = None) -> None:
        """Until every Sentinel names the same primary (``primary`` if given), knows the other Sentinels and
        every live replica: only then can they agree on a failover."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [self.sentinel_state(p) for p in self.sentinel_ports]
            except sync_redis.RedisError:
                states = []
            want_primary = primary or self.first_primary
            live_replicas = len([p for p in self.data_ports if p != want_primary and self.alive(p)])
            if states and all(int(s["port"]) == want_primary and "s_down" not in s["flags"]
                              and int(s["num-other-sentinels"]) >= len(self.sentinel_ports) - 1
                              and int(s["num-slaves"]) >= live_replicas for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError(f"Sentinels did not agree on primary {primary or self.first_primary}")

    # ---- what the set says ------------------------------------------------------------
    def sentinel_state(self, port: int) -> dict:
        with sync_redis.Redis(port=port, decode_responses=True, socket_timeout=2) as r:
            return dict(r.execute_command("SENTINEL", "MASTER", MASTER))

    def sentinel_primary(self, port: int) -> int:
        with sync_redis.Redis(port=port, decode_responses=True, socket_timeout=2) as r:
            _, p = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(p)

    def role(self, port: int) -> str:
        with sync_redis.Redis(port=port, decode_responses=True, socket_timeout=2) as r:
            return str(r.execute_command("ROLE")[0])

    def primary_port(self) -> int | None:
        """The live data node that says it is a master (None while there is none)."""
        for port in self.data_ports:
            if self.alive(port):
                try:
                    if self.role(port) == "master":
                        return port
                except sync_redis.RedisError:
                    pass
        return None

    def online_replicas(self, primary: int) -> list[tuple[int, int]]:
        """(port, replicated offset) of the primary's replicas that are online."""
        with sync_redis.Redis(port=primary, decode_responses=True, socket_timeout=2) as r:
            info = r.info("replication")
        return [(int(v["port"]), int(v["offset"])) for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"]

    def wait_failover(self, dead: int, timeout: float = 30.0) -> int:
        """After ``dead`` was killed: until every Sentinel names another primary that says it is one.
        Returns the new primary's port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                named = {self.sentinel_primary(p) for p in self.sentinel_ports}
                if len(named) == 1 and dead not in named:
                    (new,) = named
                    if self.role(new) == "master":
                        return new
            except sync_redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no failover away from {dead} within {timeout}s (logs in {self.dir})")

    # ---- faults -------------------------------------------------------------------------
    def alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def kill(self, port: int) -> None:
        """SIGKILL: no shutdown, no last write to anyone."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def pause(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGCONT)

    def cut_replication(self, primary: int) -> None:
        """Drop the primary's replica links (CLIENT KILL TYPE replica), so writes from now on reach only it,
        until a replica reconnects (a replica retries about once a second; pause it to stop that)."""
        with sync_redis.Redis(port=primary, socket_timeout=2) as r:
            r.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def stop(self) -> None:
        stop_processes(self.procs.values())

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
