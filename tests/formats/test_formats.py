"""The arrow and megatron converters: exact equality with PackedDataset rows and the document store."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from packprep.config import PackConfig
from packprep.convert import convert
from packprep.errors import PackprepError
from packprep.formats.arrow import packed_columns
from packprep.formats.megatron import megatron_dtype, read_megatron, write_index
from packprep.pipeline import pack
from packprep.reader import PackedDataset
from packprep.store import DocStore
from tests.conftest import copy_output, write_small_corpus

SEQ_LEN = 64


@pytest.fixture(scope="module")
def packed_once(tmp_path_factory) -> Path:
    # 5 rows per shard: several shards, documents split across rows and across shards.
    folder = tmp_path_factory.mktemp("formats")
    return pack(write_small_corpus(folder / "corpus"), folder / "out", config=PackConfig(seq_len=SEQ_LEN, rows_per_shard=5))


@pytest.fixture
def packed(packed_once: Path, tmp_path: Path) -> Path:
    """A copy of ``packed_once``: each test converts into its own."""
    return copy_output(packed_once, tmp_path / "out")


def _columns(input_ids, row_ptr, seg_length, labels=True):
    cols = packed_columns(np.asarray(input_ids), np.asarray(row_ptr), np.asarray(seg_length), labels=labels)
    return {k: np.split(v, o[1:-1]) for k, (v, o) in cols.items()}


def test_packed_columns_hand_made():
    # Row 0: segments 2+3 (full); row 1: 4 + 1 padding; row 2: 1+1 + 3 padding. row_ptr has base 7.
    ids = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0], [10, 11, 0, 0, 0]]
    cols = _columns(ids, [7, 9, 10, 12], [2, 3, 4, 1, 1])
    assert [c.tolist() for c in cols["seq_lengths"]] == [[2, 3], [4, 1], [1, 1, 3]]
    assert [c.tolist() for c in cols["position_ids"]] == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 0], [0, 0, 0, 1, 2]]
    assert [c.tolist() for c in cols["labels"]] == [[-100, 2, -100, 4, 5], [-100, 7, 8, 9, -100], [-100] * 5]
    assert [c.tolist() for c in cols["input_ids"]] == ids
    assert all(c.dtype == np.int32 for v in cols.values() for c in v)
    assert "labels" not in _columns(ids, [0, 2, 3, 5], [2, 3, 4, 1, 1], labels=False)


def _assert_rows_equal(table, ds: PackedDataset, *, labels: bool) -> None:
    assert len(table) == len(ds)
    for i, row in enumerate(table):
        want = ds[i]
        assert row["input_ids"] == want["input_ids"].tolist()
        assert row["position_ids"] == want["position_ids"].tolist()
        assert row["seq_lengths"] == np.diff(want["cu_seqlens"]).tolist()
        assert ("labels" in row) == labels
        if labels:
            assert row["labels"] == want["labels"].tolist()


@pytest.mark.parametrize("labels", [True, False])
def test_arrow_rows_equal_packed_dataset(packed: Path, tmp_path: Path, labels: bool):
    import datasets

    datasets.disable_progress_bars()
    dest = convert(packed, to="arrow", labels=labels)
    ds = PackedDataset(packed)
    num_shards = len(ds.manifest["shards"])
    assert dest == packed / "arrow" and num_shards > 2
    parquet = sorted((dest / "data").glob("*.parquet"))
    assert [p.name for p in parquet] == [f"train-{k:05d}-of-{num_shards:05d}.parquet" for k in range(num_shards)]
    cache = str(tmp_path / "hf-cache")
    loaded = {
        "parquet": datasets.load_dataset(
            "parquet", data_files=[str(p) for p in parquet], split="train", cache_dir=cache
        ),
        "folder": datasets.load_dataset(str(dest), split="train", cache_dir=cache),
        "load_from_disk": datasets.load_from_disk(str(dest / "save_to_disk")),
    }
    for how, table in loaded.items():
        assert table.features["input_ids"] == datasets.List(datasets.Value("int32")), how
        _assert_rows_equal(table, ds, labels=labels)


def test_arrow_rows_match_hf_and_trl_conventions(packed: Path):
    """Splitting a row at seq_lengths and feeding the documents to DataCollatorWithFlattening
    gives the row back; trl's position ids from seq_lengths are the row's position_ids."""
    import datasets
    from transformers import DataCollatorWithFlattening

    table = datasets.load_from_disk(str(convert(packed, to="arrow", labels=True) / "save_to_disk")).with_format("numpy")
    collator = DataCollatorWithFlattening(return_tensors="np", return_flash_attn_kwargs=True)
    for row in table:
        lengths = row["seq_lengths"]
        docs = np.split(row["input_ids"], np.cumsum(lengths)[:-1])
        # The padding segment (if any) is not a document: compare the real part only.
        real = int(lengths.sum()) if row["labels"][-1] != -100 else int(lengths[:-1].sum())
        docs = docs if real == SEQ_LEN else docs[:-1]
        batch = collator([{"input_ids": d} for d in docs])
        for key in ("input_ids", "position_ids", "labels"):
            assert batch[key][0].tolist() == row[key][:real].tolist(), key
        assert batch["cu_seq_lens_q"].tolist() == np.concatenate([[0], np.cumsum(lengths)])[: len(docs) + 1].tolist()
        # trl.SFTTrainer's DataCollatorForLanguageModeling.get_position_ids_from_packed_seq_lengths, in numpy:
        pos = np.ones(SEQ_LEN, dtype=np.int64)
        pos[0] = 0
        pos[np.cumsum(lengths)[:-1]] = -(lengths[:-1] - 1)
        assert np.cumsum(pos).tolist() == row["position_ids"].tolist()


@pytest.mark.slow  # builds and runs a Hugging Face model
def test_packed_row_equals_documents_alone_in_a_hf_model(packed: Path):
    """With position_ids, no attention mask and no cache, transformers keeps a row's documents apart."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ_LEN,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "sdpa"
    table = datasets.load_from_disk(str(convert(packed, to="arrow") / "save_to_disk")).with_format("torch")
    row = max(table, key=lambda r: len(r["seq_lengths"]))  # the row with the most documents
    assert len(row["seq_lengths"]) >= 3
    ids = row["input_ids"].long() % config.vocab_size  # token values do not matter here, boundaries do
    with torch.no_grad():
        # use_cache=False as in training (TrainingArguments.use_cache): with a KV cache,
        # transformers does not look for packed sequences in position_ids.
        position_ids = row["position_ids"][None].long()
        packed_logits = model(input_ids=ids[None], position_ids=position_ids, use_cache=False).logits[0]
        start = 0
        for n in row["seq_lengths"].tolist():
            alone = model(input_ids=ids[None, start : start + n]).logits[0]
            torch.testing.assert_close(packed_logits[start : start + n], alone, atol=1e-4, rtol=1e-4)
            start += n


