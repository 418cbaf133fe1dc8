"""The authorisation matrix of the group frames (docs/protocol.md, "Groups"): frame × role × member or not.

Columns: a patient and an ordinary survivor who are members of the group under test ("A"), a patient
and a survivor who are not, the facilitator who created A (a member), a facilitator of ANOTHER group
(not a member of A), and a moderator (not a member).  Each cell says what a well-formed frame aimed
at A gets: the answer frame, ``silent`` (accepted, nothing comes back), or an error code.  Frames
that change A for good (join, leave, remove, readmit, close) are aimed, in their allowed cells, at a
group or a member of their own, prepared beforehand; their denied cells aim at A and must leave it
as it was.  Rows ``<frame>@unknown`` aim at a group id that does not exist, and ``@nobody`` at a
member name nobody has: where the document says "the same answer whether or not the group exists",
the error frames of the two rows must be identical but for the ids.

Two gateway processes for the module (its own key prefix); the actors are spread over both.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.protocol import FRAMES
from support.chat_pair import send_frame
from support.gateway import Client, GatewayLauncher
from support.groups import (
    GROUP_ENV,
    Pair,
    User,
    close_all,
    create_frame,
    create_group,
    error,
    facilitator,
    join,
    of,
    person,
)

GROUP_FRAMES = {"create_group", "list_groups", "find_group", "cancel_find_group", "join_group", "leave_group",
                "mute_member", "remove_member", "readmit_member", "pin", "close_group"}
ROLES = ("patient_member", "patient_outsider", "survivor_member", "survivor_outsider", "facilitator",
         "other_facilitator", "moderator")
# a profile no group of this module fits: find_group waits
LONELY = {"diagnoses": ["testicular"], "side_effects": [], "languages": ["da"]}
UNKNOWN = "g" + uuid.uuid4().hex[:16]
F = "forbidden"
#                          patient   patient   survivor  survivor  facili-   other      moderator
#                          member    outsider  member    outsider  tator     facilitator
MATRIX: dict[str, tuple[str, ...]] = {
    "create_group":        (F,         F,         F,         F,         "group",   "group",   "group"),
    "list_groups":         ("groups",  "groups",  "groups",  "groups",  "groups",  "groups",  "groups"),
    "find_group":          ("queued",  "queued",  "queued",  "queued",  "queued",  "queued",  F),
    "cancel_find_group":   ("cancelled", "cancelled", "cancelled", "cancelled", "cancelled", "cancelled", F),
    "join_group":          ("joined",  "joined",  "joined",  "joined",  "joined",  "joined",  F),
    "send":                ("ack",     F,         "ack",     F,         "ack",     F,         F),
    "history":             ("history", F,         "history", F,         "history", F,         F),
    "typing":              ("silent",  F,         "silent",  F,         "silent",  F,         F),
    "mute_member":         (F,         F,         F,         F,         "done",    F,         "done"),
    "pin":                 (F,         F,         F,         F,         "done",    F,         "done"),
    "remove_member":       (F,         F,         F,         F,         "done",    F,         "done"),
    "readmit_member":      (F,         F,         F,         F,         F,         F,         "done"),
    "leave_group":         ("left",    F,         "left",    F,         "left",    F,         F),
    "close_group":         (F,         F,         F,         F,         "done",    F,         "done"),
    # an unknown group id
    "join_group@unknown":  ("not_found", "not_found", "not_found", "not_found", "not_found", "not_found", F),
    "send@unknown":        (F,         F,         F,         F,         F,         F,         F),
    "history@unknown":     (F,         F,         F,         F,         F,         F,         F),
    "typing@unknown":      (F,         F,         F,         F,         F,         F,         F),
    "leave_group@unknown": (F,         F,         F,         F,         F,         F,         F),
    "mute_member@unknown": (F,         F,         F,         F,         F,         F,         "not_found"),
    "pin@unknown":         (F,         F,         F,         F,         F,         F,         "not_found"),
    "remove_member@unknown": (F,       F,         F,         F,         F,         F,         "not_found"),
    "readmit_member@unknown": (F,      F,         F,         F,         F,         F,         "not_found"),
    "close_group@unknown": (F,         F,         F,         F,         F,         F,         "not_found"),
    # a member name nobody in A has
    "mute_member@nobody":  (F,         F,         F,         F,         "not_found", F,       "not_found"),
    "remove_member@nobody": (F,        F,         F,         F,         "not_found", F,       "not_found"),
    "readmit_member@nobody": (F,       F,         F,         F,         F,         F,         "not_found"),
}
ERROR_CODES = {"bad_frame", "forbidden", "not_found", "capacity", "group_full", "group_closed"}
# rows whose forbidden cells must answer exactly as their @unknown row does (the group's existence is not told)
SAME_ANSWER = ("send", "history", "typing", "leave_group", "mute_member", "pin", "remove_member", "readmit_member",
               "close_group")


def test_the_matrix_covers_every_group_frame():
    assert set(FRAMES) >= GROUP_FRAMES, GROUP_FRAMES - set(FRAMES)
    assert {row.partition("@")[0] for row in MATRIX} >= GROUP_FRAMES
    assert all(len(row) == len(ROLES) for row in MATRIX.values())


@pytest.fixture(scope="module")
def pair(redis_server, tmp_path_factory):
    prefix = "gaz" + uuid.uuid4().hex[:8]
    launcher = GatewayLauncher(redis_server.url, prefix, str(tmp_path_factory.mktemp("groups-authz")), **GROUP_ENV)
    g1, g2 = launcher(2)
    yield Pair(g1, g2, prefix, launcher)
    launcher.stop_all()


@dataclass
class World:
    pair: Pair
    users: dict[str, User] = field(default_factory=dict)
    actors: dict[str, Client] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)           # "A", "J", "L", "C1", "C2" -> group id
    victims: dict[str, Client] = field(default_factory=dict)       # name -> a member of A the tools aim at
    clients: list[Client] = field(default_factory=list)
    host: Client | None = None

    async def connect(self, who: User, gw: int) -> Client:
        client = await who.connect(self.pair.gws[gw])
        self.clients.append(client)
        return client

    async def build(self) -> World:
        self.users = {"patient_member": person("patient", "Pam"), "patient_outsider": person("patient", "Olga"),
                      "survivor_member": person("survivor", "Sid"), "survivor_outsider": person("survivor", "Omar"),
                      "facilitator": facilitator("Fran"), "other_facilitator": facilitator("Finn"),
                      "moderator": person("moderator", "Mona")}
        for i, role in enumerate(ROLES):
            self.actors[role] = await self.connect(self.users[role], i % 2)
        host = self.host = await self.connect(facilitator("Cora"), 1)        # hosts J, L and C2
        fran, finn = self.actors["facilitator"], self.actors["other_facilitator"]
        self.groups["A"] = (await create_group(fran, title="A", capacity=30))["group_id"]
        self.groups["C1"] = (await create_group(fran, title="C1 (Fran closes it)"))["group_id"]
        self.groups["B"] = (await create_group(finn, title="B (Finn's)"))["group_id"]
        self.groups["J"] = (await create_group(host, title="J (outsiders join it)", capacity=30))["group_id"]
        self.groups["L"] = (await create_group(host, title="L (members leave it)", capacity=30))["group_id"]
        self.groups["C2"] = (await create_group(host, title="C2 (the moderator closes it)"))["group_id"]
        for role in ("patient_member", "survivor_member"):
            await join(self.actors[role], self.groups["A"])
        for role in ("patient_member", "survivor_member", "facilitator"):
            await join(self.actors[role], self.groups["L"])
        for i, name in enumerate(("Vic Mute", "Vic Keep", "Vic Out1", "Vic Out2")):
            victim = await self.connect(person("patient" if i % 2 else "survivor", name), i % 2)
            await join(victim, self.groups["A"])
            self.victims[name] = victim
        return self

    def frame(self, row: str, role: str) -> dict[str, Any]:
        ftype, _, variant = row.partition("@")
        a = UNKNOWN if variant == "unknown" else self.groups["A"]
        target = {"mute_member": "Vic Mute", "pin": "", "remove_member": "Vic Keep", "readmit_member": "Vic Out2"}
        if ftype == "remove_member" and role == "facilitator":
            target["remove_member"] = "Vic Out1"
        if ftype == "remove_member" and role == "moderator":
            target["remove_member"] = "Vic Out2"
        if ftype == "readmit_member" and role == "moderator":
            target["readmit_member"] = "Vic Out1"
        name = "Nobody Here" if variant == "nobody" else target.get(ftype, "")
        outsider = role in ("patient_outsider", "survivor_outsider", "other_facilitator")
        if ftype == "join_group" and not variant and outsider:
            a = self.groups["J"]
        if ftype == "leave_group" and not variant and role in ("patient_member", "survivor_member", "facilitator"):
            a = self.groups["L"]
        if ftype == "close_group" and not variant and role == "facilitator":
            a = self.groups["C1"]
        if ftype == "close_group" and not variant and role == "moderator":
            a = self.groups["C2"]
        return {
            "create_group": create_frame(title=f"Made by {role}"),
            "list_groups": {"type": "list_groups", "profile": {"diagnoses": ["breast"], "side_effects": [],
                                                               "languages": ["en"]}},
            "find_group": {"type": "find_group", "profile": LONELY},
            "cancel_find_group": {"type": "cancel_find_group"},
            "join_group": {"type": "join_group", "group_id": a},
            "leave_group": {"type": "leave_group", "group_id": a},
            "send": send_frame(a, uuid.uuid4().hex[:12], "hello group"),
            "history": {"type": "history", "conversation_id": a},
            "typing": {"type": "typing", "conversation_id": a},
            "mute_member": {"type": "mute_member", "group_id": a, "name": name, "minutes": 10},
            "remove_member": {"type": "remove_member", "group_id": a, "name": name, "reason": "matrix"},
            "readmit_member": {"type": "readmit_member", "group_id": a, "name": name},
            "pin": {"type": "pin", "group_id": a, "text": f"Pinned by {role}"},
            "close_group": {"type": "close_group", "group_id": a},
        }[ftype]


def expected_match(frame: dict[str, Any], expected: str) -> dict[str, Any]:
    ftype = frame["type"]
    if expected == "done":
        return {"ref": ftype, "group_id": frame["group_id"]}
    if expected in ("queued", "cancelled"):
        return {"for": "group"}
    if expected in ("joined", "left"):
        return {"group_id": frame["group_id"]}
    if expected in ("ack", "history"):
        return {"conversation_id": frame["conversation_id"]}
    return {}


async def outcome(client: Client, frame: dict[str, Any], expected: str) -> tuple[str, dict[str, Any] | None]:
    """Send the frame and a ping; the error code answered (and its frame), or the expected frame's type."""
    ftype = frame["type"]
    await client.send(frame)
    await client.send({"type": "ping"})
    await client.expect("pong")
    errors = [f for f in client.frames if f.get("type") == "error" and f.get("ref") == ftype]
    for e in errors:
        client.frames.remove(e)
    if errors:
        return errors[0]["code"], errors[0]
    if expected == "silent" or expected in ERROR_CODES:
        return "silent", None
    try:
        await client.expect(expected, timeout=5, **expected_match(frame, expected))
    except AssertionError:
        return "nothing", None
    return expected, None


