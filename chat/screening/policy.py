"""What the model's scores mean: pure thresholds, no I/O.

The head gives one probability per label (``crisis``, ``abuse``, ``medical_advice``).  A score at
or above its label's threshold is a flag of that category, with the severity the phrase rules
give the same category, so a moderator sees one kind of flag whoever raised it.  Crisis has a
second, lower bound: a score in ``[review, crisis)`` is *uncertain*, and raises a low-severity
``review`` flag instead of a crisis alarm (no resources frame, no priority review) so that a
person looks at it without the service telling the author they seem to be in danger.

Every threshold is a setting (``AFTERTALK_SCREEN_*``, see the README); the defaults are the
operating points chosen on the dev split (docs/safety-eval.md), never on the test split.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CRISIS, ABUSE, MEDICAL_ADVICE, REVIEW = "crisis", "abuse", "medical_advice", "review"
SEVERITY = {CRISIS: "high", ABUSE: "medium", MEDICAL_ADVICE: "medium", REVIEW: "low"}


@dataclass(frozen=True, slots=True)
class Thresholds:
    crisis: float = 0.5
    review: float = 0.3          # lower end of the uncertain band; equal to ``crisis`` switches it off
    abuse: float = 0.7
    medical_advice: float = 0.7

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
