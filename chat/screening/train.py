"""Train the screening head: ``python -m chat.screening.train [--data DIR_OR_FILE ...]``.

Reads ``*.jsonl`` rows ``{"id","lang","text","labels","kind","group","split"}``, embeds the train
and dev splits with the frozen embedder, fits one RBF-kernel SVM per label (balanced class weights:
crisis messages are rare; Platt-scaled probabilities) for each C in a grid, keeps the C with the best
dev average precision, reports dev recall / false-positive rate at a few thresholds and at the
operating points read off the dev split, and writes ``chat/screening/model/head.npz`` (a
:class:`~chat.screening.head.KernelHead`, scored in pure numpy).

Why this shape: the test split is dropped as the rows are read, before anything is embedded, so
it cannot leak into fitting or tuning; only its size and group overlap are reported.  The fit is
deterministic (libsvm with a fixed seed for the Platt cross-validation, rows sorted by id), so the
same data gives the same head.  scikit-learn is imported here only: serving needs numpy and the
embedder, nothing else.  ``SVC(probability=True)`` is deprecated in scikit-learn 1.9 and goes in
1.11; the deprecation warnings are silenced here, and the head stores the fitted Platt parameters,
so serving is unaffected.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import json
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from chat.screening.embedder import SentenceEmbedder
from chat.screening.head import BinarySVM, KernelHead

LABELS: tuple[str, ...] = ("crisis", "abuse", "medical_advice")
SPLITS = ("train", "dev", "test")
C_GRID: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)
THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.5, 0.7, 0.9)
SEED = 0
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data"
DEFAULT_OUT = HERE / "model" / "head.npz"


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    lang: str
    text: str
    labels: frozenset[str]
    kind: str
    group: str
    split: str


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise SystemExit(f"{p}: no such file or directory")
        out.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    if not out:
        raise SystemExit(f"no .jsonl files in {', '.join(map(str, paths))}")
    return out


def _row(obj: Any, where: str) -> Row:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    missing = {"id", "lang", "text", "labels", "split"} - obj.keys()
    if missing:
        raise ValueError(f"{where}: missing {sorted(missing)}")
    labels = obj["labels"]
    if not isinstance(labels, list) or not set(labels) <= set(LABELS):
        raise ValueError(f"{where}: labels must be a subset of {LABELS}, got {labels!r}")
    if obj["split"] not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}, got {obj['split']!r}")
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: empty text")
    return Row(str(obj["id"]), str(obj["lang"]), text, frozenset(labels), str(obj.get("kind", "")),
               str(obj.get("group", "")), obj["split"])


def read_rows(paths: list[Path]) -> tuple[list[Row], dict[str, Any]]:
    """Train and dev rows sorted by id, plus facts about the test split (never its texts)."""
    kept: list[Row] = []
    seen: set[str] = set()
    test_groups: set[str] = set()
    n_test = 0
    for f in _files(paths):
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = _row(json.loads(line), f"{f.name}:{n}")
            if row.id in seen:
                raise ValueError(f"{f.name}:{n}: duplicate id {row.id!r}")
            seen.add(row.id)
            if row.split == "test":
                n_test += 1
                test_groups.add(row.group)
                continue
            kept.append(row)
    kept.sort(key=lambda r: r.id)
    groups = {s: {r.group for r in kept if r.split == s and r.group} for s in ("train", "dev")}
    test_groups.discard("")
    facts = {"n_test_rows_not_read": n_test,
             "groups_in_train_and_dev": len(groups["train"] & groups["dev"]),
             "groups_in_train_and_test": len(groups["train"] & test_groups)}
    return kept, facts


def data_hash(rows: list[Row]) -> str:
    """sha256 over the canonical JSON of the rows used, independent of file names and order."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.id, r.lang, r.text, sorted(r.labels), r.split], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _targets(rows: list[Row], label: str) -> npt.NDArray[np.int64]:
    return np.array([label in r.labels for r in rows], dtype=np.int64)