def without_ids(err: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in err.items() if k not in ("group_id", "conversation_id", "client_id")}


async def test_every_group_frame_against_every_role_member_or_not(pair):
    world = await World(pair).build()
    a = world.groups["A"]
    results: dict[tuple[str, str], str] = {}
    errors: dict[tuple[str, str], dict[str, Any]] = {}
    for row, expectations in MATRIX.items():
        for role, expected in zip(ROLES, expectations, strict=True):
            got, err = await outcome(world.actors[role], world.frame(row, role), expected)
            results[(row, role)] = got
            if err is not None:
                errors[(row, role)] = err
    wrong = {cell: (got, MATRIX[cell[0]][ROLES.index(cell[1])]) for cell, got in results.items()
             if got != MATRIX[cell[0]][ROLES.index(cell[1])]}
    assert not wrong, "cells (frame, role): (got, expected)\n" + "\n".join(f"{k}: {v}" for k, v in wrong.items())

    # what the allowed cells did, seen from A's members; the denied cells changed nothing
    pam, sid, fran = world.actors["patient_member"], world.actors["survivor_member"], world.actors["facilitator"]
    mute_victim = world.victims["Vic Mute"]
    assert len(of(mute_victim, "member_muted", group_id=a, name="Vic Mute")) == 2        # Fran's and Mona's
    assert len(of(pam, "pinned", group_id=a)) == 2
    assert not of(world.victims["Vic Keep"], "removed")
    assert of(world.victims["Vic Out1"], "removed", group_id=a) and of(world.victims["Vic Out2"], "removed",
                                                                         group_id=a)
    assert {f["from"]["name"] for f in of(sid, "typing", conversation_id=a)} >= {"Pam", "Fran"}
    for role in ("patient_outsider", "survivor_outsider", "other_facilitator", "moderator"):
        assert not of(world.actors[role], "message", conversation_id=a), role
        assert not of(world.actors[role], "typing", conversation_id=a), role
    assert not of(pam, "group_closed", group_id=a)
    assert of(fran, "group_closed", group_id=world.groups["C1"])
    assert world.host is not None and of(world.host, "group_closed", group_id=world.groups["C2"])
    # A is still open, and its members are still in it
    await pam.send(send_frame(a, "still-open", "are we still here?"))
    await pam.expect("ack", client_id="still-open")
    await sid.expect("message", client_id="still-open")
    # the readmitted member may join again; the one still removed may not
    out1, out2 = world.victims["Vic Out1"], world.victims["Vic Out2"]
    assert (await join(out1, a))["name"] == "Vic Out1"
    await out2.send({"type": "join_group", "group_id": a})
    assert (await error(out2, "join_group"))["code"] == F
    await close_all(world.clients)


