"""The Ray engine writes what the local engine writes, byte for byte, on a local Ray with 2 CPUs."""

from __future__ import annotations

import codecs
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # starts a local Ray and runs every stage on it: make test-fast leaves it out

ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install 'packprep[ray]'); CI installs it")

from tests.conftest import make_documents, write_jsonl  # noqa: E402

from packprep.pipeline import semantic  # noqa: E402
from packprep.config import DedupConfig, EmbedConfig, PackConfig, TokenizeConfig  # noqa: E402
from packprep.corpus import byte_ranges  # noqa: E402
from packprep.engines import Engine, check_engine, ray_dedup, ray_engine, ray_tokenize  # noqa: E402
from packprep.engines.ray_engine import RayEngine  # noqa: E402
from packprep.errors import PackprepError  # noqa: E402
from packprep.io import LOCK_FILES  # noqa: E402
from packprep.pipeline import pack, tokenize  # noqa: E402
from packprep.progress import SilentReporter  # noqa: E402
from packprep.stages import dedup as dedup_stage  # noqa: E402
from packprep.store import DocStore  # noqa: E402

STORE_FILES = ("tokens.bin", "offsets.npy", "text_hash.npy", "doc_ids.bin", "doc_ids.idx.npy", "store.json")



@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Several JSONL files (one gzipped, one with an empty document and a record without an id) and a folder of .txt."""
    docs = make_documents(60, seed=3)
    folder = tmp_path / "corpus"
    write_jsonl(folder / "a.jsonl", docs[:20])
    write_jsonl(folder / "b" / "b.jsonl", docs[20:35] + [{"id": "empty", "text": ""}, {"text": "no id here"}])
    gz = folder / "c.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in docs[35:50]).encode()))
    for i, doc in enumerate(docs[50:]):
        (folder / "texts").mkdir(exist_ok=True)
        (folder / "texts" / f"t{i:02d}.txt").write_text(doc["text"], encoding="utf-8")
    return folder


def store_bytes(work: Path) -> dict[str, bytes]:
    return {name: (work / name).read_bytes() for name in STORE_FILES}


def test_tokenize_on_ray_writes_the_local_store_byte_for_byte(corpus, tmp_path):
    local = tokenize(corpus, tmp_path / "local")
    store = tokenize(corpus, tmp_path / "ray", engine=Engine("ray"))
    assert store.num_documents == local.num_documents == 61
    assert store.manifest["counts"] == {"records": 62, "dropped_empty": 1, "skipped_records": 0}
    assert store_bytes(tmp_path / "ray") == store_bytes(tmp_path / "local")
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if p.name not in LOCK_FILES) == sorted(STORE_FILES)  # no blocks left behind


def test_a_huge_line_is_read_in_pieces_on_ray_and_stored_as_if_read_whole(tmp_path, monkeypatch):
    from packprep import json_text
    from packprep.store import DocStoreWriter
    from tests.tokenizers.test_text_cuts import ADVERSARIAL

    text = " ".join(ADVERSARIAL[:-1]) * 3000  # ~1.5M characters: several pieces, several groups of tokens
    records = [{"text": "a small one"}, {"id": "huge", "text": text}, {"text": "the last one"}]
    write_jsonl(tmp_path / "corpus" / "c.jsonl", records)
    whole = tokenize(tmp_path / "corpus", tmp_path / "whole", workers=1)  # 16 MB and up only: read whole here
    monkeypatch.setattr(json_text, "HUGE_TEXT_BYTES", 1 << 20)  # the driver passes it to its tasks
    real, log = ray_tokenize._tokenize_block, tmp_path / "groups.log"

    def counting_groups(*args):  # runs in the task's process: each group of the huge text's ids logs a line
        append_tokens = DocStoreWriter.append_tokens

        def logged(self, tokens):
            with open(log, "a") as f:
                f.write(f"{len(tokens)}\n")
            return append_tokens(self, tokens)

        DocStoreWriter.append_tokens = logged
        try:
            return real(*args)
        finally:
            DocStoreWriter.append_tokens = append_tokens

    monkeypatch.setattr(ray_tokenize, "_tokenize_block", counting_groups)
    tokenize(tmp_path / "corpus", tmp_path / "ray", engine=Engine("ray"))
    assert len(log.read_text().split()) >= 2  # the huge text went in pieces, its ids in groups
    assert store_bytes(tmp_path / "ray") == store_bytes(whole.path)


def test_a_store_from_either_engine_is_reused_by_the_other(corpus, tmp_path):
    tokenize(corpus, tmp_path / "work")
    before = (tmp_path / "work" / "store.json").stat().st_mtime_ns
    tokenize(corpus, tmp_path / "work", engine=Engine("ray"))
    assert (tmp_path / "work" / "store.json").stat().st_mtime_ns == before


def with_bad_record(corpus: Path) -> Path:
    lines = (corpus / "b" / "b.jsonl").read_text().splitlines()
    lines[3] = '{"id": "broken", "text": '
    lines[6] = '{"id": 7, "body": "no text field"}'
    (corpus / "b" / "b.jsonl").write_text("\n".join(lines) + "\n")
    return corpus


def test_a_bad_record_raises_the_local_error_with_file_and_line(corpus, tmp_path):
    with_bad_record(corpus)
    with pytest.raises(PackprepError) as local:
        tokenize(corpus, tmp_path / "local")
    with pytest.raises(PackprepError) as on_ray:
        tokenize(corpus, tmp_path / "ray", engine=Engine("ray"))
    assert str(on_ray.value) == str(local.value)
    assert (on_ray.value.path, on_ray.value.line) == (str(corpus / "b" / "b.jsonl"), 4)
    assert not (tmp_path / "ray").exists()  # like the local engine: a bad input leaves nothing


def test_skipped_records_are_counted_as_locally(corpus, tmp_path):
    with_bad_record(corpus)
    config = TokenizeConfig(on_error="skip")
    tokenize(corpus, tmp_path / "local", config=config)
    store = tokenize(corpus, tmp_path / "ray", config=config, engine=Engine("ray"))
    assert store.manifest["counts"]["skipped_records"] == 2
    assert store_bytes(tmp_path / "ray") == store_bytes(tmp_path / "local")


def test_a_worker_killed_once_is_retried_and_the_output_is_intact(corpus, tmp_path, monkeypatch):
    marker = tmp_path / "crashed-once"
    real = ray_tokenize._tokenize_block

    def dies_once_on_block_0(index, *args):
        import os

        if index == 0 and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies mid-task, as on a lost node or an OOM kill
        return real(index, *args)

    monkeypatch.setattr(ray_tokenize, "_tokenize_block", dies_once_on_block_0)
    tokenize(corpus, tmp_path / "local")
    tokenize(corpus, tmp_path / "ray", engine=Engine("ray"))
    assert marker.exists()
    assert store_bytes(tmp_path / "ray") == store_bytes(tmp_path / "local")


RANGE_BYTES = 8 << 10  # the test's threshold: its file (about 40 KB) becomes 5 or 6 byte ranges


@pytest.fixture
def big_jsonl(tmp_path: Path) -> Path:
    """One .jsonl of 300 records (about 40 KB): a BOM, blank lines, records without ids, an empty text, no final newline."""
    docs = make_documents(300, seed=13)
    for i in range(0, 300, 7):
        del docs[i]["id"]  # these get the id "big.jsonl:<line>"
    docs[150]["text"] = ""
    lines = [json.dumps(d) for d in docs]
    for i in (40, 41, 200):
        lines[i] = "\n" + lines[i]  # blank lines shift every later line number
    path = tmp_path / "one" / "big.jsonl"
    path.parent.mkdir()
    path.write_bytes(codecs.BOM_UTF8 + "\n".join(lines).encode())
    return path


def line_in_range(path: Path, k: int) -> int:
    """The number of a line well inside the k-th byte range."""
    start, end, first_line = byte_ranges(path, RANGE_BYTES)[k]
    return first_line + path.read_bytes()[start:end].count(b"\n") // 2


def broken(path: Path, line: int, text: str) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = text.encode()
    path.write_bytes(b"\n".join(lines))


def test_byte_ranges_cut_after_newlines_and_know_their_first_line(big_jsonl):
    data = big_jsonl.read_bytes()
    ranges = byte_ranges(big_jsonl, RANGE_BYTES)
    assert len(ranges) >= 3 and ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (start, end, first_line), following in zip(ranges, ranges[1:] + [(len(data), None, None)]):
        assert start < end == following[0]
        assert end == len(data) or data[end - 1 : end] == b"\n"
        assert first_line == data[:start].count(b"\n") + 1


def test_a_big_jsonl_in_byte_ranges_writes_the_local_store_byte_for_byte(big_jsonl, tmp_path):
    local = tokenize(big_jsonl, tmp_path / "local")
    store = tokenize(big_jsonl, tmp_path / "ray", engine=RayEngine(range_bytes=RANGE_BYTES))
    assert store.num_documents == local.num_documents == 299
    assert store.manifest["counts"] == {"records": 300, "dropped_empty": 1, "skipped_records": 0}
    assert store_bytes(tmp_path / "ray") == store_bytes(tmp_path / "local")
    assert {"big.jsonl:1", "big.jsonl:298"} <= set(store.doc_ids)  # records 0 and 294, after 3 blank lines


def test_a_bad_line_in_a_later_byte_range_raises_the_local_error(big_jsonl, tmp_path):
    bad_line = line_in_range(big_jsonl, 1)
    broken(big_jsonl, bad_line, '{"id": "broken", "text": ')
    broken(big_jsonl, line_in_range(big_jsonl, 2), '{"id": 7, "body": "no text field"}')
    # A BOM is stripped only at the start of the file: at the start of a later range the line is bad JSON.
    data, at = big_jsonl.read_bytes(), byte_ranges(big_jsonl, RANGE_BYTES)[3][0]
    big_jsonl.write_bytes(data[:at] + codecs.BOM_UTF8 + data[at:])
    assert big_jsonl.read_bytes()[byte_ranges(big_jsonl, RANGE_BYTES)[3][0] :].startswith(codecs.BOM_UTF8)
    start, end, first_line = byte_ranges(big_jsonl, RANGE_BYTES)[1]
    assert first_line < bad_line <= first_line + big_jsonl.read_bytes()[start:end].count(b"\n")  # still the 2nd range
    with pytest.raises(PackprepError) as local:
        tokenize(big_jsonl, tmp_path / "local")
    with pytest.raises(PackprepError) as on_ray:
        tokenize(big_jsonl, tmp_path / "ray", engine=RayEngine(range_bytes=RANGE_BYTES))
    assert str(on_ray.value) == str(local.value)
    assert (on_ray.value.path, on_ray.value.line) == (str(big_jsonl), bad_line)

    config = TokenizeConfig(on_error="skip")
    local_store = tokenize(big_jsonl, tmp_path / "local", config=config)
    store = tokenize(big_jsonl, tmp_path / "ray", config=config, engine=RayEngine(range_bytes=RANGE_BYTES))
    assert store.manifest["counts"] == local_store.manifest["counts"]
    assert store.manifest["counts"]["skipped_records"] == 3
    assert store_bytes(tmp_path / "ray") == store_bytes(tmp_path / "local")


@pytest.fixture
def duplicated_store(tmp_path: Path) -> DocStore:
    """80 documents: copies (exact), copies with one word changed (near) and distinct ones."""
    docs = make_documents(50, seed=5)
    docs += [{"id": f"copy-{i}", "text": docs[i]["text"]} for i in range(0, 50, 7)]
    for i in range(1, 50, 3):
        words = docs[i]["text"].split(" ")
        if len(words) > 40:
            words[len(words) // 2] = "CHANGED"
            docs.append({"id": f"near-{i}", "text": " ".join(words)})
    write_jsonl(tmp_path / "dups" / "d.jsonl", docs)
    return tokenize(tmp_path / "dups", tmp_path / "dups-work")


def test_dedup_on_ray_equals_the_local_result(duplicated_store):
    store, config = duplicated_store, DedupConfig()
    local = semantic.dedup(store, config=config)
    result = ray_engine.dedup_on_ray(store, config=config, num_tasks=3)
    assert result.counts() == local.manifest["counts"]
    assert result.counts()["exact"] > 0 and result.counts()["near"] > 0
    assert result.reason.tolist() == local.reason.tolist()
    assert result.dup_of.tolist() == local.dup_of.tolist()
    assert not (store.path / ray_engine.SIGNATURES_FILE).exists()  # the shared signatures are scratch


def test_text_hashes_written_on_ray_equal_the_tokenize_time_ones(duplicated_store, tmp_path):
    # a store a pack tokenized without hashes (no dedup) gets them from its decoded documents
    store = duplicated_store
    unhashed = tmp_path / "unhashed"
    shutil.copytree(store.path, unhashed)
    (unhashed / "text_hash.npy").unlink()
    RayEngine().write_text_hashes(DocStore.open(unhashed), reporter=SilentReporter())
    assert (unhashed / "text_hash.npy").read_bytes() == (store.path / "text_hash.npy").read_bytes()
    assert not (unhashed / "text_hash.npy.tmp").exists()


def test_minhash_signatures_on_ray_equal_the_local_ones(duplicated_store):
    from packprep.tokenizers import tokenizer_from_manifest

    store = duplicated_store
    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    local = dedup_stage.document_signatures(decode, store.tokens, store.offsets, num_perm=64, shingle=3, seed=9)
    on_ray = ray_engine.minhash_signatures_on_ray(store.path, num_perm=64, shingle=3, seed=9, num_tasks=5)
    assert on_ray.dtype == np.uint32 and np.array_equal(on_ray, local)


def test_band_pairs_follow_the_local_bucket_rule():
    # bucket (band 0, key 5): docs 9, 2, 4 -> star from 2 plus all pairs (size 3 <= 64); bucket (1, 5): 7 alone
    table = np.array([[0, 5, 9], [0, 5, 2], [1, 5, 7], [0, 5, 4]], dtype=np.uint64)
    pairs = ray_dedup.band_pairs(None, 0.8, table[:2], table[2:])
    assert sorted(map(tuple, pairs.tolist())) == [(2, 4), (2, 4), (2, 9), (2, 9), (4, 9)]


def test_reducers_verify_their_pairs_against_the_shared_signatures(tmp_path):
    """A reducer reads only its pairs' signature rows from the shared file and returns the distinct pairs that pass."""
    signatures = np.zeros((10, 4), dtype=np.uint32)
    signatures[4] = [0, 0, 0, 1]  # 3 of 4 equal to doc 2's: 0.75
    signatures[9] = [1, 1, 0, 1]  # 1 of 4: 0.25
    np.save(tmp_path / "sig.npy", signatures)
    table = np.array([[0, 5, 9], [0, 5, 2], [1, 5, 7], [0, 5, 4]], dtype=np.uint64)
    pairs = ray_dedup.band_pairs(str(tmp_path / "sig.npy"), 0.7, table[:2], table[2:])
    assert pairs.tolist() == [[2, 4]]


