"""The honest wait (matcher/estimate.py): pure, so every rule is checked here without Redis."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matcher.estimate import (
    MAX_WAIT_S,
    MIN_WINDOW_S,
    NOBODY_FITS_NOW,
    NOT_MEASURED,
    FreeCount,
    class_rate,
    decayed,
    estimate_wait,
    parse_free_count,
    public_queued,
)

H = 3600.0
NOW = 1_800_000_000.0


def test_nobody_fitting_available_or_busy_means_no_estimate_and_says_why():
    rates = [FreeCount(50, NOW, NOW - 86400)]           # plenty measured: still nobody who fits now
    est = estimate_wait(1, 0, 0, rates, now=NOW, half_life_s=H)
    assert est.estimated_wait_s is None and est.reason == NOBODY_FITS_NOW and est.fitting_available == 0


def test_someone_fits_but_nothing_was_ever_measured_is_not_a_made_up_number():
    est = estimate_wait(3, 0, 2, [], now=NOW, half_life_s=H)
    assert est.estimated_wait_s is None and est.reason == NOT_MEASURED


def test_busy_survivors_give_an_estimate_from_the_measured_rate():
    # 12 survivors became free during the last 10 minutes: a rate of 12 / 600 s -> position 1 waits 50 s
    est = estimate_wait(1, 0, 3, [FreeCount(12, NOW, NOW - 600)], now=NOW, half_life_s=H)
    assert est.reason is None and est.estimated_wait_s == 50
    assert estimate_wait(4, 0, 3, [FreeCount(12, NOW, NOW - 600)], now=NOW, half_life_s=H).estimated_wait_s == 200


def test_the_estimate_moves_with_the_measurements_not_a_constant():
    few = estimate_wait(2, 0, 1, [FreeCount(2, NOW, NOW - 600)], now=NOW, half_life_s=H).estimated_wait_s
    many = estimate_wait(2, 0, 1, [FreeCount(20, NOW, NOW - 600)], now=NOW, half_life_s=H).estimated_wait_s
    assert few is not None and many is not None and few == 10 * many


def test_old_events_count_less_than_recent_ones():
    recent = FreeCount(10, NOW, NOW - 5 * H)
    old = FreeCount(10, NOW - 2 * H, NOW - 5 * H)
    assert decayed(old, NOW, H) == pytest.approx(2.5)
    assert class_rate(old, NOW, H) == pytest.approx(class_rate(recent, NOW, H) / 4)


def test_a_long_measured_class_reads_its_rate_over_the_decay_mean_life():
    c = FreeCount(100, NOW, NOW - 30 * H)
    assert class_rate(c, NOW, H) == pytest.approx(100 / (H / math.log(2)))


def test_a_young_class_is_read_over_at_least_the_minimum_window():
    c = FreeCount(1, NOW, NOW - 1)            # one event, a second ago: not one survivor per second
    assert class_rate(c, NOW, H) == pytest.approx(1 / MIN_WINDOW_S)


def test_the_fastest_class_of_the_request_sets_the_rate_classes_are_not_added_up():
    slow, fast = FreeCount(1, NOW, NOW - 600), FreeCount(6, NOW, NOW - 600)
    both = estimate_wait(1, 0, 1, [slow, fast], now=NOW, half_life_s=H).estimated_wait_s
    assert both == estimate_wait(1, 0, 1, [fast], now=NOW, half_life_s=H).estimated_wait_s == 100


def test_estimates_are_capped_and_at_least_a_second():
    tiny = FreeCount(1e-9, NOW, NOW - 30 * H)
    assert estimate_wait(1, 0, 1, [tiny], now=NOW, half_life_s=H).estimated_wait_s == MAX_WAIT_S
    flood = FreeCount(1e9, NOW, NOW - 30 * H)
    assert estimate_wait(1, 2, 0, [flood], now=NOW, half_life_s=H).estimated_wait_s == 1


@pytest.mark.parametrize("raw", ["", "1|2", "a|b|c", "1|2|3|4", "-1|2|3", "nan|1|1", "inf|1|1"])
def test_unreadable_counts_are_ignored(raw):
    assert parse_free_count(raw) is None


def test_the_public_frame_from_the_scripts_inputs():
    raw = {"type": "queued", "position": 2, "fitting_available": 0, "refresh": True,
           "wait": {"busy": 1, "now": NOW, "half_life_s": H, "rates": [f"12|{NOW}|{NOW - 600}", "junk"]}}
    assert public_queued(raw) == {"type": "queued", "position": 2, "fitting_available": 0, "estimated_wait_s": 100}
    nobody = {"type": "queued", "position": 1, "fitting_available": 0,
              "wait": {"busy": 0, "now": NOW, "half_life_s": H, "rates": {}}}     # Lua's empty table
    assert public_queued(nobody) == {"type": "queued", "position": 1, "fitting_available": 0,
                                     "estimated_wait_s": None, "reason": NOBODY_FITS_NOW}


def test_a_frame_without_inputs_from_an_older_version_passes_unchanged():
    old = {"type": "queued", "position": 3, "estimated_wait_s": 180}
    assert public_queued(old) == old


@given(st.integers(1, 500), st.integers(0, 50), st.integers(0, 50),
       st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e5), st.floats(0, 1e6)), max_size=6))
def test_properties(position, available, busy, counts):
    rates = [FreeCount(c, NOW - age, NOW - age - span) for c, age, span in counts]
    est = estimate_wait(position, available, busy, rates, now=NOW, half_life_s=H)
    if available == 0 and busy == 0:
        assert est.reason == NOBODY_FITS_NOW and est.estimated_wait_s is None
    elif est.estimated_wait_s is None:
        assert est.reason == NOT_MEASURED
    else:
        assert 1 <= est.estimated_wait_s <= MAX_WAIT_S and est.reason is None
        later = estimate_wait(position + 1, available, busy, rates, now=NOW, half_life_s=H).estimated_wait_s
        assert later is not None and later >= est.estimated_wait_s      # further back never waits less
