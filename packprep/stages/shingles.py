"""Text -> normalised words -> uint64 word hashes -> uint64 shingle hashes, for MinHash.

Normalisation (``normalize_text`` shows it as a string; ``word_hashes`` computes the same
words without building one):

1. Unicode NFKC (compatibility forms: full-width letters, ligatures, superscripts), then
   ``str.casefold`` (case, and ß/ss-style foldings ``lower`` misses);
2. a word is a maximal run of letters, digits and combining marks (Unicode categories
   L, N, M); everything else (whitespace, punctuation, symbols, control characters) only
   separates words, so runs of it, line wrapping and a final period change nothing;
3. a Han, Hiragana or Katakana character is a word by itself: those scripts put no
   spaces between words, and one word per sentence would make every edit change it all.

Digits and diacritics are kept (datatrove maps digits to 0 and strips diacritics):
numbers and accents are often what tells two templated documents apart.

Hashing is vectorised over a batch and deterministic across processes (no ``hash()``):
the batch's code points are one uint32 array (``str.encode("utf-32-le")``); a word's
hash is the polynomial ``sum((cp_i + 1) * Q**i)`` over its code points (wrapping uint64;
computed for every word at once from prefix sums, and made position-independent with
the inverse base ``P = Q**-1``), finished with splitmix64. A shingle is ``shingle``
consecutive words, hashed from their word hashes.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence

import numpy as np

# Part of the cache keys of the document store (the exact hash) and of dedup: a change
# in what these functions compute must change it, so old results are not reused.
NORMALIZATION = "nfkc-casefold-lnm-words/1"

_SEPARATOR, _WORD, _WORD_BY_ITSELF = 0, 1, 2
_UNSPACED_SCRIPTS = (  # Han, Hiragana, Katakana (half-width Katakana is full-width after NFKC)
    (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F),
)
_Q = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
_P = np.uint64(pow(int(_Q), -1, 1 << 64))
_SHINGLE_MULTIPLIER = np.uint64(0x100000001B3)


@functools.cache
def _char_classes() -> np.ndarray:
    """uint8 [0x110000]: the class of every code point (``_SEPARATOR``, ``_WORD``, ``_WORD_BY_ITSELF``).

    From the standard library's ``unicodedata`` (not the ``regex`` module: its newer
    Unicode tables would make the classes depend on which package is installed). Built
    once per process, ~0.2 s.
    """
    classes = np.array([unicodedata.category(chr(c))[0] in "LNM" for c in range(0x110000)], dtype=np.uint8)
    for first, last in _UNSPACED_SCRIPTS:
        span = classes[first : last + 1]
        span[span == _WORD] = _WORD_BY_ITSELF
    return classes


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _word_spans(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Code points uint32 [C] of the folded texts joined by a separator; word starts and ends
    int64 [W] (end exclusive) into it; int64 [N+1] word offsets per text."""
    folded = [_folded(t) for t in texts]
    cps = np.frombuffer("\n".join(folded).encode("utf-32-le", "surrogatepass"), dtype="<u4")  # < 0x110000
    if not len(cps):
        return cps, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(len(texts) + 1, np.int64)
    cls = _char_classes()[cps]
    word = cls != _SEPARATOR
    joinable = cls == _WORD  # a word character that is not a word by itself
    # Two neighbours belong to one word only if both are joinable; every other word character
    # starts (ends) a word.
    together = joinable[1:] & joinable[:-1]
    starts = np.flatnonzero(np.concatenate([word[:1], word[1:] & ~together]))
    ends = np.flatnonzero(np.concatenate([word[:-1] & ~together, word[-1:]])) + 1
    text_starts = np.cumsum([0] + [len(t) + 1 for t in folded])  # +1: the joining separator
    offsets = np.searchsorted(starts, text_starts).astype(np.int64)
    offsets[-1] = len(starts)
    return cps, starts.astype(np.int64), ends.astype(np.int64), offsets


