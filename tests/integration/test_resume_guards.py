"""Resume never pretends: a client ahead of the log is told, then given the log as it stands."""
from __future__ import annotations

from support.chat_pair import match_pair, send_frame
from support.gateway import Client


async def test_resume_ahead_of_the_log_says_recovery_failed_and_replays_the_log(gateways):
    (g,) = gateways(1)
    pair = await match_pair(g.ws_url, g.ws_url)
    for i in range(3):
        await pair.patient.send(send_frame(pair.cid, f"m{i}", f"text {i}"))
        await pair.patient.expect("ack", client_id=f"m{i}")
    await pair.patient.close()

    # as after a failover that lost acknowledged writes: the client has seen seq 7, the log ends at 3
    back = await Client.connect(g.ws_url, pair.patient_token, resume={pair.cid: {"seq": 7, "epoch": pair.epoch}})
    err = await back.expect("error", code="recovery_failed")
    assert err["conversation_id"] == pair.cid and err["reason"] == "log_behind"
    replay = [await back.expect("message", conversation_id=pair.cid) for _ in range(3)]
    assert [(m["seq"], m["text"]) for m in replay] == [(1, "text 0"), (2, "text 1"), (3, "text 2")]

    # a resume within the log is not an error
    again = await Client.connect(g.ws_url, pair.patient_token, resume={pair.cid: {"seq": 2, "epoch": pair.epoch}})
    assert (await again.expect("message", conversation_id=pair.cid))["seq"] == 3
    assert not again.of_type("error")
    for c in (back, again, pair.survivor):
        await c.close()
