"""Rule-based moderation of chat messages. Every message passes through ``Moderator.check`` on
the gateway's hot path before it is delivered, so all rules are compiled once and a clean message
costs a few C-level string operations, set look-ups and gated regex scans.

Both kinds of rules below read the message's canonical text, ``chat.textnorm.canonicalize``:
invisible (format) characters removed, NFKC, and Cyrillic/Greek/... look-alikes of Latin letters
replaced where the script mix shows spoofing, so ``l\\u200bife``, ``li\\u00adfe`` and
``\\u0435nd`` (Cyrillic) read as ``life`` and ``end``. A learned screening model must read the
same text. Masked spans are mapped back to the author's characters (``Canonical.original_span``);
the rest of the delivered text is exactly what the author wrote. An ASCII message is its own
canonical text, so the hot path pays one ``str.isascii`` for it (``is_canonical``).

Rules live in ``chat/data/moderation_rules.json`` (its ``_doc`` field is the reference), per
category, in two kinds:

* **phrases** are matched as whole words on a *folded* form of the canonical text, which makes
  them case- and accent-insensitive and robust to light obfuscation: NFKD with combining marks
  stripped (also maps full-width forms), casefold, leetspeak inside words (``k1ll mys3lf``;
  0>o 1>i or l 3>e 4>a 5>s 7>t @>a $>s), apostrophes dropped (``don't`` == ``dont``), any other
  non-letter becomes a word break (``s.u.i.c.i.d.e`` -> ``s u i c i d e``), runs of one-letter
  words are also tried glued (``k i l l myself``), repeated letters collapsed (``kiiiill`` ==
  ``kill`` == ``kil``). Phrase syntax::

      word            a literal word, canonicalised like the text
      (a|b c|d)       alternatives; an empty alternative ``(a|)`` makes the group optional
      [a|b]           optional group, same as ``(a|b|)``
      *               exactly one arbitrary word
      ...             zero to three arbitrary words
      !(a|b) / !a     the next words must NOT be these (only after a required word)

  A match is dropped when the text right before it ends with one of the category's
  ``unless_after`` contexts (same syntax), or with a shared ``negators`` context if the category
  is ``negatable``: "I don't want to die", "don't skip the radiation", "my oncologist said to
  stop the steroids".
* **patterns** are case-insensitive regexes on the canonical text (not folded), so their spans
  map back exactly and a ``"mask": true`` category (contact_info) can be cut out of the delivered
  text. A pattern may name a Python ``check`` that vets each match (``_CHECKS``) and a ``gate``
  (regex on the casefolded text; plain strings use ``in``) and/or ``gate_words``: it only runs
  when a gate passes. Gates are what keeps the cost of ``re`` scanning off clean messages.

Phrases are indexed by their rarest required words (``_score``): a phrase's regex runs only when
the message has one of those words and a word from each of its other required sets.

One ``Hit`` per category: the first rule in file order that fired, patterns before phrases.
Hits are ordered by severity, then by category order in the file.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Set
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from chat.textnorm import canonicalize, is_canonical, visual_order

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
    gate: str | None = None  # regex on the casefolded text that must match for ``regex`` to run
    gate_words: tuple[str, ...] = ()  # ... or one of these words must be in the message


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
        its phrases/unless_after/negators are added (a phrase entry with an existing id extends
        that rule), patterns replace those with the same id, ``severity``/``mask``/``negatable``
        replace, new categories are created, and ``"disable": ["category.rule", ...]`` removes
        rules. Raises ValueError for invalid rules, so a bad override fails at startup."""
        base = (resources.files("chat") / "data" / "moderation_rules.json").read_text(encoding="utf-8")
        doc = json.loads(base)
        try:
            if override_path:
                doc = _merge(doc, json.loads(Path(override_path).read_text(encoding="utf-8")))
            return cls.from_dict(doc)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"moderation rules: malformed ({exc!r})") from exc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RuleSet:
        cats: dict[str, Category] = {}
        for name, spec in doc["categories"].items():
            if spec.get("severity") not in SEVERITY_RANK:
                raise ValueError(f"moderation rules: {name}: bad severity {spec.get('severity')!r}")
            phrases = tuple(PhraseRule(*_phrase_entry(e)) for e in spec.get("phrases", ()))
            patterns = tuple(PatternRule(p["id"], p["regex"], p.get("check"), p.get("gate"),
                                         tuple(p.get("gate_words", ())))
                             for p in spec.get("patterns", ()))
            ids = [r.id for r in phrases + patterns]
            if len(ids) != len(set(ids)):
                raise ValueError(f"moderation rules: {name}: duplicate rule ids")
            cats[name] = Category(name, spec["severity"], phrases, patterns, bool(spec.get("mask")),
                                  bool(spec.get("negatable")), tuple(spec.get("unless_after", ())))
        rules = cls(int(doc.get("version", 1)), tuple(doc.get("negators", ())), cats)
        Moderator(rules)  # compile everything now: a bad phrase or regex fails at load, not per message
        return rules


