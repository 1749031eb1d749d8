"""The local engine's worker pool (engines.local_tokenize) writes the store this process writes, byte for byte."""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import pytest

from packprep.config import TokenizeConfig
from packprep import corpus as corpus_module
from packprep import json_text
from packprep.corpus import byte_ranges, iter_source_parts
from packprep.engines import local, local_tokenize
from packprep.errors import PackprepError
from packprep.pipeline import tokenize
from tests.conftest import make_documents

STORE_FILES = ("tokens.bin", "offsets.npy", "text_hash.npy", "doc_ids.bin", "doc_ids.idx.npy", "store.json")
RANGE_BYTES = 8 << 10  # the big file (about 40 KB) becomes 5 or 6 parts


@pytest.fixture
def pooled(monkeypatch):
    """Any corpus goes through the pool, its .jsonl files in byte ranges of RANGE_BYTES."""
    monkeypatch.setattr(local, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(local_tokenize, "RANGE_BYTES", RANGE_BYTES)
    monkeypatch.setattr(corpus_module, "MIN_TAIL_RANGE", 1 << 10)  # the last ranges shrink to ~1 KB


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A big .jsonl (BOM, blank lines, records without ids, an empty and a whitespace text, no final
    newline), a gzipped one, a folder of .txt: byte ranges and whole sources in one run."""
    docs = make_documents(300, seed=13)
    for i in range(0, 300, 7):
        del docs[i]["id"]  # these get the id "big.jsonl:<line>"
    docs[150]["text"], docs[151]["text"] = "", " \n\t "
    docs[152]["text"] = "😀" * 3 + " 東京は日本の首都です。"
    lines = [json.dumps(d) for d in docs]
    for i in (40, 41, 200):
        lines[i] = "\n" + lines[i]  # blank lines shift every later line number
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "big.jsonl").write_bytes(codecs.BOM_UTF8 + "\n".join(lines).encode())
    more = make_documents(30, seed=2)
    (folder / "c.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in more[:20]).encode()))
    for i, doc in enumerate(more[20:]):
        (folder / "texts").mkdir(exist_ok=True)
        (folder / "texts" / f"t{i:02d}.txt").write_text(doc["text"], encoding="utf-8")
    return folder


def store_bytes(work: Path) -> dict[str, bytes]:
    return {name: (work / name).read_bytes() for name in STORE_FILES if name != "store.json"} | {
        "store.json": json.loads((work / "store.json").read_text())
    }


def test_ranges_shrink_towards_the_corpus_end_and_still_cover_it_line_for_line(corpus, pooled):
    big, later = corpus / "big.jsonl", corpus / "c.jsonl.gz"
    parts = list(iter_source_parts([big, later], RANGE_BYTES, tail_ranges=4))
    spans = [span for source, span in parts if source == big]
    assert [source for source, _ in parts][-1] == later and parts[-1][1] is None
    sizes = [end - start for start, end, _ in spans]
    assert len(spans) > len(byte_ranges(big, RANGE_BYTES)) and sizes[-2] < sizes[0] / 2
    data, position = big.read_bytes(), 0
    for start, end, first_line in spans:
        assert start == position and data.count(b"\n", 0, start) + 1 == first_line
        position = end
    assert position == len(data)


def test_the_pool_writes_the_serial_store_byte_for_byte(corpus, tmp_path, pooled):
    assert len(byte_ranges(corpus / "big.jsonl", RANGE_BYTES)) >= 4
    serial = tokenize(corpus, tmp_path / "serial", workers=1)
    store = tokenize(corpus, tmp_path / "pool", workers=2)
    assert store.manifest["counts"] == serial.manifest["counts"] == {"records": 330, "dropped_empty": 2, "skipped_records": 0}
    assert store_bytes(tmp_path / "pool") == store_bytes(tmp_path / "serial")
    assert {"big.jsonl:1", "big.jsonl:298"} <= set(store.doc_ids)


@pytest.mark.parametrize("backend", ["tiktoken", "bpe-openai"])
def test_the_pool_gives_the_same_bytes_on_either_backend(corpus, tmp_path, pooled, monkeypatch, backend):
    if backend == "bpe-openai":
        pytest.importorskip("bpe_openai")
    monkeypatch.setenv("PACKPREP_TOKENIZER_BACKEND", backend)  # the workers inherit it
    tokenize(corpus, tmp_path / "serial", workers=1)
    tokenize(corpus, tmp_path / "pool", workers=3)
    assert store_bytes(tmp_path / "pool") == store_bytes(tmp_path / "serial")


def test_bad_records_raise_or_are_skipped_as_in_this_process(corpus, tmp_path, pooled):
    big = corpus / "big.jsonl"
    lines = big.read_bytes().split(b"\n")
    start, end, first_line = byte_ranges(big, RANGE_BYTES)[2]
    bad_line = first_line + 3
    lines[bad_line - 1] = b'{"id": "broken", "text": '
    lines[bad_line + 40] = b'{"id": 7, "body": "no text field"}'
    big.write_bytes(b"\n".join(lines))
    with pytest.raises(PackprepError) as here:
        tokenize(corpus, tmp_path / "serial", workers=1)
    with pytest.raises(PackprepError) as pool:
        tokenize(corpus, tmp_path / "pool", workers=2)
    assert str(pool.value) == str(here.value) and (pool.value.path, pool.value.line) == (str(big), bad_line)
    assert not (tmp_path / "pool").exists()  # a failed run leaves nothing that looks finished

    config = TokenizeConfig(on_error="skip")
    serial = tokenize(corpus, tmp_path / "serial", config=config, workers=1)
    store = tokenize(corpus, tmp_path / "pool", config=config, workers=2)
    assert store.manifest["counts"] == serial.manifest["counts"] and store.manifest["counts"]["skipped_records"] == 2
    assert store_bytes(tmp_path / "pool") == store_bytes(tmp_path / "serial")


def test_a_worker_that_dies_fails_the_run_and_no_worker_is_left(corpus, tmp_path, pooled, monkeypatch):
    started = []
    real = local_tokenize._Worker.__init__

    def spy(self):
        real(self)
        started.append(self._process)
        if len(started) == 1:
            self._process.kill()

    monkeypatch.setattr(local_tokenize._Worker, "__init__", spy)
    with pytest.raises(RuntimeError, match="worker process died"):
        tokenize(corpus, tmp_path / "pool", workers=2)
    assert all(process.poll() is not None for process in started)


def test_a_worker_whose_replies_cannot_be_read_is_killed_not_waited_for(corpus, tmp_path, pooled, monkeypatch):
    """If the reading thread fails while the worker lives on (it then blocks writing a reply nobody
    reads), the run fails in one error and kills it: waiting for it to exit would hang forever."""
    started = []
    real_init, real_load = local_tokenize._Worker.__init__, local_tokenize.pickle.load

    def spy(self):
        real_init(self)
        started.append(self._process)

    def unreadable(stream):
        if stream is started[0].stdout:
            raise local_tokenize.pickle.UnpicklingError("garbled")
        return real_load(stream)

    monkeypatch.setattr(local_tokenize._Worker, "__init__", spy)
    monkeypatch.setattr(local_tokenize.pickle, "load", unreadable)
    monkeypatch.setattr(local_tokenize, "_EXIT_GRACE_S", 0.5)
    with pytest.raises(RuntimeError, match="stopped replying; it was killed"):
        tokenize(corpus, tmp_path / "pool", workers=2)
    assert all(process.poll() is not None for process in started)


def test_a_small_corpus_stays_in_this_process(small_corpus, tmp_path, monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a corpus under POOL_MIN_BYTES started worker processes")

    monkeypatch.setattr(local_tokenize, "tokenize_parts", no_pool)
    assert tokenize(small_corpus, tmp_path / "work", workers=2).num_documents == 40


@pytest.mark.parametrize("backend", ["bpe-openai", pytest.param("tiktoken", marks=pytest.mark.slow), pytest.param("tokenizer.json", marks=pytest.mark.slow)])
def test_a_huge_line_is_read_in_pieces_here_and_in_the_pool_and_stored_as_if_read_whole(tmp_path, pooled, monkeypatch, backend):
    from packprep.store import DocStoreWriter
    from tests.helpers import make_hf_tokenizer
    from tests.tokenizers.test_text_cuts import ADVERSARIAL

    if backend == "bpe-openai":
        pytest.importorskip("bpe_openai")
    monkeypatch.setenv("PACKPREP_TOKENIZER_BACKEND", "bpe-openai" if backend == "bpe-openai" else "tiktoken")
    config = TokenizeConfig(tokenizer=str(make_hf_tokenizer(tmp_path / "hf"))) if backend == "tokenizer.json" else TokenizeConfig()
    text = " ".join(ADVERSARIAL[:-1]) * 3000  # ~1.5M characters: several pieces, several groups of tokens
    records = [
        json.dumps({"text": "a small one"}),
        json.dumps({"id": "escaped", "text": text}),  # non-ASCII as \uXXXX
        json.dumps({"id": "raw", "meta": {"n": 1}, "text": text[::-1]}, ensure_ascii=False),
        json.dumps({"id": "blank", "text": " \n\t" * 400_000}),
        json.dumps({"text": "the last one"}),
    ]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "c.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    pieces = []
    append_tokens = DocStoreWriter.append_tokens
    monkeypatch.setattr(DocStoreWriter, "append_tokens", lambda self, tokens: pieces.append(len(tokens)) or append_tokens(self, tokens))
    monkeypatch.setattr(json_text, "HUGE_TEXT_BYTES", 1 << 40)
    whole = tokenize(corpus, tmp_path / "whole", config=config, workers=1)
    assert pieces == []  # read whole
    monkeypatch.setattr(json_text, "HUGE_TEXT_BYTES", 1 << 20)
    for workers in (1, 2):
        store = tokenize(corpus, tmp_path / f"pieces-{workers}", config=config, workers=workers)
        # The two huge texts come in groups, but not for a tokenizer text_cuts knows nothing of: read whole
        assert len(pieces) >= 4 * workers if backend != "tokenizer.json" else pieces == []
        assert store.manifest["counts"] == whole.manifest["counts"] == {"records": 5, "dropped_empty": 1, "skipped_records": 0}
        assert store_bytes(tmp_path / f"pieces-{workers}") == store_bytes(tmp_path / "whole")
        assert list(store.doc_ids) == ["c.jsonl:1", "escaped", "raw", "c.jsonl:5"]
    # A pack without exact dedup writes no text hashes: the same tokens, in pieces too
    from packprep.pipeline.run import Run
    from packprep.pipeline.tokenizing import tokenize_in

    for workers in (1, 2):
        unhashed = tmp_path / f"unhashed-{workers}"
        tokenize_in(corpus, unhashed, config=config, overwrite=False, run=Run.of(workers=workers), hash_texts=False)
        for name in ("tokens.bin", "offsets.npy", "doc_ids.bin"):
            assert (unhashed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_a_worker_imports_this_packprep_even_from_a_folder_holding_another(small_corpus, tmp_path, pooled, monkeypatch):
    decoy = tmp_path / "elsewhere" / "packprep"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy packprep was imported')\n")
    monkeypatch.chdir(decoy.parent)
    serial = tokenize(small_corpus, tmp_path / "serial", workers=1)
    store = tokenize(small_corpus, tmp_path / "pool", workers=2)
    assert store_bytes(store.path) == store_bytes(serial.path)
