"""Groups ("circles", docs/protocol.md "Groups") through two real gateway processes on the suite's Redis.

Most tests share two gateway processes (module scope, their own key prefix); each test makes its own
users and groups, and the tests that list or find groups use a topic and language of their own so that
the module's other groups never fit them.  The kill -9 test starts (and kills) gateways of its own.

What is shown: capacity is never exceeded under 200 concurrent joins and the waitlist is served in
order; messages reach every member on either gateway in order, exactly once, without user ids;
resume after a gateway's kill -9 loses and doubles nothing; presence, member_joined / member_left,
the pinned message and history from the joining seq; find_group; the limit of 5 groups; the
facilitator tools enforced and audited; moderation in a group; erase-user.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis

from chat import audit
from core.keys import Keys
from support.chat_pair import Side, match_pair, messages, outcomes, send_frame, wait_for
from support.checker import check
from support.gateway import ROOT, Client, GatewayLauncher
from support.groups import (
    CRISIS_LINES,
    CRISIS_TEXT,
    GROUP_ENV,
    Pair,
    User,
    audit_entries,
    close_all,
    create_frame,
    create_group,
    error,
    facilitator,
    group_messages,
    join,
    leave,
    of,
    person,
    presence,
    wait_frame,
)

DELETED = "Deleted user"
FAST = {"AFTERTALK_SEND_RATE_PER_S": "1000", "AFTERTALK_SEND_BURST": "1000",
        "AFTERTALK_FRAMES_PER_S": "1000", "AFTERTALK_FRAMES_BURST": "1000"}
MEMBER_KEYS = {"name", "role", "facilitator", "online"}


@pytest.fixture(scope="module")
def pair(redis_server, tmp_path_factory):
    prefix = "grp" + uuid.uuid4().hex[:8]
    launcher = GatewayLauncher(redis_server.url, prefix, str(tmp_path_factory.mktemp("groups")), **GROUP_ENV,
                               AFTERTALK_CRISIS_LINES=json.dumps(CRISIS_LINES))
    g1, g2 = launcher(2)
    yield Pair(g1, g2, prefix, launcher)
    launcher.stop_all()


class MemberMonitor:
    """A thread that reads the group's member count (HLEN of its members hash) every ~2 ms.

    The join script is atomic, so every sample is a state the store really was in."""

    def __init__(self, url: str, key: str, waitlist_key: str) -> None:
        self.client = SyncRedis.from_url(url, decode_responses=True)
        self.key, self.waitlist_key = key, waitlist_key
        self.samples: list[int] = []
        self.peak_waitlist = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemberMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.client.pipeline(transaction=True)
            pipe.hlen(self.key)
            pipe.zcard(self.waitlist_key)
            members, waiting = pipe.execute()
            self.samples.append(members)
            self.peak_waitlist = max(self.peak_waitlist, waiting)
            time.sleep(0.002)


def summaries_of(client: Client, gid: str) -> list[dict[str, Any]]:
    """Every group summary of ``gid`` a client was shown (in joined, group and groups frames)."""
    out: list[dict[str, Any]] = []
    for f in client.frames:
        if f.get("type") in ("joined", "group") and isinstance(f.get("group"), dict):
            out.append(f["group"])
        elif f.get("type") == "groups":
            out += f["groups"]
    return [s for s in out if s.get("group_id") == gid]


# ---------------------------------------------------------------------------------------------------
async def test_two_hundred_concurrent_joins_fill_a_group_of_eight_and_the_waitlist_is_served_in_order(
        pair, redis_server):
    keys = Keys(pair.prefix)
    robin = facilitator("Robin")
    fac = await robin.connect(pair.g1)
    assert (fac.welcome or {})["user"].get("facilitator") is True
    group = await create_group(fac, capacity=8, title="Breast cancer, Tuesday evenings")
    gid = group["group_id"]
    assert group["conversation_id"] == gid
    assert (group["members"], group["capacity"], group["facilitators"], group["state"], group["joined"]) == (
        1, 8, ["Robin"], "open", True)
    fac2 = await robin.connect(pair.g2)              # the facilitator's second connection polls the summary
    users = [person("patient" if i % 3 else "survivor", f"Joiner {i:03d}") for i in range(200)]
    clients = await asyncio.gather(*(u.connect(pair.gws[i % 2]) for i, u in enumerate(users)))
    monitor = MemberMonitor(redis_server.url, keys.group_members(gid), keys.group_waitlist(gid)).start()
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            await fac2.send({"type": "list_groups"})
            await asyncio.sleep(0.03)

    poller = asyncio.create_task(poll())
    try:
        # ---- all at once, through both gateways
        await asyncio.gather(*(c.send({"type": "join_group", "group_id": gid}) for c in clients))

        def answered(c: Client) -> bool:
            return bool(of(c, "joined", group_id=gid) or of(c, "error", ref="join_group"))

        await wait_for(lambda: all(answered(c) for c in clients), 30, "an answer to every join_group")
    finally:
        stop.set()
        await poller
    joined = [c for c in clients if of(c, "joined", group_id=gid)]
    waiting = [c for c in clients if not of(c, "joined", group_id=gid)]
    errors = [e for c in waiting for e in of(c, "error", ref="join_group")]
    assert len(joined) == 7, f"{len(joined)} joiners got in beside the facilitator (capacity 8)"
    assert all(not of(c, "error", ref="join_group") for c in joined), "a joiner got both joined and an error"
    assert [e["code"] for e in errors] == ["group_full"] * 193, {e["code"] for e in errors}
    positions = sorted(e["waitlist_position"] for e in errors)
    assert positions == list(range(1, 194)), positions[:10]
    # capacity never exceeded: in the store at every sample, and in every summary anyone was shown
    monitor.stop()
    assert monitor.samples and max(monitor.samples) <= 8, max(monitor.samples)
    assert monitor.samples[-1] == 8 and monitor.peak_waitlist == 193
    for c in joined:
        for f in of(c, "joined", group_id=gid):
            assert f["group"]["members"] <= 8 and len(f["members"]) <= 8, f
            assert f["group"]["capacity"] == 8
    await wait_for(lambda: len(summaries_of(fac2, gid)) >= 1, 5, "the facilitator's list_groups answers")
    shown = [s["members"] for s in summaries_of(fac2, gid)]
    assert max(shown) <= 8, shown
    assert len(of(fac, "member_joined", group_id=gid)) == 7

    by_position = {e["waitlist_position"]: c for c in waiting for e in of(c, "error", ref="join_group")}
    # asking again tells the same place
    await by_position[5].send({"type": "join_group", "group_id": gid})
    await wait_for(lambda: len(of(by_position[5], "error", ref="join_group")) == 2, 5, "the second answer")
    again = of(by_position[5], "error", ref="join_group")
    assert (again[1]["code"], again[1]["waitlist_position"]) == ("group_full", 5)
    # the head of the waitlist has a second connection on the other gateway: both are told
    head = users[clients.index(by_position[1])]
    head_other = await head.connect(pair.gws[(clients.index(by_position[1]) + 1) % 2])
    # the second in line changes their mind
    await by_position[2].send({"type": "leave_group", "group_id": gid})
    left = await by_position[2].expect("left", group_id=gid)
    assert left.get("waitlisted") is True

    promoted_in_order = [by_position[1], by_position[3], by_position[4]]
    extra: list[Client] = []
    for i, (leaver, promoted) in enumerate(zip(joined[:3], promoted_in_order, strict=True)):
        who = users[clients.index(leaver)]
        name = who.name
        if i == 1:        # through a connection on the other gateway, whichever the member joined on
            extra.append(await who.connect(pair.gws[(clients.index(leaver) + 1) % 2]))
            await leave(extra[-1], gid)
            await leaver.expect("left", group_id=gid)
        else:
            await leave(leaver, gid)
        await wait_frame(fac, "member_left", group_id=gid, name=name)
        got = await wait_frame(promoted, "joined", timeout=5, group_id=gid)
        assert got["group"]["members"] == 8 and len(got["members"]) == 8, got
        assert got["name"] == users[clients.index(promoted)].name
    await wait_frame(head_other, "joined", group_id=gid)
    await asyncio.sleep(0.3)
    ever_joined = [c for c in clients if of(c, "joined", group_id=gid)]
    assert len(ever_joined) == 10
    assert set(ever_joined) == set(joined) | set(promoted_in_order), "someone else than the waitlist's head got in"
    assert not of(by_position[2], "joined")
    # the facilitator saw the newcomers join in waitlist order, and never more than 8 members
    newcomers = [f["name"] for f in of(fac, "member_joined", group_id=gid)][7:]
    assert newcomers == [users[clients.index(c)].name for c in promoted_in_order]
    count = peak = 1
    for f in fac.frames:
        if f.get("group_id") == gid:
            count += {"member_joined": 1, "member_left": -1}.get(f["type"], 0)
            peak = max(peak, count)
    assert peak <= 8 and count == 8
    fac2.frames = [f for f in fac2.frames if f.get("type") != "groups"]       # the poller's answers
    await fac2.send({"type": "list_groups"})
    final = (await fac2.expect("groups", timeout=5))
    summary = next(s for s in final["groups"] if s["group_id"] == gid)
    assert (summary["members"], summary["capacity"]) == (8, 8)
    await close_all([*clients, fac, fac2, head_other, *extra])


# ---------------------------------------------------------------------------------------------------
async def test_messages_from_members_on_both_gateways_reach_every_member_in_order_exactly_once(pair, redis):
    keys = Keys(pair.prefix)
    robin = facilitator("Robin")
    ana, ben, cleo, dev = (person("patient", "Ana"), person("survivor", "Ben"), person("patient", "Cleo"),
                           person("survivor", "Dev"))
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac, capacity=8))["group_id"]
    a1 = await ana.connect(pair.g1)
    b = await ben.connect(pair.g2)
    c = await cleo.connect(pair.g2)
    d = await dev.connect(pair.g1)
    joins = {}
    for client, who in ((a1, ana), (b, ben), (c, cleo), (d, dev)):
        joins[who.name] = await join(client, gid)
    a2 = await ana.connect(pair.g2)                     # Ana's second tab, on the other gateway
    epoch = joins["Ana"]["epoch"]
    for j in joins.values():
        assert j["conversation_id"] == gid and j["epoch"] == epoch and j["seq"] == 0
        assert all(set(m) == MEMBER_KEYS for m in j["members"]), j["members"]
    assert {m["name"]: (m["role"], m["facilitator"]) for m in joins["Dev"]["members"]} == {
        "Robin": ("survivor", True), "Ana": ("patient", False), "Ben": ("survivor", False),
        "Cleo": ("patient", False), "Dev": ("survivor", False)}
    # the welcome of a new connection lists the group
    listed = [g for g in (a2.welcome or {}).get("groups", []) if g["group_id"] == gid]
    assert len(listed) == 1 and listed[0]["epoch"] == epoch and listed[0]["name"] == "Ana", a2.welcome

    senders = {"f": (fac, robin), "a": (a1, ana), "b": (b, ben), "c": (c, cleo)}
    n = 8
    for i in range(n):
        await asyncio.gather(*(client.send(send_frame(gid, f"{stem}{i}", f"{who.name} says {i}"))
                               for stem, (client, who) in senders.items()))
    everyone = {"Robin": fac, "Ana@g1": a1, "Ana@g2": a2, "Ben": b, "Cleo": c, "Dev": d}
    total = n * len(senders)
    for name, client in everyone.items():
        await wait_for(lambda client=client: len(group_messages(client.frames, gid)) >= total, 15,
                       f"every message at {name}")
    await asyncio.sleep(0.3)                            # nothing more (no doubles) arrives afterwards
    sent: dict[str, Any] = {}
    for client, _ in senders.values():
        sent.update(outcomes(client.frames, gid))
    assert len(sent) == total and all(isinstance(s, int) for s in sent.values()), sent
    report = check(sent, {name: group_messages(cl.frames, gid) for name, cl in everyone.items()},
                   expect_all_seqs=True)
    assert report.ok(), report.summary()
    for name, client in everyone.items():
        assert [s for s, _ in group_messages(client.frames, gid)] == list(range(1, total + 1)), name
    assert await redis.xlen(keys.conv_log(gid)) == total
    # the author by pseudonym and role, and each author's lines in the order they were written
    for name, client in everyone.items():
        got = [f for f in client.frames if f.get("type") == "message"]
        assert all(f["epoch"] == epoch and f["ts"] > 0 for f in got)
        for stem, (_, who) in senders.items():
            theirs = [f for f in got if f["client_id"].startswith(stem) and f["client_id"][1:].isdigit()]
            assert all(f["from"] == {"name": who.name, "role": who.role} for f in theirs), (name, theirs[:1])
            assert [f["text"] for f in theirs] == [f"{who.name} says {i}" for i in range(n)]
    # typing reaches the others with the pseudonym, not the typist
    await b.send({"type": "typing", "conversation_id": gid})
    for client in (fac, a1, a2, c, d):
        t = await client.expect("typing", conversation_id=gid)
        assert t["from"] == {"name": "Ben", "role": "survivor"}
    assert not of(b, "typing")
    # no user id anywhere in what members were sent (their own id in their own welcome aside)
    ids = {u.sub for u in (robin, ana, ben, cleo, dev)}
    for name, client in everyone.items():
        for f in [*client.frames, client.welcome or {}]:
            text = orjson.dumps({k: v for k, v in f.items() if k != "user"} if f.get("type") == "welcome" else f)
            leaked = [i for i in ids if i.encode() in text]
            assert not leaked, (name, f)
    await close_all(everyone.values())


async def test_group_sends_draw_on_the_users_one_message_bucket_across_gateways(pair, redis):
    robin = facilitator("Robin")
    eli = person("patient", "Eli")
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac))["group_id"]
    e1 = await eli.connect(pair.g1)
    await join(e1, gid)
    e2 = await eli.connect(pair.g2)
    frames = [(e1 if i % 2 else e2, send_frame(gid, f"r{i}")) for i in range(30)]
    await asyncio.gather(*(cl.send(f) for cl, f in frames))
    await wait_for(lambda: len({**outcomes(e1.frames, gid), **outcomes(e2.frames, gid)}) == 30, 10,
                   "an answer to every send")
    sent = {**outcomes(e1.frames, gid), **outcomes(e2.frames, gid)}
    acked = {k: v for k, v in sent.items() if isinstance(v, int)}
    assert 20 <= len(acked) <= 25, sent                 # the default burst of 20, plus what refilled meanwhile
    assert {v for v in sent.values() if not isinstance(v, int)} == {"rate_limited"}
    assert await redis.xlen(Keys(pair.prefix).conv_log(gid)) == len(acked)
    await wait_for(lambda: len(group_messages(fac.frames, gid)) >= len(acked), 5, "the acked messages")
    await asyncio.sleep(0.2)
    assert sorted(c for _, c in group_messages(fac.frames, gid)) == sorted(acked)
    await close_all([fac, e1, e2])


# ---------------------------------------------------------------------------------------------------
async def test_kill_9_of_a_gateway_then_resume_on_the_other_loses_and_doubles_nothing(gateways, redis, prefix):
    g1, g2 = gateways(2, **FAST, AFTERTALK_PRESENCE_TTL_S="3")
    robin = facilitator("Robin")
    ana, ben, cleo, dev, eve = (person("patient", "Ana"), person("survivor", "Ben"), person("patient", "Cleo"),
                                person("survivor", "Dev"), person("patient", "Eve"))
    fac = await robin.connect(g2)
    gid = (await create_group(fac, capacity=10))["group_id"]
    clients: dict[str, Client] = {}
    for who, gw in ((ana, g1), (ben, g1), (eve, g1), (cleo, g2), (dev, g2)):
        clients[who.name] = await who.connect(gw)
        epoch = (await join(clients[who.name], gid))["epoch"]
    sides = {"Robin": Side(fac, robin.token, gid, "r"),
             **{w.name: Side(clients[w.name], w.token, gid, w.name[0].lower()) for w in (ana, ben, cleo, dev)}}
    stop = asyncio.Event()
    pumps = {n: asyncio.create_task(s.pump(stop, 0.01)) for n, s in sides.items()}
    await wait_for(lambda: all(len(s.acked()) >= 20 for s in sides.values()), 15, "traffic from everyone")
    g1.kill()                                           # SIGKILL: no goodbye; sends in flight get no answer
    for n in ("Ana", "Ben"):
        await pumps[n]
        await sides[n].client.closed()
    await asyncio.sleep(0.5)                            # the others keep talking meanwhile
    for n in ("Ana", "Ben"):
        seen_before = sides[n].last_seq()
        await sides[n].reconnect(g2.ws_url, epoch=epoch)
        # the missed messages come right after the welcome, from the next seq, before anything live
        await wait_for(lambda n=n: bool(messages(sides[n].client.frames, gid)), 5, "the missed messages")
        assert messages(sides[n].client.frames, gid)[0][0] == seen_before + 1
        await sides[n].retry_unanswered()
        pumps[n] = asyncio.create_task(sides[n].pump(stop, 0.01))
    await wait_for(lambda: all(len(sides[n].client.of_type("message")) >= 20 for n in ("Ana", "Ben")), 15,
                   "traffic after the resume")
    stop.set()
    await asyncio.gather(*pumps.values())
    await wait_for(lambda: all(not s.unanswered() for s in sides.values()), 15, "an answer to every send")
    acked = {k: v for s in sides.values() for k, v in s.acked().items()}
    await wait_for(lambda: all(set(acked) <= {c for _, c in s.seen()} for s in sides.values()), 15,
                   "every acked message at every member")
    sent: dict[str, Any] = {}
    for s in sides.values():
        sent.update(s.outcomes())
    report = check(sent, {n: s.seen() for n, s in sides.items()}, expect_all_seqs=True)
    assert report.ok(), report.summary()
    assert report.counts["lost"] == report.counts["duplicated"] == report.counts["reordered"] == 0
    rows = await redis.xrange(Keys(prefix).conv_log(gid))
    assert {f["cid"]: int(i.partition("-")[0]) for i, f in rows} == acked   # stored once each, at its seq
    for n in ("Ana", "Ben"):                            # the resumed connection: strictly ascending seqs
        resumed = [s for s, _ in messages(sides[n].client.frames, gid)]
        assert resumed == sorted(set(resumed))
    # an acknowledged send retried after the resume returns its first ack and stores nothing
    first = next(iter(sides["Ana"].acked().items()))
    await sides["Ana"].client.send(send_frame(gid, first[0]))
    again = await sides["Ana"].client.expect("ack", client_id=first[0])
    assert again["seq"] == first[1]
    assert await redis.xlen(Keys(prefix).conv_log(gid)) == len(acked)
    await close_all([s.client for s in sides.values()] + [clients["Cleo"], clients["Dev"]])


async def test_members_on_a_killed_gateway_go_offline_for_the_others(gateways):
    g1, g2 = gateways(2, AFTERTALK_PRESENCE_TTL_S="2")
    robin, eve = facilitator("Robin"), person("patient", "Eve")
    fac = await robin.connect(g2)
    gid = (await create_group(fac))["group_id"]
    e = await eve.connect(g1)
    await join(e, gid)
    await fac.expect("member_joined", group_id=gid, name="Eve")
    g1.kill()
    await e.closed()
    # the dead gateway's connections stop counting after the TTL: the members still connected are told
    await presence(fac, gid, {"Robin"}, timeout=6)
    await close_all([fac])


# ---------------------------------------------------------------------------------------------------
async def test_presence_joins_leaves_the_pinned_message_and_history_from_the_joining_seq(pair):
    robin = facilitator("Robin")
    ana, sam, sam2 = person("patient", "Ana"), person("survivor", "Sam"), person("patient", "Sam")
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac))["group_id"]
    await fac.send({"type": "pin", "group_id": gid, "text": "Our guidelines: be kind."})
    await fac.expect("done", ref="pin", group_id=gid)
    pinned = await fac.expect("pinned", group_id=gid)
    assert pinned["pinned"]["text"] == "Our guidelines: be kind." and pinned["pinned"]["by"] == "Robin"
    for i in range(3):
        await fac.send(send_frame(gid, f"early{i}", f"before anyone came {i}"))
        await fac.expect("ack", client_id=f"early{i}")

    a = await ana.connect(pair.g2)
    joined = await join(a, gid)
    assert joined["seq"] == 3 and joined["name"] == "Ana" and joined["group"]["members"] == 2
    assert joined["pinned"]["text"] == "Our guidelines: be kind." and joined["pinned"]["by"] == "Robin"
    assert isinstance(joined["pinned"]["ts"], int)
    robin_entry = next(m for m in joined["members"] if m["name"] == "Robin")
    assert robin_entry == {"name": "Robin", "role": "survivor", "facilitator": True, "online": True}
    mj = await fac.expect("member_joined", group_id=gid, name="Ana")
    assert (mj["role"], mj["facilitator"]) == ("patient", False)
    # history stops at the joining seq: the newcomer reads what is said after they joined
    await a.send({"type": "history", "conversation_id": gid})
    h = await a.expect("history", conversation_id=gid)
    assert h["messages"] == [] and h["state"] == "open"
    await fac.send(send_frame(gid, "welcome-ana", "Welcome, Ana"))
    assert (await a.expect("message", client_id="welcome-ana"))["seq"] == 4
    await a.send({"type": "history", "conversation_id": gid})
    assert [m["seq"] for m in (await a.expect("history", conversation_id=gid))["messages"]] == [4]
    await a.send({"type": "history", "conversation_id": gid, "before_seq": 4})
    assert (await a.expect("history", conversation_id=gid))["messages"] == []
    # a resume from before the joining seq starts at the joining seq
    epoch = joined["epoch"]
    a_again = await ana.connect(pair.g1, resume={gid: {"seq": 0, "epoch": epoch}})
    replay = await a_again.expect("message", conversation_id=gid)
    assert replay["seq"] == 4
    await asyncio.sleep(0.2)
    assert not of(a_again, "message", conversation_id=gid)
    mine = [g for g in (a_again.welcome or {})["groups"] if g["group_id"] == gid]
    assert mine and mine[0]["joined_seq"] == 3 and mine[0]["last_seq"] == 4 and mine[0]["state"] == "open"
    await a_again.close()

    # a second "Sam" joins as "Sam 2"
    s1 = await sam.connect(pair.g1)
    assert (await join(s1, gid))["name"] == "Sam"
    s2 = await sam2.connect(pair.g2)
    assert (await join(s2, gid))["name"] == "Sam 2"
    await fac.expect("member_joined", group_id=gid, name="Sam 2")
    await a.expect("member_joined", group_id=gid, name="Sam 2")

    # presence follows connections on either gateway
    everyone = {"Robin", "Ana", "Sam", "Sam 2"}
    await s1.close()
    await presence(fac, gid, everyone - {"Sam"})
    await presence(a, gid, everyone - {"Sam"})
    s1 = await sam.connect(pair.g2)
    await presence(fac, gid, everyone)
    await presence(s2, gid, everyone)
    joined_members = {m["name"]: m["online"] for m in (await join(s1, gid))["members"]}   # joined again
    assert joined_members == {"Robin": True, "Ana": True, "Sam": True, "Sam 2": True}

    # leaving: every connection of the leaver is told; the others get member_left; their words stay
    await a.send(send_frame(gid, "ana-1", "Thank you all"))
    await a.expect("ack", client_id="ana-1")
    a2 = await ana.connect(pair.g1)
    await a.send({"type": "leave_group", "group_id": gid})
    for conn in (a, a2):
        await conn.expect("left", group_id=gid)
    for conn in (fac, s1, s2):
        await conn.expect("member_left", group_id=gid, name="Ana")
    await fac.send({"type": "history", "conversation_id": gid})
    hist = (await fac.expect("history", conversation_id=gid))["messages"]
    assert [(m["from"], m["text"]) for m in hist if m["client_id"] == "ana-1"] == [
        ({"name": "Ana", "role": "patient"}, "Thank you all")]
    await a.send(send_frame(gid, "ana-2", "still here?"))
    assert (await error(a, "send", client_id="ana-2"))["code"] == "forbidden"
    # the lists: without a profile, the groups one is in
    await a2.send({"type": "list_groups"})
    assert all(g["group_id"] != gid for g in (await a2.expect("groups"))["groups"])
    await fac.send({"type": "list_groups"})
    mine = [g for g in (await fac.expect("groups"))["groups"] if g["group_id"] == gid]
    assert len(mine) == 1 and mine[0]["joined"] is True and mine[0]["members"] == 3
    await close_all([fac, a, a2, s1, s2])


async def test_create_checks_codes_and_schedule_and_defaults_to_eight_places(pair):
    f = await facilitator("Fay").connect(pair.g1)
    default = await create_group(f, capacity=None, title="Default size")
    assert (default["capacity"], default["members"]) == (8, 1)
    cases = {
        "unknown diagnosis": (create_frame(topic={"kind": "diagnosis", "code": "not-a-code"}), "invalid_profile"),
        "side effect code as a diagnosis": (create_frame(topic={"kind": "diagnosis", "code": "fatigue"}),
                                            "invalid_profile"),
        "unknown language": (create_frame(language="xx"), "invalid_profile"),
        "weekday 8": (create_frame(schedule={"weekday": 8, "time": "18:00", "tz": "UTC", "duration_min": 60}),
                      "bad_frame"),
        "unknown time zone": (create_frame(schedule={"weekday": 2, "time": "18:00", "tz": "Mars/Base",
                                                     "duration_min": 60}), "bad_frame"),
        "time 25:00": (create_frame(schedule={"weekday": 2, "time": "25:00", "tz": "UTC", "duration_min": 60}),
                       "bad_frame"),
        "10 minutes": (create_frame(schedule={"weekday": 2, "time": "18:00", "tz": "UTC", "duration_min": 10}),
                       "bad_frame"),
    }
    got = {}
    for what, (frame, _) in cases.items():
        await f.send(frame)
        await wait_for(lambda: bool(of(f, "error", ref="create_group") or of(f, "group")), 5, what)
        answers = of(f, "error", ref="create_group") or of(f, "group")
        got[what] = answers[0].get("code", "created")
        for a in answers:
            f.frames.remove(a)
    assert got == {what: code for what, (_, code) in cases.items()}
    await close_all([f])


async def test_a_block_between_two_members_keeps_neither_out_of_a_group(pair):
    one = await match_pair(pair.g1.ws_url, pair.g2.ws_url, patient_name="Pat", survivor_name="Sam")
    await one.patient.send({"type": "block", "conversation_id": one.cid})
    await one.patient.expect("blocked", conversation_id=one.cid)
    f = await facilitator("Fay").connect(pair.g1)
    gid = (await create_group(f))["group_id"]
    await join(one.patient, gid)
    await join(one.survivor, gid)
    joined_note = await one.patient.expect("member_joined", group_id=gid, name="Sam")
    assert joined_note["role"] == "survivor"
    await one.survivor.send(send_frame(gid, "hi-all", "hello everyone"))
    await one.survivor.expect("ack", client_id="hi-all")
    for c in (f, one.patient):                          # the web client hides it for the blocker; the server sends it
        assert (await c.expect("message", client_id="hi-all"))["from"] == {"name": "Sam", "role": "survivor"}
    await close_all([f, one.patient, one.survivor])


# ---------------------------------------------------------------------------------------------------
def iso_weekday_in(days: int) -> int:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoweekday()


async def test_list_orders_the_fitting_groups_and_find_group_joins_the_best_or_waits_for_one(pair):
    # the topic and languages of this test are its own: Finnish and Swedish groups exist nowhere else
    fi_fac, sv_fac = facilitator("Fia"), facilitator("Sven")
    f = await fi_fac.connect(pair.g1)
    mel = {"kind": "diagnosis", "code": "melanoma"}
    side = await create_group(f, topic={"kind": "side_effect", "code": "scanxiety"}, language="fi",
                              title="Scanxiety", capacity=3)
    plain = await create_group(f, topic=mel, language="fi", title="No schedule", capacity=3)
    later = await create_group(f, topic=mel, language="fi", title="In three days", capacity=3,
                               schedule={"weekday": iso_weekday_in(3), "time": "12:00", "tz": "UTC",
                                         "duration_min": 60})
    sooner = await create_group(f, topic=mel, language="fi", title="Tomorrow", capacity=3,
                                schedule={"weekday": iso_weekday_in(1), "time": "12:00", "tz": "UTC",
                                          "duration_min": 60})
    full = await create_group(f, topic=mel, language="fi", title="Full", capacity=3)
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date()
    start = dt.datetime.fromisoformat(sooner["next_session"])
    assert (start.date(), start.hour, start.minute, start.utcoffset()) == (tomorrow, 12, 0, dt.timedelta(0))
    assert plain["next_session"] is None and plain["schedule"] is None
    s = await sv_fac.connect(pair.g2)
    await create_group(s, topic=mel, language="de", title="Another language", capacity=3)
    await create_group(s, topic={"kind": "diagnosis", "code": "lung"}, language="fi", title="Another topic")
    fillers = [await person("patient", f"Filler {i}").connect(pair.g2) for i in range(2)]
    for c in fillers:
        await join(c, full["group_id"])

    profile = {"diagnoses": ["melanoma"], "side_effects": ["scanxiety"], "languages": ["fi"]}
    pia = await person("patient", "Pia").connect(pair.g2)
    await pia.send({"type": "list_groups", "profile": profile})
    listed = (await pia.expect("groups"))["groups"]
    assert [g["title"] for g in listed] == ["Tomorrow", "In three days", "No schedule", "Full", "Scanxiety"]
    assert [g["group_id"] for g in listed] == [x["group_id"] for x in (sooner, later, plain, full, side)]
    top = listed[0]
    assert top["group_id"] == sooner["group_id"] and top["topic"] == mel and top["language"] == "fi"
    assert (top["members"], top["capacity"], top["facilitators"], top["joined"]) == (1, 3, ["Fia"], False)
    assert top["next_session"] == sooner["next_session"]
    assert listed[3]["members"] == 3
    await pia.send({"type": "find_group", "profile": profile})
    got = await pia.expect("joined")
    assert got["group_id"] == sooner["group_id"]
    await close_all([f, s, pia, *fillers])


async def test_find_group_with_nothing_fitting_waits_in_order_until_a_facilitator_opens_a_group(pair):
    # nothing fits: an empty list, then a place among the people waiting for a group.  The waiters' ids
    # sort against their order of arrival, so an order kept by id instead of arrival shows.
    sv_fac = facilitator("Sven")
    s = await sv_fac.connect(pair.g2)
    want = {"diagnoses": ["thyroid"], "side_effects": [], "languages": ["sv"]}
    waiters = [await User(f"w{9 - i}-{uuid.uuid4().hex[:8]}", "patient" if i % 2 else "survivor",
                          f"Waiter {i}").connect(pair.gws[i % 2]) for i in range(4)]
    for i, w in enumerate(waiters):
        await w.send({"type": "find_group", "profile": want})
        empty = await w.expect("groups")
        assert (empty["groups"], empty.get("ref")) == ([], "find_group")
        queued = await w.expect("queued")
        assert (queued["for"], queued["position"]) == ("group", 3 if i == 3 else i + 1)
        if i == 2:
            await w.send({"type": "cancel_find_group"})
            assert (await w.expect("cancelled"))["for"] == "group"
    # a fitting group opens: the people waiting join it in order while it has room
    opened = await create_group(s, topic={"kind": "diagnosis", "code": "thyroid"}, language="sv",
                                title="Thyroid", capacity=3)
    first = await waiters[0].expect("joined", group_id=opened["group_id"])
    second = await waiters[1].expect("joined", group_id=opened["group_id"])
    assert first["group"]["members"] <= 3 and second["group"]["members"] == 3
    await asyncio.sleep(0.5)
    assert not of(waiters[2], "joined") and not of(waiters[3], "joined")
    await close_all([s, *waiters])


async def test_a_user_is_in_at_most_five_groups(pair):
    fay, gus = facilitator("Fay"), facilitator("Gus")
    f = await fay.connect(pair.g1)
    groups = [(await create_group(f, title=f"Circle {i}"))["group_id"] for i in range(5)]
    g = await gus.connect(pair.g2)
    sixth = (await create_group(g, title="Gus's circle"))["group_id"]
    pat = await person("patient", "Pat").connect(pair.g2)
    for gid in groups:
        await join(pat, gid)
    await pat.send({"type": "join_group", "group_id": sixth})
    err = await error(pat, "join_group")
    assert (err["code"], err.get("limit")) == ("capacity", 5), err
    await leave(pat, groups[0])
    await join(pat, sixth)
    await close_all([f, g, pat])


async def test_a_facilitator_in_five_groups_cannot_create_a_sixth(pair):
    f = await facilitator("Fay").connect(pair.g1)
    for i in range(5):
        await create_group(f, title=f"Circle {i}")
    await f.send(create_frame(title="One too many"))
    await wait_for(lambda: bool(of(f, "error", ref="create_group") or of(f, "group")), 5, "an answer")
    await close_all([f])
    assert not of(f, "group"), "a sixth group was created"
    err = of(f, "error", ref="create_group")[0]
    assert (err["code"], err.get("limit")) == ("capacity", 5), err


# ---------------------------------------------------------------------------------------------------
async def test_mute_remove_pin_and_close_are_enforced_and_audited(pair, redis):
    keys = Keys(pair.prefix)
    robin, mo = facilitator("Robin"), person("moderator", "Mo")
    ana, ben, cy = person("patient", "Ana"), person("survivor", "Ben"), person("patient", "Cy")
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac))["group_id"]
    a = await ana.connect(pair.g2)
    b = await ben.connect(pair.g1)
    for conn in (a, b):
        await join(conn, gid)
    mod = await mo.connect(pair.g2)

    # ---- mute: the muted member's sends are refused, nothing stored or delivered; 0 lifts it
    before_ms = int(time.time() * 1000)
    await fac.send({"type": "mute_member", "group_id": gid, "name": "Ana", "minutes": 5})
    await fac.expect("done", ref="mute_member", group_id=gid)
    for conn in (fac, a, b):
        muted = await conn.expect("member_muted", group_id=gid, name="Ana")
        assert before_ms + 4 * 60_000 < muted["until"] <= before_ms + 5 * 60_000 + 5_000, muted
    length = await redis.xlen(keys.conv_log(gid))
    await a.send(send_frame(gid, "while-muted", "can anyone hear me"))
    err = await error(a, "send", client_id="while-muted")
    assert err["code"] == "muted" and 0 < err["retry_after_s"] <= 300, err
    assert await redis.xlen(keys.conv_log(gid)) == length
    await fac.send({"type": "mute_member", "group_id": gid, "name": "Ana", "minutes": 0})
    await fac.expect("done", ref="mute_member", group_id=gid)
    await a.send(send_frame(gid, "after-mute", "thank you"))
    assert (await a.expect("ack", client_id="after-mute"))["seq"] == length + 1
    await b.expect("message", client_id="after-mute")
    assert not of(b, "message", client_id="while-muted") and not of(fac, "message", client_id="while-muted")
    # nobody mutes or removes themselves or a facilitator of the group
    for actor, target in ((fac, "Robin"), (mod, "Robin")):
        await actor.send({"type": "mute_member", "group_id": gid, "name": target, "minutes": 5})
        assert (await error(actor, "mute_member"))["code"] == "forbidden"
        await actor.send({"type": "remove_member", "group_id": gid, "name": target})
        assert (await error(actor, "remove_member"))["code"] == "forbidden"
    assert not of(a, "member_muted", name="Robin") and not of(a, "member_left", name="Robin")

    # ---- remove: out at once, no rejoin until a moderator readmits them
    await fac.send({"type": "remove_member", "group_id": gid, "name": "Ben", "reason": "insults"})
    await fac.expect("done", ref="remove_member", group_id=gid)
    await b.expect("removed", group_id=gid)
    for conn in (fac, a):
        await conn.expect("member_left", group_id=gid, name="Ben")
    await b.send(send_frame(gid, "removed-send", "let me back"))
    assert (await error(b, "send", client_id="removed-send"))["code"] == "forbidden"
    await b.send({"type": "join_group", "group_id": gid})
    assert (await error(b, "join_group"))["code"] == "forbidden"
    b_other = await ben.connect(pair.g2)
    await b_other.send({"type": "join_group", "group_id": gid})
    assert (await error(b_other, "join_group"))["code"] == "forbidden"        # on any gateway
    await fac.send({"type": "readmit_member", "group_id": gid, "name": "Ben"})
    assert (await error(fac, "readmit_member"))["code"] == "forbidden"        # moderators readmit
    await mod.send({"type": "readmit_member", "group_id": gid, "name": "Ben"})
    await mod.expect("done", ref="readmit_member", group_id=gid)
    assert (await join(b, gid))["name"] == "Ben"

    # ---- pin: every member is told, every joiner finds it; "" unpins
    await fac.send({"type": "pin", "group_id": gid, "text": "Be kind. What is said here stays here."})
    await fac.expect("done", ref="pin", group_id=gid)
    for conn in (fac, a, b):
        got = await conn.expect("pinned", group_id=gid)
        assert got["pinned"]["text"] == "Be kind. What is said here stays here." and got["pinned"]["by"] == "Robin"
    c = await cy.connect(pair.g1)
    assert (await join(c, gid))["pinned"]["text"] == "Be kind. What is said here stays here."
    await fac.send({"type": "pin", "group_id": gid, "text": ""})
    await fac.expect("done", ref="pin", group_id=gid)
    assert (await c.expect("pinned", group_id=gid))["pinned"] is None

    # ---- close: no new messages, no joins; the transcript stays readable by members
    await fac.send({"type": "close_group", "group_id": gid})
    await fac.expect("done", ref="close_group", group_id=gid)
    for conn in (fac, a, b, c):
        await conn.expect("group_closed", group_id=gid)
    length = await redis.xlen(keys.conv_log(gid))
    await a.send(send_frame(gid, "after-close", "hello?"))
    assert (await error(a, "send", client_id="after-close"))["code"] == "conversation_ended"
    assert await redis.xlen(keys.conv_log(gid)) == length
    late = await person("patient", "Late").connect(pair.g2)
    await late.send({"type": "join_group", "group_id": gid})
    assert (await error(late, "join_group"))["code"] == "group_closed"
    await a.send({"type": "history", "conversation_id": gid})
    h = await a.expect("history", conversation_id=gid)
    assert h["state"] != "open" and [m["client_id"] for m in h["messages"]] == ["after-mute"]
    await a.send({"type": "list_groups"})
    closed = [g for g in (await a.expect("groups"))["groups"] if g["group_id"] == gid]
    assert closed and closed[0]["state"] == "closed"

    # ---- audited: who did what, in which group, in order
    # (the action names are chat.audit's; docs/protocol.md only says that every use of a tool is audited)
    entries = await audit_entries(pair.g1.url, mo, conversation_id=gid)
    assert [(e["action"], e["who"]) for e in entries] == [
        (audit.GROUP_CREATE, robin.sub), (audit.GROUP_MUTE, robin.sub), (audit.GROUP_MUTE, robin.sub),
        (audit.GROUP_REMOVE, robin.sub), (audit.GROUP_READMIT, mo.sub), (audit.GROUP_PIN, robin.sub),
        (audit.GROUP_PIN, robin.sub), (audit.GROUP_CLOSE, robin.sub)], entries
    assert entries[1]["who_name"] == "Robin" and entries[4]["who_name"] == "Mo"
    assert [e.get("user_id") for e in entries[1:5]] == [ana.sub, ana.sub, ben.sub, ben.sub]
    assert "insults" in entries[3].get("detail", "")
    assert "Be kind" in entries[5].get("detail", "")
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)
    await close_all([fac, a, b, b_other, c, mod, late])


async def test_a_crisis_message_in_a_group_is_flagged_as_a_group_and_the_moderator_sees_its_members(pair):
    robin, mo = facilitator("Robin"), person("moderator", "Mo")
    ana, ben = person("patient", "Ana"), person("survivor", "Ben")
    mod = await mo.connect(pair.g2)
    await mod.send({"type": "watch_flags"})
    await mod.expect("flags")
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac))["group_id"]
    a = await ana.connect(pair.g1)
    b = await ben.connect(pair.g2)
    for conn in (a, b):
        await join(conn, gid)
    # a moderator does not read a group nobody flagged
    await mod.send({"type": "watch", "conversation_id": gid})
    assert (await error(mod, "watch"))["code"] == "forbidden"

    await a.send(send_frame(gid, "crisis", CRISIS_TEXT))
    ack = await a.expect("ack", client_id="crisis")
    resources = await a.expect("resources", conversation_id=gid)
    assert resources["lines"] == CRISIS_LINES
    flag = await mod.expect("flag", category="crisis", conversation_id=gid)
    assert flag.get("group") is True and flag["seq"] == ack["seq"] and flag["priority"] is True
    for conn in (fac, b):
        assert (await conn.expect("message", client_id="crisis"))["text"] == CRISIS_TEXT
    await asyncio.sleep(0.2)
    assert not of(b, "resources") and not of(fac, "resources"), "resources go to the author only"
    # a moderator arriving later finds it in the feed, marked as a group
    mod2 = await person("moderator", "Lee").connect(pair.g1)
    await mod2.send({"type": "watch_flags"})
    listed = [f for f in (await mod2.expect("flags"))["flags"] if f["conversation_id"] == gid]
    assert [(f["flag_id"], f.get("group")) for f in listed] == [(flag["flag_id"], True)]
    # watching it shows the members: names, roles and user ids
    await mod.send({"type": "watch", "conversation_id": gid})
    h = await mod.expect("history", conversation_id=gid)
    assert [m["text"] for m in h["messages"]] == [CRISIS_TEXT]
    members = h["members"]
    assert {m["name"]: m["role"] for m in members} == {"Robin": "survivor", "Ana": "patient", "Ben": "survivor"}
    ids = {m["name"]: next((v for k, v in m.items() if k in ("id", "user_id")), None) for m in members}
    assert ids == {"Robin": robin.sub, "Ana": ana.sub, "Ben": ben.sub}
    # contact details are masked for the members, kept for the moderator
    await b.send(send_frame(gid, "phone", "text me on 07700 900123"))
    shown = (await a.expect("message", client_id="phone"))["text"]
    assert "[contact info removed]" in shown and "900123" not in shown
    assert (await mod.expect("message", client_id="phone"))["text"] == "text me on 07700 900123"
    # a moderator's notice reaches every member, under the moderator's name and role
    await mod.send({"type": "notice", "conversation_id": gid, "client_id": "notice-1",
                    "text": "A moderator is here with you."})
    await mod.expect("ack", ref="notice", client_id="notice-1")
    for conn in (fac, a, b):
        notice = await conn.expect("message", client_id="notice-1")
        assert notice["from"] == {"name": "Mo", "role": "moderator"}
    # ending it as a moderator closes the group
    await mod.send({"type": "moderator_end", "conversation_id": gid, "reason": "handing over"})
    await mod.expect("done", ref="moderator_end")
    for conn in (fac, a, b):
        await conn.expect("group_closed", group_id=gid)
    await b.send(send_frame(gid, "after-end", "hello?"))
    assert (await error(b, "send", client_id="after-end"))["code"] == "conversation_ended"
    # suspending a member closes their sockets (on the other gateway) as anywhere else
    await mod.send({"type": "suspend", "user_id": ben.sub, "reason": "test"})
    await mod.expect("done", ref="suspend")
    assert (await b.closed(5))[0] == 4403
    await close_all([mod, mod2, fac, a, b])


async def test_retention_purges_a_closed_group_with_its_membership(pair, redis):
    """A closed group waits out the retention period like an ended conversation, then its log and every
    record of its membership go together (chat/retention.py)."""
    from chat.retention import purge_expired

    keys = Keys(pair.prefix)
    fac = await facilitator("Robin").connect(pair.g1)
    gid = (await create_group(fac, capacity=3))["group_id"]
    members = [await person("patient", name).connect(pair.g2) for name in ("Ana", "Ben", "Cy")]
    for conn in members[:2]:
        await join(conn, gid)
    await members[2].send({"type": "join_group", "group_id": gid})
    await error(members[2], "join_group")                       # on the waitlist
    await fac.send({"type": "mute_member", "group_id": gid, "name": "Ana", "minutes": 5})
    await fac.expect("done", ref="mute_member")
    await members[0].send(send_frame(gid, "m1", "hello"))
    await members[0].expect("error")                             # muted: nothing stored
    await members[1].send(send_frame(gid, "m2", "hello"))
    await members[1].expect("ack", client_id="m2")
    group_keys = [keys.conv_meta(gid), keys.conv_log(gid), keys.conv_client_ids(gid), keys.group_members(gid),
                  keys.group_names(gid), keys.group_waitlist(gid), keys.group_waiting(gid), keys.group_muted(gid)]
    await fac.send({"type": "close_group", "group_id": gid})
    await fac.expect("done", ref="close_group")
    closed_at = await redis.zscore(keys.ended, gid)
    assert closed_at is not None, "a closed group is on the retention work list"
    assert await purge_expired(redis, keys, now_s=closed_at + 10, retention_s=3600) == 0    # not yet
    assert await redis.exists(*group_keys) == len(group_keys)
    assert await purge_expired(redis, keys, now_s=closed_at + 3601, retention_s=3600) >= 1   # (other tests' too)
    assert await redis.exists(*group_keys) == 0
    assert await redis.zscore(keys.ended, gid) is None
    await close_all([fac, *members])


# ---------------------------------------------------------------------------------------------------
async def test_erase_user_removes_a_members_group_messages_and_takes_them_out_of_the_group(
        pair, redis, redis_server):
    keys = Keys(pair.prefix)
    robin = facilitator("Robin")
    priya, ben = person("patient", f"Priya {uuid.uuid4().hex[:6]}"), person("survivor", "Ben")
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac))["group_id"]
    p = await priya.connect(pair.g1)
    b = await ben.connect(pair.g2)
    await join(p, gid)
    await join(b, gid)
    secret = f"my oncologist at St Elsewhere said {uuid.uuid4().hex}"
    for i, (conn, text) in enumerate(((p, secret), (b, "ben line"), (p, "another from priya"))):
        await conn.send(send_frame(gid, f"e{i}", text))
        await conn.expect("ack", client_id=f"e{i}")
    await erase_with_the_cli(pair.prefix, priya.sub, redis_server.url)
    # their session closes; they are out of the group
    assert await p.closed(5) == (4401, "this account was erased")
    assert await redis.hexists(keys.group_members(gid), priya.sub) is False
    await fac.send({"type": "list_groups"})
    mine = [g for g in (await fac.expect("groups"))["groups"] if g["group_id"] == gid]
    assert mine[0]["members"] == 2
    # the transcript keeps its seqs; their messages are a deleted user's with no text
    await b.send({"type": "history", "conversation_id": gid})
    hist = (await b.expect("history", conversation_id=gid))["messages"]
    assert [m["seq"] for m in hist] == [1, 2, 3]
    assert [(m["from"]["name"], m["text"]) for m in hist] == [(DELETED, ""), ("Ben", "ben line"), (DELETED, "")]
    rows = await redis.xrange(keys.conv_log(gid))
    assert not any(secret in v or priya.name in v for _, f in rows for v in f.values())
    found = []
    async for key in redis.scan_iter(match=f"{pair.prefix}:*", count=500):
        kind = await redis.type(key)
        if kind == "hash":
            found += [f"{key} {k}={v}" for k, v in (await redis.hgetall(key)).items()
                      if secret in v or priya.name in v or priya.name in k]
        elif kind == "string":
            value = await redis.get(key) or ""
            found += [key] if secret in value or priya.name in value else []
        elif kind == "stream":
            found += [key for _, f in await redis.xrange(key) if any(secret in v or priya.name in v
                                                                     for v in f.values())]
    assert not found, f"the erased member's words or name remain: {found[:5]}"
    await close_all([fac, b])


async def erase_with_the_cli(prefix: str, uid: str, redis_url: str) -> None:
    env = {**os.environ, "AFTERTALK_KEY_PREFIX": prefix}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway.cli", "erase-user", uid, "--redis-url", redis_url],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_an_erased_member_leaves_like_anyone_and_the_waitlist_moves_up(pair, redis, redis_server):
    keys = Keys(pair.prefix)
    robin = facilitator("Robin")
    priya, ben, wendy = person("patient", "Priya"), person("survivor", "Ben"), person("patient", "Wendy")
    fac = await robin.connect(pair.g1)
    gid = (await create_group(fac, capacity=3))["group_id"]
    b = await ben.connect(pair.g2)
    p = await priya.connect(pair.g1)
    for conn in (b, p):
        await join(conn, gid)
    w = await wendy.connect(pair.g2)
    await w.send({"type": "join_group", "group_id": gid})
    assert (await error(w, "join_group"))["waitlist_position"] == 1
    await erase_with_the_cli(pair.prefix, priya.sub, redis_server.url)
    await p.closed(5)
    assert await redis.hexists(keys.group_members(gid), wendy.sub)       # the store did move her up
    await asyncio.sleep(2)
    problems = []
    for who, conn in (("Robin", fac), ("Ben", b)):
        left = of(conn, "member_left", group_id=gid)
        if [f["name"] for f in left] not in (["Priya"], [DELETED]):
            problems.append(f"{who}: member_left frames {left}")
    if not of(w, "joined", group_id=gid):
        problems.append("Wendy: no joined")
    await close_all([fac, b, w])
    assert not problems, problems
