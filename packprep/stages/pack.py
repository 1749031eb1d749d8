"""Packing: document lengths + an order + seq_len -> rows made of document pieces.

Pure numpy. A document's *sequence* is its tokens followed by ``sep_len`` separator
tokens (the EOS for the ``eos`` strategy, nothing for ``random``); offsets inside a
document always count in that sequence, so a piece that covers the separator says so
by ``doc_offset + length > num_tokens``.

The result is a :class:`PackPlan`: segment arrays in CSR layout by row. Token
matrices are filled from it later (:func:`fill_rows`), one shard at a time, so the
plan is the only thing held for the whole corpus (a few int64 per piece).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

import numpy as np

PACKING_MODES = ("split", "bestfit")


@dataclass(frozen=True, kw_only=True)
class PackPlan:
    """Where each piece of each document goes.

    Segments of row ``r`` are ``seg_*[row_ptr[r]:row_ptr[r + 1]]``, in row order.

    - ``row_ptr``: int64 [R+1]
    - ``seg_start``: int64 [S], position of the piece inside its row
    - ``seg_length``: int64 [S]
    - ``seg_doc``: int64 [S], document index (into the document store)
    - ``seg_doc_offset``: int64 [S], offset of the piece inside the document's sequence
    """

    seq_len: int
    row_ptr: np.ndarray
    seg_start: np.ndarray
    seg_length: np.ndarray
    seg_doc: np.ndarray
    seg_doc_offset: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1

    @property
    def num_segments(self) -> int:
        return len(self.seg_start)

    def row_fill(self) -> np.ndarray:
        """int64 [R]: tokens used in each row (the rest is padding)."""
        used = np.zeros(self.num_rows, dtype=np.int64)
        rows = np.repeat(np.arange(self.num_rows), np.diff(self.row_ptr))
        np.add.at(used, rows, self.seg_length)
        return used


def split_pack(sequence_lengths: np.ndarray, order: np.ndarray, *, seq_len: int) -> PackPlan:
    """Concatenate documents in ``order`` and cut the stream every ``seq_len`` tokens.

    A document crossing a row boundary continues at the start of the next row; only
    the last row can be short (it is padded when written). Fully vectorised.

    ``sequence_lengths``: int64 [N], tokens per document including separators.
    ``order``: int64 [M], the documents to pack, in packing order.
    """
    _check_seq_len(seq_len)
    lengths = np.asarray(sequence_lengths, dtype=np.int64)[order]
    if len(lengths) and lengths.min() <= 0:
        raise ValueError("split_pack needs documents of positive length")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    first_row = starts // seq_len
    last_row = (ends - 1) // seq_len
    pieces = last_row - first_row + 1

    seg_doc_pos = np.repeat(np.arange(len(lengths)), pieces)
    piece_rank = np.arange(len(seg_doc_pos)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    seg_row = first_row[seg_doc_pos] + piece_rank
    row_begin = seg_row * seq_len
    piece_begin = np.maximum(starts[seg_doc_pos], row_begin)
    piece_end = np.minimum(ends[seg_doc_pos], row_begin + seq_len)

    num_rows = int(-(-int(ends[-1]) // seq_len)) if len(ends) else 0
    return PackPlan(
        seq_len=seq_len,
        row_ptr=_row_ptr(seg_row, num_rows),
        seg_start=piece_begin - row_begin,
        seg_length=piece_end - piece_begin,
        seg_doc=np.asarray(order, dtype=np.int64)[seg_doc_pos],
        seg_doc_offset=piece_begin - starts[seg_doc_pos],
    )


def bestfit_pack(sequence_lengths: np.ndarray, order: np.ndarray, *, seq_len: int) -> PackPlan:
    """Best-fit decreasing: whole documents into rows, padding what is left.

    Documents longer than ``seq_len`` are first cut into ``seq_len``-sized pieces
    (the only pieces that are not whole documents). Pieces are placed longest first,
    each into the open row with the least room that still fits it (ties: the row
    opened first), otherwise into a new row. Rows keep the order they were opened in;
    callers that want them mixed shuffle rows afterwards.

    Why not first-fit or next-fit: best-fit decreasing is what OLMo-core and the
    "fewer truncations" packing use; it leaves the least padding of the simple rules.
    """
    _check_seq_len(seq_len)
    pieces = _DocumentPieces.cut(sequence_lengths, order, seq_len)
    # Longest first; the stable sort keeps the given order among equal lengths.
    by_length = np.argsort(-pieces.length, kind="stable")
    return pieces.plan(seq_len, by_length, _best_fit_rows(pieces.length[by_length], seq_len))


def ordered_bestfit_pack(
    sequence_lengths: np.ndarray, order: np.ndarray, *, seq_len: int, window: int = 8, lookahead: int = 64
) -> PackPlan:
    """Best fit along the order: whole documents into rows, keeping neighbours in the order together.

    Pieces are cut as in :func:`bestfit_pack` (only documents longer than ``seq_len`` are
    split). They are placed in the given order, each into the open row with the least
    room that still fits it (ties: the row opened first), otherwise into a new row; at
    most ``window`` rows are open, and opening one more closes the oldest. So a row only
    takes documents from a stretch of the order about ``window`` rows long, and a
    semantic order survives packing, where best-fit *decreasing* re-sorts documents by
    length and scatters neighbours over the whole output. Rows keep the order they were
    opened in.

    Why a window of 8: on examples/corpus, the stdlib docstring corpus and Debian
    synopses (about 10 documents per row) it keeps padding at 0.5-1.5 % (with the second
    fill of :func:`_windowed_best_fit_rows`) while rows stay almost as coherent as split
    packing's (benchmarks/bench_semantic.py); wider windows mix rows more.
    """
    _check_seq_len(seq_len)
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    pieces = _DocumentPieces.cut(sequence_lengths, order, seq_len)
    placement = np.arange(len(pieces.length))  # placed in the given order
    return pieces.plan(seq_len, placement, _windowed_best_fit_rows(pieces.length, seq_len, window, lookahead))


@dataclass(frozen=True)
class _DocumentPieces:
    """Documents cut into pieces of at most ``seq_len`` tokens (only longer ones are cut).

    ``order``: int64 [M] the documents; per piece (int64 [P]): ``doc_pos`` its document's
    position in ``order``, ``offset`` its first token inside that document, ``length``.
    """

    order: np.ndarray
    doc_pos: np.ndarray
    offset: np.ndarray
    length: np.ndarray

    @classmethod
    def cut(cls, sequence_lengths: np.ndarray, order: np.ndarray, seq_len: int) -> _DocumentPieces:
        order = np.asarray(order, dtype=np.int64)
        lengths = np.asarray(sequence_lengths, dtype=np.int64)[order]
        pieces = -(-lengths // seq_len)
        doc_pos = np.repeat(np.arange(len(order)), pieces)
        offset = (np.arange(len(doc_pos)) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * seq_len
        return cls(order=order, doc_pos=doc_pos, offset=offset, length=np.minimum(lengths[doc_pos] - offset, seq_len))

    def plan(self, seq_len: int, placement: np.ndarray, rows: np.ndarray) -> PackPlan:
        """The plan of pieces placed in ``placement`` order (int [P] piece indices), ``rows[i]``
        the row of piece ``placement[i]``: segments by row, then by placement inside the row."""
        seg_order = np.argsort(rows, kind="stable")
        placed = placement[seg_order]
        seg_length = self.length[placed]
        num_rows = int(rows.max()) + 1 if len(rows) else 0
        row_ptr = _row_ptr(rows[seg_order], num_rows)
        return PackPlan(
            seq_len=seq_len,
            row_ptr=row_ptr,
            seg_start=_starts_within_rows(seg_length, row_ptr),
            seg_length=seg_length,
            seg_doc=self.order[self.doc_pos[placed]],
            seg_doc_offset=self.offset[placed],
        )


def _windowed_best_fit_rows(piece_lengths: np.ndarray, seq_len: int, window: int, lookahead: int) -> np.ndarray:
    """Row number for each piece (given in order), best fit among at most ``window`` open rows.

    Before the oldest row is closed, the next ``lookahead`` unplaced pieces are searched
    for the longest that still fits it, again and again: a row's last gap is filled from
    just ahead in the order instead of being padded. A gap still over ``_FAR_ROOM`` of
    ``seq_len`` after that is filled the same way from ``_FAR_FACTOR`` times further ahead. The open rows are few, so a scan
    over them beats any index; they are kept in opening order, so ties go to the first.
    """
    lengths = piece_lengths.tolist()
    piece_row = np.full(len(lengths), -1, dtype=np.int64)
    open_rows: list[int] = []
    rooms: list[int] = []
    next_row = 0
    for i, length in enumerate(lengths):
        if piece_row[i] >= 0:  # pulled forward into an earlier row
            continue
        best = -1
        for slot, room in enumerate(rooms):
            if length <= room and (best < 0 or room < rooms[best]):
                best = slot
        if best < 0:
            if len(open_rows) == window:
                room = _fill_from_ahead(open_rows[0], rooms[0], lengths, piece_row, i + 1, lookahead)
                if room > seq_len * _FAR_ROOM:
                    _fill_from_ahead(open_rows[0], room, lengths, piece_row, i + 1, lookahead * _FAR_FACTOR)
                del open_rows[0], rooms[0]
            open_rows.append(next_row)
            rooms.append(seq_len)
            best = len(rooms) - 1
            next_row += 1
        piece_row[i] = open_rows[best]
        rooms[best] -= length
        if rooms[best] == 0:
            del open_rows[best], rooms[best]
    return piece_row


def _fill_from_ahead(row: int, room: int, lengths: list[int], piece_row: np.ndarray, start: int, lookahead: int) -> int:
    """Put the longest of ``lengths[start:start + lookahead]`` not yet placed that fits ``room`` into ``row``, repeatedly;
    returns the room left."""
    while room > 0:
        best = -1
        for j in range(start, min(start + lookahead, len(lengths))):
            if piece_row[j] < 0 and lengths[j] <= room and (best < 0 or lengths[j] > lengths[best]):
                best = j
        if best < 0:
            return room
        piece_row[best] = row
        room -= lengths[best]
    return room


# A row about to close with more than 1/16 of seq_len still free is filled from 8x further
# ahead (512 pieces). On examples/corpus (documents up to 11k tokens at seq-len 6144) the
# 64-piece look-ahead left such gaps: icp bestfit padded 2.29 % / 1.94 % / 1.94 % (seeds 0-2),
# 0.51 % each with this second pass, in-row pair share 0.201 -> 0.200 (cluster: 1.23-1.58 %
# -> 0.15-0.87 %, 0.340 -> 0.339). A 256 look-ahead for every row also reached 0.15 %, but
# pulled pieces from far ahead into every row: side-by-side share 0.626 -> 0.600. On the
# docstring and Debian corpora no row is left with such a gap (nothing changes there).
_FAR_ROOM = 1 / 16
_FAR_FACTOR = 8


def _best_fit_rows(piece_lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Row number for each piece (given longest first), by best fit.

    Open rows are kept in buckets (min-heaps of row numbers) by remaining room;
    ``rooms`` is the sorted list of non-empty bucket keys, so the best row is one
    ``bisect`` away and ties go to the row opened first.
    """
    rows_by_room: dict[int, list[int]] = {}
    rooms: list[int] = []
    piece_row = np.empty(len(piece_lengths), dtype=np.int64)
    next_row = 0
    for i, length in enumerate(piece_lengths.tolist()):
        slot = bisect.bisect_left(rooms, length)
        if slot < len(rooms):
            room = rooms[slot]
            bucket = rows_by_room[room]
            row = heapq.heappop(bucket)
            if not bucket:
                del rows_by_room[room]
                rooms.pop(slot)
        else:
            room, row = seq_len, next_row
            next_row += 1
        piece_row[i] = row
        left = room - length
        if left > 0:
            if left not in rows_by_room:
                rows_by_room[left] = []
                bisect.insort(rooms, left)
            heapq.heappush(rows_by_room[left], row)
    return piece_row


