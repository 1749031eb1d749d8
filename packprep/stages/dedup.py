"""Dedup: document store arrays -> a keep-mask with a reason and a duplicate-of index.

Three detectors, all keeping the lowest-index document of a group:
- exact: equal hashes of the text after NFKC, case folding and whitespace collapsing
  (``exact_normal_form``; computed at tokenize time);
- near: MinHash over word n-gram shingles of the normalised text (``stages.shingles``),
  LSH banding, candidates verified by the estimated Jaccard, groups by connected components;
- semantic: cosine of embeddings above a threshold to an earlier kept document.

Pure numpy (faiss and scipy imported inside the functions that need them).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from packprep.stages.shingles import shingle_hashes, splitmix64, word_hashes

REASON_KEPT, REASON_EXACT, REASON_NEAR, REASON_SEMANTIC = 0, 1, 2, 3
REASON_DECONTAMINATED = 4  # a recipe's train document sharing an n-gram with a benchmark or val text (pipeline.recipe)
REASON_NAMES = {
    REASON_KEPT: "kept", REASON_EXACT: "exact", REASON_NEAR: "near", REASON_SEMANTIC: "semantic",
    REASON_DECONTAMINATED: "decontaminated",
}
# Counted in every manifest even at 0; "decontaminated" only where it happened, so the outputs of
# a plain `pack` (no recipe) keep the bytes they had before recipes existed.
ALWAYS_COUNTED = frozenset({REASON_KEPT, REASON_EXACT, REASON_NEAR, REASON_SEMANTIC})


def reason_counts(reason: np.ndarray) -> dict[str, int]:
    """Documents per reason name (uint8 [N] REASON_* codes): every ALWAYS_COUNTED reason, the others when present."""
    return counted_reasons(np.bincount(reason, minlength=len(REASON_NAMES)))


def counted_reasons(counts: np.ndarray) -> dict[str, int]:
    """:func:`reason_counts` from the documents per REASON_* code (int [>= len(REASON_NAMES)]): sums of
    per-range bincounts give the whole store's counts without its reason array in one place."""
    return {name: int(counts[code]) for code, name in REASON_NAMES.items() if code in ALWAYS_COUNTED or counts[code]}
DEFAULT_SHINGLE, DEFAULT_NUM_PERM = 3, 128  # config.DedupConfig's defaults (docs/semantic.md says why)

EMPTY_SIGNATURE = np.uint32(0xFFFFFFFF)  # the signature of a document with no shingles: never a candidate
_SHINGLE_CHUNK = 1 << 16  # shingles signed per chunk: 512 KB arrays stay in cache over 128 permutations (~1.4x faster)
_TEXT_CHUNK_TOKENS = 1 << 18  # tokens decoded per chunk: ~1M characters, ~40 MB of word-hashing temporaries
_HASH_CHUNK_CHARS = 1 << 20  # normalised per chunk: a huge document's word list never exists whole
_ASCII_WHITESPACE = re.compile(r"[ \t\n\r]")
MAX_FULL_PAIRS_RUN = 64  # LSH buckets larger than this are linked as a star, not all pairs


# Part of the document store's cache key (pipeline.tokenizing.tokenize_key): changing exact_normal_form
# must change it, so that a store hashed the old way is re-tokenised rather than reused.
EXACT_HASH = "blake2b64(nfkc-casefold-whitespace)/2"


