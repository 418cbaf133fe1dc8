"""What a person does in the web client, for the browser tests: sign in, become available, press
Talk now, accept, send.  Everything goes through labels and roles, as a screen reader would."""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from playwright.async_api import expect

# the README's screenshots are written by `make screenshots` (AFTERTALK_SCREENSHOTS=docs/screenshots); any
# other run keeps its own in a scratch folder, so running the tests never changes a tracked file
SCREENSHOTS = Path(os.environ.get("AFTERTALK_SCREENSHOTS") or Path(tempfile.gettempdir()) / "aftertalk-screenshots")
PHONE = {"width": 390, "height": 844}
DESK = {"width": 1100, "height": 860}
PROFILE_LABEL = "Breast cancer"
expect.set_options(timeout=10_000)


async def sign_in(page: Any, role: str, name: str) -> None:
    await page.locator(f"#role-{role}").check()
    await page.get_by_label("A first name or pseudonym").fill(name)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator(f".page-{role}")).to_be_visible()


async def open_profile(page: Any) -> None:
    """Unfold the survivor's profile section (it starts unfolded only when there is no profile yet)."""
    settings = page.locator("details.settings")
    if not await settings.evaluate("d => d.open"):
        await settings.locator("summary").click()


async def become_available(page: Any) -> None:
    await open_profile(page)
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    switch = page.get_by_role("switch", name="Available for new chats")
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "true")


async def talk_now(page: Any) -> None:
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await page.get_by_role("button", name="Talk now").click()
    await expect(page.locator("#queue-position")).to_have_text(re.compile(r"in line"))


async def matched_pair(open_page: Callable[..., Awaitable[Any]], patient_url: str, survivor_url: str,
                       patient: str = "Pat", survivor: str = "Sam", patient_ws: Any = None) -> tuple[Any, Any]:
    """A survivor who is available and a patient who pressed Talk now, matched and in the chat.
    ``patient_ws``: a WebSocket route handler between the patient's page and the gateway."""
    s = await open_page(survivor_url, "survivor")
    await sign_in(s, "survivor", survivor)
    await become_available(s)
    p = await open_page(patient_url, "patient", route_ws=patient_ws)
    await sign_in(p, "patient", patient)
    await talk_now(p)
    offer = s.locator("article.offer")
    await expect(offer).to_be_visible()
    await offer.get_by_role("button", name="Accept").click()
    await expect(p.get_by_role("heading", name=f"You are talking with {survivor}")).to_be_visible()
    await expect(s.get_by_role("heading", name=f"You are talking with {patient}")).to_be_visible()
    return p, s


async def send(page: Any, text: str) -> None:
    box = page.locator(".chat:visible form.composer textarea")
    await box.fill(text)
    await box.press("Enter")


async def seqs(page: Any) -> list[int]:
    """The seq of every message element on the page's visible chat, in page order."""
    return await page.locator(".chat:visible .messages li.msg[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))")


async def texts(page: Any) -> list[str]:
    return await page.locator(".chat:visible .messages li.msg .text").all_text_contents()


async def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name), full_page=False, animations="disabled", caret="initial")


async def fits_the_screen(page: Any) -> bool:
    """No sideways scrolling: everything fits the viewport's width (a 375-390 px phone)."""
    return await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# ---- in any language: the same steps by ids and classes, not by English labels ----------------------

async def sign_in_as(page: Any, role: str, name: str) -> None:
    """sign_in() whatever the page's language."""
    await page.locator(f"#role-{role}").check()
    await page.locator("#name").fill(name)
    await page.locator("form.signin-demo button[type=submit]").click()
    await expect(page.locator(f".page-{role}")).to_be_visible()


async def choose_diagnosis(page: Any, code: str = "breast") -> None:
    await page.locator(".profile-fields select").first.select_option(code)


async def available(page: Any) -> None:
    """A signed-in survivor (any language) switches available with a diagnosis chosen."""
    settings = page.locator("details.settings")
    if not await settings.evaluate("d => d.open"):
        await settings.locator("summary").click()
    await choose_diagnosis(page)
    switch = page.locator("#available")
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "true")


# ---- accessibility: axe-core from npm (tests/browser/axe, installed by `make test`) -------------------

AXE = Path(__file__).resolve().parents[1] / "browser" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = ("serious", "critical")


