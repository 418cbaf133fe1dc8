"""Time ``Moderator.check`` over 10,000 realistic chat messages (about 1 in 8 flagged).

Usage: ``.venv/bin/python bench/moderation_bench.py [--messages N] [--seed S]``

Prints µs/message p50/p99/max for clean and flagged text separately, plus throughput. Each
message is timed in ``--passes`` passes and its fastest time is kept, so a busy machine's
scheduling noise does not swamp the cost of the check itself; the single-pass wall-clock
throughput is printed too. The message mix is synthetic: sentence fragments typical of
peer-support chat stitched into messages of 20-200 characters (median about 100), with flagged
fragments spliced in between sentences.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from chat.moderation import Moderator

CLEAN = [
    "How did your scan go yesterday?",
    "I finished my last round of chemo on Friday and I'm still so tired.",
    "The neuropathy in my feet is better since they lowered the dose.",
    "My oncologist said the lymph nodes were clear, fingers crossed.",
    "Did you have trouble going back to work after radiation?",
    "I'm at stage 2 and did 6 cycles in 2019, 50 mg twice a day.",
    "Scanxiety is real, my appointment is at 10:30 on Tuesday.",
    "Honestly the hair loss was harder than I expected.",
    "Thank you so much for listening, it really helps to talk to someone who gets it.",
    "My husband doesn't really understand the fear of recurrence.",
    "Stop by the pharmacy on your way home and ask about the mouth rinse.",
    "I skipped breakfast before chemo and felt awful, eat something small.",
    "The nurses were killing it today, so kind.",
    "This chemo is killing me, I slept 14 hours.",
    "I'm dying to hear how your daughter's wedding went!",
    "We tried ginger tea for the nausea, it helped a bit.",
    "Do you still get hot flashes on tamoxifen?",
    "I was treated 2019-2021 and I'm doing well now.",
    "Chemo brain is the worst, I forget words mid-sentence lol",
    "Sending you a big hug. You've got this 💪",
    "Mi médico dice que la fatiga es normal después del tratamiento.",
    "J'ai fini la radiothérapie la semaine dernière, ça va mieux.",
]
FLAGGED = [
    "I want to end my life",
    "honestly I don't want to live anymore",
    "k1ll mys3lf",
    "s u i c i d e",
    "call me at 555-123-4567",
    "add me on insta: jane_doe",
    "email me at jane.doe@gmail.com",
    "you idiot",
    "nobody cares about you",
    "stop your chemo",
    "replace chemo with juice cleanse",
    "je veux mourir",
]


def make_messages(n: int, rng: random.Random) -> list[tuple[str, bool]]:
    out = []
    for _ in range(n):
        parts = rng.sample(CLEAN, rng.choice((1, 1, 2, 2, 3)))
        while len(parts) > 1 and len(" ".join(parts)) > 170:
            parts.pop()
        flagged = rng.random() < 0.125
        if flagged:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(FLAGGED) + ".")
        out.append((" ".join(parts), flagged))
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    moderator = Moderator()
    build_ms = (time.perf_counter() - t0) * 1e3
    messages = make_messages(args.messages, random.Random(args.seed))
    for text, _ in messages[:500]:  # warm up caches and the allocator
        moderator.check(text)

    perf = time.perf_counter_ns
    best = [float("inf")] * len(messages)
    flagged = [False] * len(messages)
    throughput = 0.0
    for _ in range(args.passes):
        start = perf()
        for i, (text, _) in enumerate(messages):
            t = perf()
            verdict = moderator.check(text)
            best[i] = min(best[i], (perf() - t) / 1e3)
            flagged[i] = verdict.flagged
        throughput = max(throughput, len(messages) / ((perf() - start) / 1e9))
    # CPU time of a timer-free pass: what a message costs the core, even on a busy machine
    cpu = float("inf")
    for _ in range(args.passes):
        start = time.thread_time_ns()
        for text, _ in messages:
            moderator.check(text)
        cpu = min(cpu, (time.thread_time_ns() - start) / 1e3 / len(messages))
    timings: dict[str, list[float]] = {"clean": [], "flagged": []}
    for i, us in enumerate(best):
        timings["flagged" if flagged[i] else "clean"].append(us)
    mismatched = [text for (text, expect), got in zip(messages, flagged, strict=True) if expect != got]

    lengths = [len(t) for t, _ in messages]
    print(f"Moderator build: {build_ms:.1f} ms; {len(messages)} messages, "
          f"median length {statistics.median(lengths):.0f} chars")
    for kind, values in timings.items():
        if values:
            print(f"{kind:>8}: n={len(values):5d}  p50={pct(values, 0.50):6.1f} µs  "
                  f"p99={pct(values, 0.99):6.1f} µs  max={max(values):7.1f} µs")
    print(f"CPU time: {cpu:.1f} µs/message on average over the whole mix (best of {args.passes} passes)")
    print(f"throughput: {throughput:,.0f} messages/s on one core (best pass, including timer overhead); "
          f"verdicts differing from the generator's label: {len(mismatched)}")
    for text in mismatched[:5]:
        print("   differs:", text[:120])


if __name__ == "__main__":
    main()
