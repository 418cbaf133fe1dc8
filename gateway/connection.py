"""One client connection: identity, per-conversation delivery position, and a bounded outbox.

Frames leave through :meth:`Conn.push`, which never awaits: it appends to a
bounded queue and starts a writer task only while there is something to
write, so an idle connection costs no task and a slow reader cannot stall
whoever is pushing (the hub, a peer).  A reader that falls ``outbox_limit``
frames behind is closed with 4408; it reconnects and resumes from its last
``seq``, so nothing is lost.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

from starlette.websockets import WebSocket

from gateway.auth import Identity
from gateway.errors import CloseCode
from gateway.limits import TokenBucket

log = logging.getLogger("aftertalk.conn")


class Conn:
    __slots__ = ("ws", "user", "id", "delivered", "filling", "seen", "outbox", "writer", "closed",
                 "frames", "sends", "typing_at", "watching", "position", "limit", "on_slow", "close_code")

    def __init__(self, ws: WebSocket, user: Identity, conn_id: str, *, outbox_limit: int,
                 frames: TokenBucket, sends: TokenBucket, on_slow: Callable[["Conn"], None]) -> None:
        self.ws = ws
        self.user = user
        self.id = conn_id
        self.delivered: dict[str, int] = {}     # conversation -> highest seq written to this socket
        self.filling: set[str] = set()          # conversations being caught up from the log
        self.seen: dict[str, int] = {}          # conversation -> highest seq announced live while filling
        self.outbox: deque[str] = deque()
        self.writer: asyncio.Task[None] | None = None
        self.closed = False
        self.frames = frames
        self.sends = sends
        self.typing_at: dict[str, float] = {}
        self.watching: set[str] = set()
        self.position: int | None = None
        self.limit = outbox_limit
        self.on_slow = on_slow
        self.close_code: int | None = None

    def push(self, text: str) -> None:
        if self.closed:
            return
        if len(self.outbox) >= self.limit:
            self.on_slow(self)
            self.outbox.clear()
            self.close(CloseCode.SLOW_CONSUMER, "too slow: reconnect and resume")
            return
        self.outbox.append(text)
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.outbox:
                await self.ws.send_text(self.outbox.popleft())
        except Exception:  # the socket went away; the receive loop will notice and clean up
            self.closed = True
            self.outbox.clear()
        finally:
            self.writer = None

    def close(self, code: int, reason: str) -> None:
        """Close from anywhere without awaiting (suspension, slow consumer, shutdown).

        Frames already queued (an error, the ``suspended`` notice) are written first, briefly."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            if self.writer is not None:
                await asyncio.wait_for(asyncio.shield(self.writer), 2.0)
            await self.ws.close(code, reason)
        except Exception:
            pass

    def deliver(self, cid: str, seq: int, text: str) -> bool:
        """Write a live message if it is the next one; return False when a gap must be filled."""
        if self.filling and (cid in self.filling or "*" in self.filling):
            if seq > self.seen.get(cid, 0):
                self.seen[cid] = seq
            return True
        last = self.delivered.get(cid)
        if last is None or seq <= last:
            return True        # not following this conversation here, or already written
        if seq != last + 1:
            self.seen[cid] = max(seq, self.seen.get(cid, 0))
            return False
        self.delivered[cid] = seq
        self.push(text)
        return True

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user.id, "outbox": len(self.outbox)}