def _phrase_entry(entry: str | dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    if isinstance(entry, str):  # a bare phrase: its id is derived from the text
        return re.sub(r"[^a-z0-9]+", "_", _fold(entry)).strip("_") or "phrase", (entry,)
    match = entry["match"]
    return entry["id"], (match,) if isinstance(match, str) else tuple(match)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
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
_DROP_APOSTROPHES = str.maketrans("", "", "'\u2019\u2018`\u00b4")
_ASCII_PUNCT = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum() and c not in "@$"})
_TOKENS = re.compile(r"(?:[^\W_]|[@$])+")  # words, keeping @ and $ for leetspeak
_LEET_HINT = re.compile(r"[a-z][0-9@$]|[0-9@$][a-z]")
_LEET_I, _LEET_L = str.maketrans("013457@$", "oieastas"), str.maketrans("013457@$", "oleastas")
_REPEATS = re.compile(r"(.)\1+")
_SINGLES = frozenset("abcdefghijklmnopqrstuvwxyz")
_CACHE: dict[str, str] = {}  # raw token -> canonical token; chat vocabulary is small, so this stays hot
_ONE_AS_L: dict[str, str] = {}  # raw tokens with a leet "1", read as "l" instead of "i"


def _fold(text: str) -> str:
    """Accents stripped (NFKD also maps full-width and ligature forms), casefolded."""
    if not text.isascii():
        text = _COMBINING.sub("", unicodedata.normalize("NFKD", text))
    return text.casefold()


def _tokenize(folded: str) -> list[str]:
    if folded.isascii():  # the common case: C-level translate + split
        return folded.replace("'", "").translate(_ASCII_PUNCT).split()
    return _TOKENS.findall(folded.translate(_DROP_APOSTROPHES))


def _canon_token(token: str) -> str:
    form = _CACHE.get(token)
    if form is None:
        if len(_CACHE) > 50_000:  # bounded: junk tokens must not grow it forever
            _CACHE.clear()
            _ONE_AS_L.clear()
        raw = token
        if not token.isalpha() and _LEET_HINT.search(token):
            if "1" in token:
                _ONE_AS_L[token] = _REPEATS.sub(r"\1", token.translate(_LEET_L))
            token = token.translate(_LEET_I)
        form = _CACHE[raw] = _REPEATS.sub(r"\1", token.replace("@", "").replace("$", ""))
    return form


