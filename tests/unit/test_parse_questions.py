"""SuggestQuestions' parser: a grammar-made JSON list, or the complete strings
of a reply cut short or off its grammar (raw newlines, bad escapes): never an
exception, which the servicer would answer with INTERNAL (seen on a SlimLM)."""

from slmd.server.documents import parse_questions


def test_json_list():
    assert parse_questions('["What is X?", " Why Y? "]') == ["What is X?", "Why Y?"]


def test_cut_short_keeps_complete_strings():
    assert parse_questions('["What is X?", "Why Y?", "How') == ["What is X?", "Why Y?"]


def test_raw_control_characters_and_bad_escapes():
    text = '["What is\nX?", "Bad \\q escape?", "\\u00e9t\\u00e9?"'
    assert parse_questions(text) == ["What is\nX?", "Bad \\q escape?", "été?"]


def test_nothing_usable():
    assert parse_questions("no questions here") == []
