"""The web client in the reader's language, and volunteers alerted when the tab is hidden.

A patient whose browser prefers Spanish sees every screen in Spanish (the vocabulary's labels and the
crisis panel too, with the lines for their locale); a moderator switches to German in the header and
it is remembered; an Arabic page is laid out right to left; a hidden survivor page gets a system
notification and a title when an offer arrives, clicking it focuses the offer, and nothing is left
once it is answered; a patient matched while hidden is told the same way.
Screenshots go to docs/screenshots/ (the README shows the Spanish and the Arabic ones)."""
from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from support.gateway import Client, token
from support.webpage import (
    DESK,
    HIDDEN_PAGE,
    become_available,
    choose_diagnosis,
    fits_the_screen,
    notes,
    screenshot,
    send,
    sign_in,
    sign_in_as,
)

pytestmark = pytest.mark.browser
SURVIVOR_PROFILE = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en", "es", "ar"]}


async def survivor_client(g, name: str = "Sam") -> Client:
    """An available survivor through the protocol (cheaper than another browser)."""
    client = await Client.connect(g.ws_url, token("survivor", name=name))
    await client.send({"type": "availability", "available": True, "profile": SURVIVOR_PROFILE, "max_chats": 1})
    await client.expect("availability")
    return client


async def accept_offer(client: Client) -> dict:
    offer = await client.expect("offer", timeout=10)
    await client.send({"type": "accept", "offer_id": offer["offer_id"]})
    return await client.expect("matched", timeout=10)


async def test_a_patient_whose_browser_prefers_spanish_sees_every_screen_in_spanish(web, open_page):
    (g,) = web(1)
    p = await open_page(g.url, "patient", locale="es-MX")
    html = p.locator("html")
    await expect(html).to_have_attribute("lang", "es")
    await expect(html).to_have_attribute("dir", "ltr")
    # sign-in
    await expect(p.get_by_role("heading", name="Te damos la bienvenida a Aftertalk")).to_be_visible()
    await expect(p.get_by_label("Idioma")).to_have_value("es")
    await p.get_by_label("Me gustaría hablar").check()
    await p.get_by_label("Un nombre de pila o un seudónimo").fill("Lucía")
    await p.get_by_role("button", name="Continuar").click()
    # profile, with the vocabulary's Spanish labels
    await expect(p.get_by_role("heading", name="Habla con alguien que ha pasado por lo mismo")).to_be_visible()
    await expect(p.locator("#who")).to_contain_text("paciente")
    await p.get_by_label("Tu diagnóstico").select_option(label="Cáncer de mama")
    await p.locator("details.pick").first.locator("summary").click()
    await p.get_by_label("Cansancio").check()
    await expect(p.locator("details.pick").first.locator("summary")).to_have_text(
        "Efectos secundarios y temas: Cansancio")
    await expect(p.locator("details.pick").nth(1).locator("summary")).to_have_text("Idiomas: Español")
    await screenshot(p, "patient-profile-es.png")
    # waiting
    await p.get_by_role("button", name="Hablar ahora").click()
    # nobody is online yet: the honest wait (issue 14), in Spanish, with what was asked for in words
    await expect(p.get_by_role("heading", name="Ahora mismo no hay nadie libre que encaje")).to_be_visible()
    await expect(p.locator("#queue-position")).to_have_text("Eres la siguiente persona en la fila.")
    await expect(p.locator("#queue-wait")).to_have_text(re.compile(
        r"^Ahora mismo no hay nadie libre que comparta Cáncer de mama o Cansancio y hable Español"))
    await expect(p.get_by_role("heading", name="Si no puedes esperar")).to_be_visible()
    # the chat
    sam = await survivor_client(g)
    await accept_offer(sam)
    await expect(p.get_by_role("heading", name="Estás hablando con Sam")).to_be_visible()
    await expect(p.locator(".shared")).to_contain_text("Tenéis en común: Cáncer de mama · Cansancio")
    await expect(p.locator(".shared")).to_contain_text("Sam ve tu nombre «Lucía»")
    await send(p, "Hola, me diagnosticaron el mes pasado.")
    await expect(p.locator(".messages li.msg.mine .status")).to_have_text(["Enviado"])
    await expect(p.locator(".messages li.msg.mine .who")).to_have_text("Tú")
    # the crisis panel: the page's words, and the lines for the author's locale in their language
    await send(p, "A veces quiero acabar con mi vida. I want to end my life.")
    panel = p.locator("#resources")
    await expect(panel).to_be_visible()
    await expect(panel.get_by_role("heading")).to_have_text("No tienes que pasar por esto a solas")
    await expect(panel).to_contain_text("llama ahora al número de emergencias de tu país")
    await expect(panel.locator(".lines")).to_contain_text("Servicios de emergencia")
    await expect(panel.get_by_role("button", name="Ocultar")).to_be_visible()
    await screenshot(p, "patient-crisis-es.png")
    frame = await sam.expect("message", timeout=5)
    assert frame["conversation_id"]
    # ended, with feedback
    await sam.send({"type": "end", "conversation_id": frame["conversation_id"]})
    await expect(p.locator(".ended-text")).to_have_text("Sam ha terminado la conversación.")
    await expect(p.get_by_role("group", name="¿Qué tal fue esta conversación?")).to_be_visible()
    await p.get_by_label("5 — Justo lo que necesitaba").check()
    await p.get_by_role("button", name="Enviar opinión").click()
    await expect(p.get_by_text("Gracias por tu opinión.")).to_be_visible()
    assert await fits_the_screen(p)
    await sam.close()


