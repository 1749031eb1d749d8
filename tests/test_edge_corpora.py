"""Corpora at the edges, end to end: text -> pack -> PackedDataset -> decoded text, unchanged.

cl100k is byte-level, so every document's text must come back exactly, whatever its
script, however many rows it was cut across.
"""

from __future__ import annotations

import numpy as np
import pytest

from packprep import PackedDataset
from packprep.config import PackConfig
from packprep.errors import PackprepError
from packprep.pipeline import pack
from packprep.store import DocStore
from packprep.tokenizers import load_tokenizer, tokenizer_from_manifest
from tests.conftest import SENTENCES, write_jsonl

STRATEGIES = ["eos", "random"]
PACKINGS = ["split", "bestfit"]

UNICODE_TEXTS = {
    "chinese": "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。汉字：龘、𠀋（扩展B区）。",
    "japanese": "吾輩は猫である。名前はまだ無い。カタカナ、ひらがな、半角ｶﾀｶﾅ、〜「引用」。",
    "arabic": "اللُّغَةُ العَرَبِيَّةُ تُكتب من اليمين إلى اليسار، والأرقام ١٢٣ تُكتب هكذا.",
    "hindi": "हिन्दी देवनागरी लिपि में लिखी जाती है। क्षत्रिय, ज्ञान, श्री — संयुक्ताक्षर।",
    "emoji_zwj": "Family 👨‍👩‍👧‍👦, rainbow flag 🏳️‍🌈, coder 👩🏽‍💻, flags 🇯🇵🇧🇷, keycap 1️⃣, heart ❤️‍🔥.",
    "combining": "Cafe\u0301 vs Caf\u00e9 (NFD vs NFC), a\u0308\u0304, Z\u0364\u0311\u0313\u0324\u0354algo, \u1100\u1161\u11a8 (conjoining jamo).",
    "mixed": "Hebrew שָׁלוֹם, Thai ภาษาไทย, Korean 한국어, Greek ῥαψῳδία, math 𝔸𝕓𝕔 ∮ ∂x, tab\tand CRLF\r\nend.",
    "invisible": "zero\u200bwidth\u200cnon\u200djoiner, bidi \u202eoverride\u202c, word\u2060joiner, nbsp\u00a0here, bom\ufeffinside.",
}


def rebuild_texts(ds: PackedDataset) -> dict[str, str]:
    """Each packed document's text by source id, from the rows' doc_index/doc_offset pieces only."""
    pieces: dict[int, list[tuple[int, list[int]]]] = {}
    for row in ds:
        cu = row["cu_seqlens"]
        for k, doc in enumerate(row["doc_index"].tolist()):
            if doc >= 0:
                pieces.setdefault(doc, []).append((int(row["doc_offset"][k]), row["input_ids"][cu[k] : cu[k + 1]].tolist()))
    tokenizer = tokenizer_from_manifest(ds.manifest["tokenizer"])
    sep_len = 0 if ds.manifest["sep_id"] is None else 1
    texts = {}
    for doc, parts in pieces.items():
        sequence = [t for _, p in sorted(parts) for t in p]
        offsets = sorted(offset for offset, _ in parts)
        assert offsets[0] == 0, ds.doc_ids[doc]
        if sep_len:
            assert sequence[-1] == ds.manifest["sep_id"], ds.doc_ids[doc]
        texts[ds.doc_ids[doc]] = tokenizer.decode(sequence[: len(sequence) - sep_len])
    return texts


