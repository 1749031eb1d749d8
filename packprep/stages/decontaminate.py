"""Decontamination: find train texts that share a normalised word n-gram with a benchmark text.

Words are ``stages.shingles``' normalised words (NFKC, casefold, runs of letters/digits/marks;
each Han/Kana character a word), so a benchmark excerpt matches whatever its case, punctuation
or line wrapping in the train text. An n-gram is ``n`` consecutive words hashed to uint64
(``shingles.shingle_hashes``); a text shorter than ``n`` words is one n-gram of all its words,
so it matches only a text that is exactly as short and the same.

The benchmark side is an :class:`NgramIndex`: the sorted unique hashes, which benchmark each
came from, and a directory of their top bits. A lookup reads the directory and then about one
hash per query; a plain binary search over 17 M hashes (100 MB of benchmark text) would read
~24 scattered cache lines per query and was the slowest step (benchmarks/bench_decontaminate.py).
Exact hashes and no Bloom filter: a 1 % false-positive rate per n-gram would flag most long
documents. Two different n-grams collide with probability ~2**-64 per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from packprep.stages.shingles import shingle_hashes, word_hashes


# Texts are hashed ~256k characters at a time: word_hashes' prefix sums and power tables then stay
# in cache (65 MB/s per core of English; 28 MB/s in 8 MB calls, benchmarks/bench_decontaminate.py).
_CHUNK_CHARS = 1 << 18


def ngram_hashes(texts: Sequence[str], *, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 [G] hashes of every run of ``n`` normalised words of each text, and int64 [N] n-grams per text."""
    hashes, counts = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    start, chars = 0, 0
    for end, text in enumerate(texts, start=1):
        chars += len(text)
        if chars >= _CHUNK_CHARS or end == len(texts):
            words, offsets = word_hashes(texts[start:end])
            chunk_hashes, chunk_counts = shingle_hashes(words, offsets, n)
            hashes.append(chunk_hashes)
            counts.append(chunk_counts)
            start, chars = end, 0
    return np.concatenate(hashes), np.concatenate(counts)


@dataclass(frozen=True)
class NgramIndex:
    """``hashes`` uint64 [U] sorted, unique; ``owner`` int32 [U] the lowest benchmark number that
    has each; ``starts`` int64 [2**bits + 1]: hashes whose top ``bits`` bits are b lie in
    ``hashes[starts[b]:starts[b + 1]]``."""

    hashes: np.ndarray
    owner: np.ndarray
    starts: np.ndarray
    bits: int

    @classmethod
    def build(cls, hashes: np.ndarray, owner: np.ndarray) -> NgramIndex:
        """From uint64 [G] n-gram hashes and int32 [G] the benchmark each came from (any order, repeats allowed)."""
        hashes, owner = np.asarray(hashes, np.uint64), np.asarray(owner, np.int32)
        order = np.lexsort((owner, hashes))  # by hash, then benchmark: the first of a run is the lowest benchmark
        hashes, owner = hashes[order], owner[order]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = hashes[1:] != hashes[:-1]
        hashes, owner = hashes[first], owner[first]
        # About one hash per bucket: 8 bytes of directory per hash, the size of the hashes themselves.
        bits = int(min(max(int(len(hashes)).bit_length() - 1, 1), 30))
        top = (hashes >> np.uint64(64 - bits)).astype(np.int64)
        starts = np.zeros((1 << bits) + 1, dtype=np.int64)
        np.cumsum(np.bincount(top, minlength=1 << bits), out=starts[1:])
        return cls(hashes=hashes, owner=owner, starts=starts, bits=bits)

    def __len__(self) -> int:
        return len(self.hashes)

    def lookup(self, queries: np.ndarray) -> np.ndarray:
        """int32 [Q]: for each uint64 query hash the benchmark that has it (``owner``), -1 if none."""
        positions = self.positions(queries)
        return np.where(positions >= 0, self.owner[np.maximum(positions, 0)], -1).astype(np.int32)

    def positions(self, queries: np.ndarray) -> np.ndarray:
        """int64 [Q]: for each uint64 query hash its position in ``hashes``, -1 if absent."""
        queries = np.asarray(queries, dtype=np.uint64)
        found = np.full(len(queries), -1, dtype=np.int64)
        if not len(self.hashes) or not len(queries):
            return found
        top = (queries >> np.uint64(64 - self.bits)).astype(np.int64)
        lo, hi = self.starts[top], self.starts[top + 1]
        active = np.flatnonzero(hi > lo)
        position = lo[active]
        while len(active):  # one round per hash in the fullest bucket a query touches: a handful
            hit = self.hashes[position] == queries[active]
            found[active[hit]] = position[hit]
            more = ~hit & (position + 1 < hi[active])
            active, position = active[more], position[more] + 1
        return found


def first_matches(found: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int32 [N]: per text, the benchmark of its first n-gram that :meth:`NgramIndex.lookup` found, -1 if none.

    ``found``: int32 [G] as returned by ``lookup``; ``counts``: int64 [N] n-grams per text (sums to G).
    """
    counts = np.asarray(counts, dtype=np.int64)
    result = np.full(len(counts), -1, dtype=np.int32)
    hits = np.flatnonzero(np.asarray(found) >= 0)
    if not len(hits):
        return result
    text_of = np.searchsorted(np.cumsum(counts), hits, side="right")  # n-gram g belongs to the text whose end is past g
    texts, first = np.unique(text_of, return_index=True)
    result[texts] = found[hits[first]]
    return result


def contaminated(texts: Sequence[str], index: NgramIndex, *, n: int) -> np.ndarray:
    """int32 [N]: per text the benchmark it shares an ``n``-gram with (the first found), -1 if none."""
    hashes, counts = ngram_hashes(texts, n=n)
    return first_matches(index.lookup(hashes), counts)


def match_pairs(texts: Sequence[str], index: NgramIndex, *, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (text, indexed n-gram) pair: int64 [P] text numbers and int64 [P] positions
    in ``index.hashes``, ordered by text, then by where the n-gram first occurs in it."""
    hashes, counts = ngram_hashes(texts, n=n)
    positions = index.positions(hashes)
    hit = np.flatnonzero(positions >= 0)
    text = np.repeat(np.arange(len(counts), dtype=np.int64), counts)[hit]
    pairs = text * max(len(index), 1) + positions[hit]
    _, first = np.unique(pairs, return_index=True)
    first.sort()
    return text[first], positions[hit][first]


def first_common_free_matches(
    text: np.ndarray, position: np.ndarray, index: NgramIndex, *, num_texts: int, max_texts: int
) -> np.ndarray:
    """int32 [num_texts]: per text the benchmark of its first matched n-gram that at most ``max_texts``
    texts share, -1 if none. ``text``/``position``: :func:`match_pairs` over all texts (text numbers
    global). An n-gram many train texts share is boilerplate (a licence, a man page's stock
    sentence), not a leaked test item."""
    result = np.full(num_texts, -1, dtype=np.int32)
    texts_per_ngram = np.bincount(position, minlength=len(index))
    rare = texts_per_ngram[position] <= max_texts
    texts, first = np.unique(text[rare], return_index=True)
    result[texts] = index.owner[position[rare][first]]
    return result