def test_embed_on_ray_equals_the_local_embeddings(tmp_path):
    from packprep.stages.embed import embed_documents, load_embedder
    from packprep.tokenizers import tokenizer_from_manifest

    write_jsonl(tmp_path / "c" / "c.jsonl", make_documents(20, seed=11))  # 20 documents keep the model's work small
    store = tokenize(tmp_path / "c", tmp_path / "work")
    config = EmbedConfig(batch_size=4)
    local = np.asarray(semantic.embed(store, config=config))
    on_ray = np.empty_like(local)
    ray_engine.embed_on_ray(store, config=config, out=on_ray)
    assert on_ray.tobytes() == local.tobytes()

    # Several actors, each embedding its own chunks with one torch thread (two fit on our two CPUs):
    # the same chunks and thread count locally give the same bytes.
    import torch

    decode = tokenizer_from_manifest(store.manifest["tokenizer"]).decode
    local_chunks = np.empty_like(local)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embed_documents(
            load_embedder(config.model), decode, store.tokens, store.offsets, np.arange(store.num_documents),
            out=local_chunks, max_tokens=config.embed_tokens, batch_size=4, chunk=8,
        )
    finally:
        torch.set_num_threads(threads)
    on_ray_chunks = np.empty_like(local)
    ray_engine.embed_on_ray(store, config=config, out=on_ray_chunks, num_actors=2, threads=1, chunk=8)  # 3 chunks
    assert on_ray_chunks.tobytes() == local_chunks.tobytes()


