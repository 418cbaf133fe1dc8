"""The durable chat store against a real Redis: atomic appends, idempotency, paging, live payloads,
retention and erasure."""
from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from chat.erasure import erase_user
from chat.retention import purge_expired
from chat.store import (
    DELETED_NAME,
    ChatStore,
    LiveMessage,
    StoredMessage,
    decode_live,
    message_frame,
)
from core.errors import ErrorCode, ServiceError
from core.keys import Keys

P, PN = "pat-1", "Pat"
S, SN = "sur-1", "Sam"


@pytest_asyncio.fixture
async def raw(redis_server):
    """A binary client: pub/sub payloads are msgpack and DUMP output is binary."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def keys(prefix) -> Keys:
    return Keys(prefix)


@pytest.fixture
def store(redis, keys) -> ChatStore:
    return ChatStore(redis, keys)


async def opened(store: ChatStore, cid: str = "c1", epoch: str = "e1") -> str:
    await store.open(cid, epoch=epoch, patient=(P, PN), survivor=(S, SN))
    return cid


async def send(store: ChatStore, cid: str, uid: str, text: str, *, client_id: str | None = None,
               shown: str = "", role: str | None = None, flags: str = ""):
    role = role or ("patient" if uid == P else "survivor" if uid == S else "moderator")
    name = {P: PN, S: SN}.get(uid, "Mod")
    return await store.append(cid, sender_id=uid, name=name, role=role, client_id=client_id or uuid.uuid4().hex,
                              text=text, shown=shown, flags=flags)


class Listener:
    """Subscribes to channels and collects payloads until a sentinel arrives on each."""

    SENTINEL = b'{"type":"sentinel"}'

    def __init__(self, raw, channels: list[str]) -> None:
        self.raw = raw
        self.channels = channels
        self.ps = raw.pubsub()

    async def __aenter__(self) -> Listener:
        await self.ps.subscribe(*self.channels)
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < len(self.channels) and time.monotonic() < deadline:
            msg = await self.ps.get_message(timeout=1.0)
            if msg and msg["type"] == "subscribe":
                confirmed += 1
        assert confirmed == len(self.channels)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ps.aclose()

    async def drain(self) -> dict[str, list[bytes]]:
        for ch in self.channels:
            await self.raw.publish(ch, self.SENTINEL)
        got: dict[str, list[bytes]] = {ch: [] for ch in self.channels}
        done: set[str] = set()
        deadline = time.monotonic() + 5
        while len(done) < len(self.channels) and time.monotonic() < deadline:
            msg = await self.ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if not msg:
                continue
            ch = msg["channel"].decode()
            if msg["data"] == self.SENTINEL:
                done.add(ch)
            else:
                got[ch].append(msg["data"])
        assert len(done) == len(self.channels), "sentinels lost"
        return got


# ---- append: atomic, gap-free, idempotent ----------------------------------------------------

async def test_concurrent_appends_get_seqs_from_one_without_gaps(redis_server, keys):
    # a plain pool refuses a 101st connection (MaxConnectionsError); a blocking pool queues instead
    pool = aioredis.BlockingConnectionPool.from_url(redis_server.url, max_connections=32, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    store = ChatStore(client, keys)
    try:
        cid = await opened(store)
        n = 200
        results = await asyncio.gather(*[
            send(store, cid, P if i % 2 else S, f"message {i}", client_id=f"k{i}") for i in range(n)
        ])
        await _check_gap_free(store, cid, n, results)
    finally:
        await client.aclose()
        await pool.aclose()


async def _check_gap_free(store, cid, n, results):
    assert sorted(r.seq for r in results) == list(range(1, n + 1))
    assert not any(r.duplicate for r in results) and {r.epoch for r in results} == {"e1"}
    log = await store.read_after(cid, 0)
    assert [m.seq for m in log] == list(range(1, n + 1))
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(log))        # server time, taken in seq order
    by_client = {m.client_id: m for m in log}
    for i, r in enumerate(results):
        m = by_client[f"k{i}"]
        assert (m.seq, m.ts, m.text, m.sender_id) == (r.seq, r.ts, f"message {i}", P if i % 2 else S)
    assert (await store.meta(cid)).seq == n


async def test_duplicate_client_id_returns_first_result_and_publishes_nothing(store, keys, redis, raw):
    cid = await opened(store)
    channels = [keys.user_channel(P), keys.user_channel(S), keys.watch_channel(cid)]
    async with Listener(raw, channels) as listener:
        first = await send(store, cid, P, "hello", client_id="same")
        again = await send(store, cid, P, "hello (retry)", client_id="same")
        got = await listener.drain()
    assert not first.duplicate and again.duplicate
    assert (again.seq, again.ts, again.epoch) == (first.seq, first.ts, first.epoch)
    assert await redis.xlen(keys.conv_log(cid)) == 1
    assert (await store.meta(cid)).seq == 1
    assert [m.text for m in await store.read_after(cid, 0)] == ["hello"]
    assert {ch: len(v) for ch, v in got.items()} == {ch: 1 for ch in channels}
    assert decode_live(Listener.SENTINEL) is None

    # client ids are per sender: the peer reusing the same id is a new message
    other = await send(store, cid, S, "hi", client_id="same")
    assert not other.duplicate and other.seq == 2


async def test_non_participant_and_unknown_conversation_get_the_same_refusal(store, keys, redis):
    cid = await opened(store)
    with pytest.raises(ServiceError) as stranger:
        await send(store, cid, "someone", "let me in", role="patient")
    with pytest.raises(ServiceError) as unknown:
        await send(store, "no-such-conversation", P, "anyone?")
    assert stranger.value.code == unknown.value.code == ErrorCode.FORBIDDEN
    assert stranger.value.message == unknown.value.message
    assert await redis.xlen(keys.conv_log(cid)) == 0
    assert (await store.meta(cid)).seq == 0
    assert await redis.exists(keys.conv_meta("no-such-conversation"), keys.conv_log("no-such-conversation")) == 0


async def test_moderator_may_append_and_both_participants_get_it(store, keys, raw):
    cid = await opened(store)
    async with Listener(raw, [keys.user_channel(P), keys.user_channel(S), keys.user_channel("mod-1")]) as lis:
        a = await send(store, cid, "mod-1", "Please keep it kind.", role="moderator")
        got = await lis.drain()
    assert a.seq == 1
    [m] = await store.read_after(cid, 0)
    assert (m.sender_id, m.role, m.name) == ("mod-1", "moderator", "Mod")
    assert len(got[keys.user_channel(P)]) == len(got[keys.user_channel(S)]) == 1
    assert got[keys.user_channel("mod-1")] == []


async def test_end_is_true_once_and_refuses_later_messages(store):
    cid = await opened(store)
    stored = await send(store, cid, P, "bye", client_id="last")
    assert await store.end(cid, S) is True
    assert await store.end(cid, P) is False
    assert await store.end("no-such-conversation", P) is False
    meta = await store.meta(cid)
    assert (meta.state, meta.ended_by) == ("ended", S) and meta.ended_at >= stored.ts
    for uid, role in ((P, "patient"), (S, "survivor"), ("mod-1", "moderator")):
        with pytest.raises(ServiceError) as exc:
            await send(store, cid, uid, "one more", role=role)
        assert exc.value.code == ErrorCode.CONVERSATION_ENDED
    # a retry of a message stored before the end is still acknowledged, not refused
    retry = await send(store, cid, P, "bye", client_id="last")
    assert retry.duplicate and retry.seq == stored.seq
    assert (await store.meta(cid)).seq == 1


async def test_open_is_idempotent(store):
    cid = await opened(store, epoch="e1")
    await send(store, cid, P, "one")
    await send(store, cid, S, "two")
    await store.open(cid, epoch="e2", patient=("x", "X"), survivor=("y", "Y"))
    meta = await store.meta(cid)
    assert (meta.epoch, meta.seq, meta.state, meta.patient, meta.survivor) == ("e1", 2, "open", P, S)
    assert (meta.patient_name, meta.survivor_name, meta.ended_by) == (PN, SN, "")
    assert meta.participant(P) and meta.participant(S) and not meta.participant("x") and not meta.participant("")
    assert meta.peer_of(P) == S and meta.peer_of(S) == P and meta.peer_of("x") == ""
    assert meta.created > 0 and meta.ended_at == 0
    await store.end(cid, P)
    await store.open(cid, epoch="e3", patient=(P, PN), survivor=(S, SN))
    assert (await store.meta(cid)).state == "ended"
    assert await store.meta("no-such-conversation") is None


# ---- reads -----------------------------------------------------------------------------------

async def test_read_after_and_history_paging(store):
    cid = await opened(store)
    for i in range(1, 11):
        await send(store, cid, P if i % 2 else S, f"m{i}")

    async def seqs(coro):
        return [m.seq for m in await coro]

    assert await seqs(store.read_after(cid, 0, 3)) == [1, 2, 3]
    assert await seqs(store.read_after(cid, 3, 3)) == [4, 5, 6]
    assert await seqs(store.read_after(cid, 9)) == [10]
    assert await seqs(store.read_after(cid, 10)) == []
    assert await seqs(store.read_after(cid, 50)) == []
    assert await seqs(store.read_after(cid, -5, 2)) == [1, 2]
    assert await seqs(store.read_after(cid, 0, 0)) == []
    assert await seqs(store.history(cid, None, 3)) == [8, 9, 10]
    assert await seqs(store.history(cid, None, 50)) == list(range(1, 11))
    assert await seqs(store.history(cid, 8, 3)) == [5, 6, 7]
    assert await seqs(store.history(cid, 11, 2)) == [9, 10]
    assert await seqs(store.history(cid, 100, 2)) == [9, 10]
    assert await seqs(store.history(cid, 3, 5)) == [1, 2]
    assert await seqs(store.history(cid, 2, 5)) == [1]
    assert await seqs(store.history(cid, 1, 5)) == []
    assert await seqs(store.history(cid, 0, 5)) == []
    assert await seqs(store.history(cid, None, 0)) == []
    assert await seqs(store.read_after("no-such-conversation", 0)) == []
    assert await seqs(store.history("no-such-conversation", None, 10)) == []
    m = (await store.read_after(cid, 4, 1))[0]
    assert (m.seq, m.sender_id, m.name, m.role, m.text, m.shown, m.flags) == (5, P, PN, "patient", "m5", "m5", "")


# ---- live payloads ---------------------------------------------------------------------------

async def test_live_payload_round_trip_masks_for_participants_only(store, keys, raw):
    cid = await opened(store, epoch="ep-7")
    original = "call me on 555 0100"
    masked = "call me on [contact info hidden]"
    user_ch, watch_ch = keys.user_channel(S), keys.watch_channel(cid)
    async with Listener(raw, [user_ch, watch_ch]) as lis:
        a = await send(store, cid, P, original, shown=masked, flags="contact", client_id="cl-1")
        got = await lis.drain()

    live = decode_live(got[user_ch][0])
    assert isinstance(live, LiveMessage) and not live.watch and live.flags is None
    assert (live.conversation_id, live.seq, live.epoch, live.ts, live.sender_id) == (cid, a.seq, "ep-7", a.ts, P)
    expected = {"type": "message", "conversation_id": cid, "seq": a.seq, "epoch": "ep-7",
                "from": {"name": PN, "role": "patient"}, "text": masked, "ts": a.ts, "client_id": "cl-1"}
    assert message_frame(cid, live.epoch, live) == expected

    watched = decode_live(got[watch_ch][0])
    assert watched.watch and watched.flags == "contact" and watched.text == original
    assert message_frame(cid, watched.epoch, watched, moderator_view=True) == {**expected, "text": original}

    [stored] = await store.read_after(cid, 0)
    assert isinstance(stored, StoredMessage)
    assert (stored.text, stored.shown, stored.flags) == (original, masked, "contact")
    assert message_frame(cid, "ep-7", stored) == expected
    assert message_frame(cid, "ep-7", stored, moderator_view=True) == {**expected, "text": original}

    for junk in (b"", b'{"type":"ended"}', b"\x9a\x01", b"\x9a" + b"\xc0" * 10, b"\x93\x01\x02\x03"):
        assert decode_live(junk) is None


# ---- feedback --------------------------------------------------------------------------------

async def test_feedback_only_after_the_end_and_only_from_participants(store, redis, keys):
    cid = await opened(store)
    with pytest.raises(ServiceError) as early:
        await store.feedback(cid, P, 5, "thanks")
    assert early.value.code == ErrorCode.BAD_FRAME and early.value.message == "conversation still open"
    await store.end(cid, P)
    for who in ("stranger", ""):
        with pytest.raises(ServiceError) as exc:
            await store.feedback(cid, who, 1, "x")
        assert exc.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(ServiceError) as unknown:
        await store.feedback("no-such-conversation", P, 1, "x")
    assert unknown.value.code == ErrorCode.FORBIDDEN
    await store.feedback(cid, P, 5, "thank you")
    await store.feedback(cid, S, 4, "")
    meta = await redis.hgetall(keys.conv_meta(cid))
    assert (meta["patient_rating"], meta["patient_comment"]) == ("5", "thank you")
    assert (meta["survivor_rating"], meta["survivor_comment"]) == ("4", "")
    assert int(meta["patient_feedback_at"]) > 0


# ---- retention -------------------------------------------------------------------------------

async def test_retention_purges_only_expired_conversations(store, redis, keys):
    now = time.time()
    ages = {"old": 1000.0, "old2": 501.0, "recent": 10.0}
    for cid in ("old", "old2", "recent", "open"):
        await opened(store, cid)
        await send(store, cid, P, f"hi from {cid}")
        await redis.hset(keys.conversation(cid), mapping={"patient": P, "survivor": S})
        # resolved: purgeable (unresolved ones are kept, see test_retention_flags)
        await redis.hset(keys.conv_flags(cid), "f1", "resolved")
    for cid, age in ages.items():
        await store.end(cid, P)
        await redis.zadd(keys.ended, {cid: now - age})

    assert await purge_expired(redis, keys, now_s=now, retention_s=500.0) == 2
    for cid in ("old", "old2"):
        assert await redis.exists(keys.conv_meta(cid), keys.conv_log(cid), keys.conv_client_ids(cid),
                                  keys.conversation(cid), keys.conv_flags(cid)) == 0
        assert await store.meta(cid) is None
    for cid in ("recent", "open"):
        assert await redis.exists(keys.conv_meta(cid), keys.conv_log(cid), keys.conv_client_ids(cid),
                                  keys.conversation(cid), keys.conv_flags(cid)) == 5
    assert await redis.zrange(keys.ended, 0, -1) == ["recent"]
    assert await purge_expired(redis, keys, now_s=now, retention_s=500.0) == 0


async def test_retention_works_through_batches(store, redis, keys):
    now = time.time()
    for i in range(7):
        cid = f"b{i}"
        await opened(store, cid)
        await store.end(cid, P)
        await redis.zadd(keys.ended, {cid: now - 100 - i})
    assert await purge_expired(redis, keys, now_s=now, retention_s=50.0, batch=3) == 7
    assert await redis.zcard(keys.ended) == 0
    assert not [k async for k in redis.scan_iter(match=f"{keys.prefix}:*")]


# ---- erasure ---------------------------------------------------------------------------------

async def _aof_contains(directory: str, needle: bytes) -> bool:
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".log"):
                continue
            try:
                with open(os.path.join(root, name), "rb") as fh:
                    if needle in fh.read():
                        return True
            except FileNotFoundError:
                pass
    return False


async def _eventually(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_erasure_removes_one_users_words_everywhere_and_keeps_the_peers(
        store, redis, raw, keys, redis_server):
    secret = "secret-" + uuid.uuid4().hex[:12]
    masked_secret = "masked-" + uuid.uuid4().hex[:12]
    secret_name = "Name" + uuid.uuid4().hex[:8]
    a = await opened(store, "conv-a")
    b = "conv-b"
    await store.open(b, epoch="eb", patient=(P, secret_name), survivor=("sur-2", "Sue"))
    await redis.hset(keys.conv_meta(a), "patient_name", secret_name)   # the name should go as well

    plan = [(P, f"{secret} one"), (S, "I hear you"), (P, f"{secret} two"), (S, "take your time"),
            (P, f"{secret} three")]
    for uid, text in plan:
        await send(store, a, uid, text, shown=text.replace(secret, masked_secret) if uid == P else "")
    await send(store, b, P, f"{secret} in b")
    await send(store, b, "sur-2", "hello from b")
    await store.end(b, P)
    await store.feedback(b, P, 5, f"{secret} comment")
    before_peer = [m for m in await store.read_after(a, 0) if m.sender_id == S]

    for k in (keys.user_history(P),):
        await redis.sadd(k, a, b)
    await redis.sadd(keys.user_convs(P), a)
    await redis.hset(keys.request(P), "name", secret_name)
    await redis.sadd(keys.blocks(P), "sur-9")
    await redis.hset(keys.survivor(P), "name", secret_name)

    old = await redis.config_get("rdbcompression")
    await redis.config_set("rdbcompression", "no")      # so DUMP / RDB-preamble AOF hold text verbatim
    try:
        # positive controls: the secret is there before, in memory (DUMP) and in the AOF
        assert secret.encode() in await raw.dump(keys.conv_log(a))
        assert await _eventually(lambda: _aof_contains(redis_server.dir, secret.encode()))

        erased = await erase_user(redis, keys, store, P)
        assert erased == 4
        assert await erase_user(redis, keys, store, P, compact_aof=False) == 0   # idempotent (history set is gone)

        log = await store.read_after(a, 0)
        assert [m.seq for m in log] == [1, 2, 3, 4, 5]
        for m in log:
            if m.sender_id == P:
                assert (m.name, m.text, m.shown) == (DELETED_NAME, "", "")
                assert message_frame(a, "e1", m)["from"]["name"] == DELETED_NAME
                assert message_frame(a, "e1", m, moderator_view=True)["text"] == ""
        assert [m for m in log if m.sender_id == S] == before_peer
        meta = await store.meta(a)
        assert (meta.patient_name, meta.seq, meta.state, meta.survivor_name) == (DELETED_NAME, 5, "open", SN)
        assert [m.text for m in await store.read_after(b, 0)] == ["", "hello from b"]

        with pytest.raises(ServiceError) as exc:                         # the erased user cannot write
            await send(store, a, P, f"{secret} again")
        assert exc.value.code == ErrorCode.FORBIDDEN
        assert (await send(store, a, S, "still here")).seq == 6           # the peer can

        assert await redis.hexists(keys.erasures, P)
        for k in (keys.survivor(P), keys.request(P), keys.blocks(P), keys.user_convs(P), keys.user_history(P)):
            assert not await redis.exists(k), k

        # nothing of it anywhere in Redis: every key of this test's prefix, dumped raw
        dumped = 0
        async for key in raw.scan_iter(match=f"{keys.prefix}:*"):
            blob = await raw.dump(key)
            for needle in (secret, masked_secret, secret_name):
                assert needle.encode() not in blob, (key, needle)
            dumped += 1
        assert dumped >= 6

        # ... nor on disk once the AOF rewrite that erase_user requested has finished
        async def rewritten() -> bool:
            info = await redis.info("persistence")
            return (not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
                    and not await _aof_contains(redis_server.dir, secret.encode())
                    and not await _aof_contains(redis_server.dir, masked_secret.encode()))
        assert await _eventually(rewritten), "the original text is still in the AOF"
    finally:
        await redis.config_set("rdbcompression", old["rdbcompression"])
