"""Canonical text: one spelling of a chat message for everything that judges it (the moderation
rules in :mod:`chat.moderation`, a learned screening model), with a map back to what the author
wrote so that a span found in the canonical text can be cut out of the original.

``canonicalize(text)`` applies, in order:

1. **invisible characters removed**: every format character (Unicode category Cf: zero-width
   space and joiners, soft hyphen, word joiner, bidi embeddings/overrides/isolates and marks, BOM,
   Arabic number signs, tag characters, ...) and the other Default_Ignorable_Code_Point
   characters (combining grapheme joiner, variation selectors, Hangul fillers, ...). They render
   as nothing, so a reader sees ``l\\u200bife`` as ``life``; removing them first also lets NFKC
   compose what they separated.
2. **NFKC**: full-width forms, ligatures, mathematical and circled letters and digits,
   superscripts, no-break spaces become their plain forms.
3. **Latin look-alikes** (the Unicode TR39 confusables, restricted to letters of other scripts
   that look like a Latin letter: Cyrillic ``е`` -> ``e``, Greek ``ο`` -> ``o``, ...), applied
   only to words whose script mix shows spoofing. A *word* is a run of letters, digits and
   combining marks; a word is left alone when it has a letter of another script that looks like
   no Latin letter (``ж``, ``λ``, ``好``), because then it is genuine text in that script.
   Otherwise its look-alike letters are replaced when

   * it also has Latin letters (``еnd``, ``mуsеlf``), or
   * its letters come from two or more scripts (Cyrillic and Greek in one word), or
   * its letters are all look-alikes of a single script, the message has Latin letters, and no
     letter of that script elsewhere in the message is a non-look-alike: a lone all-look-alike
     Cyrillic word inside an otherwise Latin message (``I want to ԁіе``).

   The tall strokes ``Ι І Ӏ ӏ`` (TR39: I or l, and i for the last) read as ``l`` after a
   lowercase letter of the word (``kiӀӀ``), as ``I``/``i`` elsewhere.

   So a Russian or Greek sentence is never touched (``я больше не хочу жить`` has ``я``, ``б``,
   ``ж``...), and neither is a message of look-alike letters of one script with no Latin in it
   (``мама``).
   ``Canonical.spoofed`` says whether any replacement was made.

Every step is skipped when it has nothing to do. An ASCII message (which can hold no format
character and nothing NFKC or the look-alike table would change) is its own canonical form, for
one ``str.isascii``; most other messages are cleared by one regex scan and an NFKC quick check
(``is_canonical``).

Offsets: each canonical character comes from a span of the original (one character, or a group
NFKC rewrote together); ``Canonical.original_span`` maps a canonical span to the original span
from its first source character to its last, so invisible characters inside it are included and
those just outside it are not. The map is worked out on the first call, so only messages that
need masking pay for it.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

__all__ = ["LATIN_LOOKALIKES", "Canonical", "canonicalize", "is_blank", "is_canonical", "is_invisible"]


Block: TypeAlias = tuple[int, int, str]  # (lo, hi, form): text[lo:hi] became form


class _Stage:
    """One rewrite of the text: ``source`` became ``output`` by replacing ``source[lo:hi]`` with
    ``form`` for each of the blocks ``make(source)`` returns. The blocks and their positions in
    the output are worked out only when a span is mapped back (masking), so the hot path never
    pays for them."""

    __slots__ = ("_layout", "_make", "output", "source")

    def __init__(self, source: str, output: str, make: Callable[[str], list[Block]]):
        self.source, self.output, self._make = source, output, make
        self._layout: tuple[list[Block], list[int]] | None = None

    def input_span(self, j: int) -> tuple[int, int]:
        """The span of ``source`` that output character ``j`` comes from."""
        if self._layout is None:
            blocks = self._make(self.source)
            out_lo: list[int] = []  # where each block's form starts in the output
            shift = 0
            for lo, hi, form in blocks:
                out_lo.append(lo + shift)
                shift += len(form) - (hi - lo)
            if len(self.source) + shift != len(self.output):  # cannot happen; if it did, be coarse
                blocks, out_lo = [(0, len(self.source), self.output)], [0]
            self._layout = blocks, out_lo
        blocks, out_lo = self._layout
        b = bisect_right(out_lo, j) - 1
        if b < 0:
            return j, j + 1
        lo, hi, form = blocks[b]
        offset = j - out_lo[b]
        if offset < len(form):
            return lo, hi
        i = hi + offset - len(form)  # in the unchanged text after block b
        return i, i + 1


@dataclass(frozen=True, slots=True)
class Canonical:
    """A message in canonical form. ``text`` is what rules and models read; ``original`` is what
    the author wrote (and what the reader is shown, masks aside)."""

    original: str
    text: str
    spoofed: bool = False  # look-alike letters were replaced (see the module docstring)
    _stages: tuple[_Stage, ...] = field(default=(), repr=False, compare=False)

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of ``original`` that canonical ``text[start:end]`` comes from: from the first
        original character of its first character to the last of its last, so it includes the
        invisible characters between them."""
        if not 0 <= start <= end <= len(self.text):
            raise ValueError(f"span ({start}, {end}) outside the canonical text of length {len(self.text)}")
        if start == end:  # a position: the start of the character there, or the end of the text
            out_len = len(self.text)
            for stage in reversed(self._stages):
                start = stage.input_span(start)[0] if start < out_len else len(stage.source)
                out_len = len(stage.source)
            return start, start
        first, last = start, end - 1
        for stage in reversed(self._stages):
            first = stage.input_span(first)[0]
            last = stage.input_span(last)[1] - 1
        return first, last + 1


