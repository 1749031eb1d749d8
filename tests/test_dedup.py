"""Dedup finds planted duplicates, and nothing else."""

from __future__ import annotations

import numpy as np

from packprep.stages.dedup import (
    REASON_EXACT,
    REASON_KEPT,
    REASON_NEAR,
    REASON_SEMANTIC,
    combine,
    exact_duplicates,
    lsh_params,
    minhash_signatures,
    near_duplicates,
    normalized_text_hash,
    semantic_duplicates,
)


def test_normalised_hash_ignores_unicode_form_and_whitespace():
    nfc = "Caf\u00e9  \n bar"
    nfd = " Cafe\u0301 bar\t"
    assert normalized_text_hash(nfc) == normalized_text_hash(nfd)
    assert normalized_text_hash("Cafe bar") != normalized_text_hash(nfc)
    assert 0 <= normalized_text_hash("x") < 2**64


def test_exact_duplicates_keep_the_first():
    hashes = np.array([7, 3, 7, 9, 3, 7], dtype=np.uint64)
    result = exact_duplicates(hashes)
    assert result.keep.tolist() == [True, True, False, True, False, False]
    assert result.dup_of.tolist() == [-1, -1, 0, -1, 1, 0]
    assert result.reason.tolist() == [0, 0, REASON_EXACT, 0, REASON_EXACT, REASON_EXACT]
    assert result.counts() == {"kept": 3, "exact": 3, "near": 0, "semantic": 0}


def planted_corpus(seed: int = 0):
    """200 random documents, then near copies (5 % of tokens changed) and far copies (50 % changed)."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 50_000, size=int(rng.integers(50, 400))) for _ in range(200)]
    near_sources = rng.choice(200, size=30, replace=False)
    far_sources = rng.choice(200, size=20, replace=False)
    for share, sources in ((0.05, near_sources), (0.5, far_sources)):
        for src in sources:
            copy = docs[src].copy()
            changed = rng.choice(len(copy), size=max(1, int(share * len(copy))), replace=False)
            copy[changed] = rng.integers(0, 50_000, size=len(changed))
            docs.append(copy)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return np.concatenate(docs).astype(np.uint32), offsets, near_sources


def test_minhash_finds_planted_near_duplicates_with_full_recall_and_precision():
    tokens, offsets, near_sources = planted_corpus()
    signatures = minhash_signatures(tokens, offsets, num_perm=128, shingle=5, seed=0)
    assert signatures.shape == (250, 128) and signatures.dtype == np.uint32
    result = near_duplicates(signatures, threshold=0.5)
    flagged = set(np.flatnonzero(result.reason == REASON_NEAR).tolist())
    planted = set(range(200, 230))
    assert flagged == planted  # recall 1 and precision 1: the 50 %-changed copies are not flagged
    assert result.dup_of[200:230].tolist() == near_sources.tolist()


def test_minhash_respects_the_keep_mask_and_is_deterministic():
    tokens, offsets, _ = planted_corpus(1)
    a = minhash_signatures(tokens, offsets, seed=3)
    assert np.array_equal(a, minhash_signatures(tokens, offsets, seed=3))
    keep = np.ones(250, dtype=bool)
    keep[200:230] = False
    result = near_duplicates(a, threshold=0.5, keep=keep)
    assert not (result.reason == REASON_NEAR).any()


def test_short_and_identical_documents():
    tokens = np.array([1, 2, 1, 2, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9], dtype=np.uint16)
    offsets = np.array([0, 2, 4, 9, 14])
    signatures = minhash_signatures(tokens, offsets, shingle=5)
    result = near_duplicates(signatures, threshold=0.8)
    assert result.dup_of.tolist() == [-1, 0, -1, 2]


def test_lsh_parameters_fit_the_budget():
    bands, rows = lsh_params(128, 0.8)
    assert bands * rows <= 128
    assert 0.6 < (1 / bands) ** (1 / rows) < 0.9


def test_semantic_duplicates_in_index_order_against_kept_documents_only():
    e = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.999, 0.0447, 0.0],  # ~ doc 0 -> dropped, dup_of 0
            [0.0, 1.0, 0.0],
            [0.0, 0.999, 0.0447],  # ~ doc 2 -> dropped
            [0.0, 0.0, 1.0],
        ],
        dtype=np.float32,
    )
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    result = semantic_duplicates(e, threshold=0.99, k=3)
    assert result.dup_of.tolist() == [-1, 0, -1, 2, -1]
    assert result.reason.tolist() == [0, REASON_SEMANTIC, 0, REASON_SEMANTIC, 0]
    # a chain a~b~c with a~c below the threshold: b is dropped against a, c is compared with kept docs only
    chain = np.array([[1.0, 0.0], [0.995, 0.0998], [0.98, 0.199]], dtype=np.float32)
    chain /= np.linalg.norm(chain, axis=1, keepdims=True)
    result = semantic_duplicates(chain, threshold=0.99, k=2)
    assert result.dup_of.tolist() == [-1, 0, -1]
    # documents dropped before are ignored entirely
    result = semantic_duplicates(e, threshold=0.99, keep=np.array([False, True, True, True, True]), k=3)
    assert result.dup_of.tolist() == [-1, -1, -1, 2, -1]


def test_combine_keeps_the_first_reason():
    first = exact_duplicates(np.array([1, 1, 2, 3], dtype=np.uint64))
    second = semantic_duplicates(np.eye(4, dtype=np.float32)[[0, 0, 1, 1]], threshold=0.9, k=3)
    merged = combine(first, second)
    assert merged.reason.tolist() == [REASON_KEPT, REASON_EXACT, REASON_KEPT, REASON_SEMANTIC]
    assert merged.dup_of.tolist() == [-1, 0, -1, 2]
    assert merged.keep.tolist() == [True, False, True, False]


def test_normalized_hash_collapses_every_unicode_space_like_the_regex():
    import hashlib
    import re
    import sys
    import unicodedata

    from packprep.stages.dedup import normalized_text_hash

    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert spaces == "".join(re.findall(r"\s", "".join(chr(c) for c in range(sys.maxunicode + 1))))
    text = f"{spaces}a{spaces}b c\u00a0d\u3000e\n\n{spaces}"
    reference = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    expected = int.from_bytes(hashlib.blake2b(reference.encode(), digest_size=8).digest(), "little")
    assert normalized_text_hash(text) == expected
