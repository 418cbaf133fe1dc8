"""The honest wait: what a waiting patient is told in ``queued``.  Pure: no I/O, no awaits.

The matcher's scripts count, at the moment they publish a ``queued`` frame, the survivors who fit
the request as it stands (a shared language, and a shared diagnosis or, unless the request still
holds out for the same diagnosis, a shared side effect; blocked, current and declined peers left
out) and split them in two: **available** now with a free slot (``fitting_available``), and
available but **busy** (in a conversation, an offer out, or a pause that will end).  They also hand
over the measured rate at which fitting survivors *became free*: for every topic class and language
("dx=breast|fi", "se=neuropathy|en") a count of the events "a survivor of that class switched
available, came online available, or finished a conversation", decayed exponentially with a
half-life (``half_life_s``, one hour by default) and stored as ``count|at|since`` (lib.lua
``note_free``).  This module turns those inputs into the estimate:

* nobody fits at all (no fitting survivor available, none busy who could free up): no estimate,
  ``estimated_wait_s`` is ``None`` and ``reason`` is ``"nobody_fits_now"``;
* someone fits, but no survivor of any of the request's classes has ever been seen becoming free:
  no estimate either, ``reason`` ``"not_measured"`` (never a made-up constant);
* otherwise ``position / rate`` seconds, where ``rate`` is the largest measured rate among the
  request's classes (a survivor counts in every class they belong to, so adding the classes up
  would count the same survivor several times; the largest is the conservative reading).

A class's rate is its decayed count over the time it covers: the decay's mean life
(``half_life_s / ln 2``), or, for a class first seen more recently, the time since then (at least
:data:`MIN_WINDOW_S`, so one event a second ago does not read as a flood).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NOBODY_FITS_NOW = "nobody_fits_now"
NOT_MEASURED = "not_measured"
MIN_WINDOW_S = 60.0          # a class's rate is never read over less than this
MAX_WAIT_S = 7 * 86400       # estimates are capped at a week


@dataclass(frozen=True, slots=True)
class FreeCount:
    """One topic class and language's decayed count of survivors becoming free."""

    count: float      # decayed to ``at``
    at: float         # the last event (Redis clock, epoch s)
    since: float      # the first event ever counted


@dataclass(frozen=True, slots=True)
class WaitEstimate:
    fitting_available: int
    estimated_wait_s: int | None
    reason: str | None = None


def parse_free_count(raw: str) -> FreeCount | None:
    """``"count|at|since"`` as stored by lib.lua ``note_free``; None for anything else."""
    parts = raw.split("|")
    if len(parts) != 3:
        return None
    try:
        count, at, since = (float(p) for p in parts)
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in (count, at, since)) or count < 0:
        return None
    return FreeCount(count, at, since)


def decayed(c: FreeCount, now: float, half_life_s: float) -> float:
    """The count as it stands at ``now`` (events lose half their weight every ``half_life_s``)."""
    return c.count * math.pow(2.0, -max(0.0, now - c.at) / half_life_s)


def class_rate(c: FreeCount, now: float, half_life_s: float) -> float:
    """Survivors of this class becoming free, per second, recently."""
    mean_life = half_life_s / math.log(2)
    window = max(MIN_WINDOW_S, min(mean_life, now - c.since))
    return decayed(c, now, half_life_s) / window


def estimate_wait(position: int, fitting_available: int, fitting_busy: int, counts: Iterable[FreeCount], *,
                  now: float, half_life_s: float) -> WaitEstimate:
    """What the ``queued`` frame says for a request at ``position`` (1 = next in line)."""
    if fitting_available <= 0 and fitting_busy <= 0:
        return WaitEstimate(max(0, fitting_available), None, NOBODY_FITS_NOW)
    rate = max((class_rate(c, now, half_life_s) for c in counts), default=0.0)
    if rate <= 0.0:
        return WaitEstimate(fitting_available, None, NOT_MEASURED)
    seconds = max(1, min(MAX_WAIT_S, round(max(1, position) / rate)))
    return WaitEstimate(fitting_available, seconds, None)


def public_queued(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A ``queued`` frame as the matcher's scripts publish it (with its ``wait`` inputs) → what clients get:
    ``{"type": "queued", "position", "fitting_available", "estimated_wait_s"[, "reason"]}``.  A frame
    without inputs (published by an older version during a rolling upgrade) is passed on as it is."""
    if "wait" not in raw:
        return {k: v for k, v in raw.items() if k != "refresh"}
    wait = raw.get("wait") or {}
    rates = wait.get("rates") or []
    counts = [c for c in (parse_free_count(r) for r in rates if isinstance(r, str)) if c is not None]
    position = int(raw.get("position") or 0)
    est = estimate_wait(position, int(raw.get("fitting_available") or 0), int(wait.get("busy") or 0), counts,
                        now=float(wait.get("now") or 0.0), half_life_s=float(wait.get("half_life_s") or 3600.0))
    out: dict[str, Any] = {"type": "queued", "position": position, "fitting_available": est.fitting_available,
                           "estimated_wait_s": est.estimated_wait_s}
    if est.reason is not None:
        out["reason"] = est.reason
    return out
