from __future__ import annotations

from support.gateway import Client, token

PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"]}


async def test_patient_and_survivor_on_two_gateways_match_and_chat(gateways):
    g1, g2 = gateways(2)
    survivor = await Client.connect(g2.ws_url, token("survivor", name="Sam"))
    await survivor.send({"type": "availability", "available": True, "profile": PROFILE, "max_chats": 1})
    avail = await survivor.expect("availability")
    assert avail["available"] is True
    patient = await Client.connect(g1.ws_url, token("patient", name="Pat"))
    await patient.send({"type": "talk_now", "profile": PROFILE})
    queued = await patient.expect("queued")
    assert queued["position"] == 1
    offer = await survivor.expect("offer")
    assert offer["patient"] == {"name": "Pat"}
    assert offer["shared"] == {"diagnoses": ["breast"], "side_effects": ["fatigue"]}
    await survivor.send({"type": "accept", "offer_id": offer["offer_id"]})
    m1 = await patient.expect("matched")
    m2 = await survivor.expect("matched")
    assert m1["conversation_id"] == m2["conversation_id"]
    assert m1["peer"] == {"name": "Sam", "role": "survivor"}
    cid = m1["conversation_id"]
    for i in range(5):
        await patient.send({"type": "send", "conversation_id": cid, "client_id": f"p{i}", "text": f"hello {i}"})
        await survivor.send({"type": "send", "conversation_id": cid, "client_id": f"s{i}", "text": f"hi {i}"})
    for i in range(5):
        assert (await patient.expect("ack", client_id=f"p{i}"))["seq"] >= 1
    got = [await survivor.expect("message", client_id=f"p{i}") for i in range(5)]
    assert [m["text"] for m in got] == [f"hello {i}" for i in range(5)]
    seqs_seen_by_patient = []
    for _ in range(10):
        seqs_seen_by_patient.append((await patient.expect("message"))["seq"])
    assert seqs_seen_by_patient == list(range(1, 11))
    await patient.close()
    await survivor.close()