# --------------------------------------------------------------------------- invisible characters

# Unicode category Cf (as of Unicode 15.1) plus the rest of Default_Ignorable_Code_Point
# (DerivedCoreProperties.txt). tests/unit/test_textnorm.py checks that this covers every Cf
# character the running Python's unicodedata knows.
_INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x0600, 0x0605),  # Arabic number signs
    (0x061C, 0x061C),  # Arabic letter mark
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),  # Hangul fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates, deprecated format chars
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # BOM / zero-width no-break space
    (0xFFA0, 0xFFA0),  # half-width Hangul filler
    (0xFFF0, 0xFFFB),  # unassigned specials, interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors supplement
)


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_INVISIBLE = re.compile(f"[{_char_class(_INVISIBLE_RANGES)}]+")
# For the test alone: sre checks a class of BMP characters with a bitmap but astral ones one
# range at a time, so astral characters are searched for only in text that has some outside the
# emoji and CJK planes (every astral invisible or look-alike character is in these two ranges).
_RARE_ASTRAL = re.compile("[\U00010000-\U0001d17a\U000e0000-\U000e0fff]")
_INVISIBLE_BMP = re.compile(f"[{_char_class(r for r in _INVISIBLE_RANGES if r[1] <= 0xFFFF)}]+")
_INVISIBLE_ASTRAL = re.compile(f"[{_char_class(r for r in _INVISIBLE_RANGES if r[0] > 0xFFFF)}]")


def is_invisible(char: str) -> bool:
    """Whether canonicalisation removes ``char`` (a format or default-ignorable character)."""
    return _INVISIBLE.fullmatch(char) is not None


# U+2800 BRAILLE PATTERN BLANK is a visible character (category So, not default-ignorable), so
# canonicalisation keeps it: it takes up a cell as any braille pattern does. But it has no dots,
# so to a sighted reader it is blank space, and it is the usual filler for messages and names that
# look empty while passing a whitespace check. It counts as blank only in :func:`is_blank`.
_BLANK_GLYPHS = frozenset("\u2800")