_POWERS: list[np.ndarray] = []  # Q**i and P**i, kept between chunks: ~0.1 s of cumprod per million characters
_MAX_CACHED_POWERS = 1 << 21  # 32 MB; a longer chunk (one huge document) computes its own


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 [n] each: Q**i and P**i modulo 2**64."""
    if _POWERS and len(_POWERS[0]) >= n:
        return _POWERS[0][:n], _POWERS[1][:n]
    tables = np.empty((2, max(n, 1 << 20)), np.uint64)
    tables[:, 0] = 1
    tables[0, 1:], tables[1, 1:] = _Q, _P
    np.cumprod(tables, axis=1, out=tables)  # wraps modulo 2**64, as intended
    if len(tables[0]) <= _MAX_CACHED_POWERS:
        _POWERS[:] = list(tables)
    return tables[0][:n], tables[1][:n]


def normalize_text(text: str) -> str:
    """The text MinHash sees: its normalised words joined by single spaces."""
    cps, starts, ends, _ = _word_spans([text])
    chars = cps.tobytes().decode("utf-32-le", "surrogatepass")
    return " ".join(chars[s:e] for s, e in zip(starts.tolist(), ends.tolist()))


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """uint64 [W] hashes of the normalised words of ``texts``, and int64 [N+1] offsets per text.

    Equal words get equal hashes wherever they occur, in any batch, in any process.
    """
    cps, starts, ends, offsets = _word_spans(texts)
    if not len(starts):
        return np.zeros(0, np.uint64), offsets
    n = len(cps)
    q_powers, p_powers = _powers(n)
    prefix = np.zeros(n + 1, np.uint64)
    np.cumsum((cps.astype(np.uint64) + np.uint64(1)) * q_powers, out=prefix[1:])
    # (prefix[end] - prefix[start]) * P**start == sum((cp_i + 1) * Q**(i - start)): the same for equal words
    return splitmix64((prefix[ends] - prefix[starts]) * p_powers[starts]), offsets


def shingle_hashes(items: np.ndarray, offsets: np.ndarray, shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 [S] hashes of every run of ``shingle`` consecutive items within each document, and
    int64 [N] shingles per document. ``items``: ints [offsets[-1] - offsets[0]] (word hashes, or
    token ids); ``offsets``: int64 [N+1]. A document shorter than ``shingle`` is one shingle of
    all its items; an empty one has none."""
    offsets = np.asarray(offsets, dtype=np.int64)
    values = np.asarray(items, dtype=np.uint64)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    width = np.minimum(lengths, shingle)
    count = np.where(lengths > 0, lengths - width + 1, 0)
    total = int(count.sum())
    if not total:
        return np.zeros(0, np.uint64), count
    first = np.repeat(starts - np.cumsum(count) + count, count) + np.arange(total)
    # h = sum_j (item_j + j + 1) * M**(width - 1 - j): for full-width shingles computed once at
    # every position of the flat array from contiguous slices; documents shorter than
    # ``shingle`` (one shingle each) are hashed apart.
    full = _polynomial(values, shingle)
    h = full[np.minimum(first, len(full) - 1)] if len(full) else np.zeros(total, np.uint64)
    short = np.flatnonzero((lengths > 0) & (lengths < shingle))
    if len(short):
        at = np.cumsum(count)[short] - 1  # their one shingle
        h[at] = [_polynomial(values[starts[d] : starts[d] + lengths[d]], int(lengths[d]))[0] for d in short.tolist()]
    return splitmix64(h), count


def _polynomial(values: np.ndarray, width: int) -> np.ndarray:
    """uint64 [len(values) - width + 1]: the shingle polynomial of every run of ``width`` values."""
    h = np.zeros(max(len(values) - width + 1, 0), np.uint64)
    for j in range(width):
        h *= _SHINGLE_MULTIPLIER
        h += values[j : j + len(h)] + np.uint64(j + 1)
    return h


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping): a bijection that mixes every bit."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
