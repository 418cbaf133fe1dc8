"""chat.textnorm: the canonical text that moderation rules (and a learned model) read, and the
map from canonical spans back to what the author wrote."""

from __future__ import annotations

import re
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_moderation_rules import CASES  # the rule tests' table: what must flag stays flagged

from chat import textnorm
from chat.moderation import MASK_TEXT, Moderator
from chat.textnorm import LATIN_LOOKALIKES, canonicalize, is_blank, is_canonical, is_invisible

C, K = "crisis", "contact_info"
_MOD = Moderator()  # module level: hypothesis tests cannot use function-scoped fixtures

ZWSP, ZWNJ, ZWJ, WJ, SHY, BOM = "\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff"
LRM, RLM, LRE, RLE, PDF, LRO, RLO = "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e"
LRI, RLI, FSI, PDI = "\u2066", "\u2067", "\u2068", "\u2069"
INVISIBLES = [ZWSP, ZWNJ, ZWJ, WJ, SHY, BOM, LRM, RLM, LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI,
              "\u180e", "\u034f", "\ufe0f", "\U000e0041"]  # Mongolian vowel sep., CGJ, VS16, tag A


def strip_invisible(text: str) -> str:
    return "".join(c for c in text if not is_invisible(c))


def _script(char: str) -> str:
    return unicodedata.name(char).split()[0]


# Cyrillic and Greek look-alikes by the exact Latin text they canonicalise to ("e" -> "е", "ε"...)
SPOOFS: dict[str, list[str]] = {}
for _char, _latin in sorted(LATIN_LOOKALIKES.items()):
    if _script(_char) in ("CYRILLIC", "GREEK"):
        SPOOFS.setdefault(_latin, []).append(_char)
L_SHAPES = "\u0399\u0406\u04c0\u04cf"  # read as l after a lowercase letter, as I or i elsewhere


def spoofs_for(text: str, i: int) -> list[str]:
    """The Cyrillic/Greek look-alikes that canonicalise back to text[i] where it stands."""
    after_lowercase = i > 0 and text[i - 1].islower()
    if text[i] == "l":
        return list(L_SHAPES) if after_lowercase else []
    return [c for c in SPOOFS.get(text[i], ()) if not (after_lowercase and c in L_SHAPES)]


# --------------------------------------------------------------------------- the attacks


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("I want to end my l\u200bife", "I want to end my life"),
        ("I want to end my li\u00adfe", "I want to end my life"),
        ("I want to \u0435nd my life", "I want to end my life"),  # Cyrillic е
        ("I want to kill m\u0443s\u0435lf", "I want to kill myself"),  # Cyrillic у, е
        ("I want to k\u0456\u04cf\u04cf m\u0443s\u0435\u04cff", "I want to kill myself"),  # palochka for l
        ("I want to \u0501\u0456\u0435", "I want to die"),  # a whole word of Cyrillic look-alikes
        ("I want to e\u200dn\u2060d my \ufeffl\u200ci\u00adf\u200ee", "I want to end my life"),
        ("s\u200bu\u200bi\u200bc\u200bi\u200bd\u200be", "suicide"),
        ("\u03ba\u0456ll \u0443ourself", "kill yourself"),  # Greek κ, Cyrillic і, у
        ("ｋｉｌｌ ｍｙｓｅｌｆ", "kill myself"),  # full-width: NFKC
        ("".join(unicodedata.lookup(f"MATHEMATICAL SANS-SERIF SMALL {c}") for c in "KILL") + " myself",
         "kill myself"),
    ],
)
def test_invisible_and_lookalike_characters_are_undone(text, canonical):
    assert canonicalize(text).text == canonical
    assert _MOD.check(text).categories == _MOD.check(canonical).categories != ()


def test_the_reported_attacks_are_flagged_and_delivered_as_written():
    for text in ("I want to end my l\u200bife", "I want to end my li\u00adfe", "I want to \u0435nd my life"):
        verdict = _MOD.check(text)
        assert verdict.categories == (C,)
        assert verdict.shown_text == text  # nothing to mask: the author's text, invisible characters and all
    assert canonicalize("I want to \u0435nd my life").spoofed
    assert not canonicalize("I want to end my l\u200bife").spoofed