def _row_ptr(seg_row: np.ndarray, num_rows: int) -> np.ndarray:
    counts = np.bincount(seg_row, minlength=num_rows) if len(seg_row) else np.zeros(num_rows, np.int64)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _starts_within_rows(seg_length: np.ndarray, row_ptr: np.ndarray) -> np.ndarray:
    """Start of each segment inside its row, segments laid end to end from 0."""
    ends = np.cumsum(seg_length)
    row_base = np.concatenate([[0], ends])[row_ptr[:-1]]
    return ends - seg_length - np.repeat(row_base, np.diff(row_ptr))


def _check_seq_len(seq_len: int) -> None:
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")


def pack(
    sequence_lengths: np.ndarray, order: np.ndarray, *, seq_len: int, packing: str, keep_order: bool = False
) -> PackPlan:
    """Dispatch on ``packing`` ("split" or "bestfit"). ``keep_order``: the order carries
    meaning (a semantic strategy), so bestfit packs along it (:func:`ordered_bestfit_pack`)
    instead of sorting by length."""
    if packing == "split":
        return split_pack(sequence_lengths, order, seq_len=seq_len)
    if packing == "bestfit":
        if keep_order:
            return ordered_bestfit_pack(sequence_lengths, order, seq_len=seq_len)
        return bestfit_pack(sequence_lengths, order, seq_len=seq_len)
    raise ValueError(f"unknown packing {packing!r}; expected one of {PACKING_MODES}")