def exact_normal_form(text: str) -> str:
    """What the exact hash sees: NFKC, case folded, whitespace runs collapsed to one space, stripped.

    A subset of ``shingles.normalize_text``: punctuation is kept, because an exact match has
    no threshold to absorb "x = a + b" against "x = a - b"; MinHash, which has one, ignores it.
    """
    # str.split() and the regex \s match the same code points; split+join is ~3x faster.
    if text.isascii():  # NFKC leaves ASCII as it is and casefold is lower there: ~0.3 of the time skipped
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalized_text_hash(text: str, *, chunk_chars: int = _HASH_CHUNK_CHARS) -> int:
    """blake2b-64 (little-endian int) of ``exact_normal_form(text)``; computed at tokenize time.

    A text longer than ``chunk_chars`` is normalised chunk by chunk, each cut just before an
    ASCII space, tab or newline: NFKC never composes across such a character (a starter
    that nothing composes with), case folding maps each character alone and the cut falls
    between words, so the streamed bytes are those of the whole text's normal form, without
    the whole text's word list in memory (~50 bytes a word: 850 MB for a 100 MB document).
    """
    digest = hashlib.blake2b(digest_size=8)
    wrote = False
    for chunk in _chunks_at_whitespace(text, chunk_chars):
        wrote = _hash_chunk(digest, chunk, wrote)
    return int.from_bytes(digest.digest(), "little")


def _hash_chunk(digest: hashlib.blake2b, chunk: str, wrote: bool) -> bool:
    """Add the normal form of ``chunk`` (cut just before an ASCII whitespace) to ``digest``, after one
    space when an earlier chunk wrote something; returns whether anything has been written."""
    normal = exact_normal_form(chunk)
    if not normal:
        return wrote
    digest.update(b" " + normal.encode("utf-8") if wrote else normal.encode("utf-8"))
    return True


def _chunks_at_whitespace(text: str, chunk_chars: int) -> Iterator[str]:
    start = 0
    while len(text) - start > chunk_chars:
        cut = _ASCII_WHITESPACE.search(text, start + chunk_chars)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:] if start else text


class NormalizedTextHasher:
    """:func:`normalized_text_hash` of a text given in pieces cut anywhere (a huge document read piece by piece).

    ``update`` each piece in order, then ``intdigest()``: the hash of the joined text. The
    pieces are re-cut just before an ASCII whitespace, as :func:`normalized_text_hash` cuts its
    chunks (why that keeps the hash is said there), so only ~``chunk_chars`` are held.
    """

    def __init__(self, *, chunk_chars: int = _HASH_CHUNK_CHARS):
        self._digest = hashlib.blake2b(digest_size=8)
        self._wrote = False
        self._pending = ""
        self._chunk_chars = chunk_chars

    def update(self, piece: str) -> None:
        self._pending += piece
        if len(self._pending) > self._chunk_chars:
            cut = max(map(self._pending.rfind, " \t\n\r"))
            if cut > 0:
                self._write(self._pending[:cut])
                self._pending = self._pending[cut:]

    def intdigest(self) -> int:
        """The hash of everything given (as a little-endian int, as normalized_text_hash returns it)."""
        self._write(self._pending)
        self._pending = ""
        return int.from_bytes(self._digest.copy().digest(), "little")

    def _write(self, chunk: str) -> None:
        self._wrote = _hash_chunk(self._digest, chunk, self._wrote)


def text_jaccard(a: str, b: str, *, shingle: int = DEFAULT_SHINGLE) -> float:
    """The exact Jaccard similarity of two texts' sets of normalised word ``shingle``-grams: what
    MinHash estimates (up to hash collisions, ~2**-64 per pair of shingles). 1.0 for two texts
    without words."""
    hashes, offsets = word_hashes([a, b])
    shingles, counts = shingle_hashes(hashes, offsets, shingle)
    left, right = set(shingles[: counts[0]].tolist()), set(shingles[counts[0] :].tolist())
    union = len(left | right)
    return len(left & right) / union if union else 1.0


@dataclass(frozen=True)
class DedupResult:
    keep: np.ndarray  # bool [N]
    reason: np.ndarray  # uint8 [N], REASON_*
    dup_of: np.ndarray  # int64 [N], the kept document a dropped one duplicates; -1 if kept

    def counts(self) -> dict[str, int]:
        return reason_counts(self.reason)

    @classmethod
    def all_kept(cls, n: int) -> DedupResult:
        """The result of no dedup: every one of ``n`` documents kept."""
        return _result(n, np.full(n, -1, dtype=np.int64), REASON_KEPT)


