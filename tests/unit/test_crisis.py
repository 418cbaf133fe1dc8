from __future__ import annotations

import json

import pytest

from chat.crisis import DEFAULT_LINES, MAX_LINES, CrisisLine, parse_crisis_lines, resources_frame
from chat.flags import excerpt, message_flag_id


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_without_configuration_the_generic_line_says_to_call_local_emergency_services(raw):
    lines = parse_crisis_lines(raw)
    assert lines == DEFAULT_LINES
    assert len(lines) == 1
    text = lines[0].text.lower()
    assert "emergency" in text and "local" in text
    assert not lines[0].phone, "the default must not name one country's number as the line to call"


def test_configured_lines_keep_their_order_and_only_the_fields_given():
    raw = json.dumps([
        {"name": "Samaritans", "phone": "116 123", "url": "https://www.samaritans.org"},
        {"name": "Crisis Text Line", "text": "Text HOME to 741741"},
    ])
    lines = parse_crisis_lines(raw)
    assert lines == (CrisisLine("Samaritans", phone="116 123", url="https://www.samaritans.org"),
                     CrisisLine("Crisis Text Line", text="Text HOME to 741741"))
    assert [line.as_json() for line in lines] == [
        {"name": "Samaritans", "phone": "116 123", "url": "https://www.samaritans.org"},
        {"name": "Crisis Text Line", "text": "Text HOME to 741741"},
    ]


def test_values_are_trimmed():
    (line,) = parse_crisis_lines('[{"name": "  Line  ", "phone": " 988 "}]')
    assert line == CrisisLine("Line", phone="988")


@pytest.mark.parametrize("raw, complaint", [
    ("{not json", "not JSON"),
    ('{"name": "x", "phone": "1"}', "list"),
    ("[]", "list"),
    ('["988"]', "object"),
    ('[{"phone": "988"}]', "'name' is required"),
    ('[{"name": "Line"}]', "at least one of"),
    ('[{"name": "Line", "phone": 988}]', "phone"),
    ('[{"name": "Line", "phone": ""}]', "phone"),
    ('[{"name": "Line", "url": "javascript:alert(1)"}]', "https://"),
    ('[{"name": "Line", "fax": "1"}]', "unknown field"),
    (json.dumps([{"name": "L", "phone": "1"}] * (MAX_LINES + 1)), "at most"),
    (json.dumps([{"name": "L", "text": "x" * 501}]), "at most 500"),
])
def test_malformed_configuration_is_refused_with_a_reason(raw, complaint):
    with pytest.raises(ValueError, match="crisis lines") as info:
        parse_crisis_lines(raw)
    assert complaint in str(info.value)


def test_resources_frame():
    frame = resources_frame("c1", parse_crisis_lines('[{"name": "988 Lifeline", "phone": "988"}]'))
    assert frame["type"] == "resources"
    assert frame["conversation_id"] == "c1"
    assert frame["lines"] == [{"name": "988 Lifeline", "phone": "988"}]
    assert frame["message"]
    json.dumps(frame)


def test_flag_excerpt_is_short_and_keeps_short_text_whole():
    assert excerpt("call me at  555 0100") == "call me at 555 0100"
    long = "word " * 100
    cut = excerpt(long)
    assert len(cut) <= 200 and cut.endswith("…")
    assert excerpt("x" * 300).startswith("x" * 150)


def test_message_flag_ids_are_stable_per_message_and_category():
    assert message_flag_id("c1", 3, "crisis") == message_flag_id("c1", 3, "crisis")
    ids = {message_flag_id("c1", 3, "crisis"), message_flag_id("c1", 3, "abuse"),
           message_flag_id("c1", 4, "crisis"), message_flag_id("c2", 3, "crisis")}
    assert len(ids) == 4
    assert all(len(i) <= 128 for i in ids)
