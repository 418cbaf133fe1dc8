"""What the model's scores mean: pure thresholds, no I/O.

The head gives one probability per label (``crisis``, ``abuse``, ``medical_advice``).  A score at
or above its label's threshold is a flag of that category, with the severity the phrase rules
give the same category, so a moderator sees one kind of flag whoever raised it.  Crisis has a
second, lower bound: a score in ``[review, crisis)`` is *uncertain*, and raises a low-severity
``review`` flag instead of a crisis alarm (no resources frame, no priority review) so that a
person looks at it without the service telling the author they seem to be in danger.

Everything at or above ``review`` reaches a moderator's feed (as a review or a crisis flag), so
``review`` is set by the moderators' budget; a crisis alarm also shows the author crisis resources,
so ``crisis`` sits where false alarms are rarer still.  Every threshold is a setting
(``AFTERTALK_SCREEN_*``, see the README); the defaults are the operating points chosen on the dev
split when the head was trained (``chat.screening.train.RULES``: review = lowest threshold with a
dev crisis false-positive rate <= 0.10, crisis = lowest with <= 0.03 and never below review, abuse
and medical advice = best dev F1; docs/safety-eval.md), never on the test split.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CRISIS, ABUSE, MEDICAL_ADVICE, REVIEW = "crisis", "abuse", "medical_advice", "review"
SEVERITY = {CRISIS: "high", ABUSE: "medium", MEDICAL_ADVICE: "medium", REVIEW: "low"}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The operating points; their defaults live in one place, the settings (gateway/settings.py)."""

    crisis: float
    review: float                # lower end of the uncertain band; equal to ``crisis`` switches it off
    abuse: float
    medical_advice: float

    def __post_init__(self) -> None:
        for name in ("crisis", "review", "abuse", "medical_advice"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"screening threshold {name} must be in (0, 1], not {value!r}")
        if self.review > self.crisis:
            raise ValueError(f"the review threshold ({self.review}) must not be above the crisis one ({self.crisis})")


@dataclass(frozen=True, slots=True)
class ModelHit:
    category: str
    severity: str
    score: float


def decide(scores: Mapping[str, float], t: Thresholds) -> list[ModelHit]:
    """The flags one message's scores call for, most severe first.  Labels the head does not
    have simply raise nothing."""
    hits: list[ModelHit] = []
    crisis = scores.get(CRISIS)
    if crisis is not None:
        if crisis >= t.crisis:
            hits.append(ModelHit(CRISIS, SEVERITY[CRISIS], crisis))
        elif crisis >= t.review:
            hits.append(ModelHit(REVIEW, SEVERITY[REVIEW], crisis))
    for label, bound in ((ABUSE, t.abuse), (MEDICAL_ADVICE, t.medical_advice)):
        score = scores.get(label)
        if score is not None and score >= bound:
            hits.append(ModelHit(label, SEVERITY[label], score))
    rank = {"high": 0, "medium": 1, "low": 2}
    return sorted(hits, key=lambda h: rank[h.severity])
