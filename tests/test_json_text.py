"""json_text: a huge JSONL line's text decoded piece by piece is the text orjson decodes whole, or nothing."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packprep import json_text
from packprep.corpus import ReadCounters, read_source
from packprep.errors import PackprepError
from tests.tokenizers.test_text_cuts import ADVERSARIAL

TEXTS = [
    *ADVERSARIAL[:-1],  # the last has lone surrogates: not valid JSON text
    'quotes "inside" and \\ backslashes \\\\ \\" \\\\\\" \\u00e9 (written out) \t tabs / slashes',
    "\\" * 41 + '"' * 7 + "\\" * 3,  # runs of the characters that escape
    "控制字符\x01\x1f和换行\n" * 3,  # control characters are escaped \u0001
    " \n\t " * 10,  # blank
    'say "' * 1100 + "\\" * 5,  # many escaped quotes
]


def lines_of(text: str) -> list[bytes]:
    """The JSON lines a writer might give ``text`` in: escaped non-ASCII (json.dumps' default), raw UTF-8, orjson's."""
    record = {"text": text, "id": 7, "meta": {"t": "x\\\"y"}, "after": [1, "2"]}
    return [json.dumps(record).encode(), json.dumps(record, ensure_ascii=False).encode(), orjson.dumps(record)]


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(json_text, "PIECE_BYTES", 16)


@pytest.mark.parametrize("text", TEXTS)
def test_the_pieces_are_the_text(text, small_pieces):
    for line in lines_of(text):
        record, got = json_text.split_huge_record(line, "text", min_bytes=6)  # the first literal longer than "text"
        assert record == {**orjson.loads(line), "text": "packprep:huge-text:1"}
        pieces = list(got.pieces())
        assert "".join(pieces) == text and len(got) == len(text) and got.isspace() == text.isspace()
        start, end = json_text._long_literal(line, 6)
        assert len(pieces) > (end - start) // 64  # really cut, escapes or not


def _decodes(content: bytes) -> str | None:
    try:
        return orjson.loads(b'"' + content + b'"')
    except orjson.JSONDecodeError:
        return None


def _check_every_cut(text: str) -> None:
    """Every cut of a literal either decodes to two halves that join to the text, or one half fails: so a
    successful decode of pieces is the text, wherever the pieces were cut (json_text's argument)."""
    for line in lines_of(text):
        start = line.index(b'"', line.index(b'"text":') + 7) + 1
        content = line[start : line.index(b'", "id"' if b'", "id"' in line else b'","id"')]
        assert _decodes(content) == text
        rule_cuts = {m.end() for m in json_text._CUT.finditer(content)} - {len(content)}
        for p in range(1, len(content)):
            left, right = _decodes(content[:p]), _decodes(content[p:])
            if p in rule_cuts:
                assert left is not None and right is not None, (content[:p], content[p:])
            if left is not None and right is not None:
                assert left + right == text, (content[:p], content[p:])


@pytest.mark.parametrize("text", TEXTS)
def test_every_cut_of_a_literal_joins_to_the_text_or_fails(text):
    _check_every_cut(text)


ALPHABET = list('a 1\n\t"\\/u.') + ["é", "中", "😀", "\x01", "\u2028", "\U0001e030"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=30).map("".join))
def test_every_cut_of_random_text_joins_or_fails(text):
    _check_every_cut(text)


@pytest.mark.parametrize(
    "line",
    [
        b'{"text": "abcdefgh\\x"}',  # a bad escape
        b'{"text": "abcd\x01efgh"}',  # a raw control character
        b'{"text": "abcdefgh\\ud800"}',  # a lone surrogate
        b'{"text": "abcdefgh\xff"}',  # not UTF-8
        b'{"text": "abcdefghij"',  # no closing brace
        b'{"text": "abcdefghij',  # no closing quote
        b'{"text": "ab", "other": "abcdefghijklmnop"}',  # the long literal is not the text
        b'{"text": "abcdefghijklmnop", "text": "ab"}',  # nor here: the last key wins
        b'{"x": "abcdefghijklmnopqrstuvwxyz", "text": "packprep:huge-text:1"}',  # a text that looks like the placeholder
        b'["text", "abcdefghijklmnop"]',  # not an object
        b'{"abcdefghijklmnop": 1}',  # a key
    ],
)
def test_anything_else_is_left_to_the_whole_parse(line, small_pieces):
    assert json_text.split_huge_record(line, "text", min_bytes=8) is None


def test_a_line_of_too_many_quotes_is_left_to_the_whole_parse(monkeypatch, small_pieces):
    monkeypatch.setattr(json_text, "_MAX_QUOTES", 5)  # closing quotes looked for, escaped or not
    first, later = b'{"text": "abcdefghijklmnop", "a": "b", "c": "d"}', b'{"a": "b", "c": "d", "text": "abcdefghijklmnop"}'
    assert "".join(json_text.split_huge_record(first, "text", min_bytes=8)[1].pieces()) == "abcdefghijklmnop"
    assert json_text.split_huge_record(later, "text", min_bytes=8) is None  # many short strings first
    escaped = b'{"text": "abcdefghijklmnop \\"1\\" \\"2\\" \\"3\\""}'
    monkeypatch.setattr(json_text, "_MAX_QUOTES", 8)
    assert "".join(json_text.split_huge_record(escaped, "text", min_bytes=8)[1].pieces()) == 'abcdefghijklmnop "1" "2" "3"'
    monkeypatch.setattr(json_text, "_MAX_QUOTES", 7)
    assert json_text.split_huge_record(escaped, "text", min_bytes=8) is None  # a text of many quotes


def test_read_source_gives_the_same_documents_and_errors(tmp_path, small_pieces):
    lines = [line for text in TEXTS for line in lines_of(text)[:2]]
    lines.insert(3, b'{"text": "a bad escape \\x in a long line"}')
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    def read(**options):
        counters = ReadCounters()
        docs = [(i, t if isinstance(t, str) else "".join(t.pieces())) for i, t in read_source(path, tmp_path, counters=counters, **options)]
        return docs, counters

    whole, pieces = read(on_error="skip"), read(on_error="skip", huge_text_bytes=40)
    assert pieces == whole and whole[1].skipped == 1
    assert sum(not isinstance(t, str) for _, t in read_source(path, tmp_path, on_error="skip", huge_text_bytes=40)) > 10
    with pytest.raises(PackprepError) as expected:
        read()
    with pytest.raises(PackprepError) as got:
        read(huge_text_bytes=40)
    assert str(got.value) == str(expected.value) and "c.jsonl:4: invalid JSON" in str(got.value)