def test_embedding_interrupted_here_resumes_on_ray_with_the_same_bytes(tmp_path, monkeypatch):
    from packprep.stages import embed as stage

    write_jsonl(tmp_path / "c" / "c.jsonl", make_documents(20, seed=11))
    config = EmbedConfig(batch_size=4)
    clean = np.asarray(semantic.embed(tokenize(tmp_path / "c", tmp_path / "clean"), config=config, engine=Engine("ray"))).copy()
    monkeypatch.setattr(stage, "EMBED_CHUNK", 8)  # 3 chunks; the clean run above used one (4,096)
    clean_small = np.asarray(semantic.embed(tokenize(tmp_path / "c", tmp_path / "clean8"), config=config)).copy()
    store = tokenize(tmp_path / "c", tmp_path / "work")
    real, calls = stage.embed_documents, []

    def stopped_after_one_chunk(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "embed_documents", stopped_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        semantic.embed(store, config=config)
    monkeypatch.setattr(stage, "embed_documents", real)
    resumed = np.asarray(semantic.embed(store, config=config, engine=Engine("ray")))  # chunks 8:16 and 16:20 on Ray
    assert resumed.tobytes() == clean_small.tobytes()
    np.testing.assert_allclose(np.asarray(resumed, np.float32), np.asarray(clean, np.float32), atol=2e-3)


def test_pack_with_engine_ray_writes_the_local_shards(corpus, tmp_path):
    # The whole command: tokenize and dedup on Ray, then order and pack here.
    config = PackConfig(strategy="eos", seq_len=64, rows_per_shard=7, dedup=True)
    pack(corpus, tmp_path / "local", config=config)
    pack(corpus, tmp_path / "ray", config=config, engine=Engine("ray"))
    local_manifest = json.loads((tmp_path / "local" / "manifest.json").read_text())
    ray_manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert len(ray_manifest["shards"]) > 1
    assert ray_manifest["shards"] == local_manifest["shards"]  # names, rows and sha256 of every array
    assert ray_manifest["key"] == local_manifest["key"] and ray_manifest["doc_files"] == local_manifest["doc_files"]
    for path in sorted((tmp_path / "local").iterdir()):
        if path.is_file() and path.name != "manifest.json":
            assert (tmp_path / "ray" / path.name).read_bytes() == path.read_bytes(), path.name


def test_the_cli_engine_options(corpus, tmp_path):
    from typer.testing import CliRunner

    from packprep.cli import app

    runner = CliRunner()
    local = runner.invoke(app, ["tokenize", str(corpus), str(tmp_path / "local"), "-q"])
    on_ray = runner.invoke(app, ["tokenize", str(corpus), str(tmp_path / "ray"), "-q", "--engine", "ray"])
    assert local.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    assert store_bytes(tmp_path / "local") == store_bytes(tmp_path / "ray")
    stray = runner.invoke(app, ["tokenize", str(corpus), str(tmp_path / "x"), "--ray-address", "auto"])
    assert stray.exit_code == 2 and "--ray-address needs --engine ray" in stray.output


def test_unknown_engines_and_stray_addresses_are_user_errors():
    with pytest.raises(PackprepError, match="unknown engine 'spark'"):
        check_engine("spark")
    with pytest.raises(PackprepError, match="--ray-address needs --engine ray"):
        check_engine("local", address="auto")
    check_engine("ray", address="auto")


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(PackprepError, match=r"pip install 'packprep\[ray\]'"):
        ray_engine.connect(None)


def test_tokenize_parts_give_every_core_two_but_stay_above_the_minimum(tmp_path):
    """A 55 MB file was one task on one core when tasks were 64 MB: parts now cover the cores."""
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as fh:
        fh.truncate(55_000_000)  # only its size is read
    assert ray_engine.part_bytes([big], ray_tokenize.RANGE_BYTES, cpus=2) == 13_750_000
    assert ray_engine.part_bytes([big], ray_tokenize.RANGE_BYTES, cpus=64) == ray_engine.MIN_PART_BYTES
    assert ray_engine.part_bytes([big], ray_tokenize.RANGE_BYTES, cpus=1) == 27_500_000
    assert ray_engine.part_bytes([big], 16 << 20, cpus=1) == 16 << 20  # never above the size asked for
    assert ray_engine.part_bytes([big], 8 << 10, cpus=2) == 8 << 10  # a smaller size asked for stays
