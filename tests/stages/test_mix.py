"""stages.mix: the held-out split and the mixture selection, on hand-written arrays."""

from __future__ import annotations

import numpy as np
import pytest

from packprep.stages.mix import mix, split_hashes, val_mask


def test_split_hashes_are_stable_and_depend_on_the_source_name():
    a = split_hashes("web", ["d1", "d2"])
    assert a.dtype == np.uint64 and a.tolist() == split_hashes("web", ["d1", "d2"]).tolist()
    assert split_hashes("web", ["d2"]).tolist() == a[1:].tolist()  # a document's hash ignores the others
    assert split_hashes("code", ["d1"])[0] != a[0]


def test_val_fraction_compares_the_hash_with_the_fraction_of_2_64():
    hashes = np.array([0, 2**62, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    assert val_mask(hashes, fraction=0.5).tolist() == [True, True, True, False, False]
    assert val_mask(hashes, fraction=0.0).tolist() == [False] * 5
    assert val_mask(hashes, fraction=None).tolist() == [False] * 5


def test_val_documents_takes_the_lowest_hashes():
    hashes = np.array([9, 3, 7, 1], dtype=np.uint64)
    assert val_mask(hashes, documents=2).tolist() == [False, True, False, True]


def test_a_growing_source_moves_no_old_document_between_train_and_val():
    ids = [f"doc-{i}" for i in range(2000)]
    before = val_mask(split_hashes("web", ids[:1000]), fraction=0.1)
    after = val_mask(split_hashes("web", ids), fraction=0.1)
    assert after[:1000].tolist() == before.tolist()
    assert 50 < before.sum() < 150


def test_down_sampling_without_a_target_takes_the_scarcest_source_whole():
    lengths = np.array([10, 10, 10, 10, 10, 10, 5, 5], dtype=np.int64)
    source = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    m = mix(lengths, source, [0.5, 0.5])
    # source 1 has 10 tokens, so the total is 20: source 0 gets one of its six documents
    assert m.target.tolist() == [10, 10] and m.tokens.tolist() == [10, 10]
    assert m.passes.tolist() == [0, 1] and m.repeats.tolist() == [0, 0]
    assert m.picks[-2:].tolist() == [6, 7] and len(m.picks) == 3 and 0 <= m.picks[0] < 6


def test_up_sampling_makes_whole_passes_then_samples_the_remainder():
    lengths = np.array([4, 4, 4, 1, 1], dtype=np.int64)
    source = np.array([0, 0, 0, 1, 1])
    m = mix(lengths, source, [3, 1], tokens=16)
    assert m.target.tolist() == [12, 4]
    assert m.tokens.tolist() == [12, 4]
    assert m.passes.tolist() == [1, 2]
    assert m.picks.tolist() == [0, 1, 2, 3, 4, 3, 4]
    assert m.documents.tolist() == [3, 4] and m.unique.tolist() == [3, 2] and m.repeats.tolist() == [0, 2]


def test_the_remainder_is_filled_along_a_seeded_permutation():
    lengths = np.full(100, 3, dtype=np.int64)
    source = np.zeros(100, dtype=np.int64)
    m = mix(lengths, source, [1.0], tokens=3 * 100 + 7, seed=5)  # one pass + 7 tokens: two more documents fit, a third does not
    assert m.passes.tolist() == [1] and m.tokens.tolist() == [306] and len(m.picks) == 102
    again = mix(lengths, source, [1.0], tokens=307, seed=5)
    other = mix(lengths, source, [1.0], tokens=307, seed=6)
    assert m.picks.tolist() == again.picks.tolist()
    assert m.picks.tolist() != other.picks.tolist()


def test_first_fit_passes_over_a_document_too_long_for_the_gap():
    lengths = np.array([10, 100, 10, 10], dtype=np.int64)
    source = np.zeros(4, dtype=np.int64)
    for seed in range(20):
        m = mix(lengths, source, [1.0], tokens=30, seed=seed)
        assert m.tokens.tolist() == [30] and m.picks.tolist() == [0, 2, 3]


def test_shares_and_total_meet_the_tolerances_on_many_documents():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 2000, size=30_000)
    source = rng.integers(0, 3, size=30_000)
    weights = [0.6, 0.3, 0.1]
    for tokens in (None, 2_000_000, 40_000_000):
        m = mix(lengths, source, weights, tokens=tokens, seed=1)
        assert np.abs(m.shares - np.array(weights)).max() <= 0.005
        if tokens is not None:
            assert abs(m.tokens.sum() - tokens) <= 0.01 * tokens
        else:
            assert m.repeats.sum() == 0
        assert np.bincount(source[m.picks], weights=lengths[m.picks], minlength=3).astype(int).tolist() == m.tokens.tolist()


def test_a_source_without_tokens_is_an_error():
    with pytest.raises(ValueError, match=r"\[1\]"):
        mix(np.array([3, 0]), np.array([0, 1]), [1, 1])


def test_spread_copies_puts_a_pass_between_copies():
    # documents 0..2 are originals; 3 and 4 copy 0, 5 copies 2; a semantic order put copies together
    original = np.array([0, 1, 2, 0, 0, 2])
    order = np.array([0, 3, 4, 1, 2, 5])
    from packprep.stages.mix import spread_copies

    assert spread_copies(order, original).tolist() == [0, 1, 2, 3, 5, 4]
    assert spread_copies(np.array([2, 1, 0]), np.arange(3)).tolist() == [2, 1, 0]  # no copies: unchanged
    assert spread_copies(np.zeros(0, np.int64), original).tolist() == []
