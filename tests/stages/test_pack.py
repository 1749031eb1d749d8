"""The packing core on hand-written arrays: exact plans, then conservation on random ones."""

import numpy as np
import pytest

from packprep.stages.pack import bestfit_pack, fill_rows, ordered_bestfit_pack, pack, permute_rows, split_pack


def plan_lists(plan):
    return {
        "row_ptr": plan.row_ptr.tolist(),
        "seg_start": plan.seg_start.tolist(),
        "seg_length": plan.seg_length.tolist(),
        "seg_doc": plan.seg_doc.tolist(),
        "seg_doc_offset": plan.seg_doc_offset.tolist(),
    }


def test_split_pack_cuts_the_stream_at_the_window():
    lengths = np.array([5, 3, 10, 1, 7])
    order = np.array([2, 0, 4, 1, 3])
    # stream: doc2 [0,10) doc0 [10,15) doc4 [15,22) doc1 [22,25) doc3 [25,26); rows of 4
    assert plan_lists(split_pack(lengths, order, seq_len=4)) == {
        "row_ptr": [0, 1, 2, 4, 6, 7, 9, 11],
        "seg_start": [0, 0, 0, 2, 0, 3, 0, 0, 2, 0, 1],
        "seg_length": [4, 4, 2, 2, 3, 1, 4, 2, 2, 1, 1],
        "seg_doc": [2, 2, 2, 0, 0, 4, 4, 4, 1, 1, 3],
        "seg_doc_offset": [0, 4, 8, 0, 2, 0, 1, 5, 0, 2, 0],
    }


def test_bestfit_puts_whole_documents_in_the_tightest_row():
    lengths = np.array([5, 3, 10, 1, 7])
    order = np.array([2, 0, 4, 1, 3])
    # pieces: doc2 -> 8 + 2, then 7, 5, 3, 2, 1 longest first:
    # 8 -> row0 (full); 7 -> row1 (room 1); 5 -> row2 (room 3); 3 -> row2 (room 0); 2 -> row3 (room 6); 1 -> row1
    plan = bestfit_pack(lengths, order, seq_len=8)
    assert plan_lists(plan) == {
        "row_ptr": [0, 1, 3, 5, 6],
        "seg_start": [0, 0, 7, 0, 5, 0],
        "seg_length": [8, 7, 1, 5, 3, 2],
        "seg_doc": [2, 4, 3, 0, 1, 2],
        "seg_doc_offset": [0, 0, 0, 0, 0, 8],
    }
    assert plan.row_fill().tolist() == [8, 8, 8, 2]


def test_bestfit_prefers_the_row_opened_first_among_equal_rooms():
    # two rows with room 4 each (lengths 4, 4), then a piece of 4 goes to row 0
    plan = bestfit_pack(np.array([4, 4, 4]), np.arange(3), seq_len=8)
    assert plan.row_ptr.tolist() == [0, 2, 3]
    assert plan.seg_doc.tolist() == [0, 1, 2]


def test_ordered_bestfit_keeps_neighbours_in_the_order_together():
    lengths = np.array([4, 4, 2, 2, 6, 6])
    order = np.arange(6)  # a semantic order: 0-1 and 2-3 are neighbours
    # best fit decreasing sorts by length and pairs each 6 with a 2 from elsewhere in the order
    assert [sorted(r) for r in np.split(bestfit_pack(lengths, order, seq_len=8).seg_doc, [2, 4])] == [[2, 4], [3, 5], [0, 1]]
    # along the order (window 2): 0+1 fill a row, 2+3 share one, the 6s find no room and go alone
    plan = ordered_bestfit_pack(lengths, order, seq_len=8, window=2, lookahead=0)
    assert plan_lists(plan) == {
        "row_ptr": [0, 2, 4, 5, 6],
        "seg_start": [0, 4, 0, 2, 0, 0],
        "seg_length": [4, 4, 2, 2, 6, 6],
        "seg_doc": [0, 1, 2, 3, 4, 5],
        "seg_doc_offset": [0, 0, 0, 0, 0, 0],
    }
    assert pack(lengths, order, seq_len=8, packing="bestfit", keep_order=True).seg_doc.tolist() == [0, 1, 2, 3, 4, 5]


