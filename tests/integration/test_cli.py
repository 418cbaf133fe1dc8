"""The console script as an operator uses it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from gateway.auth import verify_token
from support.gateway import ROOT
from support.redis_server import free_port

SECRET = "s" * 40


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AFTERTALK_")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_serve_refuses_to_start_without_a_long_enough_secret():
    for secret in ("", "too-short"):
        out = run("serve", "--port", "1", AFTERTALK_SECRET=secret)
        assert out.returncode == 2
        assert "AFTERTALK_SECRET must be at least 32 bytes" in out.stderr


def test_token_prints_a_signed_token_with_the_claims_asked_for():
    out = run("token", "--role", "survivor", "--sub", "u42", "--name", "Sam", "--ttl", "120",
              AFTERTALK_SECRET=SECRET)
    assert out.returncode == 0, out.stderr
    user = verify_token(out.stdout.strip(), SECRET)
    assert (user.id, user.role, user.name) == ("u42", "survivor", "Sam")
    assert run("token", "--role", "survivor", "--sub", "u42", "--name", "Sam").returncode == 2
    assert run("token", "--role", "admin", "--sub", "u1", "--name", "X", AFTERTALK_SECRET=SECRET).returncode == 2


def test_serve_refuses_a_bad_setting_naming_the_variable_and_what_is_allowed():
    cases = [
        ({"AFTERTALK_DEMO": "maybe"}, "AFTERTALK_DEMO='maybe' is not allowed: expected a boolean"),
        ({"AFTERTALK_HELLO_TIMEOUT_S": "-5"}, "AFTERTALK_HELLO_TIMEOUT_S='-5' is not allowed"),
        ({"AFTERTALK_PORT": "70000"}, "AFTERTALK_PORT='70000' is not allowed: expected a whole number from 1 to 65535"),
        ({"AFTERTALK_LOG_LEVEL": "chatty"}, "AFTERTALK_LOG_LEVEL='chatty' is not allowed"),
        ({"AFTERTALK_JWT_ALGORITHMS": "none"}, "AFTERTALK_JWT_ALGORITHMS='none' is not allowed"),
    ]
    for env, message in cases:
        out = run("serve", "--redis-url", "redis://127.0.0.1:1/0", AFTERTALK_SECRET=SECRET, **env)
        assert out.returncode == 2, (env, out.stderr)
        assert message in out.stderr, out.stderr
        assert "Aftertalk is up" not in out.stdout
        assert "Traceback" not in out.stderr


def test_serve_refuses_a_bad_port_flag_and_never_prints_the_secret():
    out = run("serve", "--port", "0", "--redis-url", "redis://127.0.0.1:1/0", AFTERTALK_SECRET=SECRET)
    assert out.returncode == 2 and "--port='0' is not allowed" in out.stderr, out.stderr
    short = "tiny-secret-value"
    out = run("serve", "--demo", "--port", "1", AFTERTALK_SECRET=short)
    assert out.returncode == 2
    assert f"AFTERTALK_SECRET must be at least 32 bytes; it is {len(short)} bytes" in out.stderr
    assert short not in out.stderr + out.stdout


def test_every_command_refuses_a_bad_setting():
    out = run("token", "--role", "survivor", "--sub", "u1", "--name", "S", AFTERTALK_SECRET=SECRET,
              AFTERTALK_MODERATION="sometimes")
    assert out.returncode == 2 and "AFTERTALK_MODERATION='sometimes' is not allowed" in out.stderr
    out = run("audit", "--redis-url", "redis://127.0.0.1:1/0", AFTERTALK_KEY_PREFIX="a b")
    assert out.returncode == 2 and "AFTERTALK_KEY_PREFIX='a b' is not allowed" in out.stderr


def _serve_output(redis_url: str, demo: bool, **env: str) -> str:
    """Start ``serve`` until it says it is up, stop it with SIGTERM, and return what it printed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AFTERTALK_")}
    args = ["serve", "--port", str(free_port()), "--redis-url", redis_url, *(["--demo"] if demo else [])]
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**base, "AFTERTALK_SECRET": SECRET, "AFTERTALK_SCREENING_WORKERS": "0", **env})
    lines = []
    try:
        for line in proc.stdout or ():
            lines.append(line)
            if "Application startup complete" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(lines) + rest


def test_serve_in_production_warns_when_no_origin_allow_list_is_set(redis_server):
    warning = "AFTERTALK_ALLOWED_ORIGINS is empty"
    out = _serve_output(redis_server.url, demo=False)
    assert warning in out and "Host header" in out, out
    out = _serve_output(redis_server.url, demo=False, AFTERTALK_ALLOWED_ORIGINS="https://chat.example.org")
    assert warning not in out and "Application startup complete" in out, out
    out = _serve_output(redis_server.url, demo=True)
    assert warning not in out and "Application startup complete" in out, out
