"""Text -> store -> shards -> reader, end to end, for every strategy and packing mode."""

from __future__ import annotations

import numpy as np
import pytest

from packprep import PackedDataset
from packprep.config import PackConfig, TokenizeConfig
from packprep.errors import PackprepError
from packprep.pipeline import pack, tokenize
from packprep.store import DocStore


def rebuild_documents(ds: PackedDataset) -> dict[int, list[int]]:
    """Each document's sequence, reassembled from the rows through the reader's arrays only."""
    pieces: dict[int, list[tuple[int, list[int]]]] = {}
    for i in range(len(ds)):
        row = ds[i]
        cu = row["cu_seqlens"]
        for k, doc in enumerate(row["doc_index"].tolist()):
            if doc >= 0:
                piece = row["input_ids"][cu[k] : cu[k + 1]].tolist()
                pieces.setdefault(doc, []).append((int(row["doc_offset"][k]), piece))
    return {doc: [t for _, p in sorted(parts) for t in p] for doc, parts in pieces.items()}


@pytest.mark.parametrize("strategy", ["random", "eos"])
@pytest.mark.parametrize("packing", ["split", "bestfit"])
def test_every_kept_token_appears_exactly_once(small_corpus, tmp_path, strategy, packing):
    out = tmp_path / "out"
    pack(small_corpus, out, config=PackConfig(strategy=strategy, packing=packing, seq_len=64, rows_per_shard=7))
    ds = PackedDataset(out)
    store = DocStore.open(out / "work")
    eos = store.manifest["tokenizer"]["eos_id"]
    assert len(ds.manifest["shards"]) > 1  # several shards are exercised
    docs = rebuild_documents(ds)
    assert sorted(docs) == list(range(store.num_documents))
    for doc, tokens in docs.items():
        expected = store.document(doc).tolist() + ([eos] if strategy == "eos" else [])
        assert tokens == expected, ds.doc_ids[doc]
    counts = ds.manifest["counts"]
    assert counts["num_tokens"] == store.num_tokens + (store.num_documents if strategy == "eos" else 0)
    assert counts["num_tokens"] + counts["pad_tokens"] == len(ds) * 64


def test_reader_arrays_agree_with_each_other(small_corpus, tmp_path):
    out = pack(small_corpus, tmp_path / "out", config=PackConfig(strategy="eos", packing="bestfit", seq_len=96))
    ds = PackedDataset(out)
    assert ds.seq_len == 96
    for i in range(len(ds)):
        row = ds[i]
        cu, L = row["cu_seqlens"], 96
        assert row["input_ids"].shape == (L,) and row["input_ids"].dtype == np.int64
        assert cu.dtype == np.int32 and cu[0] == 0 and cu[-1] == L and (np.diff(cu) > 0).all()
        assert len(row["doc_index"]) == len(row["doc_offset"]) == len(cu) - 1
        expected_positions = np.concatenate([np.arange(b - a) for a, b in zip(cu[:-1], cu[1:])])
        assert row["position_ids"].tolist() == expected_positions.tolist()
        padding = row["doc_index"] == -1
        assert padding.sum() <= 1 and (not padding.any() or padding[-1])
        expected_labels = row["input_ids"].copy()
        expected_labels[cu[:-1]] = -100
        if padding.any():
            expected_labels[cu[-2] :] = -100
        assert row["labels"].tolist() == expected_labels.tolist()
    assert ds.doc_ids[int(ds[0]["doc_index"][0])].startswith("doc-")


def test_empty_documents_are_dropped_and_counted(small_corpus, tmp_path):
    store = tokenize(small_corpus, tmp_path / "work")
    assert store.num_documents == 40
    assert store.manifest["counts"]["dropped_empty"] == 1
    assert "empty" not in list(store.doc_ids)


def test_pack_from_a_store_equals_pack_from_the_corpus(small_corpus, tmp_path):
    config = PackConfig(strategy="eos", seq_len=64, seed=3)
    store = tokenize(small_corpus, tmp_path / "work")
    a = PackedDataset(pack(store.path, tmp_path / "a", config=config))
    b = PackedDataset(pack(small_corpus, tmp_path / "b", config=config))
    assert len(a) == len(b)
    for i in range(len(a)):
        assert a[i]["input_ids"].tolist() == b[i]["input_ids"].tolist()


def test_rerun_with_the_same_options_is_skipped(small_corpus, tmp_path):
    out = tmp_path / "out"
    pack(small_corpus, out, config=PackConfig(seq_len=64))
    stamp = (out / "manifest.json").stat().st_mtime_ns
    pack(small_corpus, out, config=PackConfig(seq_len=64))
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_other_options_need_overwrite(small_corpus, tmp_path):
    out = tmp_path / "out"
    pack(small_corpus, out, config=PackConfig(seq_len=64))
    with pytest.raises(PackprepError, match="--overwrite"):
        pack(small_corpus, out, config=PackConfig(seq_len=64, seed=1))
    pack(small_corpus, out, config=PackConfig(seq_len=64, seed=1), overwrite=True)
    assert PackedDataset(out).manifest["seed"] == 1


def test_same_seed_same_bytes_other_seed_other_order(small_corpus, tmp_path):
    rows = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        ds = PackedDataset(pack(small_corpus, tmp_path / name, config=PackConfig(seq_len=64, seed=seed)))
        rows.append(np.stack([ds[i]["input_ids"] for i in range(len(ds))]))
    assert np.array_equal(rows[0], rows[1])
    assert not np.array_equal(rows[0], rows[2])


def test_random_strategy_without_eos_needs_no_eos(tmp_path, small_corpus):
    out = pack(small_corpus, tmp_path / "out", config=PackConfig(strategy="random", seq_len=32))
    ds = PackedDataset(out)
    eos = ds.manifest["tokenizer"]["eos_id"]
    assert ds.manifest["sep_id"] is None
    for i in range(len(ds)):
        row = ds[i]
        real = row["input_ids"][row["labels"] != -100]  # tokens that are neither padding nor a segment start
        assert (real != eos).all()


def test_seq_len_must_leave_room_for_the_separator(small_corpus, tmp_path):
    with pytest.raises(PackprepError, match="seq-len"):
        pack(small_corpus, tmp_path / "out", config=PackConfig(strategy="eos", seq_len=1))
    with pytest.raises(PackprepError, match="seq-len"):
        pack(small_corpus, tmp_path / "out2", config=PackConfig(seq_len=0))


def test_tokenize_config_changes_invalidate_the_store(small_corpus, tmp_path):
    work = tmp_path / "work"
    tokenize(small_corpus, work)
    first = (work / "store.json").stat().st_mtime_ns
    tokenize(small_corpus, work)
    assert (work / "store.json").stat().st_mtime_ns == first
    store = tokenize(small_corpus, work, config=TokenizeConfig(eos_id=5))
    assert store.manifest["tokenizer"]["eos_id"] == 5