async def test_the_vocabulary_endpoint_answers_in_the_asked_language_and_says_which(web):
    import httpx

    (g,) = web(1)
    async with httpx.AsyncClient() as http:
        es = (await http.get(f"{g.url}/api/vocabulary", params={"lang": "es-MX"})).json()
        ko = (await http.get(f"{g.url}/api/vocabulary", params={"lang": "ko"})).json()     # none shipped
        plain = (await http.get(f"{g.url}/api/vocabulary")).json()
    assert es["lang"] == "es"
    assert es["diagnoses"][0] == {"code": "breast", "label": "Cáncer de mama", "lang": "es"}
    assert [e["code"] for e in es["side_effects"]] == [e["code"] for e in plain["side_effects"]]
    assert ko["diagnoses"][0] == {"code": "breast", "label": "Breast cancer", "lang": "en", "fallback": True}
    assert plain["diagnoses"][0] == {"code": "breast", "label": "Breast cancer"}


async def test_a_moderator_switches_to_german_and_it_is_remembered(web, open_page):
    (g,) = web(1)
    m = await open_page(g.url, "moderator", viewport=DESK, locale="en-GB")
    await sign_in(m, "moderator", "Mo")
    await expect(m.get_by_role("heading", name=re.compile("Flags needing review"))).to_be_visible()
    await m.locator("#who").get_by_label("Language").select_option("de")
    await expect(m.locator("html")).to_have_attribute("lang", "de")
    await expect(m.get_by_role("heading", name=re.compile("Zu prüfende Meldungen"))).to_be_visible()
    await expect(m.get_by_text("Keine offenen Meldungen.")).to_be_visible()
    await expect(m.get_by_role("tab", name="Prüfprotokoll")).to_be_visible()
    await expect(m.locator("#who")).to_contain_text("Moderation")
    await expect(m.get_by_role("button", name="Abmelden")).to_be_visible()
    await m.get_by_role("tab", name="Prüfprotokoll").click()
    await expect(m.get_by_role("columnheader", name="Wann")).to_be_visible()
    await m.reload()                      # remembered
    await expect(m.get_by_role("heading", name=re.compile("Zu prüfende Meldungen"))).to_be_visible()
    await m.evaluate("document.activeElement?.blur()")      # no focus ring around the page in the picture
    await screenshot(m, "moderator-feed-de.png")


