"""A huge JSONL line's text field, decoded piece by piece instead of into one str.

``orjson.loads`` of a 100 MB line holds, at its peak, the line's bytes, orjson's unescaped
UTF-8 copy (~1x) and the str (1, 2 or 4 bytes a character: 2x here for text with one CJK
character, 4x with one emoji): 4.5x the line for the kernel documentation with its CJK
translations, measured. :func:`split_huge_record` instead finds the text's string literal
in the line's bytes, parses the rest of the record with the literal replaced by a short
placeholder, and returns a :class:`JsonText` that decodes the literal in ~1 MB pieces when
asked: memory is the line plus one piece, whatever the characters.

Why the pieces are the text: each piece is decoded by orjson as the string literal
``"<piece bytes>"``. A piece that ends where the literal does not end a character (inside
a UTF-8 sequence, after an escaping backslash, inside ``\\uXXXX``, between the two
``\\u`` escapes of a surrogate pair) does not decode: a truncated UTF-8 sequence, an
escaped closing quote, a short hex escape and a lone surrogate are all errors to orjson.
So if the first piece starts the literal and every piece decodes, every piece ends on a
character boundary and the decoded pieces, joined, are the decoded literal. The cut rules
(``_CUT``) only choose likely boundaries; the decoding checks them, once, when the record
is read (:func:`split_huge_record` returns None on any failure, and the caller parses the
line whole, which raises the line's real error).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

# The engines read a JSONL line this long whose text is most of it piece by piece (corpus.read_source's
# huge_text_bytes): ~1.7x the line at the peak, not ~4.5x (bytes, orjson's copy, a 2-byte str).
HUGE_TEXT_BYTES = 16 << 20
PIECE_BYTES = 1 << 20  # bytes of the literal decoded at a time: ~1M characters, ~4 MB as a str at most

# A cut after any of these ends a character in valid JSON text, so the piece before it decodes:
# - one ASCII byte that is not a backslash, a 'u' or a hex digit: a character, or the last of a
#   two-byte escape like \n (the end of \uXXXX is a hex digit, so never mistaken);
# - \uXXXX that is not a high surrogate, after a byte that is not a backslash (so it is an escape);
# - a UTF-8 byte >= 0x80 before a UTF-8 lead byte (>= 0xC0): between two raw multibyte characters.
_CUT = re.compile(rb"[^\\u0-9a-fA-F\x80-\xff]|(?<!\\)\\u(?![dD][89abAB])[0-9a-fA-F]{4}|[\x80-\xff](?=[\xc0-\xff])")
_PLACEHOLDERS = (b'"packprep:huge-text:1"', b'"packprep:huge-text:2"')
_MAX_QUOTES = 1 << 20  # quotes looked at (~0.5 s) before a huge line is left to the whole parse


class JsonText:
    """The text of one string literal of a JSONL line, as str pieces (see the module docstring).

    ``len()`` is its length in characters and ``isspace()`` is ``str.isspace`` of the whole
    text, both found when it was checked; :meth:`pieces` decodes it again, piece by piece.
    """

    def __init__(self, line: bytes | bytearray, bounds: list[int], chars: int, blank: bool):
        self._line, self._bounds, self._chars, self._blank = line, bounds, chars, blank

    def __len__(self) -> int:
        return self._chars

    def isspace(self) -> bool:
        return self._blank

    def pieces(self) -> Iterator[str]:
        """The decoded text in order, ~PIECE_BYTES of the line at a time."""
        view = memoryview(self._line)
        for start, stop in zip(self._bounds[:-1], self._bounds[1:]):
            yield _decode(view[start:stop])


def split_huge_record(line: bytes | bytearray, text_field: str, *, min_bytes: int) -> tuple[dict[str, Any], JsonText] | None:
    """``(record, text)`` for a JSONL ``line`` whose ``text_field`` is a string literal of at least ``min_bytes``.

    ``record`` is the line's JSON object with a placeholder str in ``text_field`` (so its type
    checks and its other fields read as usual); ``text`` holds ``line`` and decodes the field.
    None when that is not the case or anything fails to decode: parse the line whole instead.
    """
    literal = _long_literal(line, min_bytes)
    if literal is None:
        return None
    start, end = literal  # the quotes' positions
    records = []
    for placeholder in _PLACEHOLDERS:
        # Two placeholders: a record whose text is each in turn can only be reading the literal itself.
        skeleton = b"".join((memoryview(line)[:start], placeholder, memoryview(line)[end + 1 :]))
        try:
            records.append(orjson.loads(skeleton))
        except orjson.JSONDecodeError:
            return None
    texts = [r.get(text_field) if type(r) is dict else None for r in records]
    if texts != [orjson.loads(p) for p in _PLACEHOLDERS]:
        return None
    text = _checked_text(line, start + 1, end)
    return (records[0], text) if text is not None else None


def _long_literal(line: bytes | bytearray, min_bytes: int) -> tuple[int, int] | None:
    """Positions of the opening and closing quote of the first string literal of ``min_bytes`` or more.

    Outside a literal a JSON line has no quote but those that open one, so literals are found
    by ``find`` (~0.5 us a quote: 0.17 s for the kernel docs' 100 MB line with 321K escaped
    quotes; a regex over the literal's characters takes ~1 s and, with millions of escapes,
    hundreds of MB). None past _MAX_QUOTES quotes: such a line is parsed whole.
    """
    budget, pos = _MAX_QUOTES, 0
    while (start := line.find(b'"', pos)) >= 0:
        end = start
        while True:
            budget -= 1
            end = line.find(b'"', end + 1)
            if end < 0 or budget < 0:
                return None  # an unclosed literal (orjson will say so), or too many quotes
            backslashes = 0
            while line[end - 1 - backslashes] == 0x5C:  # an odd run of backslashes escapes this quote
                backslashes += 1
            if backslashes % 2 == 0:
                break
        if end - start >= min_bytes:
            return start, end
        pos = end + 1
    return None


def _checked_text(line: bytes | bytearray, start: int, end: int) -> JsonText | None:
    """The literal's bytes [start, end) cut into decodable pieces, or None where a piece does not decode."""
    bounds = [start]
    while end - bounds[-1] > PIECE_BYTES:
        cut = _CUT.search(line, bounds[-1] + PIECE_BYTES // 2, bounds[-1] + PIECE_BYTES)
        cut = cut or _CUT.search(line, bounds[-1] + PIECE_BYTES, end - 1)
        if cut is None:
            break
        bounds.append(cut.end())
    bounds.append(end)
    view, chars, blank = memoryview(line), 0, True
    for piece_start, piece_stop in zip(bounds[:-1], bounds[1:]):
        try:
            piece = _decode(view[piece_start:piece_stop])
        except orjson.JSONDecodeError:
            return None
        chars += len(piece)
        blank = blank and piece.isspace()
    if chars == 0:
        blank = False  # "".isspace() is False, as for the str
    return JsonText(line, bounds, chars, blank)


def _decode(literal_bytes: memoryview) -> str:
    quoted = bytearray(b'"')
    quoted += literal_bytes
    quoted += b'"'
    return orjson.loads(quoted)
