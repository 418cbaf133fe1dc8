"""Chat through real gateway processes: relay across processes, idempotency, limits, permissions,
history paging, typing, end/feedback/block, and resume after a dropped connection."""
from __future__ import annotations

import asyncio
import uuid

from support.chat_pair import PROFILE, match_pair, messages, metric, outcomes, send_frame, wait_for
from support.checker import check
from support.gateway import Client, token


def strip_cid(frame: dict) -> dict:
    return {k: v for k, v in frame.items() if k != "conversation_id"}


async def test_patient_and_survivor_on_different_gateways_talk_both_ways_in_order(gateways, redis, prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid, n = pair.cid, 20
    for i in range(n):
        sender = pair.patient if i % 2 == 0 else pair.survivor
        await sender.send(send_frame(cid, f"m{i}", f"text {i}"))
    for c in (pair.patient, pair.survivor):
        await wait_for(lambda c=c: len(messages(c.frames, cid)) >= n, 10, "every message at both ends")
    sent = {**outcomes(pair.patient.frames, cid), **outcomes(pair.survivor.frames, cid)}
    assert len(sent) == n and all(isinstance(seq, int) for seq in sent.values()), sent
    report = check(sent, {"patient": messages(pair.patient.frames, cid),
                          "survivor": messages(pair.survivor.frames, cid)}, expect_all_seqs=True)
    assert report.ok(), report.summary()
    for c in (pair.patient, pair.survivor):
        assert [seq for seq, _ in messages(c.frames, cid)] == list(range(1, n + 1))
    # each side's own messages arrive in the order it sent them, with sender and text intact
    got = [f for f in pair.survivor.frames if f.get("type") == "message"]
    from_patient = [f for f in got if f["from"]["role"] == "patient"]
    assert [f["text"] for f in from_patient] == [f"text {i}" for i in range(0, n, 2)]
    assert from_patient[0]["from"] == {"name": "Pat", "role": "patient"}
    assert all(f["epoch"] == pair.epoch and f["ts"] > 0 for f in got)
    assert await redis.xlen(f"{prefix}:{{c:{cid}}}:log") == n
    # delivered live through pub/sub, not by reconnecting the pub/sub link and catching up
    for g in (g1, g2):
        assert await metric(g.url, "aftertalk_pubsub_reconnects_total") == 0


async def test_duplicate_client_id_gets_the_same_ack_and_is_stored_and_delivered_once(gateways, redis, prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    await pair.patient.send(send_frame(cid, "dup", "only once"))
    first = await pair.patient.expect("ack", client_id="dup")
    await pair.patient.send(send_frame(cid, "dup", "only once"))
    second = await pair.patient.expect("ack", client_id="dup")
    assert (second["seq"], second["ts"]) == (first["seq"], first["ts"]) == (1, first["ts"])
    await pair.patient.send(send_frame(cid, "after", "next"))
    assert (await pair.patient.expect("ack", client_id="after"))["seq"] == 2
    await pair.survivor.expect("message", client_id="after")
    assert [cid_ for _, cid_ in messages(pair.survivor.frames, cid)] == ["dup"]   # "after" was consumed
    assert await redis.xlen(f"{prefix}:{{c:{cid}}}:log") == 2


async def test_too_long_text_is_refused_and_the_connection_stays_usable(gateways):
    g1, = gateways(1)
    pair = await match_pair(g1.ws_url, g1.ws_url)
    cid = pair.cid
    await pair.patient.send(send_frame(cid, "long", "x" * 4001))
    err = await pair.patient.expect("error", client_id="long")
    assert err["code"] == "too_large" and err["ref"] == "send"
    await pair.patient.send(send_frame(cid, "max", "y" * 4000))
    assert (await pair.patient.expect("ack", client_id="max"))["seq"] == 1
    msg = await pair.survivor.expect("message", client_id="max")
    assert len(msg["text"]) == 4000


async def test_frame_over_64_kib_closes_with_1009(gateways):
    g1, = gateways(1)
    pair = await match_pair(g1.ws_url, g1.ws_url)
    big = "z" * 70_000
    await pair.patient.ws.send(f'{{"type":"send","conversation_id":"{pair.cid}","client_id":"big","text":"{big}"}}')
    code, _ = await pair.patient.closed()
    assert code == 1009
    # the peer's connection is untouched
    await pair.survivor.send(send_frame(pair.cid, "still", "still here"))
    assert (await pair.survivor.expect("ack", client_id="still"))["seq"] == 1


async def test_send_rate_limit_answers_every_send_and_drops_nothing_silently(gateways, redis, prefix):
    g1, g2 = gateways(2, AFTERTALK_SEND_RATE_PER_S="1", AFTERTALK_SEND_BURST="3")
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid, n = pair.cid, 12
    for i in range(n):
        await pair.patient.send(send_frame(cid, f"r{i}"))
    await wait_for(lambda: len(outcomes(pair.patient.frames, cid)) == n, 5, "an answer to every send")
    sent = outcomes(pair.patient.frames, cid)
    acked = {k: v for k, v in sent.items() if isinstance(v, int)}
    refused = {k: v for k, v in sent.items() if not isinstance(v, int)}
    assert 3 <= len(acked) <= 5, sent              # the burst, plus at most what refilled meanwhile
    assert set(refused.values()) == {"rate_limited"}
    errors = [f for f in pair.patient.frames if f.get("type") == "error"]
    assert all(e["retry_after_s"] > 0 and e["ref"] == "send" for e in errors)
    assert await redis.xlen(f"{prefix}:{{c:{cid}}}:log") == len(acked)
    await wait_for(lambda: len(messages(pair.survivor.frames, cid)) >= len(acked), 5, "acked messages delivered")
    report = check(sent, {"survivor": messages(pair.survivor.frames, cid)}, expect_all_seqs=True)
    assert report.ok(), report.summary()
    assert report.counts["refused"] == len(refused)
    # the limit is per user, not per connection: a second tab (same gateway) shares the bucket
    other = await Client.connect(g1.ws_url, pair.patient_token)
    await other.send(send_frame(cid, "second-conn"))
    assert (await other.expect("error", client_id="second-conn"))["code"] == "rate_limited"


async def test_non_participants_are_refused_alike_for_existing_and_unknown_conversations(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    stranger = await Client.connect(g2.ws_url, token("patient", name="Eve"))
    unknown = "c" + uuid.uuid4().hex[:16]
    frames = {
        "send": lambda cid: send_frame(cid, "x-" + cid[:6], "let me in"),
        "history": lambda cid: {"type": "history", "conversation_id": cid},
        "typing": lambda cid: {"type": "typing", "conversation_id": cid},
        "end": lambda cid: {"type": "end", "conversation_id": cid},
        "block": lambda cid: {"type": "block", "conversation_id": cid},
        "feedback": lambda cid: {"type": "feedback", "conversation_id": cid, "rating": 1},
    }
    for ftype, make in frames.items():
        answers = []
        for cid in (pair.cid, unknown):
            await stranger.send(make(cid))
            err = await stranger.expect("error", ref=ftype)
            assert err["code"] == "forbidden", err
            answers.append({k: v for k, v in strip_cid(err).items() if k != "client_id"})
        assert answers[0] == answers[1], f"{ftype} reveals whether the conversation exists: {answers}"
    # nothing reached the pair, and the conversation is still open
    await pair.patient.send(send_frame(pair.cid, "ok", "hello"))
    assert (await pair.patient.expect("ack", client_id="ok"))["seq"] == 1
    await pair.survivor.expect("message", client_id="ok")
    assert not pair.survivor.of_type("typing") and not pair.survivor.of_type("ended")


async def test_history_pages_back_through_the_transcript(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    for i in range(1, 8):
        await pair.patient.send(send_frame(cid, f"h{i}", f"line {i}"))
        await pair.patient.expect("ack", client_id=f"h{i}")

    async def page(**kw):
        await pair.survivor.send({"type": "history", "conversation_id": cid, **kw})
        h = await pair.survivor.expect("history", conversation_id=cid)
        return [m["seq"] for m in h["messages"]], h["has_more"], h

    seqs, more, h = await page()
    assert (seqs, more) == ([1, 2, 3, 4, 5, 6, 7], False)
    assert h["messages"][0]["text"] == "line 1" and h["epoch"] == pair.epoch and h["state"] == "open"
    seqs, more, _ = await page(limit=3)
    assert (seqs, more) == ([5, 6, 7], True)
    seqs, more, _ = await page(before_seq=5, limit=3)
    assert (seqs, more) == ([2, 3, 4], True)
    seqs, more, _ = await page(before_seq=2, limit=3)
    assert (seqs, more) == ([1], False)
    seqs, more, _ = await page(before_seq=1)
    assert (seqs, more) == ([], False)
    await pair.survivor.send({"type": "history", "conversation_id": cid, "limit": 201})
    assert (await pair.survivor.expect("error", ref="history"))["code"] == "bad_frame"



async def test_typing_reaches_the_peer_is_throttled_and_is_never_stored(gateways, redis, prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    await pair.patient.send({"type": "typing", "conversation_id": cid})
    typing = await pair.survivor.expect("typing", conversation_id=cid)
    assert typing["from"] == {"name": "Pat", "role": "patient"}
    await pair.patient.send({"type": "typing", "conversation_id": cid})    # within the interval: dropped
    await pair.patient.send(send_frame(cid, "after-typing"))
    await pair.survivor.expect("message", client_id="after-typing")
    assert pair.survivor.of_type("typing") == []          # the second hint never came before the message
    assert not pair.patient.of_type("typing")             # and the typist is not told about themselves
    assert await redis.xlen(f"{prefix}:{{c:{cid}}}:log") == 1
    await pair.survivor.send({"type": "history", "conversation_id": cid})
    h = await pair.survivor.expect("history")
    assert [m["client_id"] for m in h["messages"]] == ["after-typing"]


async def test_end_tells_both_refuses_later_sends_and_frees_the_survivor_for_the_next_offer(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    waiting = await Client.connect(g1.ws_url, token("patient", name="Next"))
    await waiting.send({"type": "talk_now", "profile": PROFILE})
    await waiting.expect("queued")                         # the survivor's one slot is taken
    await pair.patient.send({"type": "end", "conversation_id": cid})
    for c in (pair.patient, pair.survivor):
        ended = await c.expect("ended", conversation_id=cid)
        assert ended["by"] == "patient"
    await pair.survivor.send(send_frame(cid, "late"))
    assert (await pair.survivor.expect("error", client_id="late"))["code"] == "conversation_ended"
    await pair.patient.send(send_frame(cid, "late-too"))
    assert (await pair.patient.expect("error", client_id="late-too"))["code"] == "conversation_ended"
    offer = await pair.survivor.expect("offer")
    assert offer["patient"] == {"name": "Next"}
    # the transcript stays readable after the end
    await pair.patient.send({"type": "history", "conversation_id": cid})
    assert (await pair.patient.expect("history"))["state"] == "ended"


async def test_feedback_is_taken_only_after_the_end_and_only_from_participants(gateways, redis, prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    await pair.patient.send({"type": "feedback", "conversation_id": cid, "rating": 5})
    assert (await pair.patient.expect("error", ref="feedback"))["code"] == "bad_frame"
    await pair.survivor.send({"type": "end", "conversation_id": cid})
    await pair.patient.expect("ended", conversation_id=cid, by="survivor")
    await pair.patient.send({"type": "feedback", "conversation_id": cid, "rating": 6})
    assert (await pair.patient.expect("error", ref="feedback"))["code"] == "bad_frame"
    await pair.patient.send({"type": "feedback", "conversation_id": cid, "rating": 5, "comment": "thank you"})
    await pair.patient.expect("feedback_saved", conversation_id=cid)
    await pair.survivor.send({"type": "feedback", "conversation_id": cid, "rating": 4})
    await pair.survivor.expect("feedback_saved", conversation_id=cid)
    meta = await redis.hgetall(f"{prefix}:{{c:{cid}}}:meta")
    assert (meta["patient_rating"], meta["patient_comment"], meta["survivor_rating"]) == ("5", "thank you", "4")


async def test_block_ends_the_conversation_and_the_pair_is_never_matched_again(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    await pair.patient.send({"type": "block", "conversation_id": cid})
    await pair.patient.expect("blocked", conversation_id=cid)
    for c in (pair.patient, pair.survivor):
        assert (await c.expect("ended", conversation_id=cid))["blocked"] is True
    await pair.survivor.send(send_frame(cid, "after-block"))
    assert (await pair.survivor.expect("error", client_id="after-block"))["code"] == "conversation_ended"
    # the blocked survivor is still available and suits the patient, yet gets no offer
    await pair.patient.send({"type": "talk_now", "profile": PROFILE})
    assert (await pair.patient.expect("queued"))["position"] == 1
    other = await Client.connect(g2.ws_url, token("survivor", name="Other"))
    await other.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
    offer = await other.expect("offer")
    assert offer["patient"] == {"name": "Pat"}
    assert not pair.survivor.of_type("offer")


async def test_resume_after_a_dropped_connection_delivers_exactly_the_missed_messages_first(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    for i in range(3):
        await pair.survivor.send(send_frame(cid, f"before{i}"))
    await wait_for(lambda: len(messages(pair.patient.frames, cid)) == 3, 5, "the first three messages")
    last_seq = messages(pair.patient.frames, cid)[-1][0]
    await pair.patient.close()
    for i in range(5):
        await pair.survivor.send(send_frame(cid, f"missed{i}"))
    await wait_for(lambda: len(outcomes(pair.survivor.frames, cid)) == 8, 5, "acks of the missed messages")
    # the survivor keeps talking while the patient reconnects on the other gateway
    live = asyncio.get_running_loop().create_task(_keep_sending(pair.survivor, cid, "live", 10))
    back = await Client.connect(g2.ws_url, pair.patient_token, resume={cid: last_seq})
    await live
    await wait_for(lambda: len(outcomes(pair.survivor.frames, cid)) == 18, 5, "acks of the live messages")
    await wait_for(lambda: len(messages(back.frames, cid)) >= 15, 5, "missed and live messages")
    got = messages(back.frames, cid)
    assert [seq for seq, _ in got] == list(range(last_seq + 1, 19)), got
    assert [c for _, c in got[:5]] == [f"missed{i}" for i in range(5)]
    report = check(outcomes(pair.survivor.frames, cid),
                   {"patient": messages(pair.patient.frames, cid) + got}, expect_all_seqs=True)
    assert report.ok(), report.summary()


async def _keep_sending(client: Client, cid: str, stem: str, n: int) -> None:
    for i in range(n):
        await client.send(send_frame(cid, f"{stem}{i}"))
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- invisible text (issue 11)

# Texts a reader sees as nothing: zero-width and format characters, bidi controls, Hangul fillers,
# the blank braille pattern, tag characters, and mixes of them with whitespace.
INVISIBLE_ONLY = ["\u200b\u200b", "\u202e", "\u3164", "\u2800", "\ufeff\u2060\u00ad", "\u180e", "\uffa0",
                  "\U000e0041\U000e007f", " \u200b\n\u3164\t\u2800 ", "\u2066\u2069\u200d", "\u2800" * 50,
                  " \t\n"]


async def test_messages_of_only_invisible_or_blank_characters_are_refused_as_empty(gateways, redis, prefix):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url)
    cid = pair.cid
    for i, text in enumerate(INVISIBLE_ONLY):
        await pair.patient.send(send_frame(cid, f"blank{i}", text))
        err = await pair.patient.expect("error", client_id=f"blank{i}")
        assert (err["code"], err["ref"], err["message"], err["conversation_id"]) == \
            ("bad_frame", "send", "A message needs some text.", cid), repr(text)
    # visible text with invisible characters around it is still a message, delivered as written
    await pair.patient.send(send_frame(cid, "real", "\u200bhello\u2800"))
    assert (await pair.patient.expect("ack", client_id="real"))["seq"] == 1
    got = await pair.survivor.expect("message", client_id="real")
    assert got["text"] == "\u200bhello\u2800" and got["seq"] == 1
    assert not pair.patient.of_type("ack") and not pair.survivor.of_type("message")
    assert await redis.xlen(f"{prefix}:{{c:{cid}}}:log") == 1


async def test_a_moderator_notice_of_only_invisible_characters_is_refused(gateways, redis, prefix):
    (g,) = gateways(1)
    pair = await match_pair(g.ws_url, g.ws_url)
    cid = pair.cid
    await pair.patient.send(send_frame(cid, "p1", "you are a worthless idiot"))     # a flag opens it to moderators
    await pair.patient.expect("ack", client_id="p1")
    mod = await Client.connect(g.ws_url, token("moderator", name="Mo"))
    for i, text in enumerate(["\u200b\u200b", "\u202e", "\u3164", "\u2800", " \u200b \u2800\n"]):
        await mod.send({"type": "notice", "conversation_id": cid, "text": text, "client_id": f"n{i}"})
        err = await mod.expect("error", ref="notice")
        assert (err["code"], err["field"]) == ("bad_frame", "text"), repr(text)
    await mod.send({"type": "notice", "conversation_id": cid, "text": "A moderator is here.", "client_id": "ok"})
    assert (await mod.expect("ack", ref="notice"))["seq"] == 2
    await pair.survivor.expect("message", client_id="ok")
    assert [f["client_id"] for f in pair.survivor.of_type("message")] == ["p1"]
    assert await redis.xlen(f"{prefix}:{{c:{cid}}}:log") == 2
    await mod.close()


async def test_format_characters_are_stripped_from_names_before_anyone_sees_them(gateways):
    g1, g2 = gateways(2)
    pair = await match_pair(g1.ws_url, g2.ws_url, patient_name="\u202eretarednoM",
                            survivor_name="\u2067Sam\u200b\u2069")
    cid = pair.cid
    assert pair.patient.welcome["user"]["name"] == "retarednoM"
    assert pair.survivor.welcome["user"]["name"] == "Sam"
    await pair.patient.send({"type": "typing", "conversation_id": cid})
    assert (await pair.survivor.expect("typing"))["from"] == {"name": "retarednoM", "role": "patient"}
    await pair.patient.send(send_frame(cid, "p1", "hi"))
    assert (await pair.survivor.expect("message", client_id="p1"))["from"] == {"name": "retarednoM",
                                                                              "role": "patient"}
    await pair.survivor.send(send_frame(cid, "s1", "hello"))
    assert (await pair.patient.expect("message", client_id="s1"))["from"] == {"name": "Sam", "role": "survivor"}
    # the peer as named in each side's welcome after a reconnect, and in the history
    back = await Client.connect(g2.ws_url, pair.survivor_token)
    (conv,) = back.welcome["conversations"]
    assert conv["peer"] == {"name": "retarednoM", "role": "patient"}
    await back.send({"type": "history", "conversation_id": cid})
    hist = await back.expect("history", conversation_id=cid)
    assert [m["from"]["name"] for m in hist["messages"]] == ["retarednoM", "Sam"]
    await back.close()


async def test_the_offer_names_the_patient_without_format_characters(gateways):
    (g,) = gateways(1)
    survivor = await Client.connect(g.ws_url, token("survivor", name="Sam"))
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
    await survivor.expect("availability")
    patient = await Client.connect(g.ws_url, token("patient", name="Pa\u00adt\u202e"))
    await patient.send({"type": "talk_now", "profile": PROFILE})
    offer = await survivor.expect("offer")
    assert offer["patient"]["name"] == "Pat"
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    assert (await patient.expect("matched"))["peer"]["name"] == "Sam"
    assert (await survivor.expect("matched"))["peer"]["name"] == "Pat"
    for c in (patient, survivor):
        await c.close()