def is_blank(text: str) -> bool:
    """Whether ``text`` shows a reader nothing: it is empty, or only whitespace, invisible
    characters (those canonicalisation removes: format characters, Hangul fillers, other
    default-ignorables) and the blank braille pattern. For ASCII, one ``str.isspace``."""
    if text.isascii():
        return not text or text.isspace()
    if not is_canonical(text):
        text = canonicalize(text).text
    return all(ch.isspace() or ch in _BLANK_GLYPHS or is_invisible(ch) for ch in text)


# --------------------------------------------------------------------------- Latin look-alikes

# Letters of other scripts, by the Latin letter they are confusable with. Generated from the
# Unicode TR39 confusables data (confusables.txt, as packaged in the confusable-homoglyphs 3.3.1
# wheel's confusables.json): every NFKC-stable non-Latin letter (not a modifier letter) whose
# confusable class holds an ASCII letter, mapped to that letter, the one of the same case when
# there is one; a lowercase letter whose class holds only a Latin small capital (or kra) is
# mapped to that lowercase letter (Cyrillic к м н в т, Greek κ τ). The test file regenerates it
# from that package when it is installed and compares.
_LATIN_LOOKALIKES: dict[str, str] = {
    "A": "\u0391\u0410\u13aa\u15c5\ua4ee\U000102a0\U00016f40",
    "a": "\u03b1\u0430\uab7a",
    "B": "\u0392\u0412\u13f4\u15f7\ua4d0\U00010282\U000102a1\U00010301",
    "b": "\u042c\u0432\u13cf\u13fc\u1472\u15af",
    "C": "\u0421\u13df\u2ca4\ua4da\U000102a2\U00010302\U00010415\U0001051c",
    "c": "\u0441\u2ca5\uabaf\U0001043d",
    "D": "\u13a0\u15de\u15ea\ua4d3",
    "d": "\u0501\u13e7\u146f\ua4d2\uab70",
    "E": "\u0395\u0415\u13ac\u2d39\ua4f0\U00010286\U000118a6\U000118ae",
    "e": "\u0435\u04bd\uab7c",
    "F": "\u03dc\u15b4\ua4dd\U00010287\U000102a5\U00010525\U000118a2\U000118c2",
    "f": "\u0584",
    "G": "\u050c\u13c0\u13f3\ua4d6",
    "g": "\u050d\u0581\u13fb\uab90",
    "H": "\u0397\u041d\u13bb\u157c\u2c8e\ua4e7\U000102cf",
    "h": "\u043d\u04bb\u0570\u13c2\uab8b",
    "I": "\u0399\u0406\u04c0\u2c92",
    "i": "\u03b9\u0456\u04cf\u13a5\ua647\uab75\U000118c3",
    "J": "\u037f\u0408\u13ab\u148d\ua4d9",
    "j": "\u03f3\u0458\uab7b",
    "K": "\u039a\u041a\u13e6\u16d5\u2c94\ua4d7\U00010518",
    "k": "\u03ba\u043a\u2c95\uabb6",
    "L": "\u13de\u14aa\u2cd0\ua4e1\U0001041b\U00010526\U000118a3\U000118b2\U00016f16",
    "l": "\u16c1\u2cd1\u2d4f\ua4f2\uabae\U0001028a\U00010309\U00010443\U00016f28",
    "M": "\u039c\u03fa\u041c\u13b7\u15f0\u16d6\u2c98\ua4df\U000102b0\U00010311",
    "m": "\u043c\uab87\U00011700",
    "N": "\u039d\u2c9a\ua4e0\U00010513",
    "n": "\u0578\u057c",
    "O": "\u039f\u041e\u0555\u0b20\u12d0\u2c9e\u2d54\ua4f3\U00010292\U000102ab\U00010404\U000104c2\U00010516\U000118b5",
    "o": "\u03bf\u03c3\u043e\u0585\u0d20\u101d\u10ff\u2c9f\U0001042c\U000104ea\U000118c8\U000118d7",
    "P": "\u03a1\u0420\u13e2\u146d\u2ca2\ua4d1\U00010295",
    "p": "\u03c1\u0440\u1d29\u2ca3\uabb2",
    "Q": "\u2d55",
    "q": "\u051b\u0563\u0566",
    "R": "\u13a1\u13d2\u1587\ua4e3\U000104b4\U00016f35",
    "r": "\u0433\u1d26\u2c85\uab71\uab81\uaba2",
    "S": "\u0405\u054f\u13d5\u13da\ua4e2\U00010296\U00010420\U00016f3a",
    "s": "\u0455\uabaa\U00010448\U000118c1",
    "T": "\u03a4\u0422\u13a2\u2ca6\ua4d4\U00010297\U000102b1\U00010315\U000118bc\U00016f0a",
    "t": "\u03c4\u0442\uab72",
    "U": "\u054d\u1200\u144c\ua4f4\U000104ce\U000118b8\U00016f42",
    "u": "\u03c5\u057d\U000104f6\U000118d8",
    "V": "\u0474\u13d9\u142f\u2d38\ua4e6\ua6df\U0001051d\U000118a0\U00016f08",
    "v": "\u03bd\u0475\uaba9\U00011706\U000118c0",
    "W": "\u051c\u13b3\u13d4\ua4ea",
    "w": "\u0461\u051d\u0561\uab83\U0001170a\U0001170e\U0001170f",
    "X": "\u03a7\u0425\u16b7\u2cac\u2d5d\ua4eb\U00010290\U000102b4\U00010317\U00010527",
    "x": "\u0445\u1541\u157d",
    "Y": "\u03a5\u0423\u04ae\u13a9\u13bd\u2ca8\ua4ec\U000102b2\U000118a4\U00016f43",
    "y": "\u03b3\u0443\u04af\u10e7\U000118dc",
    "Z": "\u0396\u13c3\ua4dc\U000118a9",
    "z": "\uab93\U000118c4",
}

