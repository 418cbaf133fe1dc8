"""Rule-based moderation of chat messages: every message passes through ``Moderator.check``
on the gateway's hot path before it is delivered, so everything is compiled once up front and
clean text takes a cheap path (a few C-level regex passes and one set intersection).

Two kinds of rules, both per category (``chat/data/moderation_rules.json``):

* **phrases** run on a *canonical* form of the text, which makes them whole-word, case- and
  accent-insensitive and robust to light obfuscation: NFKD + combining marks stripped, casefold,
  leetspeak inside words (``k1ll mys3lf``; 0>o 1>i|l 3>e 4>a 5>s 7>t @>a $>s), apostrophes
  dropped (``don't`` == ``dont``), every other non-letter becomes a space (``s.u.i.c.i.d.e``),
  runs of one-letter words are also tried glued together (``k i l l myself``), and repeated
  characters are collapsed (``kiiiill`` == ``kill`` == ``kil``). Phrase syntax::

      word            a literal word, canonicalised like the text
      (a|b c|d)       alternatives; an empty alternative ``(a|)`` makes the group optional
      [a|b]           optional group, same as ``(a|b|)``
      *               exactly one arbitrary word
      ...             zero to three arbitrary words
      !(a|b) / !a     the next words must NOT be these (only after a required word)

  A match is ignored when the text just before it ends with one of the category's
  ``unless_after`` contexts, or a shared ``negators`` context if the category is ``negatable``
  ("I don't want to die", "don't skip the radiation", "my oncologist said to stop the steroids").
* **patterns** are regexes (case-insensitive) run on the original text; their spans are exact,
  so a category with ``"mask": true`` (contact_info) can be blanked out of the delivered text.
  A pattern may name a ``check`` (see ``_CHECKS``) that vets each match in Python.

To keep the hot path cheap, each phrase rule is indexed by the words every match must contain;
its regex only runs when the message has one of those words. One ``Hit`` per category: the
first rule in file order that fired (patterns before phrases).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3}
CRISIS, CONTACT_INFO, ABUSE, MEDICAL_ADVICE = "crisis", "contact_info", "abuse", "medical_advice"
REPORT_CATEGORY, REPORT_SEVERITY = "report", "high"  # raised by a user's "report" action, not by rules
MASK_TEXT = "[contact info removed]"


@dataclass(frozen=True, slots=True)
class Hit:
    category: str
    severity: str
    rule: str  # "<category>.<rule id>"


@dataclass(frozen=True, slots=True)
class Verdict:
    hits: tuple[Hit, ...]  # at most one per category, most severe first
    shown_text: str  # what the peer sees (contact info masked when masking is on)

    @property
    def flagged(self) -> bool:
        return bool(self.hits)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(hit.category for hit in self.hits)


# --------------------------------------------------------------------------- rules data


@dataclass(frozen=True, slots=True)
class PhraseRule:
    id: str
    phrases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PatternRule:
    id: str
    regex: str
    check: str | None = None


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    severity: str
    phrases: tuple[PhraseRule, ...] = ()
    patterns: tuple[PatternRule, ...] = ()
    mask: bool = False
    negatable: bool = False
    unless_after: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    version: int
    negators: tuple[str, ...]
    categories: dict[str, Category]

    @classmethod
    def load(cls, override_path: str | None = None) -> RuleSet:
        """The packaged rules, then an optional per-deployment override file of the same shape:
        its phrases/patterns/unless_after/negators are added (a phrase entry with an existing id
        extends that rule), ``severity``/``mask``/``negatable`` replace, new categories are
        created, and ``"disable": ["category.rule", ...]`` removes rules."""
        base = (resources.files("chat") / "data" / "moderation_rules.json").read_text(encoding="utf-8")
        doc = json.loads(base)
        if override_path:
            doc = _merge(doc, json.loads(Path(override_path).read_text(encoding="utf-8")))
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict) -> RuleSet:
        cats: dict[str, Category] = {}
        for name, spec in doc["categories"].items():
            if spec.get("severity") not in SEVERITY_RANK:
                raise ValueError(f"moderation rules: {name}: bad severity {spec.get('severity')!r}")
            phrases = tuple(PhraseRule(*_phrase_entry(e)) for e in spec.get("phrases", ()))
            patterns = tuple(PatternRule(p["id"], p["regex"], p.get("check")) for p in spec.get("patterns", ()))
            ids = [r.id for r in phrases + patterns]
            if len(ids) != len(set(ids)):
                raise ValueError(f"moderation rules: {name}: duplicate rule ids")
            cats[name] = Category(name, spec["severity"], phrases, patterns, bool(spec.get("mask")),
                                  bool(spec.get("negatable")), tuple(spec.get("unless_after", ())))
        rules = cls(int(doc.get("version", 1)), tuple(doc.get("negators", ())), cats)
        Moderator(rules)  # compile everything now: a bad phrase or regex fails at load, not per message
        return rules


def _phrase_entry(entry: str | dict) -> tuple[str, tuple[str, ...]]:
    if isinstance(entry, str):  # a bare phrase: its id is derived from the text
        return re.sub(r"[^a-z0-9]+", "_", _canon_word(entry)).strip("_") or "phrase", (entry,)
    match = entry["match"]
    return entry["id"], (match,) if isinstance(match, str) else tuple(match)


def _merge(base: dict, over: dict) -> dict:
    cats = {name: dict(spec) for name, spec in base["categories"].items()}
    for name, spec in over.get("categories", {}).items():
        cur = cats.setdefault(name, {})
        for key in ("severity", "mask", "negatable"):
            if key in spec:
                cur[key] = spec[key]
        cur["unless_after"] = list(cur.get("unless_after", ())) + list(spec.get("unless_after", ()))
        phrases = {pid: m for pid, m in map(_phrase_entry, cur.get("phrases", ()))}
        for pid, more in map(_phrase_entry, spec.get("phrases", ())):
            phrases[pid] = phrases.get(pid, ()) + more
        cur["phrases"] = [{"id": pid, "match": list(m)} for pid, m in phrases.items()]
        patterns = {p["id"]: p for p in cur.get("patterns", ())} | {p["id"]: p for p in spec.get("patterns", ())}
        cur["patterns"] = list(patterns.values())
    for rule_id in over.get("disable", ()):
        name, _, rid = rule_id.partition(".")
        if name not in cats:
            raise ValueError(f"moderation override: cannot disable {rule_id!r}: no such category")
        cats[name]["phrases"] = [e for e in cats[name].get("phrases", ()) if _phrase_entry(e)[0] != rid]
        cats[name]["patterns"] = [p for p in cats[name].get("patterns", ()) if p["id"] != rid]
    negators = list(base.get("negators", ())) + list(over.get("negators", ()))
    return {"version": over.get("version", base.get("version", 1)), "negators": negators, "categories": cats}


# --------------------------------------------------------------------------- canonical text

_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_LEET_HINT = re.compile(r"[a-z][0-9@$]|[0-9@$][a-z]")
_LEET_WORD = re.compile(r"[a-z0-9@$]*(?:[a-z][0-9@$]|[0-9@$][a-z])[a-z0-9@$]*")
_LEET_I = str.maketrans("013457@$", "oieastas")
_LEET_L = str.maketrans("013457@$", "oleastas")
_APOSTROPHES = re.compile(r"['\u2019\u2018`\u00b4]")
_NON_WORD = re.compile(r"[\W_]+")
_REPEATS = re.compile(r"(.)\1+")
_SPACED = re.compile(r"\b[a-z](?: [a-z]\b){2,}")  # "s u i c i d e" (after punctuation became spaces)


def _fold(text: str) -> str:
    if not text.isascii():
        text = _COMBINING.sub("", unicodedata.normalize("NFKD", text))
    return text.casefold()


def _finish(text: str) -> str:
    if "'" in text or not text.isascii():
        text = _APOSTROPHES.sub("", text)
    return " " + _REPEATS.sub(r"\1", _NON_WORD.sub(" ", text)).strip() + " "


def _canon_word(word: str) -> str:
    return _finish(_fold(word)).strip()


def _views(text: str) -> Iterator[str]:
    """Canonical forms of ``text`` to match phrases against; usually just one."""
    folded = _fold(text)
    if _LEET_HINT.search(folded):
        leet = [_LEET_WORD.sub(lambda m: m.group().translate(_LEET_I), folded)]
        if "1" in folded:
            leet.append(_LEET_WORD.sub(lambda m: m.group().translate(_LEET_L), folded))
    else:
        leet = [folded]
    for variant in leet:
        canon = _finish(variant)
        yield canon
        if _SPACED.search(canon):
            yield _REPEATS.sub(r"\1", _SPACED.sub(lambda m: m.group().replace(" ", ""), canon))


# --------------------------------------------------------------------------- phrase syntax

_TOKEN = re.compile(r"\.\.\.|[()\[\]|!*]|[^\s()\[\]|!*]+")
_STOPWORDS = frozenset(
    "i me my myself you your ur u to the a an of on in at is am are be it and or not no do dont did "
    "want wana going gona have has had will would can cant so all just with for this that about "
    "anymore go take get up off out".split()
)
_WORD = r"[^ ]+"


def _score(words: frozenset[str]) -> tuple:
    return sum(w in _STOPWORDS for w in words), len(words), -min(map(len, words))


class _PhraseParser:
    """Recursive descent over the phrase syntax. Each node compiles to
    ``(regex, optional, zero_width, anchors)`` where ``anchors`` is a set of words one of which
    every match contains (None when no such set exists)."""

    def __init__(self, phrase: str):
        self.phrase, self.tokens, self.pos = phrase, _TOKEN.findall(phrase), 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"moderation phrase {self.phrase!r}: {why}")

    def parse(self) -> tuple[str, frozenset[str] | None]:
        regex, anchors = self.seq()
        if self.pos != len(self.tokens):
            raise self.fail(f"unexpected {self.tokens[self.pos]!r}")
        return regex, anchors

    def seq(self) -> tuple[str, frozenset[str] | None]:
        out, started, best = "", False, None
        while self.pos < len(self.tokens) and self.tokens[self.pos] not in ")]|":
            regex, optional, zero_width, anchors = self.item()
            if zero_width:
                if not started:
                    raise self.fail("'!' must follow a required word")
                out += f"(?! (?:{regex})(?= ))"
            elif not started:
                out += f"(?:{regex} )?" if optional else regex
                started = started or not optional
            else:
                out += f"(?: {regex})?" if optional else f" {regex}"
            if anchors and not optional and (best is None or _score(anchors) < _score(best)):
                best = anchors
        if not started:
            raise self.fail("every alternative needs at least one required word")
        return out, best

    def item(self) -> tuple[str, bool, bool, frozenset[str] | None]:
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok in "([":
            return self.group(tok)
        if tok == "*":
            return _WORD, False, False, None
        if tok == "...":
            return f"{_WORD}(?: {_WORD}){{0,2}}", True, False, None
        if tok == "!":
            if self.pos == len(self.tokens):
                raise self.fail("dangling '!'")
            regex, _, _, _ = self.item()
            return regex, False, True, None
        if tok in ")]|":
            raise self.fail(f"unexpected {tok!r}")
        words = _canon_word(tok).split()
        if not words:
            raise self.fail(f"{tok!r} has no letters or digits")
        return re.escape(" ".join(words)), False, False, frozenset([min(words, key=lambda w: _score({w}))])

    def group(self, opener: str) -> tuple[str, bool, bool, frozenset[str] | None]:
        closer, options, optional = ")]"[opener == "["], [], opener == "["
        while True:
            if self.pos < len(self.tokens) and self.tokens[self.pos] in "|)]":
                optional = True  # an empty alternative
            else:
                options.append(self.seq())
            if self.pos == len(self.tokens):
                raise self.fail(f"missing {closer!r}")
            tok = self.tokens[self.pos]
            self.pos += 1
            if tok == closer:
                break
            if tok != "|":
                raise self.fail(f"expected {closer!r}, got {tok!r}")
        anchors = None
        if not optional and options and all(a for _, a in options):
            anchors = frozenset().union(*(a for _, a in options))
        return "(?:" + "|".join(r for r, _ in options) + ")", optional, False, anchors


def _context_regex(phrases: list[str]) -> re.Pattern[str] | None:
    """Regex matching a canonical prefix that *ends with* one of ``phrases``."""
    if not phrases:
        return None
    return re.compile("(?<= )(?:" + "|".join(_PhraseParser(p).parse()[0] for p in phrases) + ") $")


# --------------------------------------------------------------------------- pattern checks

_DATE = re.compile(r"\d{1,2}([./-])\d{1,2}\1\d{2,4}|\d{4}([./-])\d{1,2}\2\d{1,2}|\d{1,3}\.\d+")
_YEARS = re.compile(r"(?:(?:19|20)\d\d[ .\-]+)+(?:19|20)\d\d")


def _is_phone(span: str) -> bool:
    """7-15 digits that are not a date, a decimal or a list/range of years."""
    digits = sum(c.isdigit() for c in span)
    return 7 <= digits <= 15 and not _DATE.fullmatch(span) and not _YEARS.fullmatch(span)


_CHECKS: dict[str, Callable[[str], bool]] = {"phone": _is_phone}


# --------------------------------------------------------------------------- the moderator


@dataclass(frozen=True, slots=True)
class _CompiledPhraseRule:
    hit: Hit
    order: tuple[int, int]  # (category position, rule position): the priority of the rule
    regex: re.Pattern[str]
    unless: re.Pattern[str] | None


class Moderator:
    def __init__(self, rules: RuleSet | None = None, *, mask_contact_info: bool = True):
        self.rules = rules = rules if rules is not None else RuleSet.load()
        self.mask_contact_info = mask_contact_info
        negators = list(rules.negators)
        self._cat_order = {name: i for i, name in enumerate(rules.categories)}
        self._anchor_index: dict[str, list[_CompiledPhraseRule]] = {}
        raw_parts: list[str] = []
        self._raw_rules: dict[str, tuple[Hit, Callable[[str], bool] | None, bool]] = {}
        for ci, cat in enumerate(rules.categories.values()):
            unless = _context_regex(list(cat.unless_after) + (negators if cat.negatable else []))
            for ri, rule in enumerate(cat.phrases):
                parsed = [_PhraseParser(p).parse() for p in rule.phrases]
                regex = re.compile("(?<= )(?:" + "|".join(r for r, _ in parsed) + ")(?= )")
                compiled = _CompiledPhraseRule(Hit(cat.name, cat.severity, f"{cat.name}.{rule.id}"),
                                               (ci, ri), regex, unless)
                for _, anchors in parsed:
                    if anchors is None:
                        raise ValueError(f"moderation phrase in {compiled.hit.rule}: no required word")
                    for word in anchors:
                        self._anchor_index.setdefault(word, []).append(compiled)
            for pattern in cat.patterns:
                if pattern.check is not None and pattern.check not in _CHECKS:
                    raise ValueError(f"moderation pattern {cat.name}.{pattern.id}: unknown check {pattern.check!r}")
                group = f"_r{len(self._raw_rules)}"
                re.compile(pattern.regex)  # report a bad regex with its own error first
                raw_parts.append(f"(?P<{group}>{pattern.regex})")
                self._raw_rules[group] = (Hit(cat.name, cat.severity, f"{cat.name}.{pattern.id}"),
                                          _CHECKS.get(pattern.check or ""), cat.mask)
        self._anchors = frozenset(self._anchor_index)
        self._raw = re.compile("|".join(raw_parts), re.IGNORECASE) if raw_parts else None

    def check(self, text: str) -> Verdict:
        found: dict[str, Hit] = {}
        spans: list[tuple[int, int]] = []
        if self._raw is not None:
            for m in self._raw.finditer(text):
                hit, check, mask = self._raw_rules[m.lastgroup]  # type: ignore[index]
                if check is not None and not check(m.group()):
                    continue
                found.setdefault(hit.category, hit)
                if mask:
                    spans.append(m.span())
        for canon in _views(text):
            present = self._anchors.intersection(canon.split())
            if present:
                self._match_phrases(canon, present, found)
        if not found:
            return Verdict((), text)
        hits = sorted(found.values(), key=lambda h: (-SEVERITY_RANK[h.severity], self._cat_order[h.category]))
        return Verdict(tuple(hits), self._mask(text, spans) if spans and self.mask_contact_info else text)

    def _match_phrases(self, canon: str, present: set[str], found: dict[str, Hit]) -> None:
        candidates = {id(r): r for word in present for r in self._anchor_index[word]}
        for rule in sorted(candidates.values(), key=lambda r: r.order):
            if rule.hit.category in found:
                continue
            for m in rule.regex.finditer(canon):
                if rule.unless is None or not rule.unless.search(canon, max(0, m.start() - 80), m.start()):
                    found[rule.hit.category] = rule.hit
                    break

    @staticmethod
    def _mask(text: str, spans: list[tuple[int, int]]) -> str:
        out, last = [], 0
        for start, end in sorted(spans):
            if start < last:  # overlapping spans: extend the current mask
                if end > last:
                    last = end
                continue
            out += [text[last:start], MASK_TEXT]
            last = end
        out.append(text[last:])
        return "".join(out)