def _first_appearance(ds: PackedDataset) -> list[int]:
    order: list[int] = []
    for i in range(len(ds)):
        for doc in ds[i]["doc_index"].tolist():
            if doc >= 0 and doc not in order:
                order.append(doc)
    return order


@pytest.mark.parametrize("strategy, packing", [("eos", "split"), ("random", "bestfit")])
def test_megatron_documents_equal_store(small_corpus: Path, tmp_path: Path, strategy: str, packing: str):
    config = PackConfig(strategy=strategy, packing=packing, seq_len=SEQ_LEN, rows_per_shard=5)
    out = pack(small_corpus, tmp_path / "out", config=config)
    ds = PackedDataset(out)
    sep = ds.manifest["sep_id"]
    assert (sep is None) == (strategy == "random")
    dest = convert(out, to="megatron")
    mds = read_megatron(dest / "text_document")
    store = DocStore.open(out / "work")
    order = np.load(dest / "doc_index.npy").tolist()
    assert order == _first_appearance(ds)
    assert sorted(order) == list(range(store.num_documents))  # nothing dropped without dedup
    for i, j in enumerate(order):
        want = store.document(j).tolist() + ([] if sep is None else [sep])
        assert mds[i].tolist() == want, i
    # The header, read field by field from the bytes.
    raw = (dest / "text_document.idx").read_bytes()
    magic, version, code, n, d = struct.unpack_from("<9sQBQQ", raw)
    assert (magic, version, code, n, d) == (b"MMIDIDX\x00\x00", 1, 4, len(order), len(order) + 1)  # 4: int32
    lengths = np.frombuffer(raw, "<i4", n, 34)
    pointers = np.frombuffer(raw, "<i8", n, 34 + 4 * n)
    documents = np.frombuffer(raw, "<i8", d, 34 + 12 * n)
    assert len(raw) == 34 + 4 * n + 8 * n + 8 * d
    assert lengths.tolist() == [len(mds[i]) for i in range(n)]
    assert pointers.tolist() == (4 * (np.cumsum(lengths) - lengths)).tolist()
    assert documents.tolist() == list(range(n + 1))
    assert (dest / "text_document.bin").stat().st_size == 4 * int(lengths.sum())


