"""One client connection: identity, per-conversation delivery position, and a bounded outbox.

Frames leave through :meth:`Conn.push`, which never awaits: it appends to a
bounded queue and starts a writer task only while there is something to
write, so an idle connection costs no task and a slow reader cannot stall
whoever is pushing (the hub, a peer).  A reader that falls ``outbox_limit``
frames behind is closed with 4408; it reconnects and resumes from its last
``seq``, so nothing is lost.

A connection also holds at most one timer for its token (``expiry``, armed by
:class:`gateway.expiry.TokenClock`): the ``token_expiring`` warning, then the
4401 close at ``exp``.  Closing cancels it (:meth:`Conn.disarm`).
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from starlette.websockets import WebSocket

from core.errors import CloseCode
from gateway.auth import Identity
from gateway.limits import TokenBucket

log = logging.getLogger("aftertalk.conn")
# The outbox of every connection with nothing to write: always empty, never appended to (push()
# swaps in a deque of its own first), so idle connections share it instead of holding one each.
IDLE_OUTBOX: deque[str] = deque()


class Conn:
    __slots__ = (
        "close_code",
        "closed",
        "delivered",
        "expiry",
        "filling",
        "frames",
        "id",
        "limit",
        "on_slow",
        "outbox",
        "position",
        "seen",
        "space",
        "stalled",
        "user",
        "watching",
        "writer",
        "ws",
    )

    def __init__(self, ws: WebSocket, user: Identity, conn_id: str, *, outbox_limit: int,
                 frames: TokenBucket, on_slow: Callable[[Conn], None]) -> None:
        self.ws = ws
        self.user = user
        self.id = conn_id
        self.delivered: dict[str, int] = {}     # conversation -> highest seq written to this socket
        self.filling: set[str] = set()          # conversations being caught up from the log
        self.seen: dict[str, int] = {}          # conversation -> highest seq announced live while filling
        self.outbox: deque[str] = IDLE_OUTBOX
        self.writer: asyncio.Task[None] | None = None
        self.closed = False
        self.frames = frames
        self.watching: set[str] = set()
        self.position: int | None = None
        self.limit = outbox_limit
        self.on_slow = on_slow
        self.close_code: int | None = None
        self.space: asyncio.Event | None = None   # set by the writer as the outbox drains (see wait_room)
        self.stalled = False                      # the writer is waiting for the client to read
        self.expiry: asyncio.TimerHandle | None = None   # the token's next timer (gateway.expiry.TokenClock)

    def push(self, text: str) -> None:
        if self.closed:
            return
        if len(self.outbox) >= self.limit and self.stalled:
            # Only a writer blocked on the socket means the client is slow.  A burst pushed before the
            # writer got a turn (the hub dispatching a backlog of pub/sub without yielding) is not the
            # client's fault; it is bounded by what one read of the pub/sub socket holds, and the writer
            # runs before the next read.
            self.on_slow(self)
            self.outbox.clear()
            self.close(CloseCode.SLOW_CONSUMER, "too slow: reconnect and resume")
            return
        if self.outbox is IDLE_OUTBOX:
            self.outbox = deque()
        self.outbox.append(text)
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.outbox:
                self.stalled = True       # stays True only while send_text waits for the client to read
                await self.ws.send_text(self.outbox.popleft())
                self.stalled = False
                if self.space is not None:
                    self.space.set()
        except Exception:  # the socket went away; the receive loop will notice and clean up
            self.closed = True
            self.outbox.clear()
        finally:
            self.writer = None
            self.stalled = False
            if not self.outbox:
                self.outbox = IDLE_OUTBOX     # an idle connection holds no deque (~750 bytes each)
            if self.space is not None:
                self.space.set()

    async def wait_room(self, frames: int) -> None:
        """Wait until ``frames`` more fit in the outbox (or the connection closed).

        Catch-up from the log paces itself on this: a resume after hundreds of missed messages must
        not overflow the outbox and get the client cut as a slow consumer, over and over."""
        while not self.closed and len(self.outbox) + frames > self.limit:
            if self.space is None:
                self.space = asyncio.Event()
            self.space.clear()
            await self.space.wait()

    def close(self, code: int, reason: str) -> None:
        """Close from anywhere without awaiting (suspension, slow consumer, shutdown).

        Frames already queued (an error, the ``suspended`` notice) are written first, briefly."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.disarm()
        if self.space is not None:
            self.space.set()
        asyncio.get_running_loop().create_task(self._close(code, reason))

    def disarm(self) -> None:
        """Cancel the token timer (closed, or a reauth arms a new one): a timer holds its connection."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    async def _close(self, code: int, reason: str) -> None:
        try:
            if self.writer is not None:
                await asyncio.wait_for(asyncio.shield(self.writer), 2.0)
        except Exception:
            pass        # a stalled writer (slow consumer) must not keep the close from being sent
        try:
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
