// Alerts for a page that is not being looked at: a survivor's offer, a patient's match.
//
// While the tab is hidden, raise(key, ...) shows a system notification (Notification API), puts the
// news in the tab's title, plays a short gentle chime (unless turned off; remembered) and vibrates
// where the device can.  Clicking the notification brings the tab forward and focuses what needs an
// answer.  clear(key) takes every trace away: the notification closes and the title comes back.
// Permission is asked for when it becomes useful (a survivor switching available), with one sentence
// of why, and the page says what a refusal means.

import { t } from "./i18n.js";
import { h } from "./ui.js";

const SOUND_KEY = "aftertalk.sound";
const BASE_TITLE = "Aftertalk";

function soundOn() {
  try { return localStorage.getItem(SOUND_KEY) !== "off"; } catch { return true; }
}

let audio = null;
/** Two soft sine notes, a fifth apart, quickly faded: noticeable, never alarming. */
function chime() {
  try {
    audio ||= new AudioContext();
    const now = audio.currentTime;
    for (const [i, freq] of [[0, 659.25], [1, 987.77]]) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "sine";
      osc.frequency.value = freq;
      const start = now + i * 0.18;
      gain.gain.setValueAtTime(0, start);
      gain.gain.linearRampToValueAtTime(0.08, start + 0.03);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.6);
      osc.connect(gain).connect(audio.destination);
      osc.start(start);
      osc.stop(start + 0.65);
    }
  } catch { /* no audio: the other signals remain */ }
}

export function alertsFor(role) {
  const pending = new Map();        // key -> {note, titleBar}
  const permissionNote = h("p", { class: "hint permission-note", role: "status", hidden: true });

  function title() {
    const last = [...pending.values()].at(-1);
    document.title = last ? `(${pending.size}) ${last.titleBar} — ${BASE_TITLE}` : BASE_TITLE;
  }

  function supported() {
    return typeof window.Notification === "function";
  }

  function explainRefusal() {
    permissionNote.hidden = false;
    permissionNote.textContent = role === "survivor" ? t("alerts.denied") : t("alerts.denied.patient");
  }

  /** Ask once, when it becomes useful; say why in one sentence, and what a refusal means. */
  async function askPermission() {
    if (!supported()) return;
    if (Notification.permission === "granted") { permissionNote.hidden = true; return; }
    if (Notification.permission === "denied") { explainRefusal(); return; }
    permissionNote.hidden = false;
    permissionNote.textContent = t("alerts.why");
    let answer = "default";
    try { answer = await Notification.requestPermission(); } catch { /* treated as not granted */ }
    if (answer === "granted") permissionNote.textContent = t("alerts.granted");
    else explainRefusal();
  }

  function raise(key, { title: heading, body, titleBar, focus, untilVisible = false }) {
    if (document.visibilityState !== "hidden" || pending.has(key)) return;
    const entry = { titleBar, note: null };
    pending.set(key, entry);
    title();
    if (supported() && Notification.permission === "granted") {
      try {
        const note = new Notification(heading, {
          body, tag: key, lang: document.documentElement.lang, dir: document.documentElement.dir,
          icon: "icons/icon-192.png", requireInteraction: true,
        });
        note.addEventListener("click", () => {
          window.focus();
          const target = focus?.();
          target?.scrollIntoView?.({ block: "center" });
          target?.focus();
          note.close();
        });
        entry.note = note;
      } catch { /* some browsers only notify from a service worker: the title and sound still tell */ }
    }
    if (soundOn()) chime();
    navigator.vibrate?.([180, 90, 180]);
    if (untilVisible) {
      const seen = () => {
        if (document.visibilityState !== "visible") return;
        document.removeEventListener("visibilitychange", seen);
        clear(key);
      };
      document.addEventListener("visibilitychange", seen);
    }
  }

  function clear(key) {
    const entry = pending.get(key);
    if (!entry) return;
    pending.delete(key);
    entry.note?.close();
    title();
  }

  /** "Play a sound" — on by default, remembered in this browser. */
  function soundToggle() {
    const box = h("input", { type: "checkbox", id: "alert-sound", checked: soundOn() });
    box.addEventListener("change", () => {
      try { localStorage.setItem(SOUND_KEY, box.checked ? "on" : "off"); } catch { /* not remembered */ }
    });
    return h("div", { class: "check sound" }, box,
      h("label", { for: "alert-sound", text: role === "survivor" ? t("alerts.sound") : t("alerts.sound.patient") }));
  }

  return { askPermission, raise, clear, soundToggle, permissionNote, pending };
}