def test_zero_width_spaces_inside_a_phone_number_are_masked_with_it():
    text = f"call{ZWSP} me at 5{ZWSP}5{ZWSP}5-{SHY}123-45{WJ}67{ZWSP} tomorrow{BOM}"
    verdict = _MOD.check(text)
    assert verdict.categories == (K,)
    # the mask covers the number and the invisible characters inside it; the rest is as written
    assert verdict.shown_text == f"call{ZWSP} me at {MASK_TEXT}{ZWSP} tomorrow{BOM}"


def test_masking_maps_back_through_nfkc_and_lookalikes():
    assert _MOD.check("call ０６１２３４５６７８ now").shown_text == f"call {MASK_TEXT} now"
    assert _MOD.check("call ０６１２\u200b３４５６７８ now").shown_text == f"call {MASK_TEXT} now"
    assert _MOD.check("text ٠٦١٢٣٤٥٦٧٨ please").shown_text == f"text {MASK_TEXT} please"
    assert _MOD.check("text ٠٦١\u200c٢٣٤٥٦٧٨ please").shown_text == f"text {MASK_TEXT} please"
    assert _MOD.check("café: 555\u00a0123\u00a04567").shown_text == f"café: {MASK_TEXT}"  # no-break spaces
    assert _MOD.check("mail jane.d\u00adoe@gm\u0430il.com, thx").shown_text == f"mail {MASK_TEXT}, thx"
    assert _MOD.check("visit \u0435xample.com ok").shown_text == f"visit {MASK_TEXT} ok"  # Cyrillic е
    assert _MOD.check("ping @jan\u0435_doe ✨").shown_text == f"ping {MASK_TEXT} ✨"


@pytest.mark.parametrize(
    "text",
    [
        "я больше не хочу жить",
        "Мама сказала, что всё будет хорошо. Спасибо вам!",
        "Дякую, мені вже краще",  # Ukrainian: мені is all look-alikes, but the message is Cyrillic
        "Θέλω να πεθάνω",
        "Καλημέρα, πώς είσαι; Ο γιατρός είπε ότι όλα πάνε καλά.",
        "Врач сказал, что это chemo brain, а не depression",  # Russian with English words
        "Спасибо, OK",
        "東京で治療を受けています",
        "مرحبا، كيف حالك؟",
    ],
)
def test_honest_non_latin_text_is_left_alone(text):
    canon = canonicalize(text)
    assert canon.text == text
    assert not canon.spoofed
    assert not _MOD.check(text).flagged


def test_words_mixing_scripts_are_spoofing_but_genuine_words_are_not():
    assert canonicalize("м\u0430m\u0430").text == "mama"  # Cyrillic м, а around Latin m
    # Cyrillic ѕ е and Greek ι in one word; then the next all-Cyrillic word has Latin around it
    assert canonicalize("\u0455\u0435\u03b9f \u0430\u0455").text == "seif as"
    assert canonicalize("iPhone\u043e\u043c").text == "iPhoneom"  # Cyrillic о, м
    assert canonicalize("PDF\u043d\u0438\u043a").text == "PDF\u043d\u0438\u043a"  # и looks like no Latin letter
    assert canonicalize("мама").text == "мама"  # no Latin anywhere: a Russian word, not a spoof
    assert canonicalize("ёlf").text == "ëlf"  # precomposed: the look-alike keeps its marks (TR39 is NFD-based)


@pytest.mark.parametrize("control", [LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI, LRM, RLM, "\u061c"])
def test_bidi_controls(control):
    assert canonicalize(f"I want to {control}end{control} my life").text == "I want to end my life"
    assert _MOD.check(f"I want to {control}end my life").categories == (C,)
    text = f"{control}call {control}555-123{control}-4567{control} ok"
    assert _MOD.check(text).shown_text == f"{control}call {control}{MASK_TEXT}{control} ok"


def test_emoji_only_empty_and_whitespace():
    scotland = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"  # a flag of tag characters
    for text in ("", " ", "\n", "😢😢😢", "👍🏽", "❤️", "👩\u200d⚕️", "🇫🇷", scotland):
        verdict = _MOD.check(text)
        assert not verdict.flagged
        assert verdict.shown_text == text
        canon = canonicalize(text)
        assert canon.text == strip_invisible(text)  # ZWJ, variation selectors and tags go
        assert not canon.spoofed


