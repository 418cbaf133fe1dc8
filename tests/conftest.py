from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.redis_server import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test: tests never see each other's data."""
    return "t" + uuid.uuid4().hex[:10]


@pytest_asyncio.fixture
async def redis(redis_server):
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def gateways(redis_server, prefix, tmp_path):
    """Start gateway processes on the test Redis: ``gateways(2, AFTERTALK_OFFER_TIMEOUT_S=1)``."""
    from support.gateway import GatewayLauncher

    launcher = GatewayLauncher(redis_server.url, prefix, str(tmp_path))
    yield launcher
    launcher.stop_all()


@pytest.fixture
def moderators(redis_server, prefix, tmp_path):
    """Start ``aftertalk moderate`` screening workers on the test Redis: ``moderators(1, ...env)``."""
    from support.gateway import ModerateProcess

    started: list[ModerateProcess] = []

    def start(n: int = 1, **env: object) -> list[ModerateProcess]:
        procs = [ModerateProcess(redis_server.url, prefix, log_dir=str(tmp_path), **env).start() for _ in range(n)]
        started.extend(procs)
        return procs

    yield start
    for p in started:
        p.stop()
