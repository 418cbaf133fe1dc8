"""The limits every gateway process shares, kept in Redis: connections per user and per address,
and typing hints per user and conversation.  (The send rate is kept in Redis too, inside the append
script: :class:`chat.store.SendLimit`.)  The rules are plain Python in :mod:`gateway.limits`; this
module only translates them to Redis.

Guarantees
----------
* **Connection caps** (:class:`ConnectionLeases`).  Each open WebSocket holds a lease on its
  address (taken right after the upgrade, before ``hello``) and one on its user (taken after
  ``hello``).  A lease is a member of a sorted set (``Keys.address_leases``, ``Keys.user_leases``)
  scored by its expiry on the Redis clock; taking one is a single script (gateway/lua/lease.lua)
  that drops expired leases, counts, and admits below the cap, so two gateways admitting at the
  same instant cannot both take the last slot.  A gateway renews its leases every third of their
  time to live (``presence_ttl_s``, the same bound after which a dead gateway's presence stops
  counting) and removes each when its connection closes; the leases of a gateway that crashed or
  lost Redis stop counting at most ``presence_ttl_s`` after their last renewal.
* **Redis unreachable at admission: admitted (fail open).**  The connection is let through and its
  lease is written by the next renewal that reaches Redis (the cap then counts it again).  A
  session cannot do anything without Redis anyway: the welcome needs it (the client is closed
  1013, "try again", when it cannot be reached), and every frame after it.  Refusing instead
  would answer 4429 "too many connections" to clients that are not over any limit, during an
  outage, and they would stop retrying.  The cost: during an outage shorter than a renewal
  period, a client may hold more connections than its cap until the next renewal, and no more
  are admitted past the cap once Redis answers.
* **Typing hints** (:class:`TypingHints`).  One ``SET NX PX`` per hint on the (user,
  conversation) key: the first hint in each ``typing_interval_s`` goes out, from whichever
  connection and gateway; the others are dropped (a hint is never stored nor retried).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from core.keys import Keys
from core.scripts import ScriptSet
from gateway.dispatch import STORE_ERRORS
from gateway.limits import lease_renewal_s

log = logging.getLogger("aftertalk.quotas")
RENEW_CONCURRENCY = 64      # lease renewals in flight at once on a cluster (no pipelined EVALSHA there)


class ConnectionLeases:
    """This process's connection leases: taken at admission, renewed in the background, released on close."""

    def __init__(self, redis: Any, keys: Keys, *, ttl_s: float, owner: str) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._owner = owner
        self.scripts = ScriptSet(redis, "gateway", ("lease.lua",))
        self._held: dict[str, set[str]] = {}      # lease id -> the keys (user, address) it is held on

    def new_lease(self) -> str:
        """A lease id, unique across gateways (the gateway id tells whose it is when reading Redis)."""
        return f"{self._owner}:{secrets.token_hex(6)}"

    async def admit_address(self, address: str, lease: str, cap: int) -> bool:
        return await self._admit(self.keys.address_leases(address), lease, cap)

    async def admit_user(self, uid: str, lease: str, cap: int) -> bool:
        return await self._admit(self.keys.user_leases(uid), lease, cap)

    async def release(self, lease: str) -> None:
        """The connection closed: give back its leases (on its address, and on its user if taken)."""
        for key in self._held.pop(lease, ()):
            try:
                await self.redis.zrem(key, lease)
            except STORE_ERRORS:
                pass    # not renewed any more: it stops counting within the lease's time to live

    def _pairs(self) -> list[tuple[str, str]]:
        return [(key, lease) for lease, keys in self._held.items() for key in keys]

    async def _admit(self, key: str, lease: str, cap: int) -> bool:
        try:
            held = await self.scripts.run("lease", [key], [lease, cap, self._ttl_ms])
        except Exception as exc:      # unavailable (ServiceError) or anything else Redis said: fail open
            log.warning("connection cap not checked (%s); admitted, counted from the next renewal",
                        type(exc).__name__)
            held = 1
        if int(held):
            self._held.setdefault(lease, set()).add(key)
        return bool(int(held))

    async def renew(self) -> None:
        """Renew every lease this process holds (one pipeline), re-adding any that had lapsed."""
        held = self._pairs()
        if not held:
            return
        if isinstance(self.redis, aioredis.Redis):
            sha = self.scripts.sha("lease")
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, lease in held:
                    pipe.evalsha(sha, 1, key, lease, "", self._ttl_ms)
                results = await pipe.execute(raise_on_error=False)
            for (key, lease), res in zip(held, results, strict=True):
                if isinstance(res, NoScriptError):      # a restarted Redis: this call loads the script
                    await self.scripts.run("lease", [key], [lease, "", self._ttl_ms])
        else:       # Redis Cluster pipelines refuse EVALSHA: concurrent calls, a bounded number at a time
            for i in range(0, len(held), RENEW_CONCURRENCY):
                await asyncio.gather(*(self.scripts.run("lease", [key], [lease, "", self._ttl_ms])
                                       for key, lease in held[i:i + RENEW_CONCURRENCY]))
        gone = [(key, lease) for key, lease in held if key not in self._held.get(lease, ())]
        for key, lease in gone:         # released while the renewal was on its way: not brought back
            await self.redis.zrem(key, lease)

    async def run(self) -> None:
        """Renew the leases every third of their time to live, until cancelled."""
        while True:
            await asyncio.sleep(lease_renewal_s(self.ttl_s))
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("lease renewal skipped: %s", type(exc).__name__)


class TypingHints:
    """At most one typing hint per user and conversation per interval, across connections and gateways."""

    def __init__(self, redis: Any, keys: Keys, *, interval_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self._interval_ms = round(interval_s * 1000)

    async def claim(self, uid: str, cid: str) -> bool:
        """True when this hint may go out (and the interval starts now); False: drop it.
        Raises the Redis client's connection errors (the caller's dispatcher answers ``unavailable``)."""
        if self._interval_ms <= 0:
            return True
        return bool(await self.redis.set(self.keys.typing_hint(uid, cid), "1", nx=True, px=self._interval_ms))