@pytest.mark.parametrize("text", ["", " ", " \t\n", "\u200b\u200b", "\u202e", "\u3164", "\uffa0", "\u115f\u1160",
                                  "\u2800", "\u2800" * 40, "\ufeff\u2060\u00ad", "\u180e", "\U000e0041\U000e007f",
                                  " \u200b\n\u3164\t\u2800 ", "\u00a0\u3000\u2007", "\u2066\u2069\u200d\ufe0f"])
def test_blank_text_shows_nothing(text):
    assert is_blank(text)


@pytest.mark.parametrize("text", ["a", ".", "\u200bhi", "\u2800x\u2800", "😢", "❤️", "👩\u200d⚕️", "\u202eretarednoM",
                                  "я", "\u0308", "ｋ", "\u3164\u1100", "\u2801"])
def test_text_with_anything_visible_is_not_blank(text):
    assert not is_blank(text)


def test_blank_is_cheap_for_ascii():
    text = "x" + " " * 3999
    start = time.perf_counter()
    for _ in range(1000):
        assert not is_blank(text)
    assert time.perf_counter() - start < 0.05      # one isspace stopping at the first character


def test_a_4000_character_message():
    clean = "I finished my last round of chemo on Friday and I'm still so tired. " * 60
    text = (clean[:1500] + "I want to \u0435nd my l\u200bife. " + clean[1500:3970]
            + f"call 5{ZWSP}55 123 45{ZWSP}67 later")
    assert len(text) >= 4000
    start = time.perf_counter()
    verdict = _MOD.check(text)
    elapsed = time.perf_counter() - start
    assert set(verdict.categories) == {C, K}
    assert verdict.shown_text == text[: text.index("call 5") + 5] + MASK_TEXT + " later"
    assert elapsed < 0.5  # generous: it takes about a millisecond
    russian = ("Сегодня была химиотерапия, я очень устала, но врач говорит, что всё идёт хорошо. " * 50)[:4000]
    canon = canonicalize(russian)
    assert canon.text == russian and not canon.spoofed


def test_ascii_is_its_own_canonical_form():
    for text in ("", "hello", "I want to end my life", "call 555-123-4567", "\x00\x1f\x7f"):
        canon = canonicalize(text)
        assert is_canonical(text)
        assert canon.text is text and canon.original is text and not canon.spoofed and not canon.changed
        assert canon.original_span(0, len(text)) == (0, len(text))
    assert is_canonical("café, naïve, 😢") and not is_canonical("l\u200bife") and not is_canonical("ｋ")


def test_original_span():
    canon = canonicalize("x\ufb01y\u200bz")  # the fi ligature becomes two characters
    assert canon.text == "xfiyz"
    assert canon.changed
    assert [canon.original_span(i, i + 1) for i in range(5)] == [(0, 1), (1, 2), (1, 2), (2, 3), (4, 5)]
    assert canon.original_span(3, 5) == (2, 5)  # the zero-width space inside is included
    assert canon.original_span(1, 1) == (1, 1)
    assert canon.original_span(5, 5) == (5, 5)
    with pytest.raises(ValueError):
        canon.original_span(2, 6)
    with pytest.raises(ValueError):
        canon.original_span(3, 2)
    canon = canonicalize("\u0435\u0301nd")  # Cyrillic е + combining acute: é after the look-alike step
    assert canon.text == "énd"
    assert canon.original_span(0, 1) == (0, 2)


def test_every_format_character_is_removed():
    """The hard-coded ranges cover category Cf in the running Python's Unicode database."""
    missing = [hex(cp) for cp in range(0x110000)
               if unicodedata.category(chr(cp)) == "Cf" and not is_invisible(chr(cp))]
    assert not missing
    assert all(is_invisible(c) for c in INVISIBLES)
    assert not any(is_invisible(c) for c in "a \n\t\u00a0é😢\u0301")


