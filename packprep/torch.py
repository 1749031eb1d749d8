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

Around them: :class:`PackedTorchDataset` (the rows as tensors, safe in DataLoader
workers), :class:`ResumableSampler` (per-epoch shuffles split over ranks, with a
``state_dict`` that resumes mid-epoch at the next row) and :func:`additive_mask` (the
block mask as the float mask that eager attention adds to its scores).

This module imports torch at the top; ``import packprep`` does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packprep.errors import PackprepError
from packprep.reader import PackedDataset

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
    missing = [key for key in _TOKEN_KEYS if key not in batch[0]]
    if missing:
        # Only an arrow copy written with --no-labels lacks labels; its padding cannot be told
        # from a document by what a Trainer hands the collator, so labels are not guessed.
        raise PackprepError(
            f"rows have no {', '.join(missing)} column (columns: {', '.join(batch[0])}); an arrow copy "
            "written with --no-labels has no labels: convert it again without --no-labels"
        )
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


def additive_mask(mask: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean mask (True = may attend) as the additive float mask that eager attention wants.

    Returns ``dtype``, the shape of ``mask``: 0 where ``mask`` is True, the most negative
    finite value of ``dtype`` elsewhere. Code that computes ``scores + mask`` (transformers'
    eager attention does) would add a boolean mask as 0/1 and so silently ignore it;
    SDPA takes the boolean mask itself. The finite minimum rather than -inf is what
    transformers uses too: it cannot turn a softmax into NaN.
    """
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)


class PackedTorchDataset(torch.utils.data.Dataset):
    """Map-style torch dataset over a packprep output: ``ds[i]`` is row ``i`` as torch tensors.

    Keys, dtypes and shapes are those of :meth:`PackedDataset.__getitem__`; batch the rows
    with one of the collate functions above. The shards are memory-mapped lazily and
    re-opened in every process (pickling drops them; a forked worker notices the new pid),
    so ``DataLoader(num_workers=...)`` never pickles or shares mapped pages, and
    ``DistributedSampler`` or :class:`ResumableSampler` pick the rows.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._dataset: PackedDataset | None = None
        self._pid: int | None = None
        self._len = len(self.dataset)  # reads the manifest now, so a bad path fails here and not in a worker

    @property
    def dataset(self) -> PackedDataset:
        """The underlying :class:`PackedDataset`, opened in this process."""
        if self._dataset is None or self._pid != os.getpid():
            self._dataset, self._pid = PackedDataset(self.path), os.getpid()
        return self._dataset

    @property
    def seq_len(self) -> int:
        return self.dataset.seq_len

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.dataset[int(index)]
        # Some columns are views of the read-only memmaps: copy those (torch warns on read-only arrays).
        return {key: torch.from_numpy(_writable(value)) for key, value in row.items()}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_pid": None}

    def __repr__(self) -> str:
        return f"PackedTorchDataset({str(self.path)!r}, rows={len(self)})"


def _writable(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array if array.flags.writeable else array.copy()


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Row indices for one rank, shuffled per epoch, that resume mid-epoch at the exact next row.

    The epoch's order is ``default_rng([seed, epoch]).permutation(dataset_len)`` (or
    ``arange`` without shuffle), cut to a multiple of ``world_size`` with ``drop_last`` or
    else padded by repeating its first rows, as ``DistributedSampler`` does, so all ranks
    step in lock-step. Rank ``r`` takes ``order[position + r :: world_size]``.

    ``position`` counts rows of the epoch's order consumed by all ranks together, so
    every rank holds the same state and one saved ``state_dict()`` restores them all;
    a different ``world_size`` may even resume it (the remaining rows are re-dealt).

    Epochs: :meth:`set_epoch` switches order (keeping the position when it names the
    epoch already under way, so a resumed loop may call it as usual); iterating again
    after a finished pass without ``set_epoch`` moves on to the next epoch by itself.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise PackprepError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        self.dataset_len, self.seed, self.shuffle = int(dataset_len), int(seed), bool(shuffle)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self.position = 0
        self._pass_start = 0  # position at which the current pass began, for state_dict(consumed=...)

    def _total(self) -> int:
        """Length of the epoch's order after cutting or padding to a multiple of world_size."""
        n, w = self.dataset_len, self.world_size
        return n - n % w if self.drop_last else n + (-n % w)

    def epoch_order(self) -> np.ndarray:
        """int64 [T], T a multiple of world_size: this epoch's rows for all ranks together."""
        n = self.dataset_len
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        total = self._total()
        # np.resize repeats the order cyclically: padding longer than the dataset still works.
        return order[:total] if total <= n else np.resize(order, total)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch or self.position >= self._total():
            self.epoch, self.position = int(epoch), 0
        self._pass_start = self.position

    def __len__(self) -> int:
        """Rows this rank yields in the pass that iterating starts (or continues) now."""
        total = self._total()
        start = self.position if self.position < total else 0
        return len(range(start + self.rank, total, self.world_size))

    def __iter__(self) -> Iterator[int]:
        total = self._total()
        if self.position >= total > 0:  # the last pass finished and nobody called set_epoch
            self.epoch, self.position = self.epoch + 1, 0
        self._pass_start = start = self.position
        for index in self.epoch_order()[start + self.rank :: self.world_size].tolist():
            self.position = min(self.position + self.world_size, total)
            yield index

    def state_dict(self, *, consumed: int | None = None) -> dict[str, Any]:
        """The state to save in a checkpoint, a dict of ints and bools.

        ``consumed``: rows this rank's training loop has received since the current pass
        began. A ``DataLoader`` fetches ahead of the loop (``num_workers * prefetch_factor``
        batches), so the sampler's own count runs ahead of what was trained on: pass the
        loop's count (batches seen times batch size) whenever saving mid-epoch through one.
        """
        total = self._total()
        position = self.position if consumed is None else min(self._pass_start + consumed * self.world_size, total)
        epoch = self.epoch
        if position >= total > 0:  # a finished epoch is saved as the start of the next one
            epoch, position = epoch + 1, 0
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "dataset_len": self.dataset_len,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): the next row yielded is the next one due."""
        for key in ("seed", "shuffle", "drop_last", "dataset_len"):
            if state[key] != getattr(self, key):
                raise PackprepError(
                    f"cannot resume: the checkpoint's sampler has {key}={state[key]!r}, this one {getattr(self, key)!r}"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._pass_start = self.position
