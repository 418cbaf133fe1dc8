"""The screening worker: reads message references from the screening queue, scores the messages
in batches with the model, and raises flags through the same flag path as the rules.

Off the relay path by construction: the gateway acknowledges and delivers a message before any
worker sees it; a worker only reads the log afterwards.  Any number of workers, in any number of
processes on any machines, share one consumer group; a dead worker's batch is claimed by another
after ``claim_idle_s`` and scored again.  That is safe because every effect is idempotent:

* a flag's id is derived from (conversation, seq, category), so raising it twice creates it once,
  and a rule flag and a model flag of the same category on one message are the same flag.  The
  categories the rules found (stored with the message) are raised here as the rules' flags, so
  they say "rules" whichever of the gateway and the worker comes first, and survive a gateway
  that died right after the ack; the model adds only the categories the rules did not find;
* the crisis ``resources`` frame goes to the author *before* the flag is raised (a crash in
  between sends it twice, never zero times), and only when the rules did not flag crisis on that
  message already (the gateway sent resources then).

Entries are acknowledged only after their flags are stored.  A message that no longer exists
(erased, purged) or that a moderator wrote is acknowledged without scoring.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from chat.crisis import CrisisLine, resources_frame
from chat.flags import SOURCE_MODEL, SOURCE_RULES, FlagStore
from chat.screening.policy import CRISIS, REVIEW, Thresholds, decide
from chat.screening.queue import QueuedMessage, ScreenQueue
from chat.store import ChatStore, StoredMessage
from core.keys import Keys

log = logging.getLogger("aftertalk.screening")


class Scorer(Protocol):
    def score(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """One ``{label: probability}`` per text, in order."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    consumer: str                     # this worker's name in the consumer group (unique per worker)
    batch: int = 32                   # messages scored together
    block_ms: int = 1000              # how long one read waits for new entries
    claim_idle_s: float = 15.0        # entries a worker held this long unacknowledged are taken over
    claim_every_s: float = 5.0        # how often to look for such entries
    trim_every_s: float = 10.0        # how often acknowledged entries are dropped from the stream


class ScreeningWorker:
    def __init__(self, *, queue: ScreenQueue, chat: ChatStore, flags: FlagStore, scorer: Scorer,
                 thresholds: Thresholds, crisis_lines: tuple[CrisisLine, ...], redis: Any, keys: Keys,
                 config: WorkerConfig, rule_severity: Mapping[str, str],
                 on_scored: Callable[[int, float], None] | None = None) -> None:
        self.queue = queue
        self.chat = chat
        self.flags = flags
        self.scorer = scorer
        self.thresholds = thresholds
        self.crisis_lines = crisis_lines
        self.redis = redis
        self.keys = keys
        self.config = config
        self.rule_severity = rule_severity   # category -> severity, as the phrase rules raise it
        self.on_scored = on_scored        # (messages, seconds) after each scored batch: metrics
        self._stopping = False
        self._claimed_at = 0.0
        self._trimmed_at = time.monotonic()

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        grouped = False
        while not self._stopping:
            try:
                if not grouped:
                    await self.queue.ensure_group()
                    grouped = True
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:       # Redis away: wait and go on; nothing was acknowledged
                log.warning("screening batch failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def step(self) -> int:
        """Screen one batch: stale entries of dead workers first, else new ones.  Returns its size."""
        cfg = self.config
        now = time.monotonic()
        entries: list[QueuedMessage] = []
        if now - self._claimed_at >= cfg.claim_every_s:
            self._claimed_at = now
            entries = await self.queue.claim_stale(cfg.consumer, cfg.claim_idle_s, cfg.batch)
        if not entries:
            entries = await self.queue.read(cfg.consumer, cfg.batch, cfg.block_ms)
        if entries:
            await self.screen(entries)
            await self.queue.ack([e.entry_id for e in entries])
        if now - self._trimmed_at >= cfg.trim_every_s:
            self._trimmed_at = now
            await self.queue.trim()
            await self.queue.forget_idle_consumers()
        return len(entries)

    async def screen(self, entries: Sequence[QueuedMessage]) -> None:
        stored = await asyncio.gather(*(self._message(e) for e in entries))
        todo = [(e, m) for e, m in zip(entries, stored, strict=True)
                if m is not None and m.role != "moderator" and m.text]
        if not todo:
            return
        started = time.perf_counter()
        scores = await asyncio.to_thread(self.scorer.score, [m.text for _, m in todo])
        if self.on_scored is not None:
            self.on_scored(len(todo), time.perf_counter() - started)
        for (entry, message), message_scores in zip(todo, scores, strict=True):
            cid = entry.conversation_id
            ruled = [c for c in message.flags.split(",") if c]      # what the rules found at append time
            hits = [h for h in decide(message_scores, self.thresholds)
                    if h.category not in ruled and not (h.category == REVIEW and CRISIS in ruled)]
            if ruled:
                # the rules' own flags, raised here too: whichever of the gateway and this worker comes
                # first creates them (same ids), so they are never lost and always say "rules"
                await self.flags.raise_flags(cid, entry.seq, [(c, self.rule_severity.get(c, "medium")) for c in ruled],
                                             message.text, author=message.sender_id, source=SOURCE_RULES)
            if not hits:
                continue
            if any(h.category == CRISIS for h in hits):      # not when the rules flagged crisis: sent already
                frame = resources_frame(cid, self.crisis_lines)
                await self.redis.publish(self.keys.user_channel(message.sender_id), orjson.dumps(frame))
            await self.flags.raise_flags(cid, entry.seq, [(h.category, h.severity) for h in hits], message.text,
                                         author=message.sender_id, source=SOURCE_MODEL,
                                         scores={h.category: h.score for h in hits})

    async def _message(self, entry: QueuedMessage) -> StoredMessage | None:
        if not entry.conversation_id or entry.seq < 1:
            return None
        found = await self.chat.read_after(entry.conversation_id, entry.seq - 1, 1)
        return found[0] if found and found[0].seq == entry.seq else None