def permute_rows(plan: PackPlan, row_order: np.ndarray) -> PackPlan:
    """The same plan with its rows in ``row_order`` (int64 [R], a permutation)."""
    counts = np.diff(plan.row_ptr)[row_order]
    take = concat_ranges(plan.row_ptr[:-1][row_order], counts)
    return PackPlan(
        seq_len=plan.seq_len,
        row_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        seg_start=plan.seg_start[take],
        seg_length=plan.seg_length[take],
        seg_doc=plan.seg_doc[take],
        seg_doc_offset=plan.seg_doc_offset[take],
    )


def _fill_in_order(
    flat: np.ndarray, dst: np.ndarray, length: np.ndarray, doc: np.ndarray, doc_offset: np.ndarray,
    num_tokens: np.ndarray, real: np.ndarray, *, tokens: np.ndarray, offsets: np.ndarray, sep_id: int | None,
) -> bool:
    """:func:`fill_rows` without an index per token, when it applies; False (nothing written) when not.
    ``real``: each piece's real tokens (the rest of it is its separator, ``sep_id``).

    It applies when the pieces' real tokens lie back to back in ``tokens`` in segment order
    and the segments go forward through ``flat``: then the real tokens, read in order, fill
    exactly the positions a run mask marks, in order (one boolean pass instead of five int64
    index arrays: ~4x faster). The shard writer's pieces (``formats.npy``: every piece a
    document of its own) always qualify.
    """
    src = offsets[doc] + np.minimum(doc_offset, num_tokens)
    end = dst + length
    if not (np.array_equal(src[1:], src[:-1] + real[:-1]) and np.all(dst[1:] >= end[:-1])):
        return False
    is_sep = real < length
    # Runs of the mask: a gap (padding, a separator or nothing) before each piece, then its real tokens.
    gaps = dst - np.concatenate([[0], dst[:-1] + real[:-1]])
    runs = np.empty(2 * len(dst) + 1, dtype=np.int64)
    runs[0:-1:2], runs[1:-1:2], runs[-1] = gaps, real, len(flat) - (dst[-1] + real[-1])
    mask = np.repeat(np.tile(np.array([False, True]), len(dst) + 1)[: len(runs)], runs)
    flat[mask] = tokens[src[0] : src[0] + int(real.sum())]
    if is_sep.any():  # a piece's positions past its real tokens are the separator
        flat[concat_ranges((dst + real)[is_sep], (length - real)[is_sep])] = sep_id
    return True


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each pair, vectorised."""
    counts = np.asarray(counts, dtype=np.int64)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + within


def piece_token_spans(
    doc: np.ndarray, doc_offset: np.ndarray, length: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each piece's real tokens sit in the store: (start int64 [S], count int64 [S]).

    A piece covers ``[doc_offset, doc_offset + length)`` of its document's sequence
    (tokens then separator); ``count`` excludes the separator part, so it can be 0.
    """
    doc_tokens = offsets[doc + 1] - offsets[doc]
    count = np.clip(doc_tokens - doc_offset, 0, length)
    return offsets[doc] + np.minimum(doc_offset, doc_tokens), count


