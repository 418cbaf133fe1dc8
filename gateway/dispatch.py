"""Frame dispatch: one table of handlers, merged from the services' declared tables.

Roles are checked before dispatch (:func:`gateway.protocol.authorize`); this module only finds
the handler and turns a lost Redis link into the ``unavailable`` refusal the client retries.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import unavailable
from gateway.connection import Conn

Handler = Callable[[Conn, dict[str, Any]], Awaitable[None]]
STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class Dispatcher:
    def __init__(self, *tables: Mapping[str, Handler]) -> None:
        self._handlers: dict[str, Handler] = {}
        for table in tables:
            for frame_type, handler in table.items():
                if frame_type in self._handlers:
                    raise ValueError(f"two services answer the {frame_type!r} frame")
                self._handlers[frame_type] = handler

    @property
    def frame_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    async def dispatch(self, conn: Conn, frame: dict[str, Any]) -> None:
        try:
            await self._handlers[frame["type"]](conn, frame)
        except STORE_ERRORS:
            raise unavailable() from None