def test_lookalike_table_is_letters_of_other_scripts():
    assert len(LATIN_LOOKALIKES) > 300
    for char, latin in LATIN_LOOKALIKES.items():
        assert char.isalpha() and not _script(char).startswith("LATIN"), char
        assert unicodedata.normalize("NFKC", char) == char
        assert unicodedata.normalize("NFD", latin)[0].isascii() and latin[0].isalpha()
    for latin, spoofs in {"a": "аα", "e": "е", "o": "оοσ", "p": "рρ", "c": "с", "y": "уγ", "x": "х", "i": "іι",
                          "k": "кκ", "m": "м", "t": "тτ", "h": "нһ", "A": "АΑ", "E": "ЕΕ", "I": "ІΙ"}.items():
        for char in spoofs:
            assert LATIN_LOOKALIKES[char] == latin


def test_lookalike_table_matches_the_unicode_confusables_data():
    """Regenerates the table from confusable-homoglyphs' copy of Unicode's confusables.txt (the
    procedure in chat/textnorm.py's comment) when that package is installed."""
    confusables = pytest.importorskip("confusable_homoglyphs.confusables")
    from confusable_homoglyphs.categories import alias  # its copy of Scripts.txt

    data = confusables.confusables_data
    ascii_letters = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

    def confusable_class(char: str) -> set[str]:
        seen, todo = {char}, [char]
        while todo:
            for entry in data.get(todo.pop(), ()):
                if entry["c"] not in seen:
                    seen.add(entry["c"])
                    todo.append(entry["c"])
        return seen

    expected: dict[str, str] = {}
    for char in data:
        if (len(char) != 1 or not char.isalpha() or unicodedata.category(char) == "Lm"
                or unicodedata.normalize("NFKC", char) != char or _script(char) == "LATIN"
                or alias(char) in ("LATIN", "COMMON", "INHERITED")):
            continue
        group = confusable_class(char)
        letters = sorted(group & ascii_letters)
        same_case = [c for c in letters if c.isupper() == char.isupper()]
        if letters:
            expected[char] = (same_case or letters)[0]
        elif char.islower():
            small_caps = {m[-1].lower() for c in group if len(c) == 1
                          and (m := unicodedata.name(c, "")) and re.fullmatch(r"LATIN LETTER SMALL CAPITAL [A-Z]", m)}
            small_caps |= {"k" for c in group if c == "\u0138"}  # kra
            if len(small_caps) == 1:
                expected[char] = small_caps.pop()
    shipped = {char: latin for latin, chars in textnorm._LATIN_LOOKALIKES.items() for char in chars}
    assert shipped == expected


# --------------------------------------------------------------------------- properties

FLAGGED = [(text, expected) for text, expected in CASES if expected]
CONTACT = [
    "call me at 555-123-4567 tomorrow",
    "my number is +33 6 12 34 56 78",
    "(555) 123-4567 after 6",
    "0612345678",
    "email me: jane.doe@gmail.com",
    "mail jane.doe@example.com or +1 (555) 123-4567",
    "it's janedoe at gmail dot com!",
    "ping @jane_doe.",
    "see www.foo.org.",
    "call ０６１２３４５６７８ now",
    "text ٠٦١٢٣٤٥٦٧٨ please",
    "I want to die, call me at 555-123-4567",
]


@st.composite
def insertions(draw, text: str) -> dict[int, str]:
    """Invisible characters to insert before text[i] (i == len(text): at the end)."""
    positions = draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=8))
    return {i: draw(st.text(st.sampled_from(INVISIBLES), min_size=1, max_size=3)) for i in positions}


def insert(text: str, inserted: dict[int, str]) -> str:
    return "".join(inserted.get(i, "") + c for i, c in enumerate(text)) + inserted.get(len(text), "")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_invisible_characters_and_lookalikes_do_not_change_the_verdict(data):
    text, _ = data.draw(st.sampled_from(FLAGGED))
    clean = _MOD.check(text)
    # swap Latin letters for Cyrillic/Greek look-alikes, leaving at least one Latin letter as it is
    # (a message made only of look-alikes, with no Latin at all, is honest Cyrillic/Greek to us)
    spoofable = [i for i in range(len(text)) if spoofs_for(text, i)]
    swapped = list(text)
    if len(spoofable) > 1:
        keep = data.draw(st.sampled_from(spoofable))
        chosen = data.draw(st.lists(st.sampled_from(spoofable), unique=True, max_size=12))
        for i in chosen:
            if i != keep:
                swapped[i] = data.draw(st.sampled_from(spoofs_for(text, i)))
    spoofed = "".join(swapped)
    noisy = insert(spoofed, data.draw(insertions(spoofed)))
    verdict = _MOD.check(noisy)
    assert set(verdict.categories) == set(clean.categories), (noisy, verdict.hits)
    if K not in verdict.categories:
        assert verdict.shown_text == noisy
    canon = canonicalize(noisy)
    assert canon.spoofed == (spoofed != text)


