"""The queue checker classifies each fault it exists to catch, and passes a clean history."""
from __future__ import annotations

from support.checker import check


def test_clean_history_is_all_delivered():
    sent = {"a": 1, "b": 2, "c": 3}
    report = check(sent, {"r": [(1, "a"), (2, "b"), (3, "c")]}, expect_all_seqs=True)
    assert report.ok()
    assert report.counts["delivered"] == 3
    assert set(report.overall.values()) == {"delivered"}


def test_acked_but_never_seen_is_lost():
    report = check({"a": 1, "b": 2}, {"r": [(1, "a")]})
    assert report.overall["b"] == "lost"
    assert report.counts["lost"] == 1
    assert not report.ok()


def test_seen_twice_is_duplicated():
    report = check({"a": 1, "b": 2}, {"r": [(1, "a"), (2, "b"), (2, "b")]})
    assert report.overall == {"a": "delivered", "b": "duplicated"}
    assert not report.ok()


def test_seen_after_a_higher_seq_is_reordered():
    report = check({"a": 1, "b": 2, "c": 3}, {"r": [(1, "a"), (3, "c"), (2, "b")]})
    assert report.overall == {"a": "delivered", "b": "reordered", "c": "delivered"}
    assert not report.ok()


def test_a_replayed_duplicate_is_not_also_counted_as_reordered():
    report = check({"a": 1, "b": 2}, {"r": [(1, "a"), (2, "b"), (1, "a")]})
    assert report.counts["duplicated"] == 1
    assert report.counts["reordered"] == 0


def test_seq_other_than_the_acked_one_is_wrong_seq():
    report = check({"a": 1, "b": 2}, {"r": [(1, "a"), (3, "b")]})
    assert report.overall["b"] == "wrong_seq"
    assert not report.ok()


def test_unknown_outcome_that_was_written_is_recovered_and_allowed():
    sent = {"a": 1, "b": "unavailable", "c": None, "d": 4}
    report = check(sent, {"r": [(1, "a"), (2, "b"), (3, "c"), (4, "d")]}, expect_all_seqs=True)
    assert report.overall == {"a": "delivered", "b": "recovered", "c": "recovered", "d": "delivered"}
    assert report.unanswered == ["c"]
    assert not report.ok()                       # a send nobody answered is a fault by default
    assert report.ok(allow_unanswered=True)


def test_refused_and_unseen_is_fine():
    report = check({"a": 1, "b": "rate_limited"}, {"r": [(1, "a")]})
    assert report.refused == ["b"]
    assert "b" not in report.overall
    assert report.ok()


def test_a_message_nobody_sent_is_unexpected():
    report = check({"a": 1}, {"r": [(1, "a"), (2, "ghost")]})
    assert report.overall["ghost"] == "unexpected"
    assert not report.ok()


def test_gaps_are_reported_only_when_every_seq_is_expected():
    history = {"r": [(1, "a"), (3, "c")]}
    sent = {"a": 1, "c": 3}
    assert check(sent, history).ok()
    report = check(sent, history, expect_all_seqs=True)
    assert report.receivers["r"].gaps == [2]
    assert not report.ok()


def test_overall_class_is_the_worst_over_receivers():
    sent = {"a": 1, "b": 2}
    report = check(sent, {"p": [(1, "a"), (2, "b")], "s": [(1, "a")]})
    assert report.overall["b"] == "lost"
    assert report.receivers["p"].classes["b"] == "delivered"
    assert report.receivers["s"].count("lost") == 1
    assert "s:" in report.summary() and "lost=1" in report.summary()