def _views(folded: str) -> list[list[str]]:
    """The message as canonical tokens, plus rarely needed variants (leet 1 read as l, spaced-out
    letters glued together)."""
    tokens = _tokenize(folded)
    cached = list(map(_CACHE.get, tokens))
    canon = list(map(_canon_token, tokens)) if None in cached else cast("list[str]", cached)
    if "" in canon:
        tokens = [t for t, c in zip(tokens, canon, strict=True) if c]
        canon = [c for c in canon if c]
    views = [canon]
    if "1" in folded and not _ONE_AS_L.keys().isdisjoint(tokens):
        views.append([_ONE_AS_L.get(t, c) for t, c in zip(tokens, canon, strict=True)])
    for view in list(views):
        # cheap pre-test: a spelled-out word almost always has 3+ distinct letters
        if len(_SINGLES.intersection(view)) >= 3:
            for keep_edge_words in (False, True):
                glued = _glue_single_letters(view, keep_edge_words)
                if glued != view and glued not in views:
                    views.append(glued)
    return views


def _glue_single_letters(words: list[str], keep_edge_words: bool) -> list[str]:
    """"k i l l myself" -> "kil myself": runs of three or more one-letter words become one word.
    With ``keep_edge_words`` a leading/trailing "i" or "a" stays a word of its own, for
    "s u i c i d e I guess"."""
    out: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if len(word) == 1:
            run.append(word)
            continue
        head = tail = []
        if keep_edge_words and len(run) >= 4:
            head, tail = run[:1] if run[0] in "ia" else [], run[-1:] if run[-1] in "ia" else []
            run = run[len(head): len(run) - len(tail)]
        out += head + ([_REPEATS.sub(r"\1", "".join(run))] if len(run) >= 3 else run) + tail
        run = []
        if word:
            out.append(word)
    return out


def _canon_word(word: str) -> str:
    return " ".join(c for c in map(_canon_token, _tokenize(_fold(word))) if c)


# --------------------------------------------------------------------------- phrase syntax

_TOKEN = re.compile(r"\.\.\.|[()\[\]|!*]|[^\s()\[\]|!*]+")
# Rough frequencies (collapsed spellings) used to pick the rarest words to index a rule by.
_FREQUENT = frozenset(
    "i me my myself you your ur u to the a an of on in at is am are be it and or not no do dont did "  # noqa: SIM905
    "want wana going gona have has had will would can cant so al just with for this that about what "
    "any more like go get got up of out now then still realy much very know think feel good wel way "
    "time day today last ned take make beter doing one some also if but they we he she him her them "
    "here there where when how why who yes ok lol thanks thank love hope back home work help never ever "
    "people everyone someone something give said say tel see let too over after before again".split()
)
_DOMAIN_COMMON = frozenset("chemo chemotherapy radiation treatment cancer scan scans life kiling dying die "  # noqa: SIM905
                           "dead pain meds pils".split())
_WORD = r"[^ ]+"


def _score(words: Set[str]) -> tuple[float, int]:
    """Lower is a better index: a lower chance that the message contains one of ``words``."""
    weight = sum(1.0 if w in _FREQUENT else 0.3 if w in _DOMAIN_COMMON else 0.02 for w in words)
    return weight, -min(map(len, words))


Required = list[frozenset[str]]  # every match contains a word from each of these sets


class _PhraseParser:
    """Recursive descent over the phrase syntax. Items compile to
    ``(regex, optional, zero_width, anchors)`` where ``anchors`` is a set of words one of which
    every match contains (None when there is no such set); a sequence compiles to
    ``(regex, required)``."""

    def __init__(self, phrase: str):
        self.phrase, self.tokens, self.pos = phrase, _TOKEN.findall(phrase), 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"moderation phrase {self.phrase!r}: {why}")

    def parse(self) -> tuple[str, Required]:
        regex, required = self.seq()
        if self.pos != len(self.tokens):
            raise self.fail(f"unexpected {self.tokens[self.pos]!r}")
        return regex, required

    def seq(self) -> tuple[str, Required]:
        out, started, required = "", False, []
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
            if anchors and not optional:
                required.append(anchors)
        if not started:
            raise self.fail("every alternative needs at least one required word")
        return out, required

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
        if not optional and options and all(req for _, req in options):
            anchors = frozenset().union(*(min(req, key=_score) for _, req in options))
        return "(?:" + "|".join(r for r, _ in options) + ")", optional, False, anchors


