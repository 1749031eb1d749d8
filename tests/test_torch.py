"""Tests for packprep.torch: collate modes, the block-causal mask, and SDPA equivalence."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from packprep.errors import PackprepError  # noqa: E402
from packprep.torch import (  # noqa: E402
    COLLATE_MODES,
    block_causal_mask,
    collate_block_mask,
    collate_position_ids,
    collate_varlen,
    get_collate_fn,
    segment_ids,
)


def make_row(lengths: list[int], *, pad: int = 0, first_token: int = 100) -> dict[str, np.ndarray]:
    """A packed row as PackedDataset returns it: segments of ``lengths``, then ``pad`` padding.

    Tokens count up from ``first_token`` so every position is distinguishable; padding is 0.
    Segment k comes from document 10 + k at offset k (arbitrary, only carried through).
    """
    seg_lengths = lengths + ([pad] if pad else [])
    seq_len = sum(seg_lengths)
    cu = np.concatenate([[0], np.cumsum(seg_lengths)]).astype(np.int32)
    n_real = sum(lengths)
    input_ids = np.zeros(seq_len, dtype=np.int64)
    input_ids[:n_real] = np.arange(first_token, first_token + n_real)
    starts = np.repeat(cu[:-1], seg_lengths)
    position_ids = np.arange(seq_len, dtype=np.int64) - starts
    labels = input_ids.copy()
    labels[cu[:-1]] = -100
    labels[n_real:] = -100
    doc_index = np.array([10 + k for k in range(len(lengths))] + ([-1] if pad else []))
    doc_offset = np.array(list(range(len(lengths))) + ([0] if pad else []))
    return {
        "input_ids": input_ids,
        "cu_seqlens": cu,
        "doc_index": doc_index.astype(np.int64),
        "doc_offset": doc_offset.astype(np.int64),
        "position_ids": position_ids,
        "labels": labels,
    }


def brute_force_mask(cu_seqlens: np.ndarray, seq_len: int) -> list[list[bool]]:
    seg = [0] * seq_len
    for k in range(len(cu_seqlens) - 1):
        for p in range(cu_seqlens[k], cu_seqlens[k + 1]):
            seg[p] = k
    return [[seg[i] == seg[j] and j <= i for j in range(seq_len)] for i in range(seq_len)]


# Rows of L = 8 used across tests: two documents + padding, one full document, and many short ones.
ROW_A = dict(lengths=[3, 2], pad=3)
ROW_B = dict(lengths=[8])
ROW_C = dict(lengths=[1, 1, 4, 2])


def test_make_row_matches_the_reader_contract() -> None:
    row = make_row([3, 2], pad=3)
    assert row["cu_seqlens"].tolist() == [0, 3, 5, 8]
    assert row["cu_seqlens"].dtype == np.int32
    assert row["input_ids"].tolist() == [100, 101, 102, 103, 104, 0, 0, 0]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert row["labels"].tolist() == [-100, 101, 102, -100, 104, -100, -100, -100]
    assert row["doc_index"].tolist() == [10, 11, -1]
    assert len(row["cu_seqlens"]) - 1 == len(row["doc_index"]) == len(row["doc_offset"])


def test_block_causal_mask_small_example() -> None:
    mask = block_causal_mask(np.array([0, 2, 5], dtype=np.int32), 5)
    assert mask.dtype == torch.bool
    assert mask.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


@pytest.mark.parametrize(
    "lengths, pad",
    [([16], 0), ([1] * 16, 0), ([5, 1, 7], 3), ([2, 9, 1, 1], 3), ([15], 1), ([4, 4, 4, 4], 0)],
)
def test_block_causal_mask_equals_brute_force(lengths: list[int], pad: int) -> None:
    row = make_row(lengths, pad=pad)
    cu = row["cu_seqlens"]
    mask = block_causal_mask(cu, 16)
    assert mask.shape == (16, 16)
    assert mask.tolist() == brute_force_mask(cu, 16)
    # Also accepted as a torch tensor.
    assert torch.equal(block_causal_mask(torch.from_numpy(cu), 16), mask)


def test_block_causal_mask_writes_into_out() -> None:
    out = torch.ones(2, 5, 5, dtype=torch.bool)
    mask = block_causal_mask(np.array([0, 2, 5]), 5, out=out[1])
    assert mask.data_ptr() == out[1].data_ptr()
    assert out[1].tolist() == brute_force_mask(np.array([0, 2, 5]), 5)
    assert bool(out[0].all())


def test_every_query_attends_at_least_itself() -> None:
    # Padding as its own segment keeps the diagonal True: no fully masked query row, no NaN.
    mask = block_causal_mask(make_row([5, 1, 7], pad=3)["cu_seqlens"], 16)
    assert bool(mask.diagonal().all())


@pytest.mark.parametrize("cu", [[0, 3, 7], [1, 3, 8], [0, 3, 3, 8], [0, 5, 3, 8], [8], [[0, 8]]])
def test_malformed_cu_seqlens_is_a_bug(cu: list) -> None:
    with pytest.raises(ValueError, match="cu_seqlens"):
        segment_ids(np.array(cu), 8)


def test_segment_ids_values() -> None:
    assert segment_ids(np.array([0, 1, 2, 6, 8]), 8).tolist() == [0, 1, 2, 2, 2, 2, 3, 3]


def test_collate_varlen_shapes_dtypes_values() -> None:
    rows = [make_row(**ROW_A), make_row(**ROW_B, first_token=200)]
    rows.append(make_row(**ROW_C, first_token=300))
    out = collate_varlen(rows)
    assert set(out) == {"input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen"}
    for key in ("input_ids", "labels", "position_ids"):
        assert out[key].dtype == torch.int64
        assert out[key].shape == (1, 24)
        assert out[key][0].tolist() == np.concatenate([r[key] for r in rows]).tolist()
    assert out["cu_seqlens"].dtype == torch.int32
    # Row 0: 0 3 5 | pad to 8; row 1: 8 | 16; row 2: 16 17 18 22 | 24.
    assert out["cu_seqlens"].tolist() == [0, 3, 5, 8, 16, 17, 18, 22, 24]
    assert type(out["max_seqlen"]) is int
    assert out["max_seqlen"] == 8
    assert out["position_ids"][0, :8].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]


def test_collate_varlen_segment_count_matches_doc_index() -> None:
    rows = [make_row(**ROW_A), make_row(**ROW_C), make_row(**ROW_B)]
    out = collate_varlen(rows)
    assert len(out["cu_seqlens"]) - 1 == sum(len(r["doc_index"]) for r in rows)
    assert out["max_seqlen"] == int(torch.diff(out["cu_seqlens"]).max())


def test_collate_block_mask_shapes_dtypes_values() -> None:
    rows = [make_row(**ROW_A), make_row(**ROW_C, first_token=300)]
    out = collate_block_mask(rows)
    assert set(out) == {"input_ids", "labels", "position_ids", "attention_mask"}
    for key in ("input_ids", "labels", "position_ids"):
        assert out[key].dtype == torch.int64
        assert out[key].shape == (2, 8)
        assert out[key].tolist() == [rows[0][key].tolist(), rows[1][key].tolist()]
    mask = out["attention_mask"]
    assert mask.dtype == torch.bool
    assert mask.shape == (2, 1, 8, 8)
    for b, row in enumerate(rows):
        assert mask[b, 0].tolist() == brute_force_mask(row["cu_seqlens"], 8)


def test_collate_position_ids_flattened_and_not() -> None:
    rows = [make_row(**ROW_A), make_row(**ROW_C, first_token=300)]
    flat = collate_position_ids(rows)
    assert set(flat) == {"input_ids", "labels", "position_ids"}
    assert flat["position_ids"].shape == (1, 16)
    assert flat["position_ids"].dtype == torch.int64
    assert flat["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 0, 0, 0, 1, 2, 3, 0, 1]
    assert flat["labels"][0].tolist() == np.concatenate([r["labels"] for r in rows]).tolist()
    rows2d = collate_position_ids(rows, flatten=False)
    for key in ("input_ids", "labels", "position_ids"):
        assert rows2d[key].shape == (2, 8)
        assert rows2d[key].dtype == torch.int64
        assert torch.equal(rows2d[key].reshape(1, -1), flat[key])


def test_position_ids_restart_at_each_segment_start() -> None:
    rows = [make_row([5, 1, 7], pad=3), make_row([2, 9, 1, 1], pad=3), make_row([16])]
    varlen = collate_varlen(rows)
    pos = varlen["position_ids"][0]
    cu = varlen["cu_seqlens"].long()
    # Zeros exactly at segment starts, and +1 steps everywhere else.
    assert torch.nonzero(pos == 0).flatten().tolist() == cu[:-1].tolist()
    expected = torch.arange(48) - torch.repeat_interleave(cu[:-1], torch.diff(cu))
    assert torch.equal(pos, expected)
    # All modes carry the same position ids.
    assert torch.equal(collate_block_mask(rows)["position_ids"].reshape(1, -1), pos[None])
    assert torch.equal(collate_position_ids(rows)["position_ids"], pos[None])


def _sdpa(q, k, v, **kwargs):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)


def test_sdpa_with_block_mask_equals_each_segment_alone() -> None:
    lengths_and_pads = [([5, 1, 7], 3), ([16], 0), ([1, 1, 13, 1], 0), ([2], 14)]
    rows = [make_row(lengths, pad=pad) for lengths, pad in lengths_and_pads]
    mask = collate_block_mask(rows)["attention_mask"]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 16, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    packed = _sdpa(q, k, v, attn_mask=mask)
    assert not packed.isnan().any()
    for b, row in enumerate(rows):
        cu = row["cu_seqlens"].tolist()
        for start, end in zip(cu[:-1], cu[1:]):
            piece = (slice(b, b + 1), slice(None), slice(start, end))
            alone = _sdpa(q[piece], k[piece], v[piece], is_causal=True)
            torch.testing.assert_close(packed[piece], alone)


def test_sdpa_catches_a_leaky_mask() -> None:
    # Control for the test above: a plain causal mask over the row must NOT match per segment.
    row = make_row([5, 11])
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 16, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    leaky = _sdpa(q, k, v, is_causal=True)
    alone = _sdpa(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], is_causal=True)
    assert not torch.allclose(leaky[:, :, 5:], alone)
    assert row["cu_seqlens"].tolist() == [0, 5, 16]


def test_varlen_cu_seqlens_describe_the_same_attention_as_the_mask() -> None:
    # Attention over the flattened batch split at varlen's cu_seqlens equals the per-row masks.
    rows = [make_row([5, 1, 7], pad=3), make_row([16]), make_row([2, 9], pad=5)]
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 16, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    per_row = _sdpa(q, k, v, attn_mask=collate_block_mask(rows)["attention_mask"])
    varlen = collate_varlen(rows)
    flat_mask = block_causal_mask(varlen["cu_seqlens"], 48)
    def flat(x: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [1, H, B*L, D]
        return x.permute(1, 0, 2, 3).reshape(1, 2, 48, -1)

    flattened = _sdpa(flat(q), flat(k), flat(v), attn_mask=flat_mask)
    torch.testing.assert_close(flattened, flat(per_row))


def test_transformers_finds_the_same_segments() -> None:
    # Hugging Face derives sequence boundaries from position ids; they must match our cu_seqlens.
    fa_utils = pytest.importorskip("transformers.modeling_flash_attention_utils")
    masking_utils = pytest.importorskip("transformers.masking_utils")
    rows = [make_row([5, 1, 7], pad=3), make_row([16]), make_row([1, 1, 1, 13])]
    varlen = collate_varlen(rows)
    flat = collate_position_ids(rows)
    (cu_q, _), (max_q, _) = fa_utils.prepare_fa_kwargs_from_position_ids(flat["position_ids"])
    assert cu_q.tolist() == varlen["cu_seqlens"].tolist()
    assert int(max_q) == varlen["max_seqlen"]
    assert bool(fa_utils._is_packed_sequence(flat["position_ids"], batch_size=1))
    rows2d = collate_position_ids(rows, flatten=False)["position_ids"]
    seq_idx = masking_utils.find_packed_sequence_indices(rows2d)
    assert seq_idx.tolist() == [segment_ids(r["cu_seqlens"], 16).tolist() for r in rows]


def test_rows_from_read_only_memmaps_and_narrow_dtypes() -> None:
    row = make_row([3, 2], pad=3)
    row["input_ids"] = row["input_ids"].astype(np.uint32)
    for value in row.values():
        value.setflags(write=False)
    for mode, fn in COLLATE_MODES.items():
        out = fn([row, row])
        assert out["input_ids"].dtype == torch.int64, mode
        assert out["input_ids"].reshape(-1).tolist()[:8] == [100, 101, 102, 103, 104, 0, 0, 0]


def test_dataloader_integration() -> None:
    rows = [make_row(**ROW_A), make_row(**ROW_B), make_row(**ROW_C)]
    collate = get_collate_fn("varlen")
    loader = torch.utils.data.DataLoader(rows, batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert [b["cu_seqlens"].tolist() for b in batches] == [[0, 3, 5, 8, 16], [0, 1, 2, 6, 8]]
    assert [b["input_ids"].shape for b in batches] == [(1, 16), (1, 8)]


def test_get_collate_fn() -> None:
    assert get_collate_fn("varlen") is collate_varlen
    assert get_collate_fn("mask") is collate_block_mask
    assert get_collate_fn("position_ids") is collate_position_ids
    assert set(COLLATE_MODES) == {"varlen", "mask", "position_ids"}
    with pytest.raises(PackprepError, match="'flash'.*mask, position_ids, varlen"):
        get_collate_fn("flash")


def test_bad_batches_are_user_errors() -> None:
    with pytest.raises(PackprepError, match="empty batch"):
        collate_varlen([])
    mixed = [make_row([8]), make_row([10])]
    for fn in COLLATE_MODES.values():
        with pytest.raises(PackprepError, match=r"share seq_len.*\[8, 10\]"):
            fn(mixed)


@pytest.mark.parametrize("packing", ["split", "bestfit"])
def test_the_hf_recipe_on_an_arrow_copy_packed_without_labels(small_corpus, tmp_path, packing) -> None:
    """`pack --format arrow` with no --labels, then the README's Hugging Face recipe: the labels
    the collator returns are the reader's, -100 at every segment start and all padding."""
    datasets = pytest.importorskip("datasets")
    from typer.testing import CliRunner

    from packprep import PackedDataset
    from packprep.cli import app

    out = tmp_path / "out"
    args = ["pack", str(small_corpus), str(out), "--format", "arrow", "--seq-len", "64", "--packing", packing, "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = datasets.load_from_disk(str(out / "arrow" / "save_to_disk"))
    # What Trainer hands its collator: the columns LlamaForCausalLM.forward takes (seq_lengths is dropped).
    ds = ds.remove_columns([c for c in ds.column_names if c not in ("input_ids", "position_ids", "labels")])
    reader = PackedDataset(out)
    rows = [ds[i] for i in range(len(ds))]
    batch = collate_position_ids(rows)
    expected = np.concatenate([reader[i]["labels"] for i in range(len(reader))])
    assert batch["labels"][0].tolist() == expected.tolist()
    assert (expected == -100).sum() > len(reader)  # padding is masked, not only segment starts


def test_an_arrow_copy_without_labels_is_a_one_line_error(small_corpus, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    from packprep.config import PackConfig
    from packprep.convert import convert
    from packprep.pipeline import pack

    out = pack(small_corpus, tmp_path / "out", config=PackConfig(seq_len=64))
    ds = datasets.load_from_disk(str(convert(out, to="arrow", labels=False) / "save_to_disk"))
    with pytest.raises(PackprepError, match="no labels column .* --no-labels"):
        collate_position_ids([ds[0], ds[1]])
