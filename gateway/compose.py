"""The composition root: the one place that builds every part of a gateway process and hands each
its collaborators through its constructor.

Order of construction is the order of dependency, and nothing is patched afterwards:

    Redis clients -> stores (matcher, chat, groups, flags, audit, retention)
                  -> hub (pub/sub fan-out) -> conversations (matcher + chat in step)
                  -> groups, their tools -> safety (moderators) -> service (participants) -> dispatcher

The hub's re-sync callback is given to :meth:`Hub.run` when the process starts, because the
services that answer it are built after the hub they use.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from chat.audit import AuditLog
from chat.crisis import parse_crisis_lines
from chat.flags import FlagStore
from chat.groups import GroupStore
from chat.moderation import Moderator, RuleSet
from chat.retention import Retention
from chat.screening.queue import ScreenQueue
from chat.store import ChatStore
from core.keys import Keys
from core.redis_client import make_redis
from gateway.conversations import Conversations
from gateway.dispatch import Dispatcher
from gateway.group_tools import GroupTools
from gateway.groups import Groups
from gateway.hub import Hub
from gateway.later import Later
from gateway.quotas import ConnectionLeases, TypingHints
from gateway.safety import Safety
from gateway.service import Service
from gateway.settings import Settings
from matcher.store import MatcherConfig, MatchStore
from matcher.vocabulary import load_vocabulary


@dataclass
class Gateway:
    """Everything one gateway process runs, built by :func:`build`; started and stopped by the app."""

    settings: Settings
    redis: Any
    redis_bytes: Any
    keys: Keys
    match: MatchStore
    chat: ChatStore
    hub: Hub
    safety: Safety
    service: Service
    dispatcher: Dispatcher
    leases: ConnectionLeases
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def gateway_id(self) -> str:
        return self.service.gateway_id

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.hub.run(on_resync=self._resync_user)), loop.create_task(self.leases.run())]
        self.service.start()
        self.safety.start()

    async def _resync_user(self, uid: str) -> None:
        await self.service.resync_user(uid)
        await self.safety.resync_user(uid)

    async def stop(self) -> None:
        self.hub.stop()
        await self.service.stop()
        await self.safety.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
        await self.redis_bytes.aclose()


def build(settings: Settings) -> Gateway:
    """Build a gateway process's parts.  Raises ValueError for bad moderation rules or crisis lines."""
    redis = make_redis(settings.redis_url, decode=True)
    redis_bytes = make_redis(settings.redis_url, decode=False)
    keys = Keys(settings.key_prefix)
    match = MatchStore(redis, keys, MatcherConfig(
        offer_timeout_s=settings.offer_timeout_s, grace_s=settings.grace_period_s,
        cooldown_s=settings.survivor_cooldown_s, daily_cap=settings.survivor_daily_cap,
        offers_per_patient_hour=settings.offers_per_patient_hour, presence_ttl_s=settings.presence_ttl_s,
        rejoin_window_s=settings.talk_now_rejoin_s))
    chat = ChatStore(redis, keys, screening=settings.screening)
    hub = Hub(redis_bytes, keys, chat, catchup_concurrency=settings.catchup_concurrency)
    audit_log = AuditLog(redis, keys)
    vocabulary = load_vocabulary()
    group_store = GroupStore(redis, keys, max_groups_per_user=settings.max_groups_per_user)
    conversations = Conversations(match, chat, group_store)
    groups = Groups(settings, store=group_store, hub=hub, audit_log=audit_log, vocabulary=vocabulary)
    group_tools = GroupTools(store=group_store, groups=groups, hub=hub)
    safety = Safety(settings, match=match, chat=chat, conversations=conversations, hub=hub,
                    flags=FlagStore(redis, keys), audit_log=audit_log, groups=group_tools,
                    crisis_lines=parse_crisis_lines(settings.crisis_lines),
                    screen_queue=ScreenQueue(redis, keys) if settings.screening else None)
    moderator = Moderator(RuleSet.load(settings.moderation_rules_path or None),
                          mask_contact_info=settings.mask_contact_info)
    service = Service(settings, gateway_id=secrets.token_hex(4), match=match, chat=chat,
                      conversations=conversations, hub=hub, moderator=moderator, vocabulary=vocabulary,
                      retention=Retention(redis, keys, retention_s=settings.retention_days * 86400),
                      safety=safety, typing_hints=TypingHints(redis, keys, interval_s=settings.typing_interval_s),
                      groups=groups)
    leases = ConnectionLeases(redis, keys, ttl_s=settings.presence_ttl_s, owner=service.gateway_id)
    later = Later(settings, match=match, conversations=conversations, moderator=moderator,
                  vocabulary=service.vocabulary)
    dispatcher = Dispatcher(service.handlers(), safety.handlers(), later.handlers(), groups.handlers(),
                            group_tools.handlers())
    return Gateway(settings=settings, redis=redis, redis_bytes=redis_bytes, keys=keys, match=match, chat=chat,
                   hub=hub, safety=safety, service=service, dispatcher=dispatcher, leases=leases)