# Blocks whose precomposed letters (Cyrillic ё ї, Greek ά ό ...) get the look-alike of their base
# letter with the marks kept, as TR39 skeletons work on NFD: ё -> ë.
_PRECOMPOSED_BLOCKS = ((0x0370, 0x052F), (0x1F00, 0x1FFF))


def _build_table() -> dict[str, str]:
    base = {char: latin for latin, chars in _LATIN_LOOKALIKES.items() for char in chars}
    table = dict(base)
    for lo, hi in _PRECOMPOSED_BLOCKS:
        for cp in range(lo, hi + 1):
            char = chr(cp)
            if char in table or not char.isalpha() or unicodedata.normalize("NFKC", char) != char:
                continue
            nfd = unicodedata.normalize("NFD", char)
            if len(nfd) > 1 and nfd[0] in base:
                table[char] = unicodedata.normalize("NFC", base[nfd[0]] + nfd[1:])
    return table


_TABLE = _build_table()
LATIN_LOOKALIKES: Mapping[str, str] = MappingProxyType(_TABLE)
"""Letter of another script -> the Latin text it is confusable with (one letter, plus the marks
of a precomposed letter)."""


def _any_of(chars: Iterable[str]) -> re.Pattern[str]:
    return re.compile("[" + "".join(map(re.escape, sorted(chars))) + "]")


_LOOKALIKE = _any_of(_TABLE)
_LOOKALIKE_BMP = _any_of(c for c in _TABLE if ord(c) <= 0xFFFF)
_LOOKALIKE_ASTRAL = _any_of(c for c in _TABLE if ord(c) > 0xFFFF)
# One pass that clears most non-ASCII messages: no BMP invisible or look-alike character and no
# astral character outside the emoji and CJK planes.
_SUSPECT = re.compile("[" + _char_class(r for r in _INVISIBLE_RANGES if r[1] <= 0xFFFF)
                      + _LOOKALIKE_BMP.pattern[1:-1] + _RARE_ASTRAL.pattern[1:-1] + "]")
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = re.compile(f"(?:[^\\W_]|[{_MARKS}])+")
_WORD_CHAR = re.compile(f"[^\\W_]|[{_MARKS}]")