async def axe_violations(page: Any, within: str | None = None) -> list[dict[str, Any]]:
    """The serious and critical axe-core violations on the page as it is now (WCAG 2.x A/AA and best practice)."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
    return await page.evaluate(
        """async ([within, serious]) => {
          const result = await axe.run(within ? document.querySelector(within) : document,
                                       { resultTypes: ["violations"] });
          return result.violations.filter((v) => serious.includes(v.impact)).map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(" ")}: ${n.failureSummary}`) }));
        }""", [within, list(SERIOUS)])


# ---- a page that can be told it is hidden, and that records its system notifications ---------------

HIDDEN_PAGE = """
(() => {
  let state = "visible";
  Object.defineProperty(Document.prototype, "visibilityState", { configurable: true, get() { return state; } });
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get() { return state === "hidden"; } });
  window.__setVisibility = (s) => { state = s; document.dispatchEvent(new Event("visibilitychange")); };
  const Real = window.Notification;
  window.__notes = [];
  if (!Real) return;
  function Recorded(title, options = {}) {
    const note = new Real(title, options);
    const entry = { title, body: options.body, tag: options.tag, note, closed: false };
    window.__notes.push(entry);
    const close = note.close.bind(note);
    note.close = () => { entry.closed = true; close(); };
    return note;
  }
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  Recorded.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Recorded;
})();
"""


async def notes(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate("window.__notes.map(({title, body, tag, closed}) => ({title, body, tag, closed}))")


async def focus_is_visible(page: Any) -> dict[str, Any]:
    """What has the focus, and whether a person can see it (:focus-visible with a real outline)."""
    return await page.evaluate("""() => {
      const el = document.activeElement;
      const style = el ? getComputedStyle(el) : null;
      return { tag: el?.tagName, id: el?.id, text: (el?.textContent || el?.value || "").trim().slice(0, 40),
               visible: Boolean(el && el !== document.body && el.matches(":focus-visible")
                                && style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2) };
    }""")


# ---- groups (docs/protocol.md, "Groups"; gateway/static/js/groups.js) ---------------------------------

async def sign_in_facilitator(page: Any, name: str) -> None:
    """Demo sign-in as a survivor who facilitates groups (the checkbox shown for the survivor role)."""
    await page.locator("#role-survivor").check()
    await page.get_by_label("I am a group facilitator").check()
    await page.get_by_label("A first name or pseudonym").fill(name)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator(".page-survivor")).to_be_visible()


async def open_groups(page: Any) -> None:
    """Switch a patient's or survivor's page to the Groups view."""
    await page.locator("nav.view-switch button[data-view=groups]").click()
    await expect(page.locator(".groups-view")).to_be_visible()


async def create_group(page: Any, title: str, *, capacity: int = 8, description: str = "",
                       weekly: tuple[str, str] | None = None) -> Any:
    """A facilitator (or moderator) in the Groups view creates a Breast cancer group in English and
    lands in its chat; ``weekly``: (day, "HH:MM").  Returns the group chat's locator."""
    box = page.locator("details.create-group")
    if not await box.evaluate("d => d.open"):
        await box.locator("summary").click()
    form = box.locator("form")
    await form.get_by_label("A diagnosis").check()
    await form.get_by_label("Topic", exact=True).select_option(label=PROFILE_LABEL)
    await form.get_by_label("Language", exact=True).select_option("en")
    await form.get_by_label("Title", exact=True).fill(title)
    if description:
        await form.get_by_label("Description (optional)").fill(description)
    await form.get_by_label("Largest number of members").fill(str(capacity))
    if weekly:
        await form.get_by_label("Meets every week").check()
        await form.get_by_label("Day", exact=True).select_option(label=weekly[0])
        await form.get_by_label("Start time").fill(weekly[1])
    await form.get_by_role("button", name="Create the group").click()
    chat = page.locator(".group-chat:visible")
    await expect(chat.get_by_role("heading", level=2)).to_have_text(title)
    return chat


async def group_send(page: Any, text: str) -> None:
    box = page.locator(".group-chat:visible form.composer textarea")
    await box.fill(text)
    await box.press("Enter")


async def group_texts(page: Any) -> list[str]:
    """The texts a person can see in their open group chat (hidden ones, e.g. from someone blocked, left out)."""
    return await page.locator(".group-chat:visible .messages li.msg:visible .text").all_text_contents()