def packed(corpus, out, **config) -> PackedDataset:
    return PackedDataset(pack(corpus, out, config=PackConfig(**config)))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_non_latin_scripts_emoji_and_combining_marks_survive_the_round_trip(tmp_path, strategy, packing):
    records = [{"id": name, "text": text} for name, text in UNICODE_TEXTS.items()]
    records.append({"id": "all", "text": "\n".join(UNICODE_TEXTS.values())})
    corpus = write_jsonl(tmp_path / "unicode.jsonl", records)
    # seq_len 16: most documents are cut across rows, often inside a multi-byte character's tokens
    ds = packed(corpus, tmp_path / "out", strategy=strategy, packing=packing, seq_len=16, rows_per_shard=5)
    assert ds.manifest["counts"]["split_documents"] >= len(UNICODE_TEXTS) // 2
    assert rebuild_texts(ds) == {r["id"]: r["text"] for r in records}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unicode_txt_files_survive_the_round_trip(tmp_path, strategy):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in UNICODE_TEXTS.items():
        (folder / f"{name}.txt").write_bytes(text.encode("utf-8"))  # bytes: no newline translation
    ds = packed(folder, tmp_path / "out", strategy=strategy, seq_len=24)
    assert rebuild_texts(ds) == {f"{name}.txt": text for name, text in UNICODE_TEXTS.items()}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_one_document(tmp_path, strategy, packing):
    text = " ".join(SENTENCES)
    corpus = write_jsonl(tmp_path / "one.jsonl", [{"id": "only", "text": text}])
    ds = packed(corpus, tmp_path / "out", strategy=strategy, packing=packing, seq_len=32)
    num_tokens = DocStore.open(tmp_path / "out" / "work").num_tokens
    sequence = num_tokens + (strategy == "eos")
    assert len(ds) == -(-sequence // 32)
    assert ds.manifest["counts"]["num_documents"] == 1 and ds.manifest["counts"]["pad_tokens"] == len(ds) * 32 - sequence
    assert rebuild_texts(ds) == {"only": text}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_a_document_exactly_one_row_long_fills_one_row(tmp_path, strategy, packing):
    text = SENTENCES[0]
    seq_len = len(load_tokenizer("cl100k").encode_batch([text])[0]) + (strategy == "eos")
    corpus = write_jsonl(tmp_path / "one.jsonl", [{"id": "exact", "text": text}])
    ds = packed(corpus, tmp_path / "out", strategy=strategy, packing=packing, seq_len=seq_len)
    assert len(ds) == 1 and ds.manifest["counts"]["pad_tokens"] == 0
    row = ds[0]
    assert row["cu_seqlens"].tolist() == [0, seq_len] and row["doc_index"].tolist() == [0]
    assert rebuild_texts(ds) == {"exact": text}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("packing", PACKINGS)
def test_every_document_longer_than_seq_len(tmp_path, strategy, packing):
    records = [{"id": f"long-{i}", "text": " ".join(SENTENCES[i:] + SENTENCES[:i])} for i in range(6)]
    corpus = write_jsonl(tmp_path / "long.jsonl", records)
    seq_len = 8
    ds = packed(corpus, tmp_path / "out", strategy=strategy, packing=packing, seq_len=seq_len, rows_per_shard=16)
    store = DocStore.open(tmp_path / "out" / "work")
    assert store.lengths().min() > seq_len
    counts = ds.manifest["counts"]
    assert counts["split_documents"] == len(records)
    assert counts["num_tokens"] == store.num_tokens + (len(records) if strategy == "eos" else 0)
    assert len(ds.manifest["shards"]) > 1
    assert rebuild_texts(ds) == {r["id"]: r["text"] for r in records}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_document_empty_is_a_clear_error_and_leaves_nothing(tmp_path, strategy):
    corpus = write_jsonl(tmp_path / "c" / "empty.jsonl", [{"id": f"e{i}", "text": ""} for i in range(5)])
    (tmp_path / "c" / "empty.txt").write_text("")
    out = tmp_path / "out"
    with pytest.raises(PackprepError, match=r"no non-empty documents \(6 records read, 6 empty, 0 skipped\)"):
        pack(corpus.parent, out, config=PackConfig(strategy=strategy, seq_len=16))
    assert not out.exists()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identical_documents_with_dedup_keep_exactly_one(tmp_path, strategy):
    text = " ".join(SENTENCES[:4])
    n = 12
    corpus = write_jsonl(tmp_path / "same.jsonl", [{"id": f"copy-{i}", "text": text} for i in range(n)])
    ds = packed(corpus, tmp_path / "out", strategy=strategy, seq_len=16, dedup=True)
    assert ds.manifest["dropped"]["exact"] == n - 1
    assert sum(ds.manifest["dropped"].values()) == n - 1
    assert ds.manifest["counts"]["num_documents"] == 1
    assert rebuild_texts(ds) == {"copy-0": text}  # the first copy is the one kept
    dup_of = np.load(tmp_path / "out" / "doc_dup_of.npy")
    assert dup_of.tolist() == [-1] + [0] * (n - 1)


@pytest.mark.slow
def test_icp_on_a_tiny_unicode_corpus(tmp_path):
    """The one semantic run here (the embedder is slow): the ordering changes nothing in the text."""
    records = [{"id": name, "text": text} for name, text in UNICODE_TEXTS.items()]
    corpus = write_jsonl(tmp_path / "unicode.jsonl", records)
    ds = packed(corpus, tmp_path / "out", strategy="icp", seq_len=32, knn=3, semantic_threshold=0.0)
    assert ds.manifest["counts"]["num_documents"] == len(records)
    assert rebuild_texts(ds) == {r["id"]: r["text"] for r in records}
