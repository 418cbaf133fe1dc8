"""The service on a local Redis Cluster (three primaries), chosen by a ``redis+cluster://`` URL.

Redis Cluster itself enforces the layout of core/keys.py: a script that touches a key
of another slot than its first key fails ("Script attempted to access keys that do not
hash to the same slot"), and a MULTI across slots fails with CROSSSLOT.  So running every
script and every transaction here, with the control plane and the conversation logs on
different nodes, is the proof that each keeps to one slot.  Then two gateway processes
match, chat, resume and escalate a crisis through the cluster, and a gateway whose pub/sub
node dies moves to another node by itself.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from chat import audit
from chat.erasure import erase_user
from chat.flags import FlagStore
from chat.groups import GroupStore, NewGroup
from chat.retention import purge_expired
from chat.store import ChatStore
from core.keys import Keys
from core.redis_client import ClusterClient, make_cluster, make_redis, parse_cluster_url
from matcher.profile import parse_profile
from matcher.store import MatcherConfig, MatchStore
from matcher.vocabulary import load_vocabulary
from support.chat_pair import PROFILE, match_pair, messages, outcomes, send_frame, wait_for
from support.checker import check
from support.gateway import Client, GatewayLauncher, token
from support.redis_cluster import RedisClusterNodes

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def cluster():
    nodes = RedisClusterNodes(primaries=3).start()
    yield nodes
    nodes.cleanup()


@pytest.fixture
def cluster_gateways(cluster, prefix, tmp_path):
    launcher = GatewayLauncher(cluster.url, prefix, str(tmp_path))
    yield launcher
    launcher.stop_all()


def conversation_elsewhere(nodes: RedisClusterNodes, keys: Keys) -> str:
    """A conversation id whose slot lives on another primary than the control plane's."""
    ctl_node = nodes.owner_of(keys.stats)
    while True:
        cid = uuid.uuid4().hex[:12]
        if nodes.owner_of(keys.conv_meta(cid)) != ctl_node:
            return cid


# every Lua script of the code base, each run at least once by the tests below (libraries are included
# by the scripts that use them)
EXERCISED_SCRIPTS = {
    "matcher": {"availability", "request", "cancel", "respond", "presence", "tick", "end", "suspend", "forget",
                "widen", "later", "contact", "again", "wait"},
    "chat": {"open", "append", "append_rate", "end", "feedback", "erase", "flag_create", "flag_ack",
             "flag_resolve", "group_open", "group_join", "group_leave", "group_admin", "group_reserve"},
    "gateway": {"lease"},
}
LIBRARIES = {"lib", "append_bucket", "group_lib"}


def test_the_slot_test_below_knows_every_script():
    root = Path(__file__).resolve().parents[2]
    for package, names in EXERCISED_SCRIPTS.items():
        present = {p.stem for p in (root / package / "lua").glob("*.lua")} - LIBRARIES
        assert present == names, f"add new {package} scripts to test_every_script_and_transaction_keeps_to_one_slot"


