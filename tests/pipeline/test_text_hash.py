"""Exact dedup's text hashes: written at tokenize time only when a dedup will read them (an exactly
decoding tokenizer), else computed from the decoded store when a dedup first needs them, to the same values."""

from __future__ import annotations

import numpy as np
import pytest

from packprep.config import PackConfig, TokenizeConfig
from packprep.io import sha256_file
from packprep.pipeline import pack, tokenize
from packprep.pipeline.folders import WORK_DIRNAME
from packprep.store import TEXT_HASH_FILE, DocStore, DocStoreWriter
from tests.conftest import make_documents, write_jsonl
from tests.helpers import make_hf_tokenizer, shard_bytes


@pytest.fixture
def copies_corpus(tmp_path):
    """Documents and copies that differ only in what the exact normal form removes, ASCII and not."""
    docs = make_documents(30, seed=4)
    docs.append({"id": "accents", "text": "Caf\u00e9 cr\u00e8me, na\u00efve \uFB01ne \u00bd."})
    docs += [
        {"id": "copy-case", "text": docs[3]["text"].upper()},
        {"id": "copy-space", "text": "  " + docs[5]["text"].replace(" ", " \n\t ") + "\n"},
        {"id": "copy-nfkc", "text": "CAFE\u0301 CR\u00c8ME,\u00a0NAI\u0308VE  fine \u00bd."},
    ]
    return write_jsonl(tmp_path / "corpus" / "docs.jsonl", docs).parent


def test_a_pack_without_dedup_skips_the_hashes_and_a_later_dedup_makes_the_same_ones(copies_corpus, tmp_path):
    out = tmp_path / "out"
    pack(copies_corpus, out, config=PackConfig(strategy="eos", seq_len=64))
    assert not (out / WORK_DIRNAME / TEXT_HASH_FILE).exists()
    assert DocStore.open(out / WORK_DIRNAME).text_hash is None

    deduped = PackConfig(strategy="random", seq_len=64, dedup=True)
    pack(copies_corpus, out, config=deduped, overwrite=True)  # reuses the store, hashes it decoded
    fresh = pack(copies_corpus, tmp_path / "fresh", config=deduped)  # hashed at tokenize time
    hashed_late, hashed_early = out / WORK_DIRNAME / TEXT_HASH_FILE, fresh / WORK_DIRNAME / TEXT_HASH_FILE
    assert sha256_file(hashed_late) == sha256_file(hashed_early)
    assert shard_bytes(out) == shard_bytes(fresh)
    assert (out / "manifest.json").read_text() == (fresh / "manifest.json").read_text().replace(str(fresh), str(out))
    assert np.load(hashed_late).size == 34 and len(set(np.load(hashed_late).tolist())) == 31  # three copies found


def test_a_tokenizer_that_does_not_decode_exactly_always_hashes_at_tokenize_time(copies_corpus, tmp_path):
    tokenizer = make_hf_tokenizer(tmp_path / "hf")
    out = pack(copies_corpus, tmp_path / "out", config=PackConfig(strategy="eos", seq_len=64),
               tokenize_config=TokenizeConfig(tokenizer=str(tokenizer)))
    assert (out / WORK_DIRNAME / TEXT_HASH_FILE).is_file()


def test_the_tokenize_command_keeps_writing_the_hashes(copies_corpus, tmp_path):
    assert tokenize(copies_corpus, tmp_path / "work").text_hash is not None


def test_a_store_has_hashes_for_every_batch_or_none(tmp_path):
    tokens, lengths = np.arange(4, dtype=np.uint32), np.array([2, 2])
    with DocStoreWriter(tmp_path / "s", dtype=np.uint32) as writer:
        writer.append(tokens, lengths, ["a", "b"], None)
        with pytest.raises(ValueError, match="or none"):
            writer.append(tokens, lengths, ["c", "d"], np.zeros(2, np.uint64))


def test_a_store_rewritten_without_hashes_loses_the_old_ones(tmp_path):
    tokens, lengths = np.arange(4, dtype=np.uint32), np.array([2, 2])
    for hashes in (np.zeros(2, np.uint64), None):
        with DocStoreWriter(tmp_path / "s", dtype=np.uint32) as writer:
            writer.append(tokens, lengths, ["a", "b"], hashes)
            store = writer.finish({})
    assert store.text_hash is None and not (tmp_path / "s" / TEXT_HASH_FILE).exists()
