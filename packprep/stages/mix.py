"""Mixtures: which documents of each source make up the train output, and which are held out.

Pure functions over arrays. Documents of all sources are one flat set: ``lengths`` int64 [N]
(tokens each document adds to the output) and ``source`` int64 [N] (0 .. S-1).

- :func:`val_mask`: the held-out split, by a stable hash of (source name, document id), so a
  document's side never depends on which other documents exist (a source that grows moves
  none of its old documents between train and val).
- :func:`mix`: the train selection. A source's target is its share of the total; it gets as
  many whole passes over its documents as fit in the target, then a seeded sample of
  documents that fills the remainder (so down-sampling is the zero-pass case).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SALT = 0x6D6978  # "mix": the sampling streams are their own, apart from every other use of the seed


def split_hashes(source_name: str, doc_ids: Sequence[str]) -> np.ndarray:
    """uint64 [N]: blake2b-64 of ``"{source_name}\\0{doc_id}"`` for each id; the same in every process."""
    prefix = source_name.encode("utf-8") + b"\0"
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + i.encode("utf-8"), digest_size=8).digest(), "little") for i in doc_ids),
        dtype=np.uint64, count=len(doc_ids),
    )


def val_mask(hashes: np.ndarray, *, fraction: float | None = None, documents: int | None = None) -> np.ndarray:
    """bool [N]: True for the held-out (val) documents of one source, from its :func:`split_hashes`.

    ``fraction``: a document is val when its hash, read as a fraction of 2**64, is below it; each
    document decides alone, so adding documents never moves another. ``documents``: the N
    documents with the lowest hashes (an added document moves one only when its own hash is lower).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if documents is not None:
        mask = np.zeros(len(hashes), dtype=bool)
        mask[np.argsort(hashes, kind="stable")[:documents]] = True
        return mask
    if not fraction:
        return np.zeros(len(hashes), dtype=bool)
    # A fraction of 2**64 as an integer: below 2**64 since fraction < 1, exact at the boundary.
    threshold = int(fraction * 2.0**64)
    return hashes < np.uint64(min(threshold, 2**64 - 1))


@dataclass(frozen=True)
class Mixture:
    """``picks`` int64 [M]: indices into the documents, one per copy in the train output (a
    repeated document appears once per copy), grouped by source, each group ascending within a pass.
    Per source, int64 [S]: ``target`` tokens, ``tokens`` picked, ``available`` tokens,
    ``documents`` picked (copies), ``unique`` distinct documents picked, ``passes`` whole passes."""

    picks: np.ndarray
    target: np.ndarray
    tokens: np.ndarray
    available: np.ndarray
    documents: np.ndarray
    unique: np.ndarray
    passes: np.ndarray

    @property
    def shares(self) -> np.ndarray:
        """float64 [S]: each source's share of the picked tokens."""
        total = self.tokens.sum()
        return self.tokens / total if total else np.zeros(len(self.tokens))

    @property
    def repeats(self) -> np.ndarray:
        """int64 [S]: copies beyond the first of every picked document."""
        return self.documents - self.unique


def _first_fit(lengths: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [K] ascending: documents taken along a seeded permutation while they fit in ``budget``
    tokens (one that does not fit is passed over). The total falls short of ``budget`` by less than
    the shortest document passed over: a closest-prefix cut would miss by up to half of one long
    document, 1.4 % of a 150k-token share of examples/corpus' kernel pages."""
    perm = rng.permutation(len(lengths))
    cum = np.cumsum(lengths[perm])
    k = int(np.searchsorted(cum, budget, side="right"))  # the prefix that fits whole
    taken, gap = [perm[:k]], budget - (int(cum[k - 1]) if k else 0)
    rest = perm[k:]
    if gap and len(rest):
        shortest = int(lengths[rest].min())
        extra = []
        for d, length in zip(rest.tolist(), lengths[rest].tolist()):  # rarely long: it stops once nothing fits
            if gap < shortest:
                break
            if length <= gap:
                extra.append(d)
                gap -= length
        taken.append(np.array(extra, dtype=np.int64))
    return np.sort(np.concatenate(taken)).astype(np.int64)


def mix(
    lengths: np.ndarray, source: np.ndarray, weights: Sequence[float], *, tokens: int | None = None, seed: int = 0
) -> Mixture:
    """Pick the train documents: each source's tokens are ``weights[s] / sum(weights)`` of the total.

    ``tokens``: the total; None means the largest total that repeats no source (the source with the
    fewest tokens for its share is taken whole). Each source gets whole passes, then for the
    remainder the documents of a seeded permutation that fit in it (:func:`_first_fit`), so it
    falls short of its target by less than its shortest document left out. Raises ``ValueError`` when a
    source with a weight has no tokens (the caller words that for its user).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    source = np.asarray(source, dtype=np.int64)
    shares = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    num_sources = len(shares)
    available = np.bincount(source, weights=lengths, minlength=num_sources).astype(np.int64)
    if (available <= 0).any():
        raise ValueError(f"sources {np.flatnonzero(available <= 0).tolist()} have no tokens")
    if tokens is None:
        limiting = int(np.argmin(available / shares))
        target = np.minimum(np.floor(shares * (available[limiting] / shares[limiting])).astype(np.int64), available)
        target[limiting] = available[limiting]
    else:
        target = np.round(shares * tokens).astype(np.int64)

    picks, picked, documents, unique, passes = [], np.zeros(num_sources, np.int64), [], [], []
    for s in range(num_sources):
        docs = np.flatnonzero(source == s)
        full, remainder = divmod(int(target[s]), int(available[s]))
        sample = _first_fit(lengths[docs], remainder, np.random.default_rng([seed, _SALT, s]))
        picks += [docs] * full + [docs[sample]]
        picked[s] = full * available[s] + int(lengths[docs[sample]].sum())
        documents.append(full * len(docs) + len(sample))
        unique.append(len(docs) if full else len(sample))
        passes.append(full)
    return Mixture(
        picks=np.concatenate(picks) if picks else np.zeros(0, np.int64), target=target, tokens=picked,
        available=available, documents=np.array(documents, np.int64), unique=np.array(unique, np.int64),
        passes=np.array(passes, np.int64),
    )


def spread_copies(order: np.ndarray, original: np.ndarray) -> np.ndarray:
    """int64 [M]: ``order`` rearranged so that copies of one document are a whole pass apart.

    ``order``: int64 [M] document indices (a packing order); ``original``: int64 [N], for each
    document the document it is a copy of (itself for an original). The k-th occurrence of
    every original along ``order`` goes into pass k; passes follow each other and each keeps
    ``order``'s relative order. A semantic order puts identical embeddings side by side, so
    without this a repeated document would sit next to its own copy in a row.
    """
    order = np.asarray(order, dtype=np.int64)
    if not len(order):
        return order
    owner = np.asarray(original, dtype=np.int64)[order]
    by_owner = np.argsort(owner, kind="stable")  # positions grouped by original, in order within each group
    sorted_owner = owner[by_owner]
    group_start = np.flatnonzero(np.r_[True, sorted_owner[1:] != sorted_owner[:-1]])
    occurrence = np.empty(len(order), dtype=np.int64)
    occurrence[by_owner] = np.arange(len(order)) - np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    return order[np.argsort(occurrence, kind="stable")]