async def test_every_script_and_transaction_keeps_to_one_slot(cluster, prefix):
    redis = make_redis(cluster.url, decode=True)
    assert isinstance(redis, ClusterClient)
    keys = Keys(prefix)
    vocabulary = load_vocabulary()
    profile = parse_profile(PROFILE, vocabulary)
    match = MatchStore(redis, keys, MatcherConfig(offer_timeout_s=30))
    chat = ChatStore(redis, keys)
    flags = FlagStore(redis, keys)
    try:
        # matcher: availability, presence, request, offer, decline, accept, tick, end, cancel, suspend, forget
        await match.connected("sv1", "c1")
        await match.connected("sv2", "c2")
        await match.set_availability("sv1", "Sam", available=True, profile=profile, max_chats=1, auto_accept=False)
        await match.set_availability("sv2", "Sue", available=True, profile=profile, max_chats=1, auto_accept=False)
        await match.connected("pt1", "c3")
        state, _ = await match.talk_now("pt1", "Pat", profile)
        assert state["state"] == "offered"
        first = "sv1" if await redis.scard(keys.survivor_offers("sv1")) else "sv2"
        offer = (await redis.smembers(keys.survivor_offers(first))).pop()
        await match.respond(first, offer, accept=False)
        second = "sv2" if first == "sv1" else "sv1"
        offer = (await redis.smembers(keys.survivor_offers(second))).pop()
        out, created = await match.respond(second, offer, accept=True)
        assert out["outcome"] == "accepted" and len(created) == 1
        await match.tick()
        state = await match.user_state("pt1", "patient")          # a cross-key pipeline on {ctl}
        assert [c["conversation_id"] for c in state["conversations"]] == [created[0].id]
        # issue 14: the wait's inputs, widen, talk later, keep in touch, talk again, end a contact
        await match.set_availability(first, "Sam", available=False, profile=profile, max_chats=1,
                                     auto_accept=False)
        await match.connected("pt3", "c5")
        state, _ = await match.talk_now("pt3", "Pia", profile)        # one busy, one away: it waits
        assert state["state"] == "waiting"
        assert (await match.wait_inputs(["pt3"]))[0] is not None
        await match.widen("pt3", profile)
        await match.cancel("pt3")
        later, _ = await match.talk_later("pt3", "Pia", profile, within_s=3600, note="evenings")
        assert (await match.cancel_later("pt3", later["request_id"]))[0]["cancelled"] is True
        assert "contact_id" not in (await match.keep_in_touch("pt1", created[0].id))[0]
        contact = (await match.keep_in_touch(second, created[0].id))[0]["contact_id"]
        again, _ = await match.talk_again("pt1", "Pat", contact, later_s=3600)
        assert again["mode"] in ("live", "later", "joined")
        assert (await match.end_contact(second, contact))[0]["ended"] is True
        await match.connected("pt2", "c4")
        await match.talk_now("pt2", "Paz", profile)
        await match.cancel("pt2")
        await match.suspend("pt2", 0, "test")
        await match.forget("sv1")                                  # erasure's first step
        await match.disconnected("pt2", "c4")

        # chat: open, append, end, feedback, on a conversation on another node than {ctl}
        cid = conversation_elsewhere(cluster, keys)
        await chat.open(cid, epoch="e1", patient=("pt1", "Pat"), survivor=(second, "Sam"))
        for i in range(3):
            appended = await chat.append(cid, sender_id="pt1", name="Pat", role="patient", client_id=f"m{i}",
                                         text=f"hello {i}", shown="")
            assert appended.seq == i + 1
        assert [m.seq for m in await chat.read_after(cid, 1)] == [2, 3]

        # groups: the capacity and waitlist scripts in the group's slot, the per-user count in {ctl}
        groups = GroupStore(redis, keys, max_groups_per_user=5)
        gid = groups.new_id()
        assert await groups.reserve("fac1", gid) == 1
        await groups.create(gid, NewGroup("diagnosis", "breast", "en", "Circle", "", 3, None),
                            uid="fac1", name="Robin", role="survivor", facilitator=True)
        for uid in ("pt1", "pt4", "pt5"):
            assert await groups.reserve(uid, gid) == 1
            await groups.join(gid, uid=uid, name="Pat", role="patient", facilitator=False)
        assert [m.name for m in await groups.members(gid)] == ["Robin", "Pat", "Pat 2"]
        assert (await groups.waitlist_positions([gid], "pt5")) == [1]
        await chat.append(gid, sender_id="pt1", name="Pat", role="patient", client_id="g1", text="hi all", shown="")
        assert (await groups.admin(gid, "mute", actor="fac1", actor_is_moderator=False, arg="Pat", extra=5))[0] == "pt1"
        await groups.admin(gid, "pin", actor="fac1", actor_is_moderator=False, arg="Be kind", extra="Robin")
        left = await groups.leave(gid, "Pat 2", mode="remove", actor="fac1")
        assert left.uid == "pt4" and [m.uid for m in left.promoted] == ["pt5"]
        await groups.admin(gid, "readmit", actor="mod1", actor_is_moderator=True, arg="Pat 2")
        assert await groups.of_user("pt5") == [gid] and await groups.online(["fac1"]) == set()
        assert (await groups.admin(gid, "close", actor="fac1", actor_is_moderator=False)) == ["1"]
        record = await groups.record(gid)
        assert record is not None and record.state == "closed"
        await groups.closed(record)

        # flags and audit: {ctl} scripts that also write the audit stream
        raised = await flags.raise_flags(cid, 3, [("crisis", "high")], "hello 2")
        assert await flags.acknowledge(cid, "mod1") == 1
        entry = audit.entry_fields(who="mod1", who_name="Mo", action=audit.RESOLVE, conversation_id=cid)
        resolved = await flags.resolve(raised[0]["flag_id"], cid, "mod1", "handled", entry)
        assert resolved["resolved"] is True
        await audit.record(redis, keys, who="mod1", who_name="Mo", action=audit.WATCH, conversation_id=cid)
        assert len((await audit.page(redis, keys))["entries"]) == 2

        assert await chat.end(cid, "pt1") is True
        await chat.feedback(cid, "pt1", 5, "thank you")
        await match.end(created[0].id, "pt1", "patient")

        # erasure: a script per conversation, a MULTI on {ctl}, and an AOF rewrite on every node
        await redis.sadd(keys.user_history("pt1"), cid)
        assert await erase_user(redis, keys, chat, "pt1", aof_wait_s=10) == 4      # 3 here, 1 in the group
        assert {m.text for m in await chat.read_after(cid, 0)} == {""}

        # retention: a DEL per conversation slot, then a MULTI on {ctl}
        await redis.zadd(keys.ended, {cid: 1})
        assert await purge_expired(redis, keys, now_s=100, retention_s=10) == 1
        assert await chat.meta(cid) is None

        # and Redis Cluster does refuse what the layout forbids, so the checks above mean something
        with pytest.raises(Exception, match=r"same slot|CROSSSLOT"):
            async with redis.pipeline(transaction=True) as pipe:
                pipe.delete(keys.stats, keys.conv_meta(cid))
                await pipe.execute()
        with pytest.raises(Exception, match=r"same slot|non local key"):
            await redis.eval("return redis.call('GET', ARGV[1])", 1, keys.stats, keys.conv_meta(cid))
    finally:
        await redis.aclose()


