"""Dedup finds planted duplicates, and nothing else."""

from __future__ import annotations

import gzip
import json
import random
import unicodedata

import numpy as np

from packprep.stages.dedup import (
    REASON_EXACT,
    REASON_KEPT,
    REASON_NEAR,
    REASON_SEMANTIC,
    combine,
    document_signatures,
    exact_duplicates,
    exact_normal_form,
    lsh_params,
    minhash_signatures,
    near_duplicates,
    NormalizedTextHasher,
    normalized_text_hash,
    semantic_duplicates,
    text_jaccard,
    text_signatures,
)
from packprep.stages.shingles import normalize_text, shingle_hashes, word_hashes
from tests.helpers import EXAMPLES_CORPUS as EXAMPLES
from tests.planted import formatting_copy, plant



def test_normalised_hash_ignores_unicode_form_case_and_whitespace_but_not_punctuation():
    nfc = "Caf\u00e9  \n bar"
    nfd = " CAFE\u0301 bar\t"
    assert normalized_text_hash(nfc) == normalized_text_hash(nfd)
    assert normalized_text_hash("\uff26\uff55\uff4c\uff4c width") == normalized_text_hash("full WIDTH")  # NFKC
    assert normalized_text_hash("Cafe bar") != normalized_text_hash(nfc)
    assert normalized_text_hash("x = a + b") != normalized_text_hash("x = a - b")
    assert exact_normal_form(" Stra\u00dfe\u00a0 \uFB01ne.\n") == "strasse fine."
    assert 0 <= normalized_text_hash("x") < 2**64


def test_exact_normal_form_of_ascii_text_is_the_general_one():
    # ASCII text takes a shortcut (lower instead of NFKC + casefold); every ASCII character,
    # the separators str.split() knows (\x1c-\x1f) included, must normalise as before.
    rng = random.Random(5)
    alphabet = [chr(c) for c in range(128)]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert text.isascii()
        assert exact_normal_form(text) == " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def test_normalize_text_keeps_words_and_drops_everything_between_them():
    assert normalize_text("  Hello,  WORLD!\nIt's   \uFB01ne \u2014 caf\u00e9.") == "hello world it s fine caf\u00e9"
    assert normalize_text("snake_case-and.dots (x2)\t\u00bd") == "snake case and dots x2 1 2"  # NFKC: ½ -> 1⁄2
    assert normalize_text("\u6771\u4eac\u306f\u5927\u304d\u3044") == "\u6771 \u4eac \u306f \u5927 \u304d \u3044"  # one word per character
    assert normalize_text("\u0645\u0631\u062d\u0628\u0627 \u0628\u0643\u0645") == "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643\u0645"
    assert normalize_text("\u0939\u093f\u0928\u094d\u0926\u0940") == "\u0939\u093f\u0928\u094d\u0926\u0940"  # combining marks stay inside the word
    assert normalize_text("... \U0001F680 --") == ""
    # what the planted copies change is exactly what normalisation removes
    text = "The quick brown fox jumps over the lazy dog. It was not amused"
    assert normalize_text(formatting_copy(text, random.Random(3))) == normalize_text(text)


def test_word_hashes_are_fixed_values_independent_of_batch_and_position():
    hashes, offsets = word_hashes(["a b a", "", "B,a"])
    a, b = 17360999193197444373, 4824385676517010403  # pinned: the same in every process and release
    assert hashes.tolist() == [a, b, a, b, a]
    assert offsets.tolist() == [0, 3, 3, 5]
    alone, _ = word_hashes(["a"])
    assert alone.tolist() == [a]
    many, _ = word_hashes(["x " * 1000 + "word", "word"])
    assert many[-2] == many[-1] != many[0]
    empty, offsets = word_hashes(["", " .. "])
    assert empty.tolist() == [] and offsets.tolist() == [0, 0, 0]


def test_shingle_hashes_of_hand_written_items():
    items = np.array([7, 8, 9, 7, 8, 5, 6], dtype=np.uint64)
    hashes, count = shingle_hashes(items, np.array([0, 5, 5, 7]), 2)
    assert count.tolist() == [4, 0, 1]  # 5 items: 4 bigrams; empty: none; 2 items: one
    assert hashes[0] == hashes[3] and len(set(hashes[:3].tolist())) == 3  # (7, 8) twice
    short, count = shingle_hashes(items, np.array([0, 2, 7]), 3)
    assert count.tolist() == [1, 3]
    assert short[0] not in short[1:].tolist()  # (7, 8) as a whole short document is not a 3-gram
    again, _ = shingle_hashes(items[3:], np.array([0, 2]), 3)  # the same (7, 8) document elsewhere
    assert again.tolist() == short[:1].tolist()


def test_text_jaccard_is_the_exact_shingle_set_jaccard():
    assert text_jaccard("a b c d", "A  b, c\nd.", shingle=2) == 1.0
    assert text_jaccard("a b c d", "a b c e", shingle=2) == 2 / 4  # {ab, bc, cd} vs {ab, bc, ce}
    assert text_jaccard("a b c d", "x y", shingle=2) == 0.0
    assert text_jaccard("", "...") == 1.0