def test_ordered_bestfit_fills_a_closing_row_from_just_ahead():
    lengths = np.array([5, 6, 7, 3, 2])
    # window 1: 5 opens row0 (room 3); 6 does not fit, so row0 closes, taking the longest of
    # the next two pieces that fits (3, doc 3 pulled forward); 6 opens row1 (room 2); 7
    # closes row1, which takes the 2 (doc 4, within the two ahead); 7 opens row2.
    plan = ordered_bestfit_pack(lengths, np.arange(5), seq_len=8, window=1, lookahead=2)
    assert [plan.seg_doc[a:b].tolist() for a, b in zip(plan.row_ptr[:-1], plan.row_ptr[1:])] == [[0, 3], [1, 4], [2]]
    assert plan.row_fill().tolist() == [8, 8, 7]
    with pytest.raises(ValueError, match="window"):
        ordered_bestfit_pack(lengths, np.arange(5), seq_len=8, window=0)


def test_ordered_bestfit_fills_a_large_gap_from_further_ahead():
    # window 1, look-ahead 1: 4 opens row0 (room 4 of 8); the next 6 does not fit and the one
    # piece ahead (7) neither, so the gap (half the row, over 1/16) is filled from 8 pieces
    # ahead: the 4 at position 5 joins row0. The 6 and the 7s then go one per row.
    lengths = np.array([4, 6, 7, 7, 7, 4])
    plan = ordered_bestfit_pack(lengths, np.arange(6), seq_len=8, window=1, lookahead=1)
    assert [plan.seg_doc[a:b].tolist() for a, b in zip(plan.row_ptr[:-1], plan.row_ptr[1:])] == [[0, 5], [1], [2], [3], [4]]


def test_fill_rows_writes_tokens_separators_and_padding():
    tokens = np.array([10, 11, 12, 20, 21, 30], dtype=np.uint16)
    offsets = np.array([0, 3, 5, 6])
    sequence_lengths = np.diff(offsets) + 1  # one separator per document
    plan = split_pack(sequence_lengths, np.array([1, 0, 2]), seq_len=4)
    out = np.empty((plan.num_rows, 4), dtype=np.uint16)
    fill_rows(plan, slice(0, plan.num_rows), tokens=tokens, offsets=offsets, sep_id=99, pad_id=7, out=out)
    assert out.tolist() == [[20, 21, 99, 10], [11, 12, 99, 30], [99, 7, 7, 7]]


def test_fill_rows_needs_a_separator_id_when_the_plan_has_separators():
    plan = split_pack(np.array([3]), np.array([0]), seq_len=4)
    out = np.empty((1, 4), dtype=np.uint16)
    with pytest.raises(ValueError, match="sep_id"):
        fill_rows(plan, slice(0, 1), tokens=np.array([1, 2], np.uint16), offsets=np.array([0, 2]), sep_id=None, pad_id=0, out=out)


def test_permute_rows_moves_whole_rows():
    plan = split_pack(np.array([5, 3]), np.array([0, 1]), seq_len=4)
    moved = permute_rows(plan, np.array([1, 0]))
    assert moved.row_ptr.tolist() == [0, 2, 3]
    assert moved.seg_doc.tolist() == [0, 1, 0]
    assert moved.seg_doc_offset.tolist() == [4, 0, 0]
    assert moved.seg_start.tolist() == [0, 1, 0]


def rebuild(plan, tokens, offsets, sep_id):
    """Every document's sequence, reassembled from a filled token matrix and the plan."""
    out = np.empty((plan.num_rows, plan.seq_len), dtype=np.int64)
    fill_rows(plan, slice(0, plan.num_rows), tokens=tokens, offsets=offsets, sep_id=sep_id, pad_id=-1, out=out)
    rows = np.repeat(np.arange(plan.num_rows), np.diff(plan.row_ptr))
    pieces: dict[int, list] = {}
    for row, start, length, doc, doc_offset in zip(rows, plan.seg_start, plan.seg_length, plan.seg_doc, plan.seg_doc_offset):
        pieces.setdefault(int(doc), []).append((int(doc_offset), out[row, start : start + length].tolist()))
    return {doc: [t for _, piece in sorted(parts) for t in piece] for doc, parts in pieces.items()}, out


