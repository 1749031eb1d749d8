"""Collate functions that turn packed rows of :class:`packprep.reader.PackedDataset` into batches.

A packed row (``ds[i]``) is a dict of numpy arrays for one row of length ``L``::

    input_ids     int64 [L]
    labels        int64 [L]    -100 at padding and at each segment's first token
    position_ids  int64 [L]    restart at 0 at each segment start
    cu_seqlens    int32 [S+1]  segment starts plus the end; 0 first, L last
    doc_index     int64 [S]    source document per segment (-1 = padding)
    doc_offset    int64 [S]    token offset of the piece inside its document

Three ways to keep attention inside a segment, one collate function each:

* ``"varlen"``: flash-attention's ``flash_attn_varlen_func`` (batch flattened to
  ``[1, B*L]`` plus ``cu_seqlens``/``max_seqlen``); no mask is materialised.
* ``"mask"``: a boolean block-causal mask ``[B, 1, L, L]`` for
  ``torch.nn.functional.scaled_dot_product_attention`` (or any eager attention).
* ``"position_ids"``: Hugging Face models detect packed sequences from position ids
  that restart at 0 (the ``DataCollatorWithFlattening`` convention).

Padding at the end of a row that is not full is its own final pseudo-segment in
``cu_seqlens``. That is deliberate: the segments then tile the row exactly, so
varlen kernels see every one of the ``B*L`` flattened tokens; each padding query
still attends to itself (a fully masked query row would make SDPA's softmax NaN and
poison the gradients); and real tokens never attend to padding. Its labels are
-100, so it never reaches the loss.

This module imports torch at the top; ``import packprep`` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from packprep.errors import PackprepError

Row = Mapping[str, Any]
Batch = dict[str, Any]

_TOKEN_KEYS = ("input_ids", "labels", "position_ids")


def _checked_cu_seqlens(cu_seqlens: torch.Tensor | np.ndarray, seq_len: int) -> np.ndarray:
    """``cu_seqlens`` as int64 [S+1] after checking it tiles ``0..seq_len`` with non-empty segments.

    A row that breaks this is a reader bug, so it raises ValueError, not PackprepError.
    """
    if isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = cu_seqlens.cpu()  # masks are built on the CPU, in DataLoader workers
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    ok = cu.ndim == 1 and len(cu) >= 2 and cu[0] == 0 and cu[-1] == seq_len
    if not ok or (np.diff(cu) <= 0).any():
        raise ValueError(f"cu_seqlens must rise strictly from 0 to {seq_len}, got {cu.tolist()}")
    return cu


def segment_ids(cu_seqlens: torch.Tensor | np.ndarray, seq_len: int) -> torch.Tensor:
    """Segment number of every position of one row.

    ``cu_seqlens``: int [S+1] with 0 first and ``seq_len`` last.
    Returns int64 [seq_len] with values in ``0..S-1``, non-decreasing.
    """
    lengths = torch.from_numpy(np.diff(_checked_cu_seqlens(cu_seqlens, seq_len)))
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths)


def block_causal_mask(
    cu_seqlens: torch.Tensor | np.ndarray, seq_len: int, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean attention mask for one packed row.

    ``cu_seqlens``: int [S+1], segment starts plus the end (0 first, ``seq_len`` last).
    Returns bool [seq_len, seq_len]: ``mask[i, j]`` is True where query ``i`` may attend
    key ``j``, i.e. both lie in the same segment and ``j <= i``. Written into ``out``
    (bool [seq_len, seq_len]) when given.
    """
    cu = torch.from_numpy(_checked_cu_seqlens(cu_seqlens, seq_len))
    # Segments are contiguous, so "same segment and j <= i" is "start of i's segment <= j <= i":
    # one comparison into the output and an in-place tril, with no other [L, L] temporary.
    starts = torch.repeat_interleave(cu[:-1], torch.diff(cu))
    keys = torch.arange(seq_len)
    return torch.ge(keys[None, :], starts[:, None], out=out).tril_()


def _row_length(batch: Sequence[Row]) -> int:
    """The common row length L of a batch; rows of different lengths cannot be stacked."""
    if len(batch) == 0:
        raise PackprepError("cannot collate an empty batch")
    lengths = {len(row["input_ids"]) for row in batch}
    if len(lengths) != 1:
        raise PackprepError(
            f"rows in one batch must share seq_len, got lengths {sorted(lengths)}; "
            "do not mix outputs packed with different --seq-len"
        )
    return lengths.pop()


