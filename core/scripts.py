"""Lua scripts: loaded from package files once at start-up, refusals become ServiceError.

Every script file starts with a header naming its KEYS and ARGV.  A script
refuses by returning ``redis.error_reply("AT:<error_code>:<message>")``; the
:func:`run` wrapper turns that into :class:`ServiceError` so callers never
inspect a ``None`` or a magic value.  A file may start with the line
``--! include lib.lua`` to have a shared library of local functions prepended.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import ErrorCode, ServiceError, unavailable

REFUSAL = "AT:"


def load_source(package: str, name: str) -> str:
    folder = resources.files(package) / "lua"
    text = (folder / name).read_text("utf-8")
    first, _, rest = text.partition("\n")
    if first.startswith("--! include "):
        lib = (folder / first.split()[-1]).read_text("utf-8")
        text = lib + "\n" + rest
    return text


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
