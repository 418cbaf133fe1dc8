"""The console script as an operator uses it."""
from __future__ import annotations

import os
import subprocess
import sys

from gateway.auth import verify_token
from support.gateway import ROOT

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
