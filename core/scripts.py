"""Lua scripts: loaded from package files once at start-up, refusals become ServiceError.

Every script file starts with a header naming its KEYS and ARGV.  A script
refuses by returning ``redis.error_reply("AT:<error_code>:<message>")``; the
:func:`run` wrapper turns that into :class:`ServiceError` so callers never
inspect a ``None`` or a magic value.

A file may start with directive lines, each replaced by what it names, in order:

* ``--! include lib.lua``: a shared library of local functions (once per script);
* ``--! keys``: the table ``KEY`` of every control-plane key name, generated from
  :class:`core.keys.Keys` (:func:`key_table`) on the stem the caller passes as
  ``ARGV[1]``: ``KEY.queue``, ``KEY.survivor(uid)``, ``KEY.rank_pair(dx, se)``, ...
  Scripts spell no key text themselves (tests/unit/test_lua_keys.py).
"""
from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import ErrorCode, ServiceError, unavailable
from core.keys import Keys

REFUSAL = "AT:"


KEY_STEM_ARG = "ARGV[1]"        # where every script that declares ``--! keys`` takes the control-plane stem
_ARG = re.compile("\x00([0-9]+)\x00")
_LITERAL = re.compile(r"[A-Za-z0-9_:.{}-]*")
_LUA_WORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in", "local",
              "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"}


def control_plane_keys() -> dict[str, tuple[str, ...]]:
    """Every control-plane key of :class:`Keys` (the names under ``ctl``): name -> its parameters."""
    probe = Keys(prefix="\x01")
    out: dict[str, tuple[str, ...]] = {}
    for name, member in sorted(vars(Keys).items()):
        if name.startswith("_") or name == "ctl":
            continue
        if isinstance(member, property):
            params: tuple[str, ...] = ()
            text = getattr(probe, name)
        elif inspect.isfunction(member):
            params = tuple(inspect.signature(member).parameters)[1:]
            text = member(probe, *("\x00x\x00" for _ in params))
        else:
            continue
        if isinstance(text, str) and text.startswith(probe.ctl):
            out[name] = params
    return out


@functools.cache
def key_table() -> str:
    """Lua source defining ``KEY``: each control-plane key of core/keys.py, built on the stem in ARGV[1].

    A key without parameters becomes a string (``KEY.queue``), one with parameters a function
    (``KEY.survivor(uid)``); both render exactly what the Python method returns for the same stem."""
    probe = Keys(prefix="\x01")
    lines = ["-- KEY: generated from core/keys.py by core/scripts.py (every control-plane key; all share the",
             f"-- hash tag of the stem in {KEY_STEM_ARG}, so a script touches one slot)",
             "local KEY = {}", "do", f"  local stem = {KEY_STEM_ARG}"]
    for name, params in control_plane_keys().items():
        for word in (name, *params):
            if not word.isidentifier() or word in _LUA_WORDS:
                raise ValueError(f"core/keys.py: {word!r} cannot be a Lua name")
        member = getattr(Keys, name)
        if params:
            text = member(probe, *(f"\x00{i}\x00" for i in range(len(params))))
        else:
            text = getattr(probe, name)
        parts = _ARG.split(text[len(probe.ctl):])
        expr = ["stem"]
        for i, part in enumerate(parts):
            if i % 2:
                expr.append(params[int(part)])
            elif part:
                if not _LITERAL.fullmatch(part):
                    raise ValueError(f"core/keys.py: {name} has text Lua would need escaped: {part!r}")
                expr.append(f"'{part}'")
        body = " .. ".join(expr)
        if params:
            lines.append(f"  function KEY.{name}({', '.join(params)}) return {body} end")
        else:
            lines.append(f"  KEY.{name} = {body}")
    lines.append("end")
    return "\n".join(lines) + "\n"


def load_source(package: str, name: str) -> str:
    """A script's source with its directives (``--! include FILE``, ``--! keys``) expanded."""
    return _expand(resources.files(package) / "lua", name, set())


def _expand(folder: Traversable, name: str, done: set[str]) -> str:
    text = (folder / name).read_text("utf-8")
    head: list[str] = []
    while text.startswith("--! "):
        line, _, text = text.partition("\n")
        word, *args = line[4:].split()
        what = f"{word} {' '.join(args)}".strip()
        if what in done:
            continue
        done.add(what)
        if word == "include" and len(args) == 1:
            head.append(_expand(folder, args[0], done))
        elif word == "keys" and not args:
            head.append(key_table())
        else:
            raise ValueError(f"{name}: unknown directive {line!r}")
    return "".join(h if h.endswith("\n") else h + "\n" for h in head) + text


class ScriptSet:
    """The scripts of one package, registered on one client (EVALSHA, reloaded on NOSCRIPT)."""

    def __init__(self, redis: Any, package: str, names: Sequence[str]) -> None:
        self._scripts = {n.removesuffix(".lua"): redis.register_script(load_source(package, n)) for n in names}

    def sha(self, name: str) -> str:
        return self._scripts[name].sha

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self._scripts[name](keys=list(keys), args=list(args))
        except ResponseError as exc:
            raise as_service_error(exc) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise unavailable() from exc


def as_service_error(exc: ResponseError) -> Exception:
    text = str(exc)
    idx = text.find(REFUSAL)
    if idx < 0:
        return exc
    code, _, message = text[idx + len(REFUSAL):].partition(":")
    try:
        return ServiceError(ErrorCode(code), message or code)
    except ValueError:
        return exc
