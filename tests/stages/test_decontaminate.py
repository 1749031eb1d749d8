"""stages.decontaminate: n-gram hashes, the benchmark index and per-text matches."""

from __future__ import annotations

import numpy as np

from packprep.stages.decontaminate import NgramIndex, contaminated, first_matches, ngram_hashes


def test_ngrams_ignore_case_punctuation_and_wrapping():
    a, counts_a = ngram_hashes(["The quick brown fox jumps"], n=3)
    b, counts_b = ngram_hashes(["the QUICK,\n brown  fox -- jumps!"], n=3)
    assert counts_a.tolist() == counts_b.tolist() == [3]
    assert a.tolist() == b.tolist()
    short, counts = ngram_hashes(["two words", ""], n=3)
    assert counts.tolist() == [1, 0] and len(short) == 1


def test_index_keeps_the_lowest_benchmark_of_a_repeated_hash():
    index = NgramIndex.build(np.array([5, 9, 5, 1], np.uint64), np.array([2, 0, 1, 3], np.int32))
    assert index.hashes.tolist() == [1, 5, 9] and index.owner.tolist() == [3, 1, 0]
    assert index.lookup(np.array([9, 4, 5, 1, 0], np.uint64)).tolist() == [0, -1, 1, 3, -1]


def test_lookup_walks_a_full_bucket():
    # Equal top bits: every hash in one bucket; each must still be found.
    hashes = np.array([(1 << 60) + i for i in range(50)], np.uint64)
    index = NgramIndex.build(hashes, np.arange(50, dtype=np.int32))
    assert index.lookup(hashes[::-1]).tolist() == list(range(49, -1, -1))
    assert index.lookup(np.array([(1 << 60) + 50, 0], np.uint64)).tolist() == [-1, -1]


def test_lookup_agrees_with_a_set_on_random_hashes():
    rng = np.random.default_rng(0)
    bench = rng.integers(0, 2**63, size=20_000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    queries = np.concatenate([bench[:500], bench[:500] + np.uint64(1)])
    found = NgramIndex.build(bench, np.zeros(len(bench), np.int32)).lookup(queries)
    assert (found[:500] == 0).all() and (found[500:] == -1).all()


def test_first_matches_names_the_benchmark_of_each_texts_first_hit():
    found = np.array([-1, 2, 1, -1, -1, 0, -1], np.int32)
    assert first_matches(found, np.array([3, 0, 2, 2])).tolist() == [2, -1, -1, 0]
    assert first_matches(np.array([], np.int32), np.array([0, 0])).tolist() == [-1, -1]


def test_planted_excerpt_is_found_in_a_longer_text():
    benchmark = "Which of the following is the capital of France? Paris, London, Berlin or Madrid, answer with one word."
    bench_hashes, _ = ngram_hashes([benchmark], n=8)
    index = NgramIndex.build(bench_hashes, np.zeros(len(bench_hashes), np.int32))
    texts = [
        "Some notes. which of the following IS the capital of france? paris, London and more.",  # 9 words in common
        "Which of the following is the largest city of Spain? Madrid.",  # 6 words in a row, not 8
        "unrelated text " * 20,
    ]
    assert contaminated(texts, index, n=8).tolist() == [0, -1, -1]


def test_match_pairs_and_common_ngrams_are_ignored():
    from packprep.stages.decontaminate import first_common_free_matches, match_pairs

    bench = ["alpha beta gamma delta", "one two three four"]
    hashes, counts = ngram_hashes(bench, n=2)
    index = NgramIndex.build(hashes, np.repeat(np.arange(2, dtype=np.int32), counts))
    texts = ["x alpha beta y alpha beta one two", "one two z", "one two", "gamma delta"]
    text, position = match_pairs(texts, index, n=2)
    ab, ot, gd = (int(np.flatnonzero(index.hashes == ngram_hashes([t], n=2)[0][0])[0]) for t in ("alpha beta", "one two", "gamma delta"))
    assert text.tolist() == [0, 0, 1, 2, 3] and position.tolist() == [ab, ot, ot, ot, gd]
    # "one two" is in three texts: with at most 2 allowed it is boilerplate, and text 0 still matches on "alpha beta"
    assert first_common_free_matches(text, position, index, num_texts=4, max_texts=2).tolist() == [0, -1, -1, 0]
    assert first_common_free_matches(text, position, index, num_texts=4, max_texts=3).tolist() == [0, 1, 1, 0]