def _masked_spans(clean: str, shown: str) -> list[tuple[int, int]]:
    """The spans of ``clean`` that ``shown`` replaced with the mask (the examples are unambiguous)."""
    pieces = shown.split(MASK_TEXT)
    match = re.fullmatch("(.+?)".join(map(re.escape, pieces)), clean, re.DOTALL)
    assert match is not None
    return [match.span(g) for g in range(1, len(pieces))]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_masking_with_invisible_characters_inserted(data):
    text = data.draw(st.sampled_from(CONTACT))
    clean = _MOD.check(text)
    spans = _masked_spans(text, clean.shown_text)
    assert spans, text
    inserted = data.draw(insertions(text))
    verdict = _MOD.check(insert(text, inserted))
    assert verdict.categories == clean.categories
    # expected: the clean masked text, with every inserted character that is not strictly inside
    # a masked span at its place
    expected: list[str] = []
    for i in range(len(text) + 1):
        inside = [(s, e) for s, e in spans if s <= i < e]
        if not any(s < i for s, _ in inside):
            expected.append(inserted.get(i, ""))
        if any(s == i for s, _ in inside):
            expected.append(MASK_TEXT)
        if i < len(text) and not inside:
            expected.append(text[i])
    assert verdict.shown_text == "".join(expected)
    assert strip_invisible(verdict.shown_text) == clean.shown_text


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
       | st.text(st.sampled_from("aeiokmxyAEIOK 5-.@\u0430\u0435\u043e\u0456\u043a\u03bf\u03b1\u0301\u0308"
                                 "\ufb01\uff45\u200b\u00ad\u202e\u1100\u1161\u11a8жλ"), max_size=30))
def test_canonical_form_properties(text):
    canon = canonicalize(text)
    assert canon.original == text
    # invisible characters gone, NFKC; the look-alike step changes nothing else
    assert not any(is_invisible(c) for c in canon.text)
    assert unicodedata.is_normalized("NFKC", canon.text)
    if not canon.spoofed:
        assert canon.text == unicodedata.normalize("NFKC", strip_invisible(text))
    # idempotent: the rules and a model can canonicalise twice and see the same text
    again = canonicalize(canon.text)
    assert again.text == canon.text and not again.spoofed
    # every canonical character comes from a non-empty, ordered span of the original
    spans = [canon.original_span(i, i + 1) for i in range(len(canon.text))]
    assert all(0 <= s < e <= len(text) for s, e in spans)
    assert spans == sorted(spans)
    if not canon.spoofed:  # and it is the character NFKC made of them
        assert all(c in unicodedata.normalize("NFKC", strip_invisible(text[s:e]))
                   for c, (s, e) in zip(canon.text, spans, strict=True))
    if spans:
        assert canon.original_span(0, len(canon.text)) == (spans[0][0], spans[-1][1])
        # what lies outside the spans is invisible
        covered = {i for s, e in spans for i in range(s, e)}
        assert all(is_invisible(c) for i, c in enumerate(text) if i not in covered)
    else:
        assert all(is_invisible(c) for c in text)


def test_a_right_to_left_override_is_judged_as_a_reader_sees_it():
    from chat.textnorm import visual_order

    assert visual_order("plain text") is None
    assert visual_order("\u202eefil ym dne") == "end my life"
    assert visual_order("ok \u202eefil ym dne\u202c, bye") == "ok end my life\u202c, bye"
    verdict = Moderator().check("I want to \u202eefil ym dne\u202c tonight")
    assert "crisis" in verdict.categories
    assert verdict.shown_text == "I want to \u202eefil ym dne\u202c tonight"    # delivered as written
    masked = Moderator().check("call me \u202e321009 00770\u202c").shown_text
    assert "00770" not in masked and "[contact info removed]" in masked
