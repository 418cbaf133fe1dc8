"""A Jepsen-style checker for one conversation's message queue.  Pure: no I/O.

The tests record two histories while they inject faults:

* what each send came back with, per ``client_id``: the ``seq`` of its ``ack``,
  an error code (``"unavailable"``, ...), or ``None`` when neither came back
  (the connection died with the send in flight);
* what each receiver saw, in arrival order, as ``(seq, client_id)`` pairs.

:func:`check` classifies every message once per receiver and once overall
(the worst of its per-receiver classes):

``delivered``   acked, seen exactly once, with the acked seq, in seq order;
``lost``        acked and never seen (the one thing a durable queue must not do);
``duplicated``  seen more than once;
``reordered``   seen after a message with a higher seq (first sightings only);
``wrong_seq``   seen with a seq other than the one its ack carried;
``recovered``   not acked (error or no answer) yet seen: the outcome was unknown
                and the write did happen; allowed, not a fault;
``unexpected``  seen but never sent: a phantom;
``unanswered``  sent and neither acked nor refused: a silent drop *of the reply*
                (only a fault when the caller says every send must be answered).

Messages whose send got an error and that nobody saw are ``refused``: allowed.
A receiver may also be checked for ``gaps`` (seqs missing between 1 and the
highest it saw) when it is meant to see every message of the conversation.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Outcome = int | str | None              # acked seq | error code | no answer
FAULTS = ("lost", "duplicated", "reordered", "wrong_seq", "unexpected")
# worst first: a message's overall class is the first of these any receiver gave it
SEVERITY = ("lost", "unexpected", "wrong_seq", "duplicated", "reordered", "recovered", "delivered")


@dataclass
class ReceiverReport:
    name: str
    classes: dict[str, str] = field(default_factory=dict)    # client_id -> class
    gaps: list[int] = field(default_factory=list)            # seqs missing below the highest seen

    def count(self, cls: str) -> int:
        return sum(1 for c in self.classes.values() if c == cls)


@dataclass
class Report:
    overall: dict[str, str]                                  # client_id -> worst class
    receivers: dict[str, ReceiverReport]
    unanswered: list[str]
    refused: list[str]

    @property
    def counts(self) -> Counter[str]:
        counts = Counter(self.overall.values())
        counts["unanswered"] = len(self.unanswered)
        counts["refused"] = len(self.refused)
        counts["gaps"] = sum(len(r.gaps) for r in self.receivers.values())
        return counts

    def ok(self, *, allow_unanswered: bool = False) -> bool:
        c = self.counts
        return (all(c[f] == 0 for f in FAULTS) and c["gaps"] == 0
                and (allow_unanswered or c["unanswered"] == 0))

    def summary(self) -> str:
        c = self.counts
        parts = [f"{k}={c[k]}" for k in ("delivered", "recovered", "refused", *FAULTS, "unanswered", "gaps")]
        lines = [" ".join(parts)]
        for r in self.receivers.values():
            bad = {cid: cls for cid, cls in r.classes.items() if cls in FAULTS}
            if bad or r.gaps:
                lines.append(f"  {r.name}: {dict(list(bad.items())[:10])} gaps={r.gaps[:10]}")
        return "\n".join(lines)


def check(sent: Mapping[str, Outcome], seen: Mapping[str, Sequence[tuple[int, str]]], *,
          expect_all_seqs: bool = False) -> Report:
    """Classify every message of one conversation.

    ``sent``: client_id -> outcome, for every send of every sender (client ids are unique).
    ``seen``: receiver name -> the ``(seq, client_id)`` pairs it got, in arrival order.
    ``expect_all_seqs``: every receiver should see every seq from 1 to the highest it saw."""
    acked = {cid: o for cid, o in sent.items() if isinstance(o, int) and not isinstance(o, bool)}
    receivers: dict[str, ReceiverReport] = {}
    for name, frames in seen.items():
        report = receivers[name] = ReceiverReport(name)
        times_seen: Counter[str] = Counter(cid for _, cid in frames)
        first_seq: dict[str, int] = {}
        reordered: set[str] = set()
        highest = 0
        for seq, cid in frames:
            if cid in first_seq:
                continue
            first_seq[cid] = seq
            if seq < highest:
                reordered.add(cid)
            highest = max(highest, seq)
        for cid in sent:
            if cid in acked and cid not in first_seq:
                report.classes[cid] = "lost"
            elif cid not in first_seq:
                continue                                 # refused or unanswered, and not seen: fine here
            elif times_seen[cid] > 1:
                report.classes[cid] = "duplicated"
            elif cid in acked and first_seq[cid] != acked[cid]:
                report.classes[cid] = "wrong_seq"
            elif cid in reordered:
                report.classes[cid] = "reordered"
            else:
                report.classes[cid] = "delivered" if cid in acked else "recovered"
        for cid in first_seq:
            if cid not in sent:
                report.classes[cid] = "unexpected"
        if expect_all_seqs:
            have = {seq for seq, _ in frames}
            report.gaps = [s for s in range(1, max(have, default=0) + 1) if s not in have]
    overall: dict[str, str] = {}
    for cid in {*sent, *(c for r in receivers.values() for c in r.classes)}:
        classes = [r.classes[cid] for r in receivers.values() if cid in r.classes]
        if classes:
            overall[cid] = min(classes, key=SEVERITY.index)
    unanswered = sorted(cid for cid, o in sent.items() if o is None)
    refused = sorted(cid for cid, o in sent.items() if isinstance(o, str) and cid not in overall)
    return Report(overall, receivers, unanswered, refused)
