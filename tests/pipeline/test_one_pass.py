"""A local tokenize reads the corpus once: the fingerprint in the store's key is taken while reading."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from tests.conftest import make_documents, write_jsonl

import packprep.corpus
import packprep.pipeline.tokenizing as tokenizing
from packprep.config import PackConfig
from packprep.corpus import Fingerprint, corpus_fingerprint, corpus_root, iter_documents
from packprep.pipeline import pack, tokenize


def every_kind_of_file(folder: Path) -> Path:
    """A corpus with each file type the readers stream or hand to pyarrow, and a saved dataset."""
    docs = make_documents(30, seed=5)
    lines = "".join(json.dumps(d) + "\n" for d in docs[:5]).encode()
    write_jsonl(folder / "a.jsonl", docs[5:10])
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(lines, mtime=0))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (folder / "d.json").write_text(json.dumps(docs[10:15]))
    (folder / "e.json").write_bytes(lines)  # JSON lines named .json: read streaming
    (folder / "f.txt").write_text(docs[15]["text"])
    pq.write_table(pa.table({"id": [d["id"] for d in docs[16:20]], "text": [d["text"] for d in docs[16:20]]}), folder / "g.parquet")
    dataset = folder / "h"
    dataset.mkdir()
    table = pa.table({"text": [d["text"] for d in docs[20:30]]})
    with pa.ipc.new_stream(str(dataset / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    (dataset / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (dataset / "dataset_info.json").write_text("{}")
    return folder


def test_the_fingerprint_fed_while_reading_is_corpus_fingerprint(tmp_path):
    corpus = every_kind_of_file(tmp_path / "corpus")
    fingerprint = Fingerprint(corpus_root(corpus))
    read = list(iter_documents(corpus, fingerprint=fingerprint))
    assert len(read) == 40
    assert fingerprint.hexdigest() == corpus_fingerprint(corpus)


def test_a_fresh_tokenize_reads_the_corpus_once_and_a_rerun_still_reuses_the_store(tmp_path, monkeypatch):
    corpus = every_kind_of_file(tmp_path / "corpus")
    expected = corpus_fingerprint(corpus)
    calls = []
    monkeypatch.setattr(tokenizing, "corpus_fingerprint", lambda path, **kw: calls.append(path) or corpus_fingerprint(path, **kw))
    store = tokenize(corpus, tmp_path / "work")
    assert calls == []  # no pass of its own before reading
    assert store.manifest["source"]["fingerprint"] == expected
    before = (tmp_path / "work" / "store.json").read_bytes()
    tokenize(corpus, tmp_path / "work")
    assert len(calls) == 1  # a finished store: the fingerprint decides whether it is reused
    assert (tmp_path / "work" / "store.json").read_bytes() == before


def test_a_pack_of_a_raw_corpus_lists_it_once(tmp_path, monkeypatch):
    corpus = every_kind_of_file(tmp_path / "corpus")
    walk, walks = packprep.corpus._walk, []

    def counted(folder, *args):
        if folder == corpus:
            walks.append(folder)
        return walk(folder, *args)

    monkeypatch.setattr(packprep.corpus, "_walk", counted)
    pack(corpus, tmp_path / "out", config=PackConfig(seq_len=64))
    assert len(walks) == 1  # the check before OUT is touched; tokenize and the reader reuse that listing

