"""Static checks of deploy/: what can be checked without Docker or a Kubernetes cluster.

The nginx configuration is exercised for real by tests/integration/test_nginx.py; the
compose file, the Dockerfile and the manifests cannot run here (see deploy/README.md), so
these tests make sure at least that they parse, render, and agree with the code (settings
names, routes, ports) and with each other.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.settings import ENV_NAMES
from support.nginx import render_conf

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
WORKER_ARGV = ["aftertalk", "moderate"]


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def deployment(name: str) -> tuple[dict, dict, dict]:
    """(Deployment, pod template, its one container) of the Deployment called ``name``."""
    (dep,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == name]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return dep, pod, container


def unit_directives(path: Path) -> list[tuple[str, str]]:
    """A systemd unit's ``Key=value`` lines, in order (comments and section headers dropped)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [tuple(line.split("=", 1)) for line in lines if "=" in line and not line.startswith(("#", ";"))]


def deploy_texts() -> dict[str, str]:
    return {str(p.relative_to(DEPLOY)): p.read_text() for p in DEPLOY.rglob("*")
            if p.is_file() and p.name != "redis.conf"}


def test_every_aftertalk_variable_named_in_deploy_is_a_real_setting():
    known = set(ENV_NAMES.values())
    for name, text in deploy_texts().items():
        for var in set(re.findall(r"\bAFTERTALK_[A-Z0-9_]+", text)):
            assert var in known, f"{name} names {var}, which gateway/settings.py does not read"


def test_compose_parses_and_rewrites_lines_that_exist_in_nginx_conf():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "gateway1", "gateway2", "nginx"} <= set(services)
    for gw in ("gateway1", "gateway2"):
        env = services[gw]["environment"]
        assert env["AFTERTALK_REDIS_URL"].startswith("redis://") and "@redis:6379/" in env["AFTERTALK_REDIS_URL"]
        assert "AFTERTALK_SECRET" in env
        assert str(env["AFTERTALK_SCREENING_WORKERS"]) == "0", "the moderate service screens, not the gateways"
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    script = " ".join(services["nginx"]["command"])
    nginx_conf = (DEPLOY / "nginx.conf").read_text()
    for old in re.findall(r"s/([^/]+)/", script):
        assert old.replace("\\", "") in nginx_conf, f"compose rewrites {old!r}, which nginx.conf lacks"


def test_compose_runs_screening_workers_from_the_gateways_image():
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    worker, gateway = services["moderate"], services["gateway1"]
    # the image's ENTRYPOINT is `aftertalk serve`: the worker must replace it, not append to it
    argv = list(worker.get("entrypoint") or ["aftertalk", "serve"]) + list(worker.get("command") or [])
    assert argv == WORKER_ARGV
    assert worker["image"] == gateway["image"] and worker["build"] == gateway["build"]
    assert worker["environment"]["AFTERTALK_REDIS_URL"] == gateway["environment"]["AFTERTALK_REDIS_URL"]
    assert worker["healthcheck"] == {"disable": True}, "the image's HEALTHCHECK asks the gateway's port"
    assert worker["deploy"]["replicas"] >= 2, "at least two, so one can restart"
    assert "ports" not in worker and "expose" not in worker and "container_name" not in worker
    for key in ("read_only", "cap_drop", "security_opt", "restart", "depends_on"):
        assert worker[key] == gateway[key], key
    assert "moderate" not in services["nginx"].get("depends_on", {})


def test_dockerfile_serves_on_the_port_it_checks():
    text = (DEPLOY / "Dockerfile").read_text()
    port = re.search(r"AFTERTALK_PORT=(\d+)", text).group(1)
    assert f"EXPOSE {port}" in text and f"127.0.0.1:{port}/healthz" in text
    assert 'ENTRYPOINT ["aftertalk", "serve"]' in text
    assert re.search(r"^USER \d+", text, re.M), "the image must not run as root"
    # every package of the distribution is in the build context (else the wheel lacks it)
    packages = re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} {package}" in text, f"the Dockerfile does not copy {package}/"


