"""Debian's nginx running deploy/nginx.conf, with its ports and paths rewritten for a test."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from support.redis_server import free_port

NGINX = "/usr/sbin/nginx"
DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
UPSTREAM_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:\d+( [^;]*)?;\n", re.M)
LISTEN = re.compile(r"^(\s*)listen \d+;$", re.M)
USER = re.compile(r"^user \S+;\n", re.M)


def render_conf(template: str, *, listen_port: int, upstream_ports: list[int], log_dir: str,
                as_root: bool) -> str:
    """deploy/nginx.conf with the listen port, the upstream servers and the log directory replaced.

    The upstream ``server`` lines are replaced as a block (keeping the first line's parameters),
    so the deploy file may list any number of gateways.  As root, workers run as root (the test's
    files are private to root); otherwise the ``user`` directive is dropped (it needs root)."""
    servers = list(UPSTREAM_SERVER.finditer(template))
    assert servers, "deploy/nginx.conf has no 'server 127.0.0.1:PORT ...;' upstream lines"
    indent, params = servers[0].group(1), servers[0].group(2) or ""
    block = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in upstream_ports)
    conf = template[:servers[0].start()] + block + UPSTREAM_SERVER.sub("", template[servers[0].end():])
    conf, listens = LISTEN.subn(rf"\g<1>listen 127.0.0.1:{listen_port};", conf)
    assert listens == 1, "deploy/nginx.conf should have exactly one 'listen PORT;' line"
    conf = conf.replace("/var/log/nginx/", log_dir.rstrip("/") + "/")
    conf = USER.sub("user root;\n" if as_root else "", conf)
    return conf


class NginxProcess:
    def __init__(self, upstream_ports: list[int], workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.upstream_ports = upstream_ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def error_log(self) -> Path:
        return self.dir / "logs" / "aftertalk-error.log"

    def start(self, timeout: float = 10.0) -> NginxProcess:
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(render_conf(DEPLOY_CONF.read_text(), listen_port=self.port,
                                    upstream_ports=self.upstream_ports, log_dir=str(self.dir / "logs"),
                                    as_root=os.geteuid() == 0))
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "logs" / "startup.log"),
             "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not answer in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