async def test_the_shared_limits_keep_to_one_slot_each(cluster, prefix):
    """The send bucket (its own call before the append, in the user's slot), connection leases (taken,
    renewed in a pipeline across slots, released) and typing hints, with everything on other nodes."""
    from chat.store import SendLimit
    from core.errors import ErrorCode, ServiceError
    from gateway.quotas import ConnectionLeases, TypingHints

    redis = make_redis(cluster.url, decode=True)
    keys = Keys(prefix)
    chat = ChatStore(redis, keys)
    try:
        cid = conversation_elsewhere(cluster, keys)
        await chat.open(cid, epoch="e1", patient=("pt1", "Pat"), survivor=("sv1", "Sam"))
        limit = SendLimit(rate_per_s=0.01, burst=2)
        for i in range(2):
            await chat.append(cid, sender_id="pt1", name="Pat", role="patient", client_id=f"m{i}", text="hi",
                              shown="", limit=limit)
        with pytest.raises(ServiceError) as refused:
            await chat.append(cid, sender_id="pt1", name="Pat", role="patient", client_id="m2", text="hi",
                              shown="", limit=limit)
        assert refused.value.code == ErrorCode.RATE_LIMITED
        assert [m.seq for m in await chat.read_after(cid, 0)] == [1, 2]

        leases = ConnectionLeases(redis, keys, ttl_s=5, owner="g1")
        ids = [leases.new_lease() for _ in range(3)]
        assert [await leases.admit_address("10.0.0.1", x, 2) for x in ids] == [True, True, False]
        assert await leases.admit_user("pt1", ids[0], 1) and not await leases.admit_user("pt1", ids[1], 1)
        await leases.renew()
        assert await redis.zcard(keys.address_leases("10.0.0.1")) == 2
        await leases.release(ids[0])
        assert await redis.zcard(keys.user_leases("pt1")) == 0
        assert await leases.admit_address("10.0.0.1", ids[2], 2)

        hints = TypingHints(redis, keys, interval_s=5)
        assert await hints.claim("pt1", cid) and not await hints.claim("pt1", cid)
    finally:
        await redis.aclose()


