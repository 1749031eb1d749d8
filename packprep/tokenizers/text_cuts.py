"""Where a cl100k text can be cut so that encoding the pieces gives the ids of encoding it whole.

A BPE tokenizer of the tiktoken family first splits text with its pre-tokenisation regex
and merges bytes only inside one match; ids are the concatenation of each match's ids.
So a text may be cut at ``p`` when (a) the regex, run over the whole text, ends a match
at ``p`` and (b) the regex run over ``text[:p]`` alone finds the same matches: nothing
before ``p`` looked past it (the pattern's only look-arounds are ``(?!\\S)`` and ``$``).
Encoding a 100 MB document in pieces then keeps ids identical while memory stays bounded
by the piece, not the document (a single ``encode`` returns a Python list of ~25M ints,
~1 GB).

For cl100k's pattern (``tokenizers.CL100K_PATTERN``)::

    '(?i:[sdmt]|ll|ve|re) | [^\\r\\n\\p{L}\\p{N}]?+\\p{L}++ | \\p{N}{1,3}+ | ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+
    | \\s++$ | \\s*[\\r\\n] | \\s+(?!\\S) | \\s

the cuts between ``a = text[p-1]`` and ``b = text[p]`` that satisfy (a) and (b), whatever
comes before or after:

- ``a`` a letter, ``b`` not a letter: letters appear only in the letter run (possessive,
  so it ends at ``b`` whether ``b`` is there or the text ends) and in the contractions,
  which end on a letter. (Not the reverse: one punctuation mark before letters joins them.)
- ``a`` a number, ``b`` not a number: numbers appear only in ``\\p{N}{1,3}+``.
- ``a`` is ``\\r`` or ``\\n``, ``b`` not whitespace: a newline ends ``\\s*[\\r\\n]`` or a
  punctuation run's ``[\\r\\n]*+``; with ``b`` not whitespace neither can go on, and the
  whitespace run ending in ``a`` is one match either way (``\\s*[\\r\\n]`` whole, ``\\s++$``
  alone). Not inside a whitespace run: ``\\s+(?!\\S)`` gives its last space to the next word.
- ``a`` punctuation (not whitespace, letter or number), ``b`` a space or tab: the
  punctuation run is possessive and only newlines may follow it into the same match.

"Letter", "number" and "whitespace" are the regex's ``\\p{L}``, ``\\p{N}``, ``\\s``. Python's
``unicodedata`` may be an older Unicode than the tokenizer's Rust regex, so a character it
does not know (category Cn, or a surrogate) is never beside a cut: a letter assigned since
would turn a "letter, then not a letter" cut into the middle of a word.
``tests/tokenizers/test_text_cuts.py`` checks every allowed cut of adversarial texts against the whole
encode, on both cl100k backends.
"""

from __future__ import annotations

import array
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator

import numpy as np

# Unicode White_Space: what the Rust regex's \s matches (str.isspace() also takes U+001C..1F).
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    map(chr, range(0x2000, 0x200B))
)
PIECE_CHARS = 1 << 18  # ~256K characters: ~64K tokens, a few MB of Python ints per piece

# Cheap candidates for the rules above; each is checked with is_safe_cut, which decides.
_ASCII_CANDIDATE = re.compile(r"[A-Za-z0-9](?=[^A-Za-z0-9])|[\r\n](?=\S)|[^\sA-Za-z0-9](?=[ \t])")


