"""Properties of the packing core on random corpora: nothing lost, nothing doubled, boundaries sane.

Documents are drawn relative to ``seq_len`` (length 1, a sequence of exactly
``seq_len``, longer, several times longer) because the boundary cases live there.
Every token of the synthetic store is distinct, so a token in the wrong place or
in two places cannot cancel out.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from packprep.stages.pack import PackPlan, fill_rows, ordered_bestfit_pack, pack, permute_rows

SEP_ID = 0  # store tokens are 1..T, so the separator and the padding are told apart from them
PAD_ID = -1
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


@st.composite
def packing_inputs(draw, packing: str | None = None, keep_order: bool | None = None) -> dict:
    """A store of token counts, a separator length, an order over (a subset of) the documents;
    ``keep_order``: bestfit along the order (what cluster/icp use) instead of by length."""
    seq_len = draw(st.integers(2, 200))
    sep_len = draw(st.sampled_from([0, 1]))
    exact_fit = seq_len - sep_len  # tokens whose sequence (with separator) is exactly seq_len
    num_tokens = draw(
        st.lists(
            st.one_of(
                st.just(1),
                st.just(exact_fit),
                st.just(exact_fit + 1),
                st.integers(1, seq_len),
                st.integers(seq_len + 1, 3 * seq_len),
                st.integers(2, 4).map(lambda k: k * seq_len - sep_len),  # several rows, exactly
            ),
            max_size=25,
        )
    )
    n = len(num_tokens)
    order = draw(st.permutations(range(n)))
    if draw(st.booleans()):  # dedup packs a subset of the store
        order = order[: draw(st.integers(0, n))]
    return {
        "seq_len": seq_len,
        "sep_len": sep_len,
        "num_tokens": np.asarray(num_tokens, dtype=np.int64),
        "order": np.asarray(order, dtype=np.int64),
        "packing": packing or draw(st.sampled_from(["split", "bestfit"])),
        "keep_order": draw(st.booleans()) if keep_order is None else keep_order,
    }


def make_store(num_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(num_tokens)]).astype(np.int64)
    return np.arange(1, offsets[-1] + 1, dtype=np.int64), offsets


def plan_for(case: dict) -> PackPlan:
    sequence_lengths = case["num_tokens"] + case["sep_len"]
    return pack(sequence_lengths, case["order"], seq_len=case["seq_len"], packing=case["packing"], keep_order=case["keep_order"])


def filled(plan: PackPlan, tokens: np.ndarray, offsets: np.ndarray, sep_len: int) -> np.ndarray:
    out = np.empty((plan.num_rows, plan.seq_len), dtype=np.int64)
    fill_rows(
        plan, slice(0, plan.num_rows), tokens=tokens, offsets=offsets,
        sep_id=SEP_ID if sep_len else None, pad_id=PAD_ID, out=out,
    )
    return out


def segment_rows(plan: PackPlan) -> np.ndarray:
    return np.repeat(np.arange(plan.num_rows), np.diff(plan.row_ptr))


def pieces_by_doc(plan: PackPlan) -> dict[int, list[tuple[int, int, int]]]:
    """doc -> [(doc_offset, length, segment index)] sorted by offset."""
    pieces: dict[int, list[tuple[int, int, int]]] = {}
    for s, (doc, offset, length) in enumerate(zip(plan.seg_doc.tolist(), plan.seg_doc_offset.tolist(), plan.seg_length.tolist())):
        pieces.setdefault(doc, []).append((offset, length, s))
    return {doc: sorted(p) for doc, p in pieces.items()}


@PROPERTY_SETTINGS
@given(packing_inputs())
def test_every_token_of_every_packed_document_appears_exactly_once(case):
    plan = plan_for(case)
    tokens, offsets = make_store(case["num_tokens"])
    matrix = filled(plan, tokens, offsets, case["sep_len"])
    rows = segment_rows(plan)

    rebuilt = {}
    for doc, pieces in pieces_by_doc(plan).items():
        parts = [matrix[rows[s], plan.seg_start[s] : plan.seg_start[s] + length] for _, length, s in pieces]
        rebuilt[doc] = np.concatenate(parts).tolist()
    assert sorted(rebuilt) == sorted(case["order"].tolist())
    for doc, sequence in rebuilt.items():
        assert sequence == tokens[offsets[doc] : offsets[doc + 1]].tolist() + [SEP_ID] * case["sep_len"]

    # And the other way round: the matrix holds each store token at most once, the rest is separators and padding.
    real = matrix[matrix > 0]
    assert len(np.unique(real)) == len(real) == int(case["num_tokens"][case["order"]].sum())
    assert (matrix == SEP_ID).sum() == case["sep_len"] * len(case["order"])
    assert (matrix == PAD_ID).sum() == plan.num_rows * plan.seq_len - int(plan.seg_length.sum())


@PROPERTY_SETTINGS
@given(packing_inputs())
def test_boundaries_are_consistent(case):
    plan, seq_len = plan_for(case), case["seq_len"]
    sequence_lengths = case["num_tokens"] + case["sep_len"]
    row_ptr = plan.row_ptr
    assert row_ptr.dtype == np.int64 and row_ptr[0] == 0 and row_ptr[-1] == plan.num_segments
    assert (np.diff(row_ptr) >= 1).all()  # no empty rows
    for array in (plan.seg_start, plan.seg_length, plan.seg_doc, plan.seg_doc_offset):
        assert array.dtype == np.int64 and len(array) == plan.num_segments
    assert (plan.seg_length >= 1).all() and (plan.seg_start >= 0).all() and (plan.seg_doc_offset >= 0).all()
    assert (plan.seg_start + plan.seg_length <= seq_len).all()
    assert (plan.seg_doc_offset + plan.seg_length <= sequence_lengths[plan.seg_doc]).all()
    for r in range(plan.num_rows):
        start = plan.seg_start[row_ptr[r] : row_ptr[r + 1]]
        length = plan.seg_length[row_ptr[r] : row_ptr[r + 1]]
        # contiguous from 0, in row order (docs/format.md): non-overlapping and without gaps
        assert start.tolist() == np.concatenate([[0], np.cumsum(length)[:-1]]).tolist()
    # a document's pieces tile its sequence
    for doc, pieces in pieces_by_doc(plan).items():
        ends = [offset + length for offset, length, _ in pieces]
        assert [offset for offset, _, _ in pieces] == [0] + ends[:-1]
        assert ends[-1] == sequence_lengths[doc]
    total = int(sequence_lengths[case["order"]].sum())
    assert plan.row_fill().sum() == total
    assert plan.num_rows >= -(-total // seq_len)


@PROPERTY_SETTINGS
@given(packing_inputs("split"))
def test_split_fills_every_row_but_the_last_and_keeps_the_stream_order(case):
    plan, seq_len = plan_for(case), case["seq_len"]
    fill = plan.row_fill()
    total = int((case["num_tokens"] + case["sep_len"])[case["order"]].sum())
    assert plan.num_rows == -(-total // seq_len)
    assert (fill[:-1] == seq_len).all()
    if plan.num_rows:
        assert fill[-1] == total - seq_len * (plan.num_rows - 1)
    # reading the rows left to right gives the documents in the given order
    tokens, offsets = make_store(case["num_tokens"])
    stream = filled(plan, tokens, offsets, case["sep_len"]).reshape(-1)[:total]
    expected = [
        t for doc in case["order"].tolist()
        for t in tokens[offsets[doc] : offsets[doc + 1]].tolist() + [SEP_ID] * case["sep_len"]
    ]
    assert stream.tolist() == expected


def assert_only_long_documents_split(plan: PackPlan, sequence_lengths: np.ndarray, seq_len: int) -> None:
    for doc, pieces in pieces_by_doc(plan).items():
        if sequence_lengths[doc] <= seq_len:
            assert len(pieces) == 1
        else:
            lengths = [length for _, length, _ in pieces]
            assert len(pieces) == -(-int(sequence_lengths[doc]) // seq_len)
            assert lengths[:-1] == [seq_len] * (len(lengths) - 1)
            assert 1 <= lengths[-1] <= seq_len


@PROPERTY_SETTINGS
@given(packing_inputs("bestfit", keep_order=False))
def test_bestfit_splits_only_documents_longer_than_a_row(case):
    plan, seq_len = plan_for(case), case["seq_len"]
    sequence_lengths = case["num_tokens"] + case["sep_len"]
    assert_only_long_documents_split(plan, sequence_lengths, seq_len)
    # Any-fit: a row is opened only when the piece fits no open row, so no two rows could be merged.
    fill = np.sort(plan.row_fill())
    if len(fill) >= 2:
        assert fill[0] + fill[1] > seq_len
    assert plan_rows(plan) == reference_bestfit(sequence_lengths, case["order"], seq_len)


@PROPERTY_SETTINGS
@given(packing_inputs("bestfit", keep_order=True), st.integers(1, 4), st.integers(0, 8))
def test_ordered_bestfit_splits_only_long_documents_and_follows_the_order(case, window, lookahead):
    seq_len = case["seq_len"]
    sequence_lengths = case["num_tokens"] + case["sep_len"]
    plan = ordered_bestfit_pack(sequence_lengths, case["order"], seq_len=seq_len, window=window, lookahead=lookahead)
    assert_only_long_documents_split(plan, sequence_lengths, seq_len)
    assert plan_rows(plan) == reference_ordered_bestfit(sequence_lengths, case["order"], seq_len, window, lookahead)


def reference_ordered_bestfit(
    sequence_lengths: np.ndarray, order: np.ndarray, seq_len: int, window: int, lookahead: int
) -> list[list[tuple[int, int, int]]]:
    """ordered_bestfit_pack as its docstring states it, the slow obvious way."""
    pieces = [
        (doc, offset, min(seq_len, int(sequence_lengths[doc]) - offset))
        for doc in order.tolist()
        for offset in range(0, int(sequence_lengths[doc]), seq_len)
    ]
    rows: list[list[int]] = []  # piece indices
    rooms: list[int] = []
    open_rows: list[int] = []
    placed = [False] * len(pieces)
    for i, piece in enumerate(pieces):
        if placed[i]:
            continue
        fits = [r for r in open_rows if rooms[r] >= piece[2]]
        if fits:
            row = min(fits, key=lambda r: (rooms[r], open_rows.index(r)))
        else:
            if len(open_rows) == window:
                oldest = open_rows.pop(0)
                # fill the closing row from the next pieces, longest first; a gap still over
                # 1/16 of seq_len is filled again from 8 times further ahead
                for reach in (lookahead, lookahead * 8):
                    if reach > lookahead and rooms[oldest] <= seq_len / 16:
                        break
                    while True:
                        ahead = [j for j in range(i + 1, min(i + 1 + reach, len(pieces))) if not placed[j]]
                        ahead = [j for j in ahead if pieces[j][2] <= rooms[oldest]]
                        if not ahead:
                            break
                        j = max(ahead, key=lambda j: (pieces[j][2], -j))
                        rows[oldest].append(j)
                        rooms[oldest] -= pieces[j][2]
                        placed[j] = True
            rows.append([])
            rooms.append(seq_len)
            open_rows.append(len(rows) - 1)
            row = len(rows) - 1
        rows[row].append(i)
        rooms[row] -= piece[2]
        placed[i] = True
        if rooms[row] == 0:
            open_rows.remove(row)
    return [[pieces[j] for j in sorted(row)] for row in rows]


def plan_rows(plan: PackPlan) -> list[list[tuple[int, int, int]]]:
    pieces = list(zip(plan.seg_doc.tolist(), plan.seg_doc_offset.tolist(), plan.seg_length.tolist()))
    return [pieces[a:b] for a, b in zip(plan.row_ptr[:-1].tolist(), plan.row_ptr[1:].tolist())]


def reference_bestfit(sequence_lengths: np.ndarray, order: np.ndarray, seq_len: int) -> list[list[tuple[int, int, int]]]:
    """Best-fit decreasing as its docstring states it, the slow obvious way: rows of (doc, offset, length)."""
    pieces = [
        (doc, offset, min(seq_len, int(sequence_lengths[doc]) - offset))
        for doc in order.tolist()
        for offset in range(0, int(sequence_lengths[doc]), seq_len)
    ]
    pieces.sort(key=lambda piece: -piece[2])  # stable: the given order among equal lengths
    rows: list[list[tuple[int, int, int]]] = []
    rooms: list[int] = []
    for piece in pieces:
        fits = [r for r in range(len(rows)) if rooms[r] >= piece[2]]
        if fits:
            row = min(fits, key=lambda r: (rooms[r], r))  # least room; ties: the row opened first
        else:
            rows.append([])
            rooms.append(seq_len)
            row = len(rows) - 1
        rows[row].append(piece)
        rooms[row] -= piece[2]
    return rows


@PROPERTY_SETTINGS
@given(packing_inputs(), st.data())
def test_permute_rows_moves_whole_rows(case, data):
    plan = plan_for(case)
    row_order = np.asarray(data.draw(st.permutations(range(plan.num_rows))), dtype=np.int64)
    moved = permute_rows(plan, row_order)
    assert moved.seq_len == plan.seq_len and moved.num_rows == plan.num_rows
    assert moved.num_segments == plan.num_segments
    assert moved.row_ptr[0] == 0 and (np.diff(moved.row_ptr) >= 1).all()
    for new, old in enumerate(row_order.tolist()):
        a, b = slice(moved.row_ptr[new], moved.row_ptr[new + 1]), slice(plan.row_ptr[old], plan.row_ptr[old + 1])
        for key in ("seg_start", "seg_length", "seg_doc", "seg_doc_offset"):
            assert getattr(moved, key)[a].tolist() == getattr(plan, key)[b].tolist()
    tokens, offsets = make_store(case["num_tokens"])
    before = filled(plan, tokens, offsets, case["sep_len"])
    assert np.array_equal(filled(moved, tokens, offsets, case["sep_len"]), before[row_order])
    # the inverse permutation restores the plan
    back = permute_rows(moved, np.argsort(row_order))
    for key in ("row_ptr", "seg_start", "seg_length", "seg_doc", "seg_doc_offset"):
        assert getattr(back, key).tolist() == getattr(plan, key).tolist()


@PROPERTY_SETTINGS
@given(packing_inputs(), st.data())
def test_filling_in_chunks_equals_filling_at_once(case, data):
    """Shards are filled a slice of rows at a time; where the cuts fall must not matter."""
    plan = plan_for(case)
    tokens, offsets = make_store(case["num_tokens"])
    whole = filled(plan, tokens, offsets, case["sep_len"])
    cuts = sorted(set(data.draw(st.lists(st.integers(0, plan.num_rows), max_size=6))) | {0, plan.num_rows})
    sep_id = SEP_ID if case["sep_len"] else None
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        out = np.full((r1 - r0, plan.seq_len), 12345, dtype=np.int64)
        fill_rows(plan, slice(r0, r1), tokens=tokens, offsets=offsets, sep_id=sep_id, pad_id=PAD_ID, out=out)
        assert np.array_equal(out, whole[r0:r1])


@PROPERTY_SETTINGS
@given(packing_inputs(), st.data())
def test_filling_from_pieces_read_in_order_equals_filling_from_the_store(case, data):
    """The shard writer reads each chunk's pieces back to back and fills from them (the
    path without an index per token); the rows must be those filled from the store."""
    plan = plan_for(case)
    tokens, offsets = make_store(case["num_tokens"])
    sep_id = SEP_ID if case["sep_len"] else None
    r0 = data.draw(st.integers(0, plan.num_rows))
    r1 = data.draw(st.integers(r0, plan.num_rows))
    s0, s1 = int(plan.row_ptr[r0]), int(plan.row_ptr[r1])
    doc, doc_offset, length = plan.seg_doc[s0:s1], plan.seg_doc_offset[s0:s1], plan.seg_length[s0:s1]
    doc_tokens = offsets[doc + 1] - offsets[doc]
    real = np.clip(doc_tokens - doc_offset, 0, length)
    starts = offsets[doc] + np.minimum(doc_offset, doc_tokens)
    piece_tokens = np.concatenate([tokens[a : a + n] for a, n in zip(starts, real)] + [tokens[:0]])
    pieces = PackPlan(
        seq_len=plan.seq_len, row_ptr=plan.row_ptr[r0 : r1 + 1] - s0, seg_start=plan.seg_start[s0:s1],
        seg_length=length, seg_doc=np.arange(s1 - s0), seg_doc_offset=np.zeros(s1 - s0, dtype=np.int64),
    )
    out = np.full((r1 - r0, plan.seq_len), 12345, dtype=np.int64)
    fill_rows(
        pieces, slice(0, r1 - r0), tokens=piece_tokens, offsets=np.concatenate([[0], np.cumsum(real)]),
        sep_id=sep_id, pad_id=PAD_ID, out=out,
    )
    assert np.array_equal(out, filled(plan, tokens, offsets, case["sep_len"])[r0:r1])