async def test_a_burst_waits_for_connections_instead_of_failing(cluster, prefix):
    """redis-py's asyncio cluster client raises MaxConnectionsError when a node's pool is used up;
    ours makes commands and pipelines wait for a slot, as the single-node BlockingConnectionPool does."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.exceptions import MaxConnectionsError

    port = cluster.ports[0]
    bare = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port)], max_connections=2)
    ours = make_cluster(parse_cluster_url(f"redis+cluster://127.0.0.1:{port}"), decode=True, max_in_flight=1)
    keys = [f"{prefix}:{{k{i}}}" for i in range(30)]
    try:
        with pytest.raises(MaxConnectionsError):
            await asyncio.gather(*(bare.blpop([key], timeout=0.2) for key in keys * 3))

        async def piped(key: str) -> list:
            async with ours.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.incr(key)
                return await pipe.execute()

        results = await asyncio.gather(*(ours.blpop([key], timeout=0.01) for key in keys),
                                       *(ours.incr(key) for key in keys), *(piped(key) for key in keys))
        assert results[30:60] == [1] * 30 and results[60:] == [[2, 3]] * 30
        assert all(len(node._connections) <= 2 for node in ours.get_nodes())
    finally:
        await bare.aclose()
        await ours.aclose()


async def test_two_gateways_match_chat_resume_on_the_cluster(cluster_gateways):
    g1, g2 = cluster_gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    for i in range(10):
        sender = pair.patient if i % 2 == 0 else pair.survivor
        await sender.send(send_frame(cid, f"m{i}", f"text {i}"))
    for c in (pair.patient, pair.survivor):
        await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 10, 10, "every message at both ends")
    await wait_for(lambda: len(outcomes(pair.patient.frames, cid)) == 5, 5, "the patient's acks")
    # the patient drops; the survivor goes on; the patient resumes on the other gateway
    last_seq = messages(pair.patient.frames, cid)[-1][0]
    await pair.patient.close()
    for i in range(5):
        await pair.survivor.send(send_frame(cid, f"missed{i}"))
    await wait_for(lambda: len(outcomes(pair.survivor.frames, cid)) == 10, 5, "acks of the missed messages")
    back = await Client.connect(g2.ws_url, pair.patient_token, resume={cid: last_seq})
    assert [c["conversation_id"] for c in back.welcome["conversations"]] == [cid]
    await back.send(send_frame(cid, "after", "I am back"))
    await wait_for(lambda: ("after" in {c for _, c in messages(pair.survivor.frames, cid)}), 5, "the reply")
    await wait_for(lambda: len(messages(back.frames, cid)) >= 6, 5, "missed messages and the reply")
    await wait_for(lambda: "after" in outcomes(back.frames, cid), 5, "the ack of the reply")
    got = messages(back.frames, cid)
    assert [c for _, c in got[:5]] == [f"missed{i}" for i in range(5)]
    sent = {**outcomes(pair.patient.frames, cid), **outcomes(pair.survivor.frames, cid), **outcomes(back.frames, cid)}
    report = check(sent, {"patient": messages(pair.patient.frames, cid) + got,
                          "survivor": messages(pair.survivor.frames, cid)}, expect_all_seqs=True)
    assert report.ok(), report.summary()
    await back.close()
    await pair.survivor.close()


async def test_a_group_on_two_gateways_on_the_cluster(cluster_gateways):
    """Groups on a Cluster: joins through both gateways, a message from each reaches every member in
    order on both (the append SPUBLISHes once to the group's shard channel), presence and a waitlist
    move-up announced across gateways, and a member who leaves stops receiving."""
    g1, g2 = cluster_gateways(2)
    fac = await Client.connect(g1.ws_url, token("survivor", name="Robin", facilitator=True))
    await fac.send({"type": "create_group", "topic": {"kind": "diagnosis", "code": "breast"}, "language": "en",
                    "title": "Circle", "capacity": 3})
    gid = (await fac.expect("group"))["group"]["group_id"]
    a = await Client.connect(g2.ws_url, token("patient", name="Ana"))
    b = await Client.connect(g1.ws_url, token("patient", name="Bea"))
    c = await Client.connect(g2.ws_url, token("survivor", name="Cy"))
    for member in (a, b):
        await member.send({"type": "join_group", "group_id": gid})
        await member.expect("joined")
    await c.send({"type": "join_group", "group_id": gid})
    assert (await c.expect("error"))["waitlist_position"] == 1
    await fac.expect("presence", online=["Robin", "Ana", "Bea"])
    for i, sender in enumerate((a, b, fac, a)):
        await sender.send(send_frame(gid, f"g{i}", f"text {i}"))
    seen = []
    for member in (fac, a, b):
        await wait_for(lambda m=member: len(messages(m.frames, gid)) >= 4, 10, "every message at every member")
        seen.append(messages(member.frames, gid))
    assert [seq for seq, _ in seen[0]] == [1, 2, 3, 4] and {c for _, c in seen[0]} == {"g0", "g1", "g2", "g3"}
    assert seen[1] == seen[0] and seen[2] == seen[0], "every member, on either gateway, in the same order"
    await b.send({"type": "leave_group", "group_id": gid})
    await b.expect("left")
    joined = await c.expect("joined")
    assert joined["seq"] == 4 and [m["name"] for m in joined["members"]] == ["Robin", "Ana", "Cy"]
    await a.send(send_frame(gid, "g4", "welcome Cy"))
    await wait_for(lambda: messages(c.frames, gid) == [(5, "g4")], 10, "the new member's first message")
    await asyncio.sleep(0.3)
    assert len(messages(b.frames, gid)) == 4, "a member who left receives nothing more"
    for client in (fac, a, b, c):
        await client.close()


async def test_a_crisis_message_reaches_a_moderator_on_the_other_gateway(cluster_gateways):
    pytest.importorskip("gateway.safety")
    g1, g2 = cluster_gateways(2)
    moderator = await Client.connect(g2.ws_url, token("moderator", name="Mo"))
    await moderator.send({"type": "watch_flags"})
    await moderator.expect("flags")
    pair = await match_pair(g1.ws_url, g1.ws_url)
    await pair.patient.send(send_frame(pair.cid, "cr1", "I want to end my life"))
    await pair.patient.expect("ack", client_id="cr1")
    flag = await moderator.expect("flag", timeout=5, conversation_id=pair.cid)
    assert flag["category"] == "crisis"
    await pair.patient.expect("resources")
    await moderator.send({"type": "watch", "conversation_id": pair.cid})
    history = await moderator.expect("history", conversation_id=pair.cid)
    assert any(m["client_id"] == "cr1" for m in history["messages"])
    for c in (moderator, pair.patient, pair.survivor):
        await c.close()


def pubsub_links(nodes: RedisClusterNodes, *, sharded: bool = False) -> dict[int, int]:
    """Live node port -> how many plain pub/sub connections it holds (the gateways' hub links), or with
    ``sharded``, how many connections hold shard channels (the hubs' per-node SSUBSCRIBE links)."""
    import redis as sync_redis

    field = "ssub" if sharded else "sub"
    links = {}
    for port in nodes.ports:
        if nodes.alive(port):
            with sync_redis.Redis(port=port) as r:
                links[port] = sum(1 for c in r.client_list(_type="pubsub") if int(c.get(field, 0)) > 0)
    return links


async def test_when_the_one_node_the_gateways_know_dies_they_fail_over_and_move_their_pubsub(cluster_gateways):
    """Three primaries with a replica each, and gateways given ONE node in their URL: kill that node (a
    primary, where both hubs listen); its replica takes over, the gateways find the other nodes by
    themselves, the hubs move there, and the chat goes on with nothing acknowledged lost."""
    nodes = RedisClusterNodes(primaries=3, replicas=1, node_timeout_ms=1000).start()
    try:
        g1, g2 = cluster_gateways(2, url=f"redis+cluster://127.0.0.1:{nodes.ports[0]}")
        pair = await match_pair(g1.ws_url, g2.ws_url)
        cid = pair.cid
        for i in range(4):
            await (pair.patient if i % 2 == 0 else pair.survivor).send(send_frame(cid, f"before{i}"))
        for c in (pair.patient, pair.survivor):
            await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 4, 5, "messages before the kill")
            await wait_for(lambda c=c: len(outcomes(c.frames, cid)) == 2, 5, "acks before the kill")
        await asyncio.get_running_loop().run_in_executor(None, wait_replicated, nodes)
        # the gateways knew only this node when they started, so both hubs listen there; it is a primary
        victim = nodes.ports[0]
        assert pubsub_links(nodes)[victim] == 2
        assert nodes.role(victim) == "master"
        nodes.kill(victim)
        await asyncio.get_running_loop().run_in_executor(None, nodes.wait_failover, victim)
        # the hubs notice (ping timeout or a reset), move to a live node and catch up
        for i in range(6):
            sender = pair.patient if i % 2 == 0 else pair.survivor
            await send_until_acked(sender, cid, f"after{i}")
        for name, c in (("patient", pair.patient), ("survivor", pair.survivor)):
            await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 10, 15,
                           f"messages after the kill at the {name}: {messages(c.frames, cid)} "
                           f"links {pubsub_links(nodes)}")
        assert sum(pubsub_links(nodes).values()) == 2          # each gateway's hub, on a live node
        sent = {**outcomes(pair.patient.frames, cid), **outcomes(pair.survivor.frames, cid)}
        report = check(sent, {"patient": messages(pair.patient.frames, cid),
                              "survivor": messages(pair.survivor.frames, cid)}, expect_all_seqs=True)
        assert report.ok(), report.summary()
        await pair.patient.close()
        await pair.survivor.close()
    finally:
        nodes.cleanup()


def wait_replicated(nodes: RedisClusterNodes, timeout: float = 10.0) -> None:
    """Until every primary has an online replica holding everything the primary had written when this
    was called (so that the replica can take over, and killing the primary loses nothing acknowledged)."""
    import time

    import redis as sync_redis

    def replication() -> dict[int, dict]:
        out = {}
        for port in nodes.ports:
            with sync_redis.Redis(port=port, decode_responses=True) as r:
                out[port] = r.info("replication")
        return out

    written = {port: int(info["master_repl_offset"]) for port, info in replication().items()
               if info.get("role") == "master"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = replication()
        if all(any(v.get("state") == "online" and int(v["offset"]) >= offset
                   for k, v in infos[port].items() if k.startswith("slave") and isinstance(v, dict))
               for port, offset in written.items()):
            return
        time.sleep(0.05)
    raise AssertionError("replicas did not catch up")


async def send_until_acked(client: Client, cid: str, client_id: str, timeout: float = 15.0) -> None:
    """Send, and send the same client id again after an error (e.g. 'unavailable' while the cluster
    fails over), until it is acknowledged: the idempotent retry a real client makes."""
    deadline = asyncio.get_running_loop().time() + timeout

    def answers() -> int:
        return sum(1 for f in client.frames if f.get("client_id") == client_id and f["type"] in ("ack", "error"))

    while True:
        before = answers()
        await client.send(send_frame(cid, client_id))
        await wait_for(lambda before=before: answers() > before, 5, f"an answer to {client_id}")
        if isinstance(outcomes(client.frames, cid).get(client_id), int):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{client_id} was never acknowledged: {client.frames[-5:]}")
        await asyncio.sleep(0.2)


def shard_subscribers(nodes: RedisClusterNodes, channel: str) -> int:
    """PUBSUB SHARDNUMSUB of ``channel`` on the primary that owns its slot."""
    import redis as sync_redis

    with sync_redis.Redis(port=nodes.owner_of(channel)) as r:
        return int(r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])


async def spy_on_plain_channels(port: int, channels: list[str]) -> tuple[Any, list[bytes]]:
    """A plain subscriber on some node (a cluster forwards every PUBLISH to every node): what it hears."""
    import redis.asyncio as aioredis

    heard: list[bytes] = []
    client = aioredis.Redis(port=port)
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                heard.append(msg["data"])

    task = asyncio.get_running_loop().create_task(listen())

    async def close() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()
        await client.aclose()

    return close, heard


async def test_chat_messages_travel_on_the_conversations_shard_channels(cluster_gateways, cluster, prefix):
    """In cluster mode a message is SPUBLISHed once to the conversation's shard channel (followed by each
    gateway on the node owning the slot), never PUBLISHed on the plain user or watch channels; a watching
    moderator gets it from the watch shard channel; the last follower leaving unsubscribes."""
    from chat.store import decode_live

    keys = Keys(prefix)
    g1, g2 = cluster_gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    live, watch = keys.conv_live(cid), keys.conv_watch(cid)
    await wait_for(lambda: shard_subscribers(cluster, live) == 2, 5, "both gateways following the shard channel")
    close_spy, heard = await spy_on_plain_channels(cluster.ports[1], [
        keys.user_channel(pair.patient_id), keys.user_channel(pair.survivor_id), keys.watch_channel(cid)])
    moderator = await Client.connect(g1.ws_url, token("moderator", name="Mo"))
    try:
        await moderator.send({"type": "watch_flags"})
        await moderator.expect("flags")
        await pair.patient.send(send_frame(cid, "cr1", "I want to end my life"))   # opens it to moderators
        await pair.patient.expect("ack", client_id="cr1")
        await moderator.expect("flag", timeout=5, conversation_id=cid)
        await moderator.send({"type": "watch", "conversation_id": cid})
        history = await moderator.expect("history", conversation_id=cid)
        assert [m["seq"] for m in history["messages"]] == [1]
        assert shard_subscribers(cluster, watch) == 1
        for i in range(6):
            await (pair.patient if i % 2 == 0 else pair.survivor).send(send_frame(cid, f"s{i}"))
        for c in (pair.patient, pair.survivor):
            await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 7, 5, "every message, live")
        await wait_for(lambda: len(messages(moderator.frames, cid)) >= 6, 5, "every message at the moderator")
        assert [seq for seq, _ in messages(moderator.frames, cid)] == list(range(2, 8))
        await pair.patient.send({"type": "end", "conversation_id": cid})
        for c in (pair.patient, pair.survivor):
            await c.expect("ended", conversation_id=cid)
        # control frames still come on the plain user channels; message wake-ups never do
        assert heard, "the spy heard the control frames (it listens where they travel)"
        assert [decode_live(data) for data in heard if decode_live(data) is not None] == []
        await wait_for(lambda: shard_subscribers(cluster, live) == 0, 5, "the shard channel left once it ended")
        await moderator.send({"type": "unwatch", "conversation_id": cid})
        await moderator.expect("unwatched", conversation_id=cid)
        await wait_for(lambda: shard_subscribers(cluster, watch) == 0, 5, "the watch shard channel left")
    finally:
        await close_spy()
        for c in (moderator, pair.patient, pair.survivor):
            await c.close()