LATIN = "LATIN"
_SCRIPT_CACHE: dict[str, str] = {}


def _script(char: str) -> str:
    """The script of a letter, from the first word of its Unicode name (``LATIN``, ``CYRILLIC``,
    ``GREEK``, ``CJK``...); ``""`` for what is not a letter of a script (digits, marks, modifier
    letters). The ``unicodedata`` module has no Script property; names are exact for the scripts
    that matter here, and text reaching this is NFKC, so the compatibility letters are gone."""
    if char < "\x80":
        return LATIN if char.isalpha() else ""
    script = _SCRIPT_CACHE.get(char)
    if script is None:
        if not char.isalpha() or unicodedata.category(char) == "Lm":
            script = ""
        else:
            script = unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]
        if len(_SCRIPT_CACHE) > 8192:  # bounded: adversarial text must not grow it forever
            _SCRIPT_CACHE.clear()
        _SCRIPT_CACHE[char] = script
    return script


_TABLE_CHARS = frozenset(_TABLE)
_TABLE_SCRIPT = {c: _script(c) for c in _TABLE}
# look-alikes of the other scripts, for the BMP (the rare astral ones: any, to be safe)
_OTHER_LOOKALIKES = {script: re.compile(_any_of(c for c in _TABLE if _TABLE_SCRIPT[c] != script and ord(c) <= 0xFFFF)
                                        .pattern[:-1] + _RARE_ASTRAL.pattern[1:])
                     for script in ("CYRILLIC", "GREEK")}
# Latin letters for a quick test: ASCII and the Latin blocks (after NFKC, the Latin letters left
# elsewhere are rare enough that missing one only skips the look-alike step for that message).
_LATIN_BLOCKS = ((0x00C0, 0x024F), (0x0250, 0x02AF), (0x1D00, 0x1DBF), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F),
                 (0xA720, 0xA7FF), (0xAB30, 0xAB6F))
_LATIN_LETTER = re.compile("[A-Za-z" + "".join(re.escape(chr(cp)) for lo, hi in _LATIN_BLOCKS
                                                for cp in range(lo, hi + 1) if _script(chr(cp)) == LATIN) + "]")


def _spoofed_words(text: str, rare_astral: bool) -> list[tuple[int, int]]:
    """The spans of the words whose look-alike letters are to be replaced, in order."""
    lookalike = _LOOKALIKE if rare_astral else _LOOKALIKE_BMP
    if _LATIN_LETTER.search(text) is None:  # then only a word mixing two other scripts can be a spoof
        first = lookalike.search(text)
        script = _TABLE_SCRIPT[first.group()] if first else ""
        others = _OTHER_LOOKALIKES.get(script)
        if others is not None:
            if others.search(text) is None:
                return []  # honest Russian or Greek: the common non-Latin case, two regex scans
        elif len({_TABLE_SCRIPT[c] for c in set(text) & _TABLE_CHARS}) < 2:
            return []
    scripts = {c: _script(c) for c in set(text)}
    has_latin = LATIN in scripts.values()
    genuine = {s for c, s in scripts.items() if s and s != LATIN and c not in _TABLE}
    out: list[tuple[int, int]] = []
    single_script: list[tuple[int, int]] = []  # all-look-alike words of one script: need Latin around
    pos = 0
    while (hit := lookalike.search(text, pos)) is not None:
        start = hit.start()
        while start > 0 and _WORD_CHAR.match(text, start - 1):
            start -= 1
        word = _WORD.match(text, hit.start())
        pos = end = word.end() if word else hit.end()
        word_scripts = _word_scripts(text[start:end])
        if word_scripts is None:
            continue
        if LATIN in word_scripts or len(word_scripts) > 1:
            out.append((start, end))
            has_latin = True  # it will have, and canonicalising the result must change nothing
        elif not word_scripts & genuine:
            single_script.append((start, end))
    if has_latin and single_script:
        out = sorted(out + single_script)
    return out