def _context_regex(phrases: list[str]) -> re.Pattern[str] | None:
    """Regex finding, in a canonical prefix searched with ``endpos``, one of ``phrases`` right at its end."""
    if not phrases:
        return None
    return re.compile(" (?:" + "|".join(_PhraseParser(p).parse()[0] for p in phrases) + ") $")


# --------------------------------------------------------------------------- pattern checks

_DATE = re.compile(r"\d{1,2}([./-])\d{1,2}\1\d{2,4}|\d{4}([./-])\d{1,2}\2\d{1,2}|\d{1,3}\.\d+")
_YEARS = re.compile(r"(?:(?:19|20)\d\d[ .\-]+)+(?:19|20)\d\d")


_PHONE = re.compile(r"\+?[ ]?(?:\(\d{1,5}\)[ .\-]?)?\d+(?:(?:[ .\-]|[ ]?\(\d+\)[ ]?)\d+)*")


def _is_phone(span: str) -> bool:
    """The ``phone`` pattern only finds digit runs cheaply; this is the real test: one separator
    between digit groups, 7-15 digits, and not a date, a decimal or a list/range of years."""
    if len(span) > 40:  # 15 digits with separators fit easily; longer runs are data, not phones
        return False
    digits = sum(c.isdigit() for c in span)
    return (7 <= digits <= 15 and _PHONE.fullmatch(span) is not None
            and not _DATE.fullmatch(span) and not _YEARS.fullmatch(span))


_CHECKS: dict[str, Callable[[str], bool]] = {"phone": _is_phone}


# --------------------------------------------------------------------------- the moderator


@dataclass(frozen=True, slots=True)
class _CompiledPhraseRule:
    hit: Hit
    order: tuple[int, int]  # (category position, rule position): the priority of the rule
    regex: re.Pattern[str]
    unless: re.Pattern[str] | None


@dataclass(frozen=True, slots=True)
class _IndexEntry:
    """One phrase of ``rule``, filed under each word of its rarest required word set; ``others``
    are its remaining required sets, checked before any regex runs."""

    rule: _CompiledPhraseRule
    others: tuple[frozenset[str], ...]


@dataclass(frozen=True, slots=True)
class _CompiledPattern:
    hit: Hit
    regex: re.Pattern[str]
    gate: re.Pattern[str] | None
    gate_words: frozenset[str]
    check: Callable[[str], bool] | None
    mask: bool
    gate_literal: str | None  # the gate when it is a plain string: ``in`` beats a regex search