def test_k8s_manifests_agree_with_the_gateway_and_each_other():
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", secret="x" * 40))
    routes = {getattr(r, "path", None) for r in app.routes}

    gateway, pod, container = deployment("aftertalk-gateway")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in port_names
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert int(env["AFTERTALK_PORT"]) == port_names["http"]
    assert env["AFTERTALK_SCREENING_WORKERS"] == "0", "the aftertalk-moderate Deployment screens, not the gateways"
    assert pod["metadata"]["labels"].items() >= gateway["spec"]["selector"]["matchLabels"].items()

    refs = {r.get("secretRef", {}).get("name") for r in container["envFrom"]} - {None}
    (secret,) = by_kind("Secret")
    assert refs == {secret["metadata"]["name"]} and "AFTERTALK_SECRET" in secret["stringData"]
    config_refs = {r.get("configMapRef", {}).get("name") for r in container["envFrom"]} - {None}
    assert config_refs <= {c["metadata"]["name"] for c in by_kind("ConfigMap")}

    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    gw_service = services["aftertalk-gateway"]
    assert gw_service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (ingress,) = by_kind("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] in services
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > Settings().ping_interval_s

    redis_url = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "aftertalk-gateway")["data"][
        "AFTERTALK_REDIS_URL"]
    assert redis_url.split("//")[1].split(":")[0] in services


def test_k8s_screening_workers_run_moderate_with_the_gateways_image_and_config():
    _, gw_pod, gw = deployment("aftertalk-gateway")
    workers, pod, container = deployment("aftertalk-moderate")
    labels = pod["metadata"]["labels"]
    assert labels.items() >= workers["spec"]["selector"]["matchLabels"].items()
    assert labels["app.kubernetes.io/name"] != gw_pod["metadata"]["labels"]["app.kubernetes.io/name"]
    # `command` replaces the image's ENTRYPOINT (`aftertalk serve`), `args` its CMD
    assert container["command"] + container.get("args", []) == WORKER_ARGV
    assert container["image"] == gw["image"]
    assert container["envFrom"] == gw["envFrom"], "the workers must read the gateways' settings"
    assert workers["spec"]["replicas"] >= 2
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}}
    assert container["securityContext"] == gw["securityContext"]
    assert pod["spec"]["securityContext"] == gw_pod["spec"]["securityContext"]
    # no port: nothing may probe one, and no Service selects the workers
    assert "ports" not in container
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe not in container or set(container[probe]) & {"httpGet", "tcpSocket", "grpc"} == set(), probe
    for service in by_kind("Service"):
        assert not service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
    # Redis admits the workers, not only the gateways
    (redis_policy,) = [n for n in by_kind("NetworkPolicy") if n["metadata"]["name"] == "aftertalk-redis"]
    admitted = [peer["podSelector"]["matchLabels"] for rule in redis_policy["spec"]["ingress"]
                for peer in rule["from"] if "podSelector" in peer]
    assert any(sel.items() <= labels.items() for sel in admitted), "Redis's NetworkPolicy shuts the workers out"
    assert any(sel.items() <= gw_pod["metadata"]["labels"].items() for sel in admitted)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_renders_everything_but_the_example_secret():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"} == {"aftertalk-gateway",
                                                                                  "aftertalk-moderate"}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Ingress", "StatefulSet",
            "PodDisruptionBudget", "NetworkPolicy"} <= set(kinds)
    assert "Secret" not in kinds, "kubectl apply -k must never overwrite the real secret with the example"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    units = []
    for path in (DEPLOY / "systemd").iterdir():
        name = path.name.replace("@.service", "@8001.service")     # verify an instance of the template
        shutil.copy(path, tmp_path / name)
        units.append(str(tmp_path / name))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                         timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "is not executable" not in line]       # /opt/aftertalk is not installed here
    assert not problems, "\n".join(problems)
    unit = (DEPLOY / "systemd" / "aftertalk@.service").read_text()
    assert "EnvironmentFile=/etc/aftertalk/env" in unit and "--port %i" in unit


def test_systemd_worker_unit_runs_moderate_hardened_like_the_gateway():
    gateway = unit_directives(SYSTEMD / "aftertalk@.service")
    worker = unit_directives(SYSTEMD / "aftertalk-moderate@.service")
    exec_start = dict(worker)["ExecStart"].split()
    assert exec_start[0].endswith("/bin/aftertalk") and exec_start[1:] == WORKER_ARGV[1:]
    assert exec_start[0] == dict(gateway)["ExecStart"].split()[0], "the same installation as the gateways"
    # the gateways start no workers of their own where these units exist
    assert ("Environment", "AFTERTALK_SCREENING_WORKERS=0") in gateway
    assert not any(k == "Environment" and v.startswith("AFTERTALK_SCREENING_WORKERS=") for k, v in worker)
    # same settings file, user, target and every hardening line
    for key in ("EnvironmentFile", "User", "Group", "PartOf", "Restart"):
        assert dict(worker)[key] == dict(gateway)[key], key
    hardening = (SYSTEMD / "aftertalk@.service").read_text().split("# ---- hardening")[1]
    hardening_lines = {(k, v) for k, v in gateway if f"{k}={v}" in hardening and k != "WantedBy"}
    assert hardening_lines and hardening_lines <= set(worker), hardening_lines - set(worker)
    # a model that cannot load (status 3) is not cured by restarting: the unit fails visibly
    assert "3" in dict(worker)["RestartPreventExitStatus"].split()