def _kind(char: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'P' anything else assigned, '?' unknown here."""
    if char in _WHITE_SPACE:
        return "S"
    category = unicodedata.category(char)
    if category in ("Cn", "Cs"):
        return "?"
    return category[0] if category[0] in "LN" else "P"


def is_safe_cut(text: str, p: int) -> bool:
    """Whether cl100k encodes ``text[:p]`` and ``text[p:]`` to the ids of ``text`` (0 < p < len)."""
    if not 0 < p < len(text):
        return False
    before, after = text[p - 1], text[p]
    a, b = _kind(before), _kind(after)
    if "?" in (a, b):
        return False
    if a in "LN":
        return b != a
    if before in "\r\n":
        return b != "S"
    return a == "P" and after in " \t"


def _unicode_candidates() -> re.Pattern | None:
    try:
        import regex  # tiktoken's own dependency: \p{L} and \p{N}
    except ImportError:
        return None
    return regex.compile(r"\p{L}(?!\p{L})|\p{N}(?!\p{N})|[\r\n](?!\s)|[^\s\p{L}\p{N}](?=[ \t])")


_UNICODE_CANDIDATE: re.Pattern | None | bool = False  # compiled on first use


def find_cut(text: str, start: int, stop: int) -> int | None:
    """A safe cut ``p`` with ``start <= p <= stop`` (the first the ASCII candidates offer, else the first of any), or None."""
    global _UNICODE_CANDIDATE
    start = max(start, 1)
    stop = min(stop, len(text) - 1)
    if start > stop:
        return None
    for candidate in _ASCII_CANDIDATE.finditer(text, start - 1, stop + 1):
        if is_safe_cut(text, candidate.end()):
            return candidate.end()
    if _UNICODE_CANDIDATE is False:
        _UNICODE_CANDIDATE = _unicode_candidates()
    matches = _UNICODE_CANDIDATE.finditer(text, start - 1, stop + 1) if _UNICODE_CANDIDATE else iter([])
    for candidate in matches:
        if is_safe_cut(text, candidate.end()):
            return candidate.end()
    if _UNICODE_CANDIDATE is None:  # no `regex`: look at every place (slow, but only for huge texts)
        return next((p for p in range(start, stop + 1) if is_safe_cut(text, p)), None)
    return None


def cut_points(text: str, max_chars: int = PIECE_CHARS) -> list[int]:
    """Safe cuts of ``text`` into pieces of at most ``max_chars`` characters where the text allows.

    Each cut is the first safe place in the second half of a ``max_chars`` window; a window
    without one (a megabyte of whitespace, or of letters) makes a longer piece that ends at
    the next safe place. Empty for a text of ``max_chars`` or fewer.
    """
    cuts: list[int] = []
    start = 0
    while len(text) - start > max_chars:
        p = find_cut(text, start + max_chars // 2, start + max_chars)
        if p is None:
            p = find_cut(text, start + max_chars + 1, len(text))
            if p is None:
                break
        cuts.append(p)
        start = p
    return cuts


def pieces(text: str, max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` cut at ``cut_points``: the pieces in order, one string at a time."""
    bounds = [0, *cut_points(text, max_chars), len(text)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        yield text[start:stop]


def encode_in_pieces(
    texts: list[str],
    encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    *,
    max_chars: int = PIECE_CHARS,
    group_chars: int = 4 * PIECE_CHARS,
) -> tuple[np.ndarray, np.ndarray]:
    """``encode(texts)`` (flat uint32 ids, int64 lengths) with long texts encoded piece by piece.

    A batch without a text longer than ``max_chars`` goes to ``encode`` as it is. Otherwise
    pieces are encoded in groups of about ``group_chars`` characters and their ids appended
    to one growing uint32 buffer, so memory holds the ids once plus one group's worth.
    """
    if max(map(len, texts), default=0) <= max_chars:
        return encode(texts)
    flat = array.array("I")
    lengths = np.zeros(len(texts), dtype=np.int64)
    group: list[str] = []
    owners: list[int] = []
    chars = 0

    def flush() -> None:
        nonlocal group, owners, chars
        if group:
            ids, piece_lengths = encode(group)
            flat.frombytes(np.ascontiguousarray(ids, dtype=np.uint32).view(np.uint8).data)
            np.add.at(lengths, owners, piece_lengths)
        group, owners, chars = [], [], 0

    for i, text in enumerate(texts):
        for piece in pieces(text, max_chars):
            group.append(piece)
            owners.append(i)
            chars += len(piece)
            if chars >= group_chars:
                flush()
    flush()
    return np.frombuffer(flat, dtype=np.uint32), lengths


def encode_stream(
    parts: Iterable[str],
    encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    *,
    max_chars: int = PIECE_CHARS,
    group_chars: int = 4 * PIECE_CHARS,
) -> Iterator[np.ndarray]:
    """The ids (flat uint32) of the text ``"".join(parts)``, a group of pieces at a time, the text never whole.

    ``parts`` may be cut anywhere (``json_text.JsonText.pieces``): they are gathered until
    ``group_chars``, cut at ``cut_points`` (a cut only needs the characters on either side
    of it, so it is one of the whole text's), and all but the last piece encoded; that one
    starts the next group. The arrays, concatenated, are ``encode([text])``'s ids.
    """
    pending = ""
    for part in parts:
        pending += part
        if len(pending) < group_chars:
            continue
        cuts = cut_points(pending, max_chars)
        if cuts:
            bounds = [0, *cuts]
            yield encode([pending[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])])[0]
            pending = pending[cuts[-1] :]
    if pending:
        yield encode([pending])[0]