_WORD_SCRIPTS: dict[str, frozenset[str] | None] = {}
_UNSEEN = frozenset(["?"])


def _word_scripts(word: str) -> frozenset[str] | None:
    """The scripts of a word's letters, or None when one of them is a letter of another script
    that looks like no Latin letter (the word is genuine text of that script)."""
    cached = _WORD_SCRIPTS.get(word, _UNSEEN)
    if cached is not _UNSEEN:
        return cached
    result: frozenset[str] | None = None
    found: set[str] = set()
    for c in set(word):
        script = _script(c)
        if not script:
            continue
        if script != LATIN and c not in _TABLE:
            break
        found.add(script)
    else:
        result = frozenset(found)
    if len(_WORD_SCRIPTS) > 4096:  # bounded: adversarial text must not grow it forever
        _WORD_SCRIPTS.clear()
    _WORD_SCRIPTS[word] = result
    return result


_TO_LATIN = str.maketrans(_TABLE)
# TR39 puts I and l in one class (and the small palochka with i), and these tall strokes are the
# only Cyrillic/Greek look-alikes of l: after a lowercase letter of the word they read as l
# (``kiӀӀ``, ``mysеӏf``), elsewhere as I or i (``Іf``).
_L_SHAPES = frozenset("\u0399\u0406\u04c0\u04cf")  # Greek Ι, Cyrillic І Ӏ ӏ


def _replace_in_words(text: str, words: list[tuple[int, int]]) -> str:
    out: list[str] = []
    last = 0
    for start, end in words:
        word = text[start:end]
        latin = word.translate(_TO_LATIN)
        if not _L_SHAPES.isdisjoint(word) and len(latin) == len(word):
            chars = list(latin)
            for i in range(1, len(word)):
                if word[i] in _L_SHAPES and chars[i - 1].islower():
                    chars[i] = "l"
            latin = "".join(chars)
        out += (text[last:start], latin)
        last = end
    out.append(text[last:])
    return "".join(out)


def _lookalike_blocks(text: str, words: list[tuple[int, int]]) -> list[Block]:
    """The replacements ``_replace_in_words`` made (their lengths; an I-shape may have become l)."""
    return [(m.start(), m.end(), _TABLE[m.group()]) for start, end in words
            for m in _LOOKALIKE.finditer(text, start, end)]


# --------------------------------------------------------------------------- NFKC with offsets

# An ASCII character never combines with what precedes it (no canonical decomposition has one
# after its first character) and blocks mark reordering, so NFKC can be applied region by
# region: each region is a non-ASCII run with the ASCII character before it.
_NON_ASCII_REGION = re.compile(r"[\x00-\x7f]?[^\x00-\x7f]+")


def _nfkc(text: str) -> list[Block]:
    """The NFKC rewrites of ``text`` as blocks, in order; characters outside them are unchanged.
    Blocks are as small as composition allows: a starter with its combining marks, merged with
    the next ones when they compose together (Hangul jamo, half-width kana and voicing mark)."""
    blocks: list[Block] = []
    for region in _NON_ASCII_REGION.finditer(text):
        chunk = region.group()
        if unicodedata.is_normalized("NFKC", chunk):
            continue
        lo, hi = region.span()
        whole = unicodedata.normalize("NFKC", chunk)
        if any(map(unicodedata.combining, chunk)):
            bounds = [i for i in range(lo, hi) if i == lo or not unicodedata.combining(text[i])]
        else:
            bounds = list(range(lo, hi))
        spans = list(zip(bounds, [*bounds[1:], hi], strict=True))
        forms = [unicodedata.normalize("NFKC", text[a:b]) for a, b in spans]
        if "".join(forms) == whole:  # the usual case: each starter normalises on its own
            groups = [(a, b, form) for (a, b), form in zip(spans, forms, strict=True)]
        else:
            groups = _merge_composing(text, spans, forms)
            if "".join(g[2] for g in groups) != whole:
                groups = [(lo, hi, whole)]  # safety net: one block
        blocks += (g for g in groups if g[2] != text[g[0]:g[1]])
    return blocks


