"""Every Redis key is named in core/keys.py, the Lua scripts' keys included.

The scripts get their control-plane key names from the table ``KEY`` that core/scripts.py
generates from core/keys.py (``--! keys``); this scans every script for key text written by hand
(a string literal concatenated into a name, such as ``'sv:'`` or ``':offers'``) and checks that
what they use of ``KEY`` exists, and that the generated names keep to one hash slot.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.crc import key_slot

from core.keys import Keys
from core.scripts import control_plane_keys, key_table, load_source

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "matcher", "chat", "gateway")
SCRIPTS = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("lua/*.lua"))

# concatenated literals that contain a colon yet are not key text
NOT_KEYS = {
    "AT:": "the refusal prefix of redis.error_reply (core/scripts.py REFUSAL)",
    "erased:": "a field of a conversation's meta hash, erased:<user id> (chat/lua/erase.lua)",
    ":": "a separator inside hash fields and values (append.lua's client-id field)",
}

KEY_TEXT = re.compile(r"[\w{}.:-]+")      # what key names are made of (JSON fragments and messages are not)
_TOKEN = re.compile(r"""--\[(=*)\[.*?\]\1\]|--[^\n]*|'((?:[^'\\\n]|\\.)*)'|"((?:[^"\\\n]|\\.)*)\"""", re.S)


def literals(source: str) -> list[tuple[str, bool, int]]:
    """(text, concatenated with ``..``, line) of every string literal outside comments."""
    out = []
    for m in _TOKEN.finditer(source):
        if m.group(0).startswith("--"):
            continue
        text = m.group(2) if m.group(2) is not None else m.group(3)
        before = source[:m.start()].rstrip()
        after = source[m.end():].lstrip()
        out.append((text, before.endswith("..") or after.startswith(".."), source.count("\n", 0, m.start()) + 1))
    return out


def code(source: str) -> str:
    """The source without comments and string literals."""
    return _TOKEN.sub(lambda m: "" if m.group(0).startswith("--") else "''", source)


def key_segments() -> dict[str, str]:
    """Every piece of literal text core/keys.py puts into a name (beside the prefix) -> which name."""
    probe = Keys(prefix="\x01")
    out: dict[str, str] = {}
    for name, member in vars(Keys).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            text = getattr(probe, name)
        elif callable(member):
            argc = member.__code__.co_argcount - 1
            text = member(probe, *("\x00" for _ in range(argc)))
        else:
            continue
        stem = probe.ctl if text.startswith(probe.ctl) else "\x01"
        for part in text[len(stem):].split("\x00"):
            if part:
                out.setdefault(part, name)
    return out


def package_of(path: Path) -> str:
    return ".".join(path.parent.parent.relative_to(ROOT).parts)


def test_the_scan_finds_the_scripts():
    assert {"matcher", "chat"} <= {package_of(p) for p in SCRIPTS} and len(SCRIPTS) >= 17


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_script_spells_a_key(path: Path):
    segments = key_segments()
    problems = []
    for text, concatenated, line in literals(path.read_text("utf-8")):
        if not concatenated or text in NOT_KEYS:
            continue
        if text in segments:
            problems.append(f"line {line}: {text!r} spells a key by hand; use KEY.{segments[text]} (core/keys.py)")
        elif ":" in text and KEY_TEXT.fullmatch(text):
            problems.append(f"line {line}: {text!r} looks like key text core/keys.py does not generate: add the "
                            f"key to core/keys.py and use KEY.<name> (or, if it is no key, add it to NOT_KEYS)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_key_a_script_uses_is_generated_and_declared(path: Path):
    names = control_plane_keys()
    used = set(re.findall(r"\bKEY\.(\w+)", code(path.read_text("utf-8"))))
    assert used <= set(names), f"KEY has no {sorted(used - set(names))}: add them to core/keys.py"
    if path.name != "lib.lua" and used:
        expanded = load_source(package_of(path), path.name)
        assert expanded.count("local KEY = {}") == 1, f"{path.name} uses KEY: start it with '--! keys'"
    for stem in ("P", "stem", "ARGV[1]"):       # the control-plane stem: only KEY builds on it
        assert not re.search(rf"(?<![\w.]){re.escape(stem)}\s*\.\.", code(path.read_text("utf-8"))), \
            f"{path.name} builds a name on {stem}: use KEY"


def test_the_scan_would_catch_a_hand_written_key():
    source = "local a = ARGV[1] .. 'sv:' .. uid\nlocal b = KEY.survivor(uid) .. ':spare'  -- 'x:' .. y\n"
    found = [(t, c) for t, c, _ in literals(source)]
    assert found == [("sv:", True), (":spare", True)]
    assert "sv:" in key_segments() and ":spare" not in key_segments()


def test_the_generated_table_covers_every_control_plane_key_and_the_new_ones():
    names = control_plane_keys()
    for name in ("rank_dx", "rank_se", "rank_pair", "lang_index", "wait_index", "relax", "away",
                 "request_declined", "request_count", "cooldowns", "scratch", "scratch_langs", "scratch_both",
                 "survivor", "request", "queue", "stats", "flag"):
        assert name in names
    assert names["rank_pair"] == ("dx", "se")
    assert "conv_meta" not in names and "user_channel" not in names       # other slots / not keys: via KEYS, ARGV
    table = key_table()
    assert "function KEY.rank_pair(dx, se) return stem .. 'ix:rank:ds:' .. dx .. ':' .. se end" in table
    assert "KEY.queue = stem .. 'queue'" in table


def test_every_control_plane_key_shares_one_hash_slot():
    keys = Keys("at")
    slot = key_slot(keys.stats.encode())
    for name, params in control_plane_keys().items():
        member = getattr(keys, name)
        key = member(*(f"x{i}" for i in range(len(params)))) if params else member
        assert key_slot(key.encode()) == slot, (name, key)
        assert key.startswith(keys.ctl)
