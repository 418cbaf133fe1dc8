import re

from matcher.vocabulary import Vocabulary, load_vocabulary

SECTIONS = ("diagnoses", "side_effects", "languages")


def test_each_section_has_at_least_twenty_entries():
    vocab = load_vocabulary()
    for section in SECTIONS:
        assert len(getattr(vocab, section)) >= 20, section


def test_codes_are_unique_snake_case_and_labels_non_empty():
    vocab = load_vocabulary()
    for section in SECTIONS:
        entries = getattr(vocab, section)
        for code, label in entries.items():
            assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
            assert label.strip() and label == label.strip(), code
        # labels are shown side by side in pickers: they must be distinguishable
        assert len(set(entries.values())) == len(entries), section


def test_language_codes_are_iso_639_1_shaped():
    for code in load_vocabulary().languages:
        assert re.fullmatch(r"[a-z]{2}", code), code


def test_expected_codes_present():
    vocab = load_vocabulary()
    assert {"breast", "prostate", "lymphoma_hodgkin", "lymphoma_non_hodgkin", "myeloma"} <= vocab.diagnoses.keys()
    assert {"chemo_brain", "fear_of_recurrence", "scanxiety", "return_to_work"} <= vocab.side_effects.keys()
    assert {"en", "fr", "es", "de", "zh", "ar"} <= vocab.languages.keys()
    assert vocab.side_effects["chemo_brain"] == "Chemo brain (cognitive changes)"


def test_as_json_shape_and_order():
    vocab = load_vocabulary()
    doc = vocab.as_json()
    assert set(doc) == set(SECTIONS)
    for section in SECTIONS:
        items = doc[section]
        assert all(set(item) == {"code", "label"} for item in items)
        assert [item["code"] for item in items] == list(getattr(vocab, section))
    assert doc["languages"][0] == {"code": "en", "label": "English"}


def test_loader_is_cached_and_immutable():
    vocab = load_vocabulary()
    assert load_vocabulary() is vocab
    assert isinstance(vocab, Vocabulary)
    try:
        vocab.diagnoses = {}  # type: ignore[misc]  # assigning to a frozen field, on purpose
    except AttributeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("Vocabulary must be frozen")