def _result(n: int, dup_of: np.ndarray, reason_code: int) -> DedupResult:
    dropped = dup_of >= 0
    reason = np.where(dropped, reason_code, REASON_KEPT).astype(np.uint8)
    return DedupResult(keep=~dropped, reason=reason, dup_of=dup_of.astype(np.int64))


def exact_duplicates(text_hash: np.ndarray) -> DedupResult:
    """Drop every document whose hash (uint64 [N]) appeared at a lower index."""
    hashes = np.asarray(text_hash)
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in index order
    sorted_hashes = hashes[order]
    group_start = np.ones(len(hashes), dtype=bool)
    group_start[1:] = sorted_hashes[1:] != sorted_hashes[:-1]
    first = order[np.flatnonzero(group_start)][np.cumsum(group_start) - 1]
    dup_of = np.full(len(hashes), -1, dtype=np.int64)
    dup_of[order] = np.where(first != order, first, -1)
    return _result(len(hashes), dup_of, REASON_EXACT)


def document_text_hashes(
    decode: Callable[[np.ndarray], str], tokens: np.ndarray, offsets: np.ndarray, *, progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """uint64 [N]: :func:`normalized_text_hash` of each document of a store, decoded.

    For a tokenizer that ``decodes_exactly``, these are the hashes tokenize would have
    written (its texts come back byte for byte): a store tokenized without them (a pack that
    did not dedup) gets them here when a dedup first needs them. Both engines call this.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    hashes = np.empty(n, dtype=np.uint64)
    doc = 0
    while doc < n:
        end = _chunk_end(offsets, doc, _TEXT_CHUNK_TOKENS)
        for d in range(doc, end):
            hashes[d] = normalized_text_hash(decode(tokens[offsets[d] : offsets[d + 1]]))
        if progress:
            progress(end - doc)
        doc = end
    return hashes


def document_signatures(
    decode: Callable[[np.ndarray], str],
    tokens: np.ndarray,
    offsets: np.ndarray,
    *,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle: int = DEFAULT_SHINGLE,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """uint32 [N, num_perm] MinHash signatures of a document store's documents, as text.

    ``tokens``/``offsets`` (int64 [N+1], need not start at 0): the documents; ``decode``
    turns one document's tokens back into its text (the store keeps no text), which is
    then signed by :func:`text_signatures`, ~256k tokens at a time. Both engines call this.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    signatures = np.empty((n, num_perm), dtype=np.uint32)
    doc = 0
    while doc < n:
        end = _chunk_end(offsets, doc, _TEXT_CHUNK_TOKENS)
        texts = [decode(tokens[offsets[d] : offsets[d + 1]]) for d in range(doc, end)]
        signatures[doc:end] = text_signatures(texts, num_perm=num_perm, shingle=shingle, seed=seed)
        if progress:
            progress(end - doc)
        doc = end
    return signatures


def text_signatures(
    texts: Sequence[str], *, num_perm: int = DEFAULT_NUM_PERM, shingle: int = DEFAULT_SHINGLE, seed: int = 0
) -> np.ndarray:
    """uint32 [len(texts), num_perm] MinHash signatures of the texts' normalised word ``shingle``-grams
    (``stages.shingles``); a text without words gets the all-0xFFFFFFFF signature that
    :func:`near_duplicates` ignores."""
    hashes, offsets = word_hashes(texts)
    return minhash_signatures(hashes, offsets, num_perm=num_perm, shingle=shingle, seed=seed)


def minhash_signatures(
    items: np.ndarray,
    offsets: np.ndarray,
    *,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle: int = DEFAULT_SHINGLE,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """uint32 [N, num_perm] MinHash signatures of the ``shingle``-grams of ``items`` (ints, e.g. the
    uint64 word hashes of ``shingles.word_hashes``); document i is ``items[offsets[i]:offsets[i+1]]``
    (``offsets`` int64 [N+1] need not start at 0).

    A shingle is hashed to uint64 (``shingles.shingle_hashes``: polynomial in its items,
    then splitmix64); permutation p keeps the top 32 bits of the smallest ``a_p * h mod
    2**64`` with a random odd ``a_p``: multiplicative hashing (Dietzfelbinger et al.) in
    wrapping uint64 arithmetic, which numpy does natively, with no modular reduction and
    no Python loop per item. ``tests/stages/test_dedup.py`` checks the estimates are unbiased
    against the true Jaccard. Documents shorter than ``shingle`` are one shingle; empty
    documents get an all-0xFFFFFFFF signature that :func:`near_duplicates` ignores.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    # Odd multipliers: x -> a*x mod 2**64 is a bijection of the (already mixed) shingle hashes.
    a = np.random.default_rng(seed).integers(1, 1 << 63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    signatures = np.full((n, num_perm), EMPTY_SIGNATURE, dtype=np.uint32)
    doc = 0
    while doc < n:
        end = _chunk_end(offsets, doc, _SHINGLE_CHUNK)
        chunk = items[int(offsets[doc]) : int(offsets[end])]
        _sign_chunk(chunk, offsets[doc : end + 1], shingle, a, signatures[doc:end])
        if progress:
            progress(end - doc)
        doc = end
    return signatures


def _chunk_end(offsets: np.ndarray, doc: int, budget: int) -> int:
    """First document after ``doc`` such that the chunk holds about ``budget`` items (at least one document)."""
    end = int(np.searchsorted(offsets, offsets[doc] + budget, side="right")) - 1
    return min(max(end, doc + 1), len(offsets) - 1)


def _sign_chunk(items, offsets, shingle, a, out) -> None:
    h, count = shingle_hashes(items, offsets, shingle)
    groups = np.flatnonzero(count)
    if not len(groups):
        return
    group_starts = np.concatenate([[0], np.cumsum(count[groups])[:-1]])
    product = np.empty_like(h)
    for p in range(len(a)):
        # The minimum of a*h is taken on the full 64 bits and shifted afterwards (the shift
        # is monotonic): one multiply per shingle and permutation, into one reused buffer.
        np.multiply(h, a[p], out=product)
        out[groups, p] = np.minimum.reduceat(product, group_starts) >> np.uint64(32)


def lsh_params(num_perm: int, threshold: float, *, false_negative_weight: float = 0.9) -> tuple[int, int]:
    """Bands b and rows r (b*r <= num_perm) minimising the weighted false positive + negative areas.

    datasketch's ``_optimal_param`` criterion: two documents of Jaccard s share a band
    with probability 1 - (1 - s^r)^b. Its default weighs both areas equally; we weigh
    missed pairs 9:1, because every candidate is verified afterwards (a false candidate
    costs one signature comparison, a missed one a duplicate left in). With 128
    permutations at 0.8 that is 14 x 9 instead of 9 x 14: a pair of Jaccard 0.9 becomes
    a candidate with probability 0.999 instead of 0.90 (benchmarks/bench_dedup.py).
    """
    s = np.linspace(0.0, 1.0, 1001)
    best, best_cost = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        collide = 1.0 - (1.0 - s**rows) ** bands
        below, above = s <= threshold, s >= threshold
        missed = np.trapezoid(1.0 - collide[above], s[above])
        cost = (1.0 - false_negative_weight) * np.trapezoid(collide[below], s[below]) + false_negative_weight * missed
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def near_duplicates(
    signatures: np.ndarray, *, threshold: float = 0.8, seed: int = 0, keep: np.ndarray | None = None
) -> DedupResult:
    """Group documents whose estimated Jaccard >= ``threshold``; keep the lowest index of each group.

    ``keep`` (bool [N]): documents already dropped are left out entirely.
    """
    n, num_perm = signatures.shape
    active = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool).copy()
    active &= ~(signatures == EMPTY_SIGNATURE).all(axis=1)
    ids = np.flatnonzero(active)
    bands, rows = lsh_params(num_perm, threshold)
    left, right = _band_candidates(signatures[ids], bands, rows, seed)
    return verified_near_duplicates(signatures, np.stack([ids[left], ids[right]], axis=1), threshold=threshold)


def verified_near_duplicates(signatures: np.ndarray, pairs: np.ndarray, *, threshold: float) -> DedupResult:
    """From LSH candidate ``pairs`` (int [P, 2] document indices, repeats allowed): keep the
    pairs whose estimated Jaccard is >= ``threshold`` and drop all but the lowest index of
    each connected group. The last step of :func:`near_duplicates`."""
    return near_groups(len(signatures), similar_pairs(signatures, pairs, threshold=threshold))


def similar_pairs(signatures: np.ndarray, pairs: np.ndarray, *, threshold: float) -> np.ndarray:
    """int64 [Q, 2]: the distinct ``pairs`` (sorted) whose estimated Jaccard is >= ``threshold``.

    ``signatures`` uint32 [N, num_perm] is only indexed at the pairs' rows, so a memmap
    serves: the Ray engine's reducers verify their own candidates this way."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return pairs
    pairs = np.unique(pairs, axis=0)
    similar = (np.asarray(signatures[pairs[:, 0]]) == np.asarray(signatures[pairs[:, 1]])).mean(axis=1) >= threshold
    return pairs[similar]


def near_groups(n: int, similar: np.ndarray) -> DedupResult:
    """Near-duplicate drops from verified pairs (int [Q, 2] over N documents): all but the lowest index
    of each connected group. The same result for the same set of pairs, in any order or repetition."""
    similar = np.unique(np.asarray(similar, dtype=np.int64).reshape(-1, 2), axis=0)
    return _result(n, _lowest_in_component(n, similar), REASON_NEAR)


def band_keys(sig: np.ndarray, band: int, rows: int, seed: int) -> np.ndarray:
    """uint64 [M]: the LSH bucket key of each signature row (uint32 [M, bands*rows]) in ``band``.

    Both engines bucket with it (the Ray engine's reducers group these keys across tasks).
    """
    weights = np.random.default_rng(seed + 1).integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
    block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
    return splitmix64((block * weights).sum(axis=1, dtype=np.uint64) + np.uint64(band))


def bucket_pairs(table: np.ndarray) -> np.ndarray:
    """int64 [P, 2] candidate pairs from uint64 rows (band, key, document), as ``_band_candidates`` makes
    them per band: in every bucket, the lowest document with each other one, and all pairs in buckets
    of at most MAX_FULL_PAIRS_RUN. The Ray engine's reducers call it on their partition of the rows."""
    if not len(table):
        return np.zeros((0, 2), np.int64)
    table = table[np.lexsort((table[:, 2], table[:, 1], table[:, 0]))]
    docs = table[:, 2].astype(np.int64)
    new = np.ones(len(table), dtype=bool)
    new[1:] = (table[1:, 0] != table[:-1, 0]) | (table[1:, 1] != table[:-1, 1])
    run_id = np.cumsum(new) - 1
    run_start = np.flatnonzero(new)
    run_len = np.diff(np.append(run_start, len(table)))
    members = np.flatnonzero((run_len[run_id] > 1) & ~new)
    lefts, rights = [docs[run_start[run_id[members]]]], [docs[members]]
    small = (run_len > 2) & (run_len <= MAX_FULL_PAIRS_RUN)
    for start, length in zip(run_start[small], run_len[small]):
        i, j = np.triu_indices(int(length), 1)
        lefts.append(docs[start + i])
        rights.append(docs[start + j])
    return np.stack([np.concatenate(lefts), np.concatenate(rights)], axis=1)


def _band_candidates(sig: np.ndarray, bands: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Position pairs sharing at least one band (all pairs in small buckets, a star in large ones)."""
    lefts, rights = [], []
    for band in range(bands):
        keys = band_keys(sig, band, rows, seed)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        new = np.ones(len(keys), dtype=bool)
        new[1:] = sorted_keys[1:] != sorted_keys[:-1]
        run_id = np.cumsum(new) - 1
        run_start = np.flatnonzero(new)
        run_len = np.diff(np.append(run_start, len(keys)))
        members = np.flatnonzero(run_len[run_id] > 1)
        if not len(members):
            continue
        head = order[run_start[run_id[members]]]
        is_head = members == run_start[run_id[members]]
        lefts.append(head[~is_head])
        rights.append(order[members[~is_head]])
        for start in run_start[(run_len > 2) & (run_len <= MAX_FULL_PAIRS_RUN)]:
            group = order[start : start + run_len[np.searchsorted(run_start, start)]]
            i, j = np.triu_indices(len(group), 1)
            lefts.append(group[i])
            rights.append(group[j])
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(lefts), np.concatenate(rights)


def _lowest_in_component(n: int, pairs: np.ndarray) -> np.ndarray:
    """dup_of for connected components of ``pairs``: the lowest index of each, -1 for it and singletons."""
    dup_of = np.full(n, -1, dtype=np.int64)
    if not len(pairs):
        return dup_of
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    lowest = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(lowest, label, np.arange(n))
    root = lowest[label]
    dup_of[root != np.arange(n)] = root[root != np.arange(n)]
    return dup_of


def semantic_duplicates(
    embeddings: np.ndarray, *, threshold: float, keep: np.ndarray | None = None, k: int = 10
) -> DedupResult:
    """Drop, in index order, documents whose cosine to an earlier kept document is > ``threshold``.

    ``embeddings``: L2-normalised float [N, D]. Only each document's ``k`` nearest
    neighbours are looked at (the kNN graph of ``stages.order``, exact or approximate).
    """
    from packprep.stages.order import knn_graph

    n = len(embeddings)
    ids = np.flatnonzero(np.ones(n, bool) if keep is None else np.asarray(keep, dtype=bool))
    dup_of = np.full(n, -1, dtype=np.int64)
    if len(ids) < 2:
        return _result(n, dup_of, REASON_SEMANTIC)
    # Without ``keep`` the rows are taken as given: a partition's float32 rows (stages.partition) are not copied again.
    vectors = embeddings if keep is None else embeddings[ids]
    neighbours, sims = knn_graph(np.asarray(vectors, dtype=np.float32), k=min(k, len(ids) - 1))
    del vectors
    rows = np.arange(len(ids))[:, None]
    close = (sims > threshold) & (neighbours >= 0) & (neighbours < rows)
    dropped = np.zeros(len(ids), dtype=bool)
    # Only documents with a close earlier neighbour can be dropped; whether they are depends on
    # whether that neighbour itself was kept, so they are decided in index order.
    for i in np.flatnonzero(close.any(axis=1)):
        candidates = neighbours[i][close[i]]
        kept = candidates[~dropped[candidates]]
        if len(kept):
            dropped[i] = True
            dup_of[ids[i]] = ids[kept[0]]  # neighbours are sorted by similarity: the closest kept one
    return _result(n, dup_of, REASON_SEMANTIC)


def combine(*results: DedupResult) -> DedupResult:
    """One result from several: for each document the first non-kept reason, in the order given."""
    reason = np.zeros_like(results[0].reason)
    dup_of = np.full_like(results[0].dup_of, -1)
    for result in results:
        take = (reason == REASON_KEPT) & (result.reason != REASON_KEPT)
        reason[take], dup_of[take] = result.reason[take], result.dup_of[take]
    return DedupResult(keep=reason == REASON_KEPT, reason=reason, dup_of=dup_of)