class Moderator:
    def __init__(self, rules: RuleSet | None = None, *, mask_contact_info: bool = True):
        self.rules = rules = rules if rules is not None else RuleSet.load()
        self.mask_contact_info = mask_contact_info
        self._cat_order = {name: i for i, name in enumerate(rules.categories)}
        self._anchor_index: dict[str, list[_IndexEntry]] = {}
        self._patterns: list[_CompiledPattern] = []
        for ci, cat in enumerate(rules.categories.values()):
            unless = _context_regex(list(cat.unless_after) + (list(rules.negators) if cat.negatable else []))
            for ri, rule in enumerate(cat.phrases):
                parsed = [_PhraseParser(p).parse() for p in rule.phrases]
                # a leading literal space (not a lookbehind) lets sre jump from word start to word start
                regex = re.compile(" (?:" + "|".join(r for r, _ in parsed) + ")(?= )")
                compiled = _CompiledPhraseRule(Hit(cat.name, cat.severity, f"{cat.name}.{rule.id}"),
                                               (ci, ri), regex, unless)
                for _, required in parsed:
                    if not required:
                        raise ValueError(f"moderation phrase in {compiled.hit.rule}: no required word")
                    anchors = min(required, key=_score)
                    entry = _IndexEntry(compiled, tuple(r for r in required if r is not anchors))
                    for word in anchors:
                        self._anchor_index.setdefault(word, []).append(entry)
            for pat in cat.patterns:
                name = f"{cat.name}.{pat.id}"
                if pat.check is not None and pat.check not in _CHECKS:
                    raise ValueError(f"moderation pattern {name}: unknown check {pat.check!r}")
                try:
                    regex = re.compile(pat.regex, re.IGNORECASE)
                    gate = re.compile(pat.gate) if pat.gate else None
                except re.error as exc:
                    raise ValueError(f"moderation pattern {name}: {exc}") from None
                words = frozenset(_canon_word(w) for w in pat.gate_words)
                literal = pat.gate if pat.gate and re.escape(pat.gate) == pat.gate else None
                self._patterns.append(_CompiledPattern(Hit(cat.name, cat.severity, name), regex, gate, words,
                                                       _CHECKS.get(pat.check or ""), cat.mask, literal))
        self._anchors = frozenset(self._anchor_index)

    def check(self, text: str) -> Verdict:
        verdict = self._check(text)
        shown = visual_order(text)
        if shown is None:
            return verdict
        seen = self._check(shown)       # what a reader sees of a right-to-left override
        extra = tuple(h for h in seen.hits if h.category not in verdict.categories)
        if not extra:
            return verdict
        hits = tuple(sorted(verdict.hits + extra,
                            key=lambda h: (-SEVERITY_RANK[h.severity], self._cat_order[h.category])))
        masked = self.mask_contact_info and any(h.category == CONTACT_INFO for h in extra)
        return Verdict(hits, MASK_TEXT if masked else verdict.shown_text)

    def _check(self, text: str) -> Verdict:
        canon = None if is_canonical(text) else canonicalize(text)  # e.g. ASCII: the text itself
        ctext = text if canon is None else canon.text
        found: dict[str, Hit] = {}
        spans: list[tuple[int, int]] = []
        folded = _fold(ctext)
        views = _views(folded)
        words = views[0]
        for pat in self._patterns:  # the gates, inlined: this loop runs for every pattern of every message
            literal, gate, gate_words = pat.gate_literal, pat.gate, pat.gate_words
            if literal is not None:
                is_open = literal in folded
            elif gate is not None:
                is_open = gate.search(folded) is not None
            else:
                is_open = not gate_words
            if not (is_open or (gate_words and not gate_words.isdisjoint(words))):
                continue
            for m in pat.regex.finditer(ctext):
                if pat.check is None or pat.check(m.group()):
                    found.setdefault(pat.hit.category, pat.hit)
                    if pat.mask:
                        spans.append(m.span())
        for view in views:
            if not self._anchors.isdisjoint(view):
                self._match_phrases(view, found)
        if not found:
            return Verdict((), text)
        hits = sorted(found.values(), key=lambda h: (-SEVERITY_RANK[h.severity], self._cat_order[h.category]))
        if not (spans and self.mask_contact_info):
            return Verdict(tuple(hits), text)
        if canon is not None:  # cut out the author's characters that the canonical spans come from
            spans = [canon.original_span(start, end) for start, end in spans]
        return Verdict(tuple(hits), self._mask(text, spans))

    def _match_phrases(self, view: list[str], found: dict[str, Hit]) -> None:
        words: set[str] | None = None
        candidates: dict[int, _CompiledPhraseRule] = {}
        for word in self._anchors.intersection(view):
            for entry in self._anchor_index[word]:
                rule = entry.rule
                if rule.hit.category in found or id(rule) in candidates:
                    continue
                if entry.others:
                    if words is None:
                        words = set(view)
                    if any(s.isdisjoint(words) for s in entry.others):
                        continue
                candidates[id(rule)] = rule
        if not candidates:
            return
        canon = " " + " ".join(view) + " "
        for rule in sorted(candidates.values(), key=lambda r: r.order):
            if rule.hit.category in found:
                continue
            for m in rule.regex.finditer(canon):
                start = m.start() + 1  # the match includes the space before the phrase
                if rule.unless is None or not rule.unless.search(canon, max(0, start - 81), start):
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
