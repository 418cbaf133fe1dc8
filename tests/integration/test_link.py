"""The pub/sub link supervisor (gateway/link.py) against a real redis-server, plain and sharded.

Each test drives one :class:`gateway.link.Link` and checks what its docstring promises: after a
lost connection (killed, silent, or refused for a while) the link reconnects by itself, subscribes
the channel set as it is then, calls ``on_connected`` once, and delivers what is published after;
a stall of this process is not taken for a dead link.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from gateway import metrics
from gateway.link import Link

pytestmark = pytest.mark.parametrize("sharded", [False, True], ids=["plain", "sharded"])


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []
        self.connects: list[tuple[list[bytes], bool]] = []

    def on_message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))

    async def on_connected(self, channels: list[bytes], reconnect: bool) -> None:
        self.connects.append((sorted(channels), reconnect))

    def got(self, data: bytes) -> bool:
        return any(d == data for _, d in self.messages)


class Proxy:
    """A TCP relay to Redis that can go deaf (hold every reply on open connections) or refuse new ones."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deaf = False
        self.refusing = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        deaf_from_start = self.deaf

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            try:
                while data := await src.read(65536):
                    if replies and (self.deaf and not deaf_from_start):
                        continue                # swallowed: the link hears nothing, not even PONG
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def reconnects() -> float:
    return float(metrics.PUBSUB_RECONNECTS._value.get())


@pytest_asyncio.fixture
async def admin(redis_server) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    await client.aclose()


async def publish(admin: aioredis.Redis, sharded: bool, channel: bytes, data: bytes) -> None:
    await admin.execute_command("SPUBLISH" if sharded else "PUBLISH", channel, data)


def make_link(client: aioredis.Redis, rec: Recorder, sharded: bool, channels: list[bytes]) -> Link:
    return Link(client.pubsub, rec.on_message, rec.on_connected, sharded=sharded, channels=channels,
                ping_interval_s=0.2, ping_timeout_s=0.6)


async def running(link: Link, rec: Recorder) -> asyncio.Task[None]:
    task = asyncio.create_task(link.run())
    await wait_for(lambda: len(rec.connects) == 1, 5, "the first connection")
    return task


async def stopped(link: Link, task: asyncio.Task[None], *clients: aioredis.Redis) -> None:
    link.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for client in clients:
        await client.aclose()


def channel() -> bytes:
    return b"linktest:{" + uuid.uuid4().hex.encode() + b"}"


async def test_a_killed_connection_is_rebuilt_resubscribed_and_reported_once(redis_server, admin, sharded):
    name = "linktest-" + uuid.uuid4().hex[:8]
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, client_name=name)
    ch, rec = channel(), Recorder()
    link = make_link(client, rec, sharded, [ch])
    task = await running(link, rec)
    try:
        assert rec.connects == [([ch], False)]
        await link.ready(ch)
        await publish(admin, sharded, ch, b"before")
        await wait_for(lambda: rec.got(b"before"), 5, "a message before the kill")
        before = reconnects()
        ours = [c for c in await admin.client_list(_type="pubsub") if c["name"] == name]
        assert len(ours) == 1
        await admin.client_kill_filter(_id=ours[0]["id"])
        # redis-py would silently reconnect and resubscribe; the link must notice and report it
        await wait_for(lambda: len(rec.connects) == 2, 5, "on_connected after the kill")
        assert rec.connects[1] == ([ch], True)
        await link.ready(ch)
        await publish(admin, sharded, ch, b"after")
        await wait_for(lambda: rec.got(b"after"), 5, "a message after the reconnect")
        await asyncio.sleep(1.0)
        assert len(rec.connects) == 2                        # once, not once per failing call
        assert reconnects() == before + 1
    finally:
        await stopped(link, task, client)


async def test_a_silent_connection_is_dropped_after_the_ping_timeout(redis_server, admin, sharded):
    proxy = Proxy(redis_server.port)
    client = aioredis.Redis(host="127.0.0.1", port=await proxy.start())
    ch, rec = channel(), Recorder()
    link = make_link(client, rec, sharded, [ch])
    task = await running(link, rec)
    try:
        await link.ready(ch)
        proxy.deaf = True                    # the open connection hears nothing; new ones are fine
        await wait_for(lambda: len(rec.connects) == 2, 5, "a reconnect after the ping timeout")
        assert rec.connects[1] == ([ch], True)
        await link.ready(ch)
        await publish(admin, sharded, ch, b"after")
        await wait_for(lambda: rec.got(b"after"), 5, "a message on the new connection")
    finally:
        await stopped(link, task, client)
        await proxy.stop()


async def test_channels_added_while_down_are_subscribed_by_the_next_connection(redis_server, admin, sharded):
    proxy = Proxy(redis_server.port)
    client = aioredis.Redis(host="127.0.0.1", port=await proxy.start())
    first, rec = channel(), Recorder()
    link = make_link(client, rec, sharded, [first])
    task = await running(link, rec)
    try:
        await link.ready(first)
        proxy.refusing = proxy.deaf = True
        await wait_for(lambda: not link.connected.is_set(), 5, "the link to go down")
        second = channel()
        link.add(second)
        await publish(admin, sharded, second, b"while-down")   # nobody listens: not delivered, ever
        proxy.refusing = proxy.deaf = False
        await wait_for(lambda: len(rec.connects) == 2, 10, "the next connection")
        assert rec.connects[1] == (sorted([first, second]), True)
        await link.ready(second)
        await publish(admin, sharded, second, b"after")
        await wait_for(lambda: rec.got(b"after"), 5, "a message on the channel added while down")
        assert not rec.got(b"while-down")
        await link.remove(first)
        await publish(admin, sharded, first, b"removed")
        await publish(admin, sharded, second, b"still")
        await wait_for(lambda: rec.got(b"still"), 5, "a message after the removal")
        assert not rec.got(b"removed")
    finally:
        await stopped(link, task, client)
        await proxy.stop()


async def test_a_stall_of_this_process_is_not_taken_for_a_dead_link(redis_server, admin, sharded):
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    ch, rec = channel(), Recorder()
    link = make_link(client, rec, sharded, [ch])
    task = await running(link, rec)
    try:
        await link.ready(ch)
        await asyncio.sleep(0.05)            # between two PINGs: the last PONG has been read
        time.sleep(1.5)                      # the event loop does not run: past ping_interval + 1 s
        await asyncio.sleep(1.0)
        assert rec.connects == [([ch], False)]
        await publish(admin, sharded, ch, b"after-stall")
        await wait_for(lambda: rec.got(b"after-stall"), 5, "a message after the stall")
    finally:
        await stopped(link, task, client)
