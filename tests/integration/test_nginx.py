"""deploy/nginx.conf in front of two gateway processes: match and chat through it, then kill -9
the gateway holding a client and watch the client come back through nginx to the survivor,
resume, and go on chatting with nothing lost or doubled."""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from support.chat_pair import match_pair, messages, outcomes, send_frame, wait_for
from support.checker import check
from support.gateway import Client, GatewayProcess, token
from support.nginx import NGINX, NginxProcess

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not os.path.exists(NGINX) or not shutil.which("redis-server"),
                                 reason="needs Debian's nginx")]


def gateway_id(g: GatewayProcess) -> str:
    with urllib.request.urlopen(g.url + "/healthz", timeout=2) as r:
        return json.load(r)["gateway"]


@pytest.fixture
def nginx_in_front(gateways, tmp_path):
    procs = gateways(2)
    proxy = NginxProcess([g.port for g in procs], tmp_path / "nginx").start()
    yield proxy, procs
    proxy.stop()


async def test_nginx_proxies_http_and_websockets_and_hides_metrics(nginx_in_front):
    proxy, procs = nginx_in_front
    with urllib.request.urlopen(proxy.url + "/readyz", timeout=2) as r:
        assert json.load(r)["status"] == "ready"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(proxy.url + "/metrics", timeout=2)
    assert refused.value.code == 404
    # least_conn spreads sockets over both gateways (they cost nothing but a connection each)
    ids = {gateway_id(g) for g in procs}
    clients = [await Client.connect(proxy.ws_url, token("patient")) for _ in range(4)]
    assert {c.welcome["gateway"] for c in clients} == ids
    for c in clients:
        await c.close()


async def test_a_gateway_killed_mid_chat_its_clients_resume_through_nginx_on_the_survivor(nginx_in_front):
    proxy, procs = nginx_in_front
    ids = {gateway_id(g): g for g in procs}
    pair = await match_pair(proxy.ws_url, proxy.ws_url)
    cid = pair.cid
    for i in range(6):
        await (pair.patient if i % 2 == 0 else pair.survivor).send(send_frame(cid, f"before{i}"))
    for c in (pair.patient, pair.survivor):
        await wait_for(lambda c=c: len(messages(c.frames, cid)) >= 6, 5, "messages through nginx")
    await wait_for(lambda: len(outcomes(pair.patient.frames, cid)) + len(outcomes(pair.survivor.frames, cid)) == 6,
                   5, "the acks of the messages through nginx")

    victim = ids[pair.patient.welcome["gateway"]]
    survivor_gw = next(g for g in procs if g is not victim)
    survivor_id = gateway_id(survivor_gw)
    last_seq = messages(pair.patient.frames, cid)[-1][0]
    victim.kill()
    # nginx closes the patient's socket when its gateway dies
    code, _ = await pair.patient.closed(timeout=5)
    assert code is not None and code != 1000

    # the survivor (if its socket still stands) keeps talking while the patient is away
    clients = {"survivor": pair.survivor}
    if pair.survivor.welcome["gateway"] != survivor_id:
        await pair.survivor.closed(timeout=5)
        clients["survivor"] = await Client.connect(proxy.ws_url, pair.survivor_token, resume={cid: last_seq})
    survivor = clients["survivor"]
    for i in range(4):
        await survivor.send(send_frame(cid, f"away{i}"))
    await wait_for(lambda: sum(1 for k in outcomes(survivor.frames, cid) if k.startswith("away")) == 4, 5,
                   "acks while the patient is away")

    # reconnect through nginx (twice: nginx must keep routing around the dead gateway)
    patient = await Client.connect(proxy.ws_url, pair.patient_token, resume={cid: last_seq})
    assert patient.welcome["gateway"] == survivor_id
    await wait_for(lambda: len(messages(patient.frames, cid)) >= 4, 5, "the messages missed while away")
    assert [c for _, c in messages(patient.frames, cid)[:4]] == [f"away{i}" for i in range(4)]
    first_session = messages(patient.frames, cid)
    await patient.close()
    patient = await Client.connect(proxy.ws_url, pair.patient_token, resume={cid: first_session[-1][0]})
    assert patient.welcome["gateway"] == survivor_id

    after = {f"after{i}" for i in range(6)}
    for i in range(6):
        await (patient if i % 2 == 0 else survivor).send(send_frame(cid, f"after{i}"))
    for c in (patient, survivor):
        await wait_for(lambda c=c: after <= {k for _, k in messages(c.frames, cid)}, 5, "chat after the kill")
    await wait_for(lambda: after <= set(outcomes(patient.frames, cid)) | set(outcomes(survivor.frames, cid)), 5,
                   "the acks of the chat after the kill")

    sent: dict = {}
    for c in {id(x): x for x in (pair.patient, pair.survivor, survivor, patient)}.values():
        sent.update(outcomes(c.frames, cid))
    seen_by_patient = messages(pair.patient.frames, cid) + first_session + messages(patient.frames, cid)
    seen_by_survivor = messages(pair.survivor.frames, cid)
    if survivor is not pair.survivor:
        seen_by_survivor += messages(survivor.frames, cid)
    report = check(sent, {"patient": seen_by_patient, "survivor": seen_by_survivor}, expect_all_seqs=True)
    assert report.ok(), report.summary()
    assert len(sent) == 16 and all(isinstance(v, int) for v in sent.values()), sent
    for c in (patient, survivor):
        await c.close()
    # nginx logged no request line with a token in it (tokens travel inside the socket, never in URLs)
    access = (proxy.dir / "logs" / "aftertalk-access.log").read_text()
    assert "GET /ws" in access and pair.patient_token not in access