def fill_rows(
    plan: PackPlan,
    rows: slice,
    *,
    tokens: np.ndarray,
    offsets: np.ndarray,
    sep_id: int | None,
    pad_id: int,
    out: np.ndarray,
) -> None:
    """Write rows ``rows`` of the plan into ``out`` ([rows, seq_len], the token dtype).

    ``tokens``/``offsets`` are the document store (flat tokens, int64 [N+1]).
    Positions of a piece past the document's tokens are its separator (``sep_id``);
    positions after a row's last piece are ``pad_id``.
    """
    r0, r1 = rows.start, rows.stop
    s0, s1 = int(plan.row_ptr[r0]), int(plan.row_ptr[r1])
    seq_len = plan.seq_len
    out[...] = pad_id
    if s1 == s0:
        return
    seg_rows = np.repeat(np.arange(r1 - r0), np.diff(plan.row_ptr[r0 : r1 + 1]))
    length = plan.seg_length[s0:s1]
    doc = plan.seg_doc[s0:s1]
    doc_offset = plan.seg_doc_offset[s0:s1]
    num_tokens = offsets[doc + 1] - offsets[doc]
    real = np.clip(num_tokens - doc_offset, 0, length)  # a piece's positions past these are its separator
    if sep_id is None and np.any(real < length):
        raise ValueError("plan has separator positions but no sep_id was given")
    if _fill_in_order(out.reshape(-1), seg_rows * seq_len + plan.seg_start[s0:s1], length, doc, doc_offset, num_tokens,
                      real, tokens=tokens, offsets=offsets, sep_id=sep_id):
        return

    position_in_doc = concat_ranges(doc_offset, length)
    dst = concat_ranges(seg_rows * seq_len + plan.seg_start[s0:s1], length)
    is_token = position_in_doc < np.repeat(num_tokens, length)
    src = np.repeat(offsets[doc], length) + position_in_doc
    flat = out.reshape(-1)
    flat[dst[is_token]] = tokens[src[is_token]]
    if not is_token.all():
        flat[dst[~is_token]] = sep_id