def test_nginx_conf_rewrites_to_a_test_conf_by_substitution_alone():
    template = (DEPLOY / "nginx.conf").read_text()
    conf = render_conf(template, listen_port=18080, upstream_ports=[18001, 18002, 18003], log_dir="/tmp/x",
                       as_root=True)
    # every address with a port, and every listen, is on the listen line or an upstream server line
    code = [re.sub(r"#.*", "", line) for line in template.splitlines()]
    with_ports = [line.strip() for line in code if re.search(r"\blisten\b|[\w.\]]:\d+(?!\w)", line)]
    assert with_ports and all(re.fullmatch(r"listen \d+;|server 127\.0\.0\.1:\d+ [^;]*;", line)
                              for line in with_ports), with_ports
    assert "listen 127.0.0.1:18080;" in conf
    assert [m for m in re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=1 fail_timeout=5s;", conf)] == [
        "18001", "18002", "18003"]
    # and nothing else changed but the log paths and the user
    changed = {line.strip() for line in set(conf.splitlines()) ^ set(template.splitlines())}
    assert all(re.match(r"(listen |server 127\.0\.0\.1:|user |error_log |access_log )", line) for line in changed), \
        changed
    for directive in ("proxy_read_timeout 75s;", "proxy_set_header Upgrade $http_upgrade;",
                      "proxy_set_header Connection $connection_upgrade;", "proxy_buffering off;",
                      "proxy_set_header X-Forwarded-For $remote_addr;", "client_max_body_size 64k;"):
        assert directive in conf


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed")
def test_nginx_accepts_the_rendered_conf(tmp_path):
    import os

    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_conf((DEPLOY / "nginx.conf").read_text(), listen_port=18080,
                                upstream_ports=[18001, 18002], log_dir=str(tmp_path / "logs"),
                                as_root=os.geteuid() == 0))
    out = subprocess.run(["/usr/sbin/nginx", "-t", "-c", str(conf), "-p", str(tmp_path), "-e",
                          str(tmp_path / "logs" / "startup.log"), "-g", f"pid {tmp_path / 'nginx.pid'};"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def _redis_loads(conf: Path, *extra: str) -> str:
    """What redis-server says when started on ``conf`` with no port to listen on: it reads the whole
    configuration (refusing a bad directive), then exits at once."""
    out = subprocess.run([shutil.which("redis-server") or "redis-server", str(conf), *extra, "--port", "0"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout + out.stderr


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")
def test_sentinel_and_replica_files_load_and_agree_with_the_documented_url(tmp_path):
    from core.redis_client import parse_sentinel_url

    sentinel = (DEPLOY / "sentinel" / "sentinel.conf").read_text()
    (monitor,) = re.findall(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", sentinel, re.M)
    name, host, port, quorum = monitor
    assert int(quorum) == 2
    for directive in ("down-after-milliseconds", "failover-timeout", "parallel-syncs"):
        assert re.search(rf"^sentinel {directive} {name} \d+$", sentinel, re.M), directive
    # the URL the file and deploy/README.md show names the same master, and the gateways accept it
    urls = set(re.findall(r"redis\+sentinel://[^\s`]+", sentinel + (DEPLOY / "README.md").read_text()))
    assert urls and {parse_sentinel_url(u).master for u in urls if "<" not in u and "..." not in u} == {name}
    replica = (DEPLOY / "sentinel" / "replica.conf").read_text()
    assert re.search(rf"^replicaof {re.escape(host)} {port}$", replica, re.M)

    # both load in redis-server: the Sentinel in sentinel mode (it needs a writable copy), the replica
    # as deploy/redis.conf plus replica.conf
    copy = tmp_path / "sentinel.conf"
    copy.write_text(sentinel.replace("dir /var/lib/redis-sentinel", f"dir {tmp_path}"))
    said = _redis_loads(copy, "--sentinel")
    assert "Configuration loaded" in said and "Bad directive" not in said, said
    node = tmp_path / "replica-node.conf"
    node.write_text(f"include {DEPLOY / 'redis.conf'}\n"
                    f"include {DEPLOY / 'sentinel' / 'replica.conf'}\ndir {tmp_path}\n")
    said = _redis_loads(node)
    assert "Configuration loaded" in said and "Bad directive" not in said, said
