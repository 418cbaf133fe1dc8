"""The matcher's ranked survivor index (matcher/lua/lib.lua best_survivor) on a real Redis.

best_survivor reads a union of the patient's topic indexes whose score folds the wait into the
fit (rank_score), narrows it to the patient's languages when few indexed survivors speak them,
and breaks near-ties on the exact time of last match.  These tests drive those paths through
MatchStore directly (no gateways): which survivor is offered first is the observable.
"""
from __future__ import annotations

from core.keys import Keys
from matcher.profile import Profile
from matcher.store import MatcherConfig, MatchStore


def prof(dx=(), se=(), lang=("en",)) -> Profile:
    return Profile(frozenset(dx), frozenset(se), frozenset(lang))


async def survivor(store: MatchStore, sid: str, profile: Profile) -> None:
    await store.connected(sid, "c1")
    await store.set_availability(sid, sid, available=True, profile=profile, max_chats=1, auto_accept=True)


async def matched_with(store: MatchStore, pid: str, profile: Profile) -> str | None:
    _, created = await store.talk_now(pid, pid, profile)
    return created[0].survivor if created else None


async def test_a_rare_language_narrows_to_its_speakers_and_keeps_the_ranking(redis, prefix):
    store = MatchStore(redis, Keys(prefix), MatcherConfig())
    await survivor(store, "en-all", prof(["breast"], ["fatigue", "anxiety"], ["en"]))
    await survivor(store, "en-dx", prof(["breast"], ["fatigue"], ["en"]))
    await survivor(store, "ko-dx", prof(["breast"], [], ["ko"]))
    await survivor(store, "ko-se", prof(["breast"], ["fatigue"], ["ko", "en"]))
    await survivor(store, "ko-none", prof(["lung"], [], ["ko"]))
    # 3 Korean speakers, 4 survivors sharing a topic: the union is narrowed to the speakers first
    assert await matched_with(store, "p1", prof(["breast"], ["fatigue", "anxiety"], ["ko"])) == "ko-se"
    assert await matched_with(store, "p2", prof(["breast"], ["fatigue", "anxiety"], ["ko"])) == "ko-dx"
    assert await matched_with(store, "p3", prof(["breast"], ["fatigue"], ["ko"])) is None


async def test_a_patient_with_two_rare_languages_is_offered_a_speaker_of_either(redis, prefix):
    store = MatchStore(redis, Keys(prefix), MatcherConfig())
    for i in range(4):
        await survivor(store, f"en{i}", prof(["breast"], ["fatigue", "insomnia"], ["en"]))
    await survivor(store, "vi", prof(["breast"], ["fatigue"], ["vi"]))
    await survivor(store, "th", prof(["breast"], [], ["th"]))
    assert await matched_with(store, "p1", prof(["breast"], ["fatigue", "insomnia"], ["th", "vi"])) == "vi"
    assert await matched_with(store, "p2", prof(["breast"], ["fatigue", "insomnia"], ["th", "vi"])) == "th"


async def test_equal_fits_registered_within_a_second_go_out_longest_wait_first(redis, prefix):
    store = MatchStore(redis, Keys(prefix), MatcherConfig())
    names = [f"s{i:02d}" for i in range(12)]
    for name in names:                       # all within a few ms: below rank_score's resolution
        await survivor(store, name, prof(["prostate"], ["fatigue"]))
    got = [await matched_with(store, f"p{i}", prof(["prostate"], ["fatigue"])) for i in range(len(names))]
    assert got == names


async def test_one_more_shared_side_effect_beats_any_wait(redis, prefix):
    store = MatchStore(redis, Keys(prefix), MatcherConfig())
    await survivor(store, "old", prof(["colorectal"], ["fatigue", "ostomy"]))
    await survivor(store, "newer", prof(["colorectal"], ["fatigue", "ostomy", "anxiety"]))
    await survivor(store, "newest-se-only", prof([], ["fatigue", "ostomy", "anxiety", "insomnia"]))
    patient = prof(["colorectal"], ["fatigue", "ostomy", "anxiety", "insomnia"])
    assert await matched_with(store, "p1", patient) == "newer"
    assert await matched_with(store, "p2", patient) == "old"
    assert await matched_with(store, "p3", patient) == "newest-se-only"


async def test_a_survivor_with_free_slots_goes_to_the_back_after_a_match(redis, prefix):
    store = MatchStore(redis, Keys(prefix), MatcherConfig())
    for sid in ("a", "b"):
        await store.connected(sid, "c1")
        await store.set_availability(sid, sid, available=True, profile=prof(["lung"], ["pain"]), max_chats=3,
                                     auto_accept=True)
    got = [await matched_with(store, f"p{i}", prof(["lung"], ["pain"])) for i in range(4)]
    assert got == ["a", "b", "a", "b"]