def _stack_tokens(batch: Sequence[Row]) -> dict[str, torch.Tensor]:
    """Stack input_ids/labels/position_ids of all rows into int64 tensors [B, L]."""
    # np.stack copies, so read-only memmapped rows become writable tensors without a warning.
    return {
        key: torch.from_numpy(np.stack([np.asarray(row[key], dtype=np.int64) for row in batch]))
        for key in _TOKEN_KEYS
    }


def collate_varlen(batch: Sequence[Row]) -> Batch:
    """Collate rows for flash-attention's varlen kernels (``flash_attn_varlen_func``).

    Returns
    - ``input_ids``, ``labels``, ``position_ids``: int64 [1, B*L], the rows concatenated;
    - ``cu_seqlens``: int32 [T+1] where T is the total number of segments in the batch
      (padding pseudo-segments included): each row's offsets shifted by ``row * L`` and
      concatenated, 0 first and ``B*L`` last;
    - ``max_seqlen``: python int, the longest segment (what the kernel wants on the host).
    """
    seq_len = _row_length(batch)
    tokens = _stack_tokens(batch)
    # Each row's cu_seqlens ends with L, which is the next row's start once shifted: keep
    # only the starts of every row and append the single final end B*L.
    starts = [
        _checked_cu_seqlens(row["cu_seqlens"], seq_len)[:-1] + i * seq_len
        for i, row in enumerate(batch)
    ]
    cu = np.concatenate([*starts, np.array([len(batch) * seq_len], dtype=np.int64)])
    return {
        **{key: value.reshape(1, -1) for key, value in tokens.items()},
        "cu_seqlens": torch.from_numpy(cu.astype(np.int32)),
        "max_seqlen": int(np.diff(cu).max()),
    }


def collate_block_mask(batch: Sequence[Row]) -> Batch:
    """Collate rows with an explicit block-causal mask for SDPA or eager attention.

    Returns ``input_ids``, ``labels``, ``position_ids``: int64 [B, L] and
    ``attention_mask``: bool [B, 1, L, L], True where attention is allowed (the
    convention of ``scaled_dot_product_attention``'s boolean ``attn_mask``; the 1
    broadcasts over heads). Memory is ``B * L * L`` bytes: 128 MiB for B=8, L=4096.
    """
    seq_len = _row_length(batch)
    mask = torch.empty(len(batch), 1, seq_len, seq_len, dtype=torch.bool)
    # One vectorised mask per row, written in place (torch.stack would copy B*L*L bytes again);
    # the loop is over rows, never positions.
    for i, row in enumerate(batch):
        block_causal_mask(row["cu_seqlens"], seq_len, out=mask[i, 0])
    return {**_stack_tokens(batch), "attention_mask": mask}


def collate_position_ids(batch: Sequence[Row], *, flatten: bool = True) -> Batch:
    """Collate rows for Hugging Face models that find packed sequences from position ids.

    Returns ``input_ids``, ``labels``, ``position_ids``: int64 [1, B*L] when ``flatten``
    (the default, as ``DataCollatorWithFlattening``), else [B, L]. No attention mask is
    returned: with none, transformers splits sequences wherever position ids restart.

    Why flatten by default: transformers' flash_attention_2 path only treats position
    ids as packed when the batch size is 1 (``_is_packed_sequence``); with [B, L] it would
    silently attend across documents. The sdpa/eager/flex paths handle [B, L] too
    (``find_packed_sequence_indices`` works per row) and then build a B-times smaller
    mask than for [1, B*L], so pass ``flatten=False`` for those. Row boundaries need no
    marker: every row starts a segment, so its position ids restart at 0 there.
    """
    _row_length(batch)
    tokens = _stack_tokens(batch)
    if flatten:
        return {key: value.reshape(1, -1) for key, value in tokens.items()}
    return tokens


COLLATE_MODES: dict[str, Callable[[Sequence[Row]], Batch]] = {
    "varlen": collate_varlen,
    "mask": collate_block_mask,
    "position_ids": collate_position_ids,
}


def get_collate_fn(mode: str) -> Callable[[Sequence[Row]], Batch]:
    """The collate function for ``mode`` (a key of :data:`COLLATE_MODES`), for ``DataLoader``."""
    try:
        return COLLATE_MODES[mode]
    except KeyError:
        valid = ", ".join(sorted(COLLATE_MODES))
        raise PackprepError(f"unknown collate mode {mode!r}; valid modes: {valid}") from None