async def test_one_on_one_frames_in_a_group_are_bad_frames(pair):
    fran = await facilitator("Fran").connect(pair.g1)
    gid = (await create_group(fran))["group_id"]
    pam = await person("patient", "Pam").connect(pair.g2)
    await join(pam, gid)
    got = {}
    for frame in ({"type": "end", "conversation_id": gid},
                  {"type": "block", "conversation_id": gid},
                  {"type": "feedback", "conversation_id": gid, "rating": 5},
                  {"type": "keep_in_touch", "conversation_id": gid}):
        for who, client in (("member", pam), ("facilitator", fran)):
            got[(frame["type"], who)] = (await outcome(client, frame, "bad_frame"))[0]
    await close_all([fran, pam])
    assert got == {cell: "bad_frame" for cell in got}, got


async def test_end_and_block_leave_a_group_open_report_works_and_the_claim_needs_a_survivor(pair):
    fran = await facilitator("Fran").connect(pair.g1)
    gid = (await create_group(fran))["group_id"]
    pam = await person("patient", "Pam").connect(pair.g2)
    await join(pam, gid)
    for ftype in ("end", "block"):
        await pam.send({"type": ftype, "conversation_id": gid})
        assert (await error(pam, ftype))["code"] == "bad_frame"
    await pam.send({"type": "report", "conversation_id": gid, "reason": "matrix"})
    await pam.expect("reported", conversation_id=gid)
    await pam.send(send_frame(gid, "after", "still open"))
    await pam.expect("ack", client_id="after")
    await fran.expect("message", client_id="after")
    # the facilitator claim belongs to survivors: a patient carrying it may not create a group
    claimed = User(f"pat-{uuid.uuid4().hex[:8]}", "patient", "Claimy", facilitator=True)
    c = await claimed.connect(pair.g1)
    await c.send(create_frame())
    assert (await error(c, "create_group"))["code"] == F
    plain = await person("survivor", "Plain").connect(pair.g2)
    assert not (plain.welcome or {})["user"].get("facilitator")
    await plain.send(create_frame())
    assert (await error(plain, "create_group"))["code"] == F
    # a moderator who creates a group leads it from outside: not a member
    mona = await person("moderator", "Mona").connect(pair.g1)
    made = await create_group(mona, title="Led from outside")
    assert (made["members"], made["joined"]) == (0, False), made
    await mona.send(send_frame(made["group_id"], "mod-send", "hello"))
    assert (await error(mona, "send"))["code"] == F
    await close_all([fran, pam, c, plain, mona])