async def test_an_arabic_page_is_laid_out_right_to_left(web, open_page):
    (g,) = web(1)
    p = await open_page(g.url, "patient", locale="ar-EG")
    html = p.locator("html")
    await expect(html).to_have_attribute("lang", "ar")
    await expect(html).to_have_attribute("dir", "rtl")
    await expect(p.get_by_role("heading", name="أهلًا بك في Aftertalk")).to_be_visible()
    await sign_in_as(p, "patient", "ليلى")
    await choose_diagnosis(p)
    await p.locator("button.talk-now").click()
    sam = await survivor_client(g)
    await accept_offer(sam)
    await expect(p.get_by_role("heading", name="أنت تتحدث مع Sam")).to_be_visible()
    await expect(p.locator(".shared")).to_contain_text("سرطان الثدي")
    await send(p, "مرحبًا، شُخّصت الشهر الماضي.")
    await expect(p.locator(".messages li.msg.mine .status")).to_have_text(["أُرسلت"])
    # right to left: my own message sits on the left edge, the composer's send button left of the box
    mine = await p.locator(".messages li.msg.mine").bounding_box()
    log = await p.locator(".messages").bounding_box()
    assert mine and log and mine["x"] - log["x"] < 4, (mine, log)
    box = await p.locator("form.composer textarea").bounding_box()
    button = await p.locator("form.composer button").bounding_box()
    assert box and button and button["x"] < box["x"]
    assert await p.evaluate("getComputedStyle(document.querySelector('.chat')).direction") == "rtl"
    assert await fits_the_screen(p)
    await screenshot(p, "patient-chat-ar.png")
    await sam.close()


async def test_a_hidden_survivor_page_is_notified_of_an_offer_and_the_click_focuses_it(web, open_page):
    (g,) = web(1)
    s = await open_page(g.url, "survivor", permissions=["notifications"], init_script=HIDDEN_PAGE)
    await sign_in(s, "survivor", "Sam")
    await expect(s.locator("#alert-sound")).to_be_checked()
    await s.get_by_label("Play a gentle sound when someone asks to talk").uncheck()   # remembered
    await become_available(s)
    await expect(s.locator(".permission-note")).to_be_hidden()        # granted already: nothing to ask
    await s.get_by_role("button", name="Sign out").focus()            # looking at something else
    await s.evaluate("window.__setVisibility('hidden')")

    patient = await Client.connect(g.ws_url, token("patient", name="Pat"))
    await patient.send({"type": "talk_now", "profile": {"diagnoses": ["breast"], "side_effects": [],
                                                        "languages": ["en"]}})
    offer = s.locator("article.offer")
    await expect(offer).to_be_visible()
    await expect(s).to_have_title(re.compile(r"^\(1\) Someone would like to talk"))
    [note] = await notes(s)
    assert note["title"] == "Pat would like to talk"
    assert note["body"] == "You share: Breast cancer"
    assert not note["closed"]
    accept = offer.get_by_role("button", name="Accept")
    await expect(accept).not_to_be_focused()

    # the person clicks the notification: the tab comes forward with the offer in focus
    await s.evaluate("window.__setVisibility('visible')")
    await s.evaluate("window.__notes[0].note.dispatchEvent(new Event('click'))")
    await expect(accept).to_be_focused()
    await s.keyboard.press("Enter")
    await expect(s.get_by_role("heading", name="You are talking with Pat")).to_be_visible()
    # nothing remains once it is answered
    await expect(s).to_have_title("Aftertalk")
    assert [n["closed"] for n in await notes(s)] == [True]
    assert await s.evaluate("localStorage.getItem('aftertalk.sound')") == "off"
    await patient.close()


async def test_a_patient_matched_while_hidden_is_told_and_it_clears_when_they_look(web, open_page):
    (g,) = web(1)
    p = await open_page(g.url, "patient", permissions=["notifications"], init_script=HIDDEN_PAGE)
    await sign_in(p, "patient", "Pat")
    await choose_diagnosis(p)
    await p.get_by_role("button", name="Talk now").click()
    await expect(p.locator("#queue-position")).to_have_text(re.compile("in line"))
    await p.evaluate("window.__setVisibility('hidden')")
    sam = await survivor_client(g)
    await accept_offer(sam)
    await expect(p).to_have_title(re.compile(r"A volunteer is here"))
    [note] = await notes(p)
    assert note["title"] == "You are connected with Sam"
    await p.evaluate("window.__setVisibility('visible')")
    await expect(p).to_have_title("Aftertalk")
    assert [n["closed"] for n in await notes(p)] == [True]
    await sam.close()