def _fit(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], c: float) -> Any:
    """One RBF SVM with Platt scaling (libsvm's internal 5-fold cross-validation, seeded)."""
    svm = importlib.import_module("sklearn.svm")
    clf = svm.SVC(kernel="rbf", C=c, gamma="scale", class_weight="balanced", probability=True,
                  random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # probability=True: deprecated in 1.9
        clf.fit(x, y)
    return clf


def _proba(clf: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """P(label applies); column 1 because classes_ is [0, 1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return np.asarray(clf.predict_proba(x)[:, 1], dtype=np.float64)


def _binary_svm(clf: Any) -> BinarySVM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # probA_ / probB_: deprecated in 1.9
        return BinarySVM(support=np.asarray(clf.support_), dual_coef=np.asarray(clf.dual_coef_[0]),
                         intercept=float(clf.intercept_[0]), gamma=float(clf._gamma),
                         prob_a=float(clf.probA_[0]), prob_b=float(clf.probB_[0]))


def _average_precision(y: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> float:
    metrics = importlib.import_module("sklearn.metrics")
    return float(metrics.average_precision_score(y, p))


def _log_loss(y: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> float:
    """Mean log-loss with both classes weighted equally, as in the balanced fit."""
    q = np.clip(p, 1e-7, 1 - 1e-7)
    pos = -np.mean(np.log(q[y == 1])) if y.any() else 0.0
    neg = -np.mean(np.log(1 - q[y == 0])) if (1 - y).any() else 0.0
    return float((pos + neg) / 2)


GRID = np.round(np.arange(0.01, 1.0, 0.005), 3)
# How the default operating points are read off the dev split (chat.screening.policy consumes them).
# Everything at or above "review" reaches a moderator's feed (as a review or a crisis flag), so its
# budget is the moderators' time: at most 10% of dev non-crisis messages.  A crisis alarm also shows
# the author crisis resources, so it may fire on at most 3% of them.  The two medium-severity labels
# take their best dev F1.
REVIEW_MAX_FPR = 0.10
CRISIS_MAX_FPR = 0.03
RULES = {"review": f"lowest threshold with dev crisis false-positive rate <= {REVIEW_MAX_FPR:.2f}",
         "crisis": f"lowest threshold with dev crisis false-positive rate <= {CRISIS_MAX_FPR:.2f} "
                   "(never below review)",
         "abuse": "threshold with the best dev F1", "medical_advice": "threshold with the best dev F1"}


def _rates(y: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    """Recall, false-positive rate and F1 at every threshold of :data:`GRID`."""
    flag = p[None, :] >= GRID[:, None]
    tp = (flag & (y == 1)).sum(1)
    fp = (flag & (y == 0)).sum(1)
    recall = tp / max(int(y.sum()), 1)
    fpr = fp / max(int((1 - y).sum()), 1)
    f1 = 2 * tp / np.maximum(2 * tp + fp + (int(y.sum()) - tp), 1)
    return recall, fpr, f1


def operating_points(dev: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]) -> dict[str, float]:
    """Default thresholds per :data:`RULES`, from dev labels and dev probabilities only."""
    out: dict[str, float] = {}
    _, fpr, _ = _rates(*dev["crisis"])
    # the false-positive rate only falls as the threshold rises, so the first grid point within
    # budget is the lowest threshold that keeps to it
    ok = np.flatnonzero(fpr <= REVIEW_MAX_FPR)
    out["review"] = float(GRID[ok[0]]) if ok.size else float(GRID[-1])
    ok = np.flatnonzero(fpr <= CRISIS_MAX_FPR)
    out["crisis"] = max(float(GRID[ok[0]]) if ok.size else float(GRID[-1]), out["review"])
    for label in ("abuse", "medical_advice"):
        _, _, f1 = _rates(*dev[label])
        out[label] = float(GRID[int(np.argmax(f1))])
    return out


def threshold_table(y: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> list[dict[str, float]]:
    """Recall, false-positive rate and precision at fixed thresholds, plus the highest threshold
    that still catches 95% of positives (what a crisis flag would most likely run at)."""
    pos, neg = int(y.sum()), int((1 - y).sum())
    ts = list(THRESHOLDS)
    if pos:
        ts.append(float(np.quantile(p[y == 1], 0.05, method="lower")))
    out = []
    for t in ts:
        flag = p >= t
        tp, fp = int(np.sum(flag & (y == 1))), int(np.sum(flag & (y == 0)))
        out.append({"threshold": round(t, 4), "recall": tp / pos if pos else float("nan"),
                    "fpr": fp / neg if neg else float("nan"), "precision": tp / max(tp + fp, 1)})
    return out


def _now() -> str:
    """UTC now, or SOURCE_DATE_EPOCH when set, so a rebuild can reproduce the file byte for byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _at_point(y: npt.NDArray[np.int64], p: npt.NDArray[np.float64], cut: float) -> dict[str, float]:
    flag = p >= cut
    pos, neg = int(y.sum()), int((1 - y).sum())
    return {"threshold": cut, "recall": round(float(np.mean(flag[y == 1])), 4) if pos else float("nan"),
            "fpr": round(float(np.mean(flag[y == 0])), 4) if neg else float("nan"),
            "precision": round(int(np.sum(flag & (y == 1))) / max(int(flag.sum()), 1), 4)}


def point_breakdown(rows: list[Row], y: npt.NDArray[np.int64], p: npt.NDArray[np.float64],
                    cut: float) -> dict[str, dict[str, dict[str, float]]]:
    """Share flagged at ``cut`` per kind (each kind is all-positive or all-negative, so this is
    its recall or its false-positive rate) and recall / FPR per language."""
    kinds = {k: {"n": int(m.sum()), "flagged": round(float(np.mean(p[m] >= cut)), 3)}
             for k in sorted({r.kind for r in rows}) if (m := np.array([r.kind == k for r in rows])).any()}
    langs: dict[str, dict[str, float]] = {}
    for lang in sorted({r.lang for r in rows}):
        m = np.array([r.lang == lang for r in rows])
        langs[lang] = {"recall": round(float(np.mean(p[m & (y == 1)] >= cut)), 3) if (m & (y == 1)).any()
                       else float("nan"),
                       "fpr": round(float(np.mean(p[m & (y == 0)] >= cut)), 3) if (m & (y == 0)).any()
                       else float("nan")}
    return {"by_kind": kinds, "by_lang": langs}


def train(paths: list[Path], out: Path, batch_size: int, refit: bool) -> KernelHead:
    np.random.seed(SEED)
    rows, facts = read_rows(paths)
    tr = [r for r in rows if r.split == "train"]
    dv = [r for r in rows if r.split == "dev"]
    print(f"train {len(tr)}  dev {len(dv)}  test {facts['n_test_rows_not_read']} (not read)  "
          f"languages {dict(Counter(r.lang for r in rows).most_common())}")
    if facts["groups_in_train_and_dev"] or facts["groups_in_train_and_test"]:
        print(f"warning: groups shared across splits: {facts}", file=sys.stderr)
    emb = SentenceEmbedder(batch_size=batch_size)
    x_tr, x_dv = emb.embed([r.text for r in tr]), emb.embed([r.text for r in dv])
    x_fit = np.concatenate([x_tr, x_dv]) if refit else x_tr
    svms: list[BinarySVM] = []
    chosen: dict[str, float] = {}
    report: dict[str, dict[str, Any]] = {}
    dev_scores: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}
    for label in LABELS:
        y_tr, y_dv = _targets(tr, label), _targets(dv, label)
        if y_tr.sum() == 0 or y_tr.sum() == len(y_tr):
            raise SystemExit(f"label {label!r}: train split needs both positive and negative rows")
        best: tuple[tuple[float, float], float, Any, npt.NDArray[np.float64]] | None = None
        for c in C_GRID:
            clf = _fit(x_tr, y_tr, c)
            p = _proba(clf, x_dv)
            ap = _average_precision(y_dv, p) if 0 < y_dv.sum() < len(y_dv) else 0.0
            loss = _log_loss(y_dv, p)
            print(f"  {label:15s} C={c:<6g} dev AP {ap:.3f}  dev log-loss {loss:.3f}  "
                  f"support vectors {len(clf.support_)}")
            # dev AP decides (to 3 places); ties go to the lower dev log-loss, so a tiny dev set whose
            # AP saturates does not pick a C that squashes every probability towards 0.5
            key = (round(ap, 3), -loss)
            if best is None or key > best[0]:
                best = (key, c, clf, p)
        assert best is not None
        (ap, _), c, clf, p_dv = best
        table = threshold_table(y_dv, p_dv)
        by_lang = {lang: round(float(np.mean(p_dv[(y_dv == 1) & langs] >= 0.5)), 3)
                   for lang in sorted({r.lang for r in dv})
                   if (langs := np.array([r.lang == lang for r in dv])).any() and y_dv[langs].sum()}
        kinds = sorted({r.kind for r in dv})
        by_kind = {k: round(float(np.mean(p_dv[m] >= 0.5)), 3)
                   for k in kinds if (m := np.array([r.kind == k for r in dv])).any()}
        chosen[label] = c
        dev_scores[label] = (y_dv, p_dv)
        report[label] = {"dev_ap": round(ap, 4), "C": c, "dev_positives": int(y_dv.sum()), "thresholds": table,
                         "dev_recall_at_0.5_by_lang": by_lang, "dev_flag_rate_at_0.5_by_kind": by_kind}
        print(f"{label}: C={c:g} dev AP {ap:.3f} ({int(y_dv.sum())} positives of {len(y_dv)})")
        for t in table:
            print(f"    p>={t['threshold']:<6g} recall {t['recall']:.3f}  FPR {t['fpr']:.3f}  "
                  f"precision {t['precision']:.3f}")
        print(f"    recall@0.5 by language: {by_lang}")
        print(f"    share flagged at 0.5 by kind: {by_kind}")
        if refit:
            clf = _fit(x_fit, np.concatenate([y_tr, y_dv]), c)
        svms.append(_binary_svm(clf))
    points = operating_points(dev_scores)
    for name, cut in points.items():
        y, p = dev_scores["crisis" if name == "review" else name]
        at = _at_point(y, p, cut)
        breakdown = point_breakdown(dv, y, p, cut)
        report.setdefault("operating_points", {})[name] = {**at, **breakdown}
        print(f"operating point {name:15s} {cut:.3f}: dev recall {at['recall']:.3f}  FPR {at['fpr']:.3f}  "
              f"precision {at['precision']:.3f}  ({RULES[name]})")
        print(f"    share flagged by kind: { {k: v['flagged'] for k, v in breakdown['by_kind'].items()} }")
        print(f"    recall / FPR by language: "
              f"{ {k: (v['recall'], v['fpr']) for k, v in breakdown['by_lang'].items()} }")
    used = tr + dv if refit else tr
    meta = {"embedder": {"name": emb.name, "version": emb.version, "canary": emb.fingerprint()},
            "training_data_sha256": data_hash(used), "dev_data_sha256": data_hash(dv),
            "trained_on": "train+dev" if refit else "train", "n_rows": len(used), "C": chosen,
            "model": "RBF-kernel SVM per label (sklearn SVC, gamma='scale', balanced class weights, Platt scaling)",
            "date": _now(),
            "dev_report": report, "split_facts": facts,
            "operating_points": points, "operating_point_rules": RULES,
            "note": "dev figures come from the train-only fit" + (" before the train+dev refit" if refit else "")}
    head = KernelHead.from_svms(svms, x_fit, LABELS, meta)
    if not refit:   # the numpy head must give the probabilities the operating points were read from
        gap = float(np.max(np.abs(head.scores(x_dv) - np.stack([dev_scores[lb][1] for lb in LABELS], 1))))
        print(f"numpy head vs scikit-learn on dev: max |difference| {gap:.2e}")
        if gap > 1e-4:
            raise SystemExit(f"the numpy kernel head disagrees with scikit-learn by {gap:.2e}")
    head.save(out)
    print(f"wrote {out} ({out.stat().st_size} bytes, {head.support_vectors.shape[0]} support vectors)")
    return head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chat.screening.train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA],
                    help="directories of *.jsonl, or .jsonl files (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the head (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--refit", action="store_true",
                    help="after choosing C on dev, refit on train+dev (dev figures then describe the train-only fit)")
    args = ap.parse_args(argv)
    train(args.data, args.out, args.batch_size, args.refit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