def test_minhash_estimates_are_unbiased_against_the_true_jaccard():
    rng = np.random.default_rng(0)
    # An array, not a list: rng.choice converts a list on every call (the same draws, 40x slower).
    vocabulary = np.array([f"w{i}" for i in range(5000)])
    lefts, rights = [], []
    for _ in range(300):
        words = list(rng.choice(vocabulary, size=int(rng.integers(40, 200))))
        other = list(words)
        for at in rng.choice(len(other), size=int(rng.integers(1, len(other) // 3)), replace=False):
            other[at] = rng.choice(vocabulary)
        lefts.append(" ".join(words))
        rights.append(" ".join(other))
    sig = text_signatures(lefts + rights, num_perm=128, shingle=3, seed=5)
    estimate = (sig[:300] == sig[300:]).mean(axis=1)
    truth = np.array([text_jaccard(a, b, shingle=3) for a, b in zip(lefts, rights)])
    assert truth.min() < 0.3 and truth.max() > 0.8  # a spread of similarities
    assert abs((estimate - truth).mean()) < 0.01  # unbiased
    # and as precise as 128 independent permutations are: var = J(1-J)/128
    z = (estimate - truth) / np.sqrt(np.maximum(truth * (1 - truth), 1e-3) / 128)
    assert 0.7 < z.std() < 1.3


def test_document_signatures_decode_the_store_and_equal_text_signatures():
    from packprep.tokenizers import load_tokenizer

    texts = ["One two three four five.", "", "Ünïcode  text 東京 with   spaces", "ONE TWO three four\nfive"]
    tokenizer = load_tokenizer("cl100k")
    flat, lengths = tokenizer.encode_batch(texts)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    signatures = document_signatures(tokenizer.decode, flat, offsets, num_perm=32, shingle=2)
    assert signatures.tolist() == text_signatures(texts, num_perm=32, shingle=2).tolist()
    assert (signatures[1] == 0xFFFFFFFF).all() and signatures[0].tolist() == signatures[3].tolist()


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
    signatures = minhash_signatures(tokens, offsets, num_perm=128, shingle=5, seed=0)  # items: any ints
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

    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert spaces == "".join(re.findall(r"\s", "".join(chr(c) for c in range(sys.maxunicode + 1))))
    text = f"{spaces}a{spaces}B c\u00a0d\u3000e\n\n{spaces}"
    reference = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()
    expected = int.from_bytes(hashlib.blake2b(reference.encode(), digest_size=8).digest(), "little")
    assert normalized_text_hash(text) == expected


def test_a_store_hashed_the_old_way_is_re_tokenised(tmp_path, monkeypatch):
    from packprep.pipeline import tokenize
    from packprep.stages import dedup
    from tests.conftest import make_documents, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(5))
    first = tokenize(corpus, tmp_path / "work").manifest["key"]
    monkeypatch.setattr(dedup, "EXACT_HASH", "an older normalisation")
    assert tokenize(corpus, tmp_path / "work").manifest["key"] != first


def _example_texts() -> list[str]:
    return [json.loads(line)["text"] for path in sorted(EXAMPLES.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]


def test_pack_eos_dedup_removes_planted_formatting_and_edited_copies_and_keeps_distinct_documents(tmp_path):
    """The targets of issue 12 on 400 distinct examples/corpus documents (which share no near-duplicates)
    plus 50 formatting-only and 50 lightly edited copies (tests/planted.py), through the real pack."""
    from packprep.config import PackConfig
    from packprep.pipeline import pack
    from tests.conftest import write_jsonl

    texts = _example_texts()
    distinct = [texts[i] for i in sorted(random.Random(0).sample(range(len(texts)), 400))]
    docs, kinds, formatting, edited = plant(distinct, formatting=50, edited=50, seed=0)
    corpus = write_jsonl(tmp_path / "planted.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)])
    pack(corpus, tmp_path / "out", config=PackConfig(strategy="eos", seq_len=512, dedup=True))
    keep = np.load(tmp_path / "out" / "work" / "dedup.keep.npy")
    assert len(keep) == len(docs)
    assert sum(keep[a] != keep[b] for a, b in formatting) == 50  # one of each pair kept, the other dropped
    assert sum(keep[a] != keep[b] for a, b in edited) >= 48  # >= 95 %
    distinct_kept = [keep[i] for i, kind in enumerate(kinds) if kind == "distinct"]
    assert len(distinct_kept) == 300 and sum(distinct_kept) >= 299  # >= 99.5 %


def test_a_huge_text_hashes_in_chunks_exactly_as_whole():
    # Chunks end just before ASCII whitespace; combining marks, compatibility forms and
    # Unicode spaces on either side of each cut must hash as in the whole text.
    text = "Cafe\u0301  \u0301x Stra\u00dfe\u00a0\uFB01ne\t\n\uff26\uff55\uff4c\uff4c \u1100\u1161 \u11a8 \u00a8 ΑΣ \u3000 end " * 40
    whole = normalized_text_hash(text, chunk_chars=len(text))
    for chunk_chars in (1, 2, 3, 7, 64):
        assert normalized_text_hash(text, chunk_chars=chunk_chars) == whole
    assert normalized_text_hash("  " + text, chunk_chars=5) == whole  # leading whitespace: no empty word
    assert normalized_text_hash("a" * 100, chunk_chars=7) == normalized_text_hash("a" * 100)


def test_a_text_given_in_pieces_cut_anywhere_hashes_as_whole():
    text = "Cafe\u0301  \u0301x Stra\u00dfe\u00a0\uFB01ne\t\n\uff26\uff55\uff4c\uff4c \u1100\u1161 \u11a8 \u00a8 ΑΣ \u3000 end " * 40
    rng = random.Random(0)
    for chunk_chars in (1, 5, 64, 1 << 20):
        for _ in range(5):
            ends = sorted({rng.randrange(1, len(text)) for _ in range(rng.randrange(1, 60))} | {len(text)})
            hasher = NormalizedTextHasher(chunk_chars=chunk_chars)
            for start, stop in zip([0, *ends[:-1]], ends):
                hasher.update(text[start:stop])  # cut inside words, between a letter and its combining mark
            assert hasher.intdigest() == normalized_text_hash(text)
    blank = NormalizedTextHasher(chunk_chars=3)
    blank.update("  \n ")
    assert blank.intdigest() == normalized_text_hash("  \n ")
