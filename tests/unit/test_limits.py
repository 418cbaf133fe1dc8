"""Pacing helpers (gateway/limits.py): reconnect backoff and token buckets."""
from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limits import TokenBucket, backoff


def take(n, it):
    return list(itertools.islice(it, n))


# ---------------------------------------------------------------- backoff

def test_backoff_without_jitter_doubles_then_caps():
    assert take(8, backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0)) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_backoff_defaults_reach_the_cap_and_stay_there():
    delays = take(30, backoff(jitter=0))
    assert delays[0] == pytest.approx(0.1)
    assert max(delays) == pytest.approx(5.0)
    assert delays[-10:] == pytest.approx([5.0] * 10)
    assert all(a <= b for a, b in itertools.pairwise(delays))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.floats(0.01, 2), factor=st.floats(1.0, 4), maximum=st.floats(0.01, 30),
       jitter=st.floats(0, 0.9), seed=st.integers(0, 2**32))
def test_backoff_stays_within_jitter_bounds_of_the_capped_schedule(initial, factor, maximum, jitter, seed):
    rng = random.Random(seed)
    base = take(25, backoff(initial, factor, maximum, jitter=0))
    got = take(25, backoff(initial, factor, maximum, jitter=jitter, rng=rng))
    for nominal, delay in zip(base, got, strict=True):
        assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal * (1 + jitter) + 1e-9
        assert delay > 0
    # after the first step the nominal delay never exceeds the cap
    assert all(b <= max(maximum, initial) + 1e-9 for b in base)


def test_backoff_jitter_actually_spreads_delays():
    delays = take(200, backoff(initial=1, factor=1, maximum=1, jitter=0.2, rng=random.Random(7)))
    assert min(delays) < 0.9 and max(delays) > 1.1
    assert len(set(delays)) > 150


def test_backoff_is_reproducible_with_a_seeded_rng():
    a = take(10, backoff(rng=random.Random(1)))
    b = take(10, backoff(rng=random.Random(1)))
    assert a == b


# ---------------------------------------------------------------- token bucket

def test_bucket_starts_full_and_allows_a_burst():
    bucket = TokenBucket(rate=1, burst=5, now=0)
    assert [bucket.take(0) for _ in range(6)] == [True] * 5 + [False]


def test_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2, burst=2, now=0)
    assert bucket.take(0) and bucket.take(0) and not bucket.take(0)
    assert not bucket.take(0.25)          # half a token
    assert bucket.take(0.5)               # one token after 0.5 s at 2/s
    assert not bucket.take(0.5)


def test_bucket_never_saves_more_than_burst():
    bucket = TokenBucket(rate=10, burst=3, now=0)
    results = [bucket.take(1000) for _ in range(4)]
    assert results == [True, True, True, False]


def test_refused_take_costs_nothing():
    bucket = TokenBucket(rate=1, burst=1, now=0)
    assert bucket.take(0)
    for _ in range(10):
        assert not bucket.take(0)
    assert bucket.take(1.0)


def test_cost_larger_than_one():
    bucket = TokenBucket(rate=1, burst=4, now=0)
    assert bucket.take(0, cost=3)
    assert not bucket.take(0, cost=3)
    assert bucket.take(2, cost=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.floats(0.1, 50), burst=st.integers(1, 40),
       steps=st.lists(st.floats(0, 2), min_size=1, max_size=60))
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(rate, burst, steps):
    bucket = TokenBucket(rate=rate, burst=burst, now=0)
    now, admitted = 0.0, 0
    for dt in steps:
        now += dt
        while bucket.take(now):
            admitted += 1
        assert admitted <= burst + rate * now + 1e-6
        assert 0 <= bucket.tokens <= burst


# ---------------------------------------------------------------- rules of the limits kept in Redis

def test_retry_after_is_the_time_to_one_token_in_whole_seconds_at_least_one():
    from gateway.limits import retry_after_s

    assert retry_after_s(5) == 1
    assert retry_after_s(0.5) == 2
    assert retry_after_s(0.3) == 4
    assert retry_after_s(1000) == 1


def test_admits_below_the_cap_and_always_renews():
    from gateway.limits import admits

    assert [admits(n, 3, renewing=False) for n in range(5)] == [True, True, True, False, False]
    assert admits(10, 3, renewing=True)        # an open connection's lease is never refused


def test_leases_are_renewed_three_times_per_time_to_live():
    from gateway.limits import lease_renewal_s

    assert lease_renewal_s(15) == pytest.approx(5)
    assert lease_renewal_s(0.3) == pytest.approx(0.1)