@pytest.mark.slow
def test_megatron_core_reads_our_files(packed: Path):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    dest = convert(packed, to="megatron")
    ours = read_megatron(dest / "text_document")
    theirs = indexed.IndexedDataset(str(dest / "text_document"))
    assert len(theirs) == len(ours) > 0
    assert theirs.document_indices.tolist() == list(range(len(ours) + 1))
    for i in range(len(ours)):
        assert theirs[i].tolist() == ours[i].tolist()
        assert theirs[i].dtype == np.int32


def test_megatron_index_uint16_hand_made(tmp_path: Path):
    assert megatron_dtype(np.dtype(np.uint16)) == np.uint16 and megatron_dtype(np.dtype(np.uint32)) == np.int32
    prefix = tmp_path / "x"
    np.array([5, 6, 7, 65535, 9], dtype=np.uint16).tofile(f"{prefix}.bin")
    write_index(Path(f"{prefix}.idx"), lengths=np.array([3, 2]), dtype=np.dtype(np.uint16))
    want = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, 2, 3)
    want += np.array([3, 2], "<i4").tobytes() + np.array([0, 6], "<i8").tobytes() + np.arange(3, dtype="<i8").tobytes()
    assert Path(f"{prefix}.idx").read_bytes() == want
    mds = read_megatron(prefix)
    assert [mds[0].tolist(), mds[1].tolist()] == [[5, 6, 7], [65535, 9]]


def test_convert_errors_and_reruns(packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(PackprepError, match="unknown format 'jsonl'"):
        convert(packed, to="jsonl")
    with pytest.raises(PackprepError, match="not a finished packprep output"):
        convert(tmp_path / "nothing", to="arrow")
    foreign = tmp_path / "foreign"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(PackprepError, match="not a packprep conversion"):
        convert(packed, to="megatron", dest=foreign)

    seen: list[int] = []
    dest = convert(packed, to="arrow", progress=seen.append)
    assert sum(seen) == len(PackedDataset(packed))
    stamp = (dest / "packprep.json").stat().st_mtime_ns
    assert convert(packed, to="arrow") == dest and (dest / "packprep.json").stat().st_mtime_ns == stamp  # skipped
    convert(packed, to="arrow", labels=True)  # other options: rewritten in place
    assert "labels" in (dest / "packprep.json").read_text()

    import packprep.formats.arrow as arrow

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(arrow, "write_arrow", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(packed, to="arrow", labels=False)
    assert "labels" in (dest / "packprep.json").read_text()  # the old conversion is intact
    assert not [p for p in packed.iterdir() if p.name.endswith(".tmp")]  # and no temp folder is left
