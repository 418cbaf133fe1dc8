"""Retention never deletes a conversation a moderator still has to review."""
from __future__ import annotations

from chat.flags import FlagStore
from chat.retention import purge_expired
from chat.store import ChatStore
from core.keys import Keys


async def test_unresolved_flag_keeps_an_expired_conversation_until_resolved(redis, prefix):
    keys = Keys(prefix)
    chat, flags = ChatStore(redis, keys), FlagStore(redis, keys)
    for cid in ("c-flagged", "c-clean"):
        await chat.open(cid, epoch="e1", patient=("p1", "Pat"), survivor=("s1", "Sam"))
        await chat.append(cid, sender_id="p1", name="Pat", role="patient", client_id="m1",
                          text="hello", shown="hello")
        await chat.end(cid, "p1")
        await redis.zadd(keys.ended, {cid: 1000.0})
    [flag] = await flags.raise_flags("c-flagged", 1, [("crisis", "high")], "hello", author="p1")

    assert await purge_expired(redis, keys, now_s=2000.0, retention_s=10.0) == 1
    assert await chat.meta("c-clean") is None
    assert (await chat.meta("c-flagged")) is not None          # kept for review
    assert await chat.read_after("c-flagged", 0) != []
    assert await redis.zscore(keys.ended, "c-flagged") > 2000.0 - 10.0   # looked at again later

    await flags.resolve(flag["flag_id"], "c-flagged", "mod1", "talked it through", {"action": "resolve"})
    assert await purge_expired(redis, keys, now_s=2000.0 + 4000.0, retention_s=10.0) == 1
    assert await chat.meta("c-flagged") is None
    assert await redis.exists(keys.flag(flag["flag_id"]), keys.conv_flags("c-flagged")) == 0
