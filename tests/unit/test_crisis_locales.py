"""Crisis lines per locale or region (AFTERTALK_CRISIS_LINES as an object), and the shipped default
telling people to call their local emergency number in their own language."""
from __future__ import annotations

import json

import pytest

from chat.crisis import DEFAULT_LINES, lines_for, normalise_locale, parse_crisis_lines, resources_frame

BY_LOCALE = json.dumps({
    "default": [{"name": "Default line", "phone": "112"}],
    "es": [{"name": "Línea 024", "phone": "024"}],
    "MX": [{"name": "Línea de la Vida", "phone": "800 911 2000"}],
    "es-AR": [{"name": "Centro de Asistencia al Suicida", "phone": "135"}],
    "GB": [{"name": "Samaritans", "phone": "116 123"}],
})


@pytest.mark.parametrize("locale, name", [
    ("es-AR", "Centro de Asistencia al Suicida"),   # the exact locale first
    ("es-MX", "Línea de la Vida"),                  # then the region
    ("es_mx", "Línea de la Vida"),
    ("es-ES", "Línea 024"),                         # then the language
    ("es", "Línea 024"),
    ("en-GB", "Samaritans"),
    ("de-DE", "Default line"),                      # then the default
    ("", "Default line"),
    (None, "Default line"),
    ("not a locale!", "Default line"),
])
def test_the_most_specific_list_is_chosen(locale, name):
    lines = parse_crisis_lines(BY_LOCALE)
    assert lines_for(lines, locale)[0][0].name == name
    assert resources_frame("c1", lines, locale)["lines"][0]["name"] == name


def test_the_tuple_itself_is_the_default_so_older_callers_keep_working():
    lines = parse_crisis_lines(BY_LOCALE)
    assert [line.name for line in lines] == ["Default line"]


def test_without_configuration_the_generic_entry_speaks_the_authors_language():
    lines = parse_crisis_lines("")
    assert lines == DEFAULT_LINES
    es = resources_frame("c1", lines, "es-MX")
    assert es["locale"] == "es"
    assert es["lines"][0]["name"] == "Servicios de emergencia"
    assert "número de emergencias" in es["lines"][0]["text"]
    assert "phone" not in es["lines"][0]
    assert es["message"].startswith("Parece que estás pasando")
    ar = resources_frame("c1", lines, "ar")
    assert "رقم الطوارئ" in ar["lines"][0]["text"]
    # a language we do not ship: English
    assert resources_frame("c1", lines, "sw")["lines"] == [DEFAULT_LINES[0].as_json()]


def test_an_object_without_a_default_falls_back_to_the_generic_entry_in_the_authors_language():
    lines = parse_crisis_lines(json.dumps({"GB": [{"name": "Samaritans", "phone": "116 123"}]}))
    assert resources_frame("c1", lines, "en-GB")["lines"] == [{"name": "Samaritans", "phone": "116 123"}]
    assert resources_frame("c1", lines, "de-AT")["lines"][0]["name"] == "Notruf"


def test_a_plain_list_is_for_everyone():
    lines = parse_crisis_lines('[{"name": "988 Lifeline", "phone": "988"}]')
    frame = resources_frame("c1", lines, "fr-CA")
    assert frame["lines"] == [{"name": "988 Lifeline", "phone": "988"}]
    assert "locale" not in frame          # the deployment's own words: their language is not known
    assert frame["message"].startswith("Vous traversez")


@pytest.mark.parametrize("raw, complaint", [
    ('{"default": []}', "non-empty"),
    ('{"xx-YY-ZZ-QQ": [{"name": "L", "phone": "1"}]}', "none of these"),
    ('{"es": [{"name": "L"}]}', "at least one of"),
    ('{"es": [{"name": "L", "phone": "1"}], "ES": "x"}', "list"),
    (json.dumps({"es_ES": [{"name": "L", "phone": "1"}], "es-ES": [{"name": "M", "phone": "1"}]}), "twice"),
])
def test_malformed_locale_maps_are_refused(raw, complaint):
    with pytest.raises(ValueError, match="crisis lines") as info:
        parse_crisis_lines(raw)
    assert complaint in str(info.value)


@pytest.mark.parametrize("raw, tag", [("es-mx", "es-MX"), ("pt_BR", "pt-BR"), ("zh-Hans-CN", "zh-CN"), ("EN", "en"),
                                      ("es-419", "es-419"), ("", ""), ("1234", ""), (None, ""), ("x" * 40, "")])
def test_locales_are_normalised(raw, tag):
    assert normalise_locale(raw) == tag
