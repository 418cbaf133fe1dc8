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

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind]


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
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    script = " ".join(services["nginx"]["command"])
    nginx_conf = (DEPLOY / "nginx.conf").read_text()
    for old in re.findall(r"s/([^/]+)/", script):
        assert old.replace("\\", "") in nginx_conf, f"compose rewrites {old!r}, which nginx.conf lacks"


def test_dockerfile_serves_on_the_port_it_checks():
    text = (DEPLOY / "Dockerfile").read_text()
    port = re.search(r"AFTERTALK_PORT=(\d+)", text).group(1)
    assert f"EXPOSE {port}" in text and f"127.0.0.1:{port}/healthz" in text
    assert 'ENTRYPOINT ["aftertalk", "serve"]' in text
    assert re.search(r"^USER \d+", text, re.M), "the image must not run as root"


def test_k8s_manifests_agree_with_the_gateway_and_each_other():
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", secret="x" * 40))
    routes = {getattr(r, "path", None) for r in app.routes}

    (deployment,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "aftertalk-gateway"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in port_names
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert int(env["AFTERTALK_PORT"]) == port_names["http"]
    assert pod["metadata"]["labels"].items() >= deployment["spec"]["selector"]["matchLabels"].items()

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


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_renders_everything_but_the_example_secret():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
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