async def test_killed_pubsub_connections_resubscribe_shard_channels_and_catch_up(cluster_gateways, cluster, prefix):
    """CLIENT KILL TYPE pubsub on every node, while both sides keep sending: every gateway re-subscribes its
    shard channels on the owning node and catches up from the log within 10 s, nothing lost or doubled."""
    import redis as sync_redis

    keys = Keys(prefix)
    g1, g2 = cluster_gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    live = keys.conv_live(cid)
    await wait_for(lambda: shard_subscribers(cluster, live) == 2, 5, "both gateways following the shard channel")
    for i in range(4):
        await (pair.patient if i % 2 == 0 else pair.survivor).send(send_frame(cid, f"before{i}"))
    for c in (pair.patient, pair.survivor):
        await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 4, 5, "messages before the kill")
    killed = 0
    for port in cluster.ports:
        with sync_redis.Redis(port=port) as r:
            killed += int(r.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
    assert killed >= 4            # at least each gateway's plain link and its link to the owning node
    for i in range(6):            # sent while the links are down or coming back: only the log has them
        await send_until_acked(pair.patient if i % 2 == 0 else pair.survivor, cid, f"after{i}")
    for name, c in (("patient", pair.patient), ("survivor", pair.survivor)):
        await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 10, 10, f"every message at the {name}")
    await wait_for(lambda: shard_subscribers(cluster, live) == 2, 10, "shard subscriptions back")
    assert sum(pubsub_links(cluster).values()) == 2
    # and live delivery works again on the new links
    await pair.survivor.send(send_frame(cid, "later"))
    await wait_for(lambda: len(messages(pair.patient.frames, cid)) >= 11, 5, "a message after the recovery")
    sent = {**outcomes(pair.patient.frames, cid), **outcomes(pair.survivor.frames, cid)}
    report = check(sent, {"patient": messages(pair.patient.frames, cid),
                          "survivor": messages(pair.survivor.frames, cid)}, expect_all_seqs=True)
    assert report.ok(), report.summary()
    await pair.patient.close()
    await pair.survivor.close()