async def test_refusals_do_not_tell_whether_the_group_exists(pair):
    """Every forbidden answer to an outsider is the same for an existing group and an unknown id."""
    fran = await facilitator("Fran").connect(pair.g1)
    gid = (await create_group(fran))["group_id"]
    await join(await person("patient", "Vic").connect(pair.g2), gid)
    outsiders = {"patient": await person("patient", "Olga").connect(pair.g1),
                 "survivor": await person("survivor", "Omar").connect(pair.g2),
                 "other_facilitator": await facilitator("Finn").connect(pair.g1),
                 "moderator": await person("moderator", "Mona").connect(pair.g2)}
    finn = outsiders["other_facilitator"]
    await create_group(finn, title="Finn's own")

    def frames(g: str) -> dict[str, dict[str, Any]]:
        return {"send": send_frame(g, "same-" + g[:6], "hello"),
                "history": {"type": "history", "conversation_id": g},
                "typing": {"type": "typing", "conversation_id": g},
                "leave_group": {"type": "leave_group", "group_id": g},
                "mute_member": {"type": "mute_member", "group_id": g, "name": "Vic", "minutes": 5},
                "remove_member": {"type": "remove_member", "group_id": g, "name": "Vic"},
                "readmit_member": {"type": "readmit_member", "group_id": g, "name": "Vic"},
                "pin": {"type": "pin", "group_id": g, "text": "mine now"},
                "close_group": {"type": "close_group", "group_id": g}}

    leaks = {}
    for who, client in outsiders.items():
        for ftype in SAME_ANSWER:
            answers = []
            for g in (gid, UNKNOWN):
                code, err = await outcome(client, frames(g)[ftype], "silent")
                answers.append((code, without_ids(err) if err else None))
            if answers[0][0] == F and answers[0] != answers[1]:
                leaks[(ftype, who)] = answers
    assert not leaks, "refusals that tell whether the group exists:\n" + "\n".join(
        f"{k}: existing {v[0]} / unknown {v[1]}" for k, v in leaks.items())
    await close_all([fran, *outsiders.values()])