def part_ranges(num_docs: int, part_docs: int) -> list[tuple[int, int]]:
    """The order cut into parts: ``(first, end)`` positions, ``part_docs`` documents each, the last
    one shorter; ``part_docs`` 0 (or at least ``num_docs``): one part. Known before anything is packed,
    so every engine cuts the same parts."""
    if num_docs == 0:
        return []
    step = part_docs if 0 < part_docs < num_docs else num_docs
    return [(first, min(first + step, num_docs)) for first in range(0, num_docs, step)]


def row_shuffle_seed(seed: int, part: int, num_parts: int) -> list[int]:
    """The seed of part ``part``'s row shuffle: ``[seed, 1]`` (the one a whole-corpus plan always used)
    when there is one part, so one part packs exactly as before parts existed."""
    return [int(seed), 1] if num_parts == 1 else [int(seed), 1, int(part)]


def pack_part(
    part_lengths: np.ndarray, *, seq_len: int, packing: str, keep_order: bool, shuffle_seed: list[int] | None
) -> PackPlan:
    """One part of the order packed on its own: :func:`pack` of its documents, rows then shuffled
    with ``default_rng(shuffle_seed)`` (None: not shuffled).

    ``part_lengths``: int64 [m], sequence lengths of the part's documents in packing order; the
    plan's ``seg_doc`` are positions 0..m-1 in the part (the caller maps them to documents).
    Packing depends only on the lengths in order and ties go by position, so this is the plan
    :func:`pack` makes of the same documents under their own indices. Parts share no state:
    bestfit's open rows end with the part (a part's last row may be short, as the corpus's is),
    which is what lets parts be packed anywhere, in any order, with the same bytes.
    """
    plan = pack(part_lengths, np.arange(len(part_lengths), dtype=np.int64), seq_len=seq_len, packing=packing, keep_order=keep_order)
    if shuffle_seed is not None:
        plan = permute_rows(plan, np.random.default_rng(shuffle_seed).permutation(plan.num_rows))
    return plan