def _merge_composing(text: str, spans: list[tuple[int, int]], forms: list[str]) -> list[Block]:
    """Greedily merge neighbouring chunks whose NFKC is not the concatenation of theirs."""
    groups: list[Block] = []
    (start, end), form = spans[0], forms[0]
    for (lo, hi), nxt_form in zip(spans[1:], forms[1:], strict=True):
        joined = unicodedata.normalize("NFKC", text[start:hi])
        if joined == form + nxt_form:
            groups.append((start, end, form))
            start, form = lo, nxt_form
        else:
            form = joined
        end = hi
    groups.append((start, end, form))
    return groups


# --------------------------------------------------------------------------- canonicalize


def is_canonical(text: str) -> bool:
    """A quick test that ``canonicalize(text)`` would return ``text`` unchanged: true for ASCII and
    for most other text (no invisible or look-alike character, already NFKC). False may still
    canonicalize to ``text`` (honest Russian, say). For hot paths that only need the text."""
    return text.isascii() or (_SUSPECT.search(text) is None and unicodedata.is_normalized("NFKC", text))


def canonicalize(text: str) -> Canonical:
    """``text`` in canonical form (see the module docstring)."""
    if is_canonical(text):
        return Canonical(text, text)
    cur = text
    stages: list[_Stage] = []

    rare_astral = _RARE_ASTRAL.search(cur) is not None
    if _INVISIBLE_BMP.search(cur) is not None or (rare_astral and _INVISIBLE_ASTRAL.search(cur) is not None):
        source, cur = cur, (_INVISIBLE if rare_astral else _INVISIBLE_BMP).sub("", cur)
        stages.append(_Stage(source, cur, _invisible_blocks))

    if not unicodedata.is_normalized("NFKC", cur):
        source, cur = cur, unicodedata.normalize("NFKC", cur)
        stages.append(_Stage(source, cur, _nfkc))
        rare_astral = _RARE_ASTRAL.search(cur) is not None

    spoofed = False
    if _LOOKALIKE_BMP.search(cur) is not None or (rare_astral and _LOOKALIKE_ASTRAL.search(cur) is not None):
        words = _spoofed_words(cur, rare_astral)
        if words:
            spoofed = True
            source, cur = cur, _replace_in_words(cur, words)
            stages.append(_Stage(source, cur, lambda src: _lookalike_blocks(src, words)))
            if not unicodedata.is_normalized("NFKC", cur):  # a Latin letter composes with a mark
                source, cur = cur, unicodedata.normalize("NFKC", cur)
                stages.append(_Stage(source, cur, _nfkc))

    return Canonical(text, cur, spoofed, tuple(stages))


def _invisible_blocks(text: str) -> list[Block]:
    return [(m.start(), m.end(), "") for m in _INVISIBLE.finditer(text)]


_RLO, _BIDI_ENDS = "\u202e", frozenset("\u202c\u2069\n\r\u2029")


def visual_order(text: str) -> str | None:
    """What a reader sees when ``text`` uses right-to-left override (U+202E): each overridden run,
    up to its pop (U+202C), an isolate's end or the end of the line, reversed.  None when there is
    no override.  "\u202eefil ym dne" is stored as written but shows as "end my life", so the
    rules and the model judge this form too (canonicalize removes the control, not the reversal)."""
    if _RLO not in text:
        return None
    out: list[str] = []
    run: list[str] | None = None
    for char in text:
        if char == _RLO:
            if run is not None:
                out.extend(reversed(run))
            run = []
        elif run is not None and char in _BIDI_ENDS:
            out.extend(reversed(run))
            run = None
            out.append(char)
        elif run is not None:
            run.append(char)
        else:
            out.append(char)
    if run is not None:
        out.extend(reversed(run))
    return "".join(out)