@pytest.mark.parametrize("packing", ["split", "bestfit"])
@pytest.mark.parametrize("sep", [None, 999])
@pytest.mark.parametrize("seed", range(5))
def test_every_token_appears_exactly_once(packing, sep, seed):
    rng = np.random.default_rng(seed)
    n, seq_len = int(rng.integers(1, 60)), int(rng.integers(1, 40))
    num_tokens = rng.integers(1, 3 * seq_len, size=n)
    offsets = np.concatenate([[0], np.cumsum(num_tokens)])
    tokens = rng.integers(0, 900, size=offsets[-1])
    sep_len = 0 if sep is None else 1
    if seq_len <= sep_len:
        seq_len = sep_len + 1
    order = rng.permutation(n)
    plan = pack(num_tokens + sep_len, order, seq_len=seq_len, packing=packing)
    docs, out = rebuild(plan, tokens, offsets, sep)
    assert sorted(docs) == sorted(order.tolist())
    for doc, got in docs.items():
        expected = tokens[offsets[doc] : offsets[doc + 1]].tolist() + ([sep] if sep is not None else [])
        assert got == expected
    used = plan.row_fill()
    assert (used <= seq_len).all() and used.sum() == (num_tokens + sep_len).sum()
    assert int((out == -1).sum()) == plan.num_rows * seq_len - used.sum()
    if packing == "bestfit":
        # a document that fits in a row is never split
        fits = np.flatnonzero(num_tokens + sep_len <= seq_len)
        assert (np.bincount(plan.seg_doc, minlength=n)[fits] == 1).all()
    else:
        assert (used[:-1] == seq_len).all()  # only the last row of a split packing has padding


# ---------------------------------------------------------------------------- parts of the order


def test_part_ranges_cut_the_order_by_document_count():
    from packprep.stages.pack import part_ranges

    assert part_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert part_ranges(10, 10) == [(0, 10)]
    assert part_ranges(10, 0) == [(0, 10)]  # 0: never cut
    assert part_ranges(0, 4) == []


@pytest.mark.parametrize("packing", ["split", "bestfit"])
@pytest.mark.parametrize("keep_order", [False, True])
def test_one_part_is_the_whole_corpus_plan_with_the_old_shuffle(packing, keep_order):
    """One part packs exactly as the whole order was packed before parts (golden outputs rely on it)."""
    from packprep.stages.pack import pack_part, row_shuffle_seed

    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 40, size=30)
    order = rng.permutation(30)
    whole = pack(lengths, order, seq_len=16, packing=packing, keep_order=keep_order)
    whole = permute_rows(whole, np.random.default_rng([7, 1]).permutation(whole.num_rows))
    part = pack_part(lengths[order], seq_len=16, packing=packing, keep_order=keep_order, shuffle_seed=row_shuffle_seed(7, 0, 1))
    got = plan_lists(part)
    got["seg_doc"] = order[part.seg_doc].tolist()  # positions in the part -> documents
    assert got == plan_lists(whole)


def test_parts_share_no_packing_state():
    """Bestfit's open rows end with the part: the second part's documents do not fill the first part's rows."""
    from packprep.stages.pack import pack_part

    lengths = np.array([6, 6, 4, 4])
    whole = pack_part(lengths, seq_len=10, packing="bestfit", keep_order=True, shuffle_seed=None)
    first = pack_part(lengths[:2], seq_len=10, packing="bestfit", keep_order=True, shuffle_seed=None)
    second = pack_part(lengths[2:], seq_len=10, packing="bestfit", keep_order=True, shuffle_seed=None)
    assert whole.row_fill().tolist() == [10, 10]
    assert first.row_fill().tolist() == [6, 6] and second.row_fill().tolist() == [8]
    assert second.seg_doc.tolist() == [0, 1]  # positions inside its own part


def test_shard_layout_cuts_each_part_and_numbers_shards_across_parts():
    from packprep.pipeline.pack_parts import shard_layout

    assert shard_layout([5, 0, 3], 2) == [(0, 0, (0, 2)), (1, 0, (2, 4)), (2, 0, (4, 5)), (3, 2, (0, 2)), (4, 2, (2, 3))]
