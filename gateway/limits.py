"""Pure helpers for pacing: reconnect backoff, token buckets, and the rules of the limits kept in Redis.

No I/O.  The per-user and per-address limits are enforced in Redis so that they hold across gateway
processes and reconnects (gateway/quotas.py, chat/lua/append_bucket.lua); the rules they follow are
written here, in plain Python, and the Lua scripts mirror them:

* the send rate: :class:`TokenBucket`, one per user (chat/lua/append_bucket.lua);
* connections per user and per address: :func:`admits` over leases that expire unless renewed
  (gateway/lua/lease.lua), renewed every :func:`lease_renewal_s`.

:class:`TokenBucket` itself still paces the frames of one connection, which is a per-connection limit.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator


def backoff(initial: float = 0.1, factor: float = 2.0, maximum: float = 5.0,
            jitter: float = 0.2, rng: random.Random | None = None) -> Iterator[float]:
    """Delays for successive reconnect attempts: exponential, capped, with +-jitter."""
    rng = rng or random.Random()
    delay = initial
    while True:
        yield delay * (1 + rng.uniform(-jitter, jitter))
        delay = min(maximum, delay * factor)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.  The caller passes the clock."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


def retry_after_s(rate_per_s: float) -> int:
    """Whole seconds after which a sender refused for an empty bucket has a token again (at least 1)."""
    return max(1, math.ceil(1 / rate_per_s))


def admits(held: int, cap: int, *, renewing: bool) -> bool:
    """The connection cap: a new lease is admitted while fewer than ``cap`` unexpired leases are held;
    a lease already held (or renewed: its connection is open) always is.  gateway/lua/lease.lua applies
    this atomically in Redis, over every gateway's leases."""
    return renewing or held < cap


def lease_renewal_s(ttl_s: float) -> float:
    """How often a gateway renews its connection leases: three times per time to live, so that one
    late or failed renewal does not let a live connection's lease lapse."""
    return ttl_s / 3
