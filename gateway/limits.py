"""Pure helpers for pacing: reconnect backoff and token buckets.  No I/O."""
from __future__ import annotations

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