async def test_a_link_holding_conversations_of_many_slots_resubscribes_them_all(cluster_gateways, cluster, prefix):
    """A node's shard link that comes back holding conversations in different slots subscribes them all
    (one SSUBSCRIBE per slot: one command for several slots is refused with CROSSSLOT, and the link
    then failed, reconnected and failed again, serving every message from the log catch-up), and
    stays up."""
    import redis as sync_redis

    from support.chat_pair import metric

    keys = Keys(prefix)
    g1, g2 = cluster_gateways(2)
    pairs = [await match_pair(g1.ws_url, g2.ws_url) for _ in range(12)]
    channels = [keys.conv_live(p.cid) for p in pairs]
    assert len({cluster.owner_of(c) for c in channels}) > 1
    await wait_for(lambda: all(shard_subscribers(cluster, c) == 2 for c in channels), 10, "every conversation followed")
    for port in cluster.ports:
        with sync_redis.Redis(port=port) as r:
            r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_for(lambda: all(shard_subscribers(cluster, c) == 2 for c in channels), 10, "every conversation again")
    reconnects = [await metric(g.url, "aftertalk_pubsub_reconnects_total") for g in (g1, g2)]
    await asyncio.sleep(3)
    assert [await metric(g.url, "aftertalk_pubsub_reconnects_total") for g in (g1, g2)] == reconnects  # links stay up
    for i, p in enumerate(pairs):            # and each conversation is live on them
        await p.patient.send(send_frame(p.cid, f"after-{i}"))
        await p.survivor.expect("message", client_id=f"after-{i}")
