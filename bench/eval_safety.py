"""``make eval-safety``: the screening's quality on held-out data, its operating thresholds, its speed.

Two held-out sets, neither ever used to fit or to tune anything:

* the data set's **test split** (``chat/screening/data/*.jsonl``, ``split == "test"``), written
  with the training data;
* the **independent set** (``bench/data/safety_independent.jsonl``), written separately by
  someone who never saw the data set: indirect crisis language and cancer-life hard negatives in
  13 languages.

For each, per category and per language: recall and false-positive rate of the rules alone and
of rules + model, at the operating thresholds (the settings' defaults, chosen on the dev split).
"rules + model" counts a message as flagged when either raises the category; for crisis, "on the
feed" also counts the model's low-severity ``review`` flags, since those reach moderators too.
Then throughput (messages per second on one core, batched as the worker does) and the worker's
memory.  ``--json FILE`` also writes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")          # one core: the figure is per core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

CATEGORIES = ("crisis", "abuse", "medical_advice")


def load_rows(split: str) -> list[dict]:
    rows = []
    for path in sorted((ROOT / "chat/screening/data").glob("*.jsonl")):
        rows += [r for r in map(json.loads, path.read_text("utf-8").splitlines()) if r["split"] == split]
    return rows


def load_independent() -> list[dict]:
    path = ROOT / "bench/data/safety_independent.jsonl"
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return [{**r, "labels": ["crisis"] if r["label"] == "crisis" else []} for r in rows]


def rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def evaluate(rows: list[dict], scores: list[dict[str, float]], rule_cats: list[tuple[str, ...]],
             thresholds: object) -> dict:
    from chat.screening.policy import REVIEW, decide

    out: dict = {}
    for cat in CATEGORIES:
        if not any(cat in r["labels"] for r in rows):
            continue
        per: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for r, s, rc in zip(rows, scores, rule_cats, strict=True):
            model = {h.category for h in decide(s, thresholds)}  # type: ignore[arg-type]
            rule = cat in rc
            both = rule or cat in model
            feed = both or (cat == "crisis" and REVIEW in model)
            kind = "pos" if cat in r["labels"] else "neg"
            for lang in (r["lang"], "all"):
                per[lang][f"rules_{kind}"].append(rule)
                per[lang][f"both_{kind}"].append(both)
                per[lang][f"feed_{kind}"].append(feed)
        out[cat] = {lang: {"positives": len(v["rules_pos"]), "negatives": len(v["rules_neg"]),
                           "rules_recall": rate(v["rules_pos"]), "rules_fpr": rate(v["rules_neg"]),
                           "model_recall": rate(v["both_pos"]), "model_fpr": rate(v["both_neg"]),
                           "feed_recall": rate(v["feed_pos"]), "feed_fpr": rate(v["feed_neg"])}
                    for lang, v in per.items()}
    return out


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def print_table(title: str, result: dict) -> None:
    print(f"\n## {title}\n")
    for cat, langs in result.items():
        feed = cat == "crisis"
        print(f"### {cat}\n")
        head = "| lang | pos | neg | rules recall | rules FPR | rules+model recall | rules+model FPR |"
        print(head + (" on the feed recall | on the feed FPR |" if feed else ""))
        print("|---" * (9 if feed else 7) + "|")
        for lang in sorted(langs, key=lambda k: (k != "all", k)):
            v = langs[lang]
            line = (f"| {lang} | {v['positives']} | {v['negatives']} | {fmt(v['rules_recall'])} "
                    f"| {fmt(v['rules_fpr'])} | {fmt(v['model_recall'])} | {fmt(v['model_fpr'])} |")
            print(line + (f" {fmt(v['feed_recall'])} | {fmt(v['feed_fpr'])} |" if feed else ""))
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="a head (.npz) other than the packaged one")
    parser.add_argument("--json", default="", help="also write every figure to this file")
    args = parser.parse_args(argv)

    from chat.moderation import Moderator
    from chat.screening.scorer import Scorer
    from gateway.screening import thresholds
    from gateway.settings import Settings

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    scorer = Scorer.load(args.model or None)
    load_s = time.perf_counter() - started
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    settings = Settings()
    t = thresholds(settings)
    moderator = Moderator()
    report: dict = {"thresholds": {"crisis": t.crisis, "review": t.review, "abuse": t.abuse,
                                   "medical_advice": t.medical_advice},
                    "model": scorer.head.metadata.get("trained_at") or scorer.head.metadata.get("date")}
    print("# Screening evaluation (held-out data only)\n")
    print(f"operating thresholds: crisis {t.crisis}, review band [{t.review}, {t.crisis}), abuse {t.abuse}, "
          f"medical_advice {t.medical_advice}  (settings' defaults, chosen on the dev split)")
    for name, rows in (("test split of the data set", load_rows("test")),
                       ("independent held-out set", load_independent())):
        texts = [r["text"] for r in rows]
        scores = scorer.score(texts)
        rule_cats = [moderator.check(x).categories for x in texts]
        result = evaluate(rows, scores, rule_cats, t)
        report[name] = result
        print_table(f"{name} ({len(rows)} messages)", result)

    sample = [r["text"] for r in load_rows("test")]
    sample = (sample * (1 + 1024 // max(1, len(sample))))[:1024]
    started = time.perf_counter()
    for i in range(0, len(sample), settings.screening_batch):
        scorer.score(sample[i:i + settings.screening_batch])
    elapsed = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    report["throughput_msgs_per_s"] = len(sample) / elapsed
    report["load_s"] = load_s
    report["rss_mb"] = {"before_load": rss_before / 1024, "after_load": rss_loaded / 1024,
                        "peak": cpu.ru_maxrss / 1024}
    print("## speed and memory\n")
    print(f"scoring: {len(sample)} messages in batches of {settings.screening_batch}: {elapsed:.2f} s wall, "
          f"{len(sample) / elapsed:.0f} messages/s on one core (BLAS threads 1)")
    print(f"model load {load_s:.1f} s; worker memory (max RSS): {rss_before / 1024:.0f} MB before load, "
          f"{rss_loaded / 1024:.0f} MB loaded, {cpu.ru_maxrss / 1024:.0f} MB peak")
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
