"""Bad input through the command line: exit code 2, one `error:` line naming file and line, nothing left behind.

tests/test_cli.py checks a few of these for `pack` by substring; here every case runs
through both `pack` (a new OUT) and `tokenize` (a new WORK) and is held to the whole
contract: one line on stderr, no traceback, no partial folder.
"""

from __future__ import annotations

import errno
import gzip
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import packprep.io
import packprep.progress
import packprep.store
from packprep import PackedDataset
from packprep.cli import app
from packprep.config import DedupConfig, EmbedConfig, PackConfig, TokenizeConfig
from packprep.errors import PackprepError
from packprep.pipeline import pack, tokenize
from packprep.store import DocStore

runner = CliRunner()
GOOD = b'{"text": "a perfectly fine record"}\n'
PACKPREP = Path(sys.executable).with_name("packprep")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, made: Path, *expected: str) -> str:
    """Exit 2, exactly one stderr line `error: ...` holding ``expected``, no traceback, ``made`` absent."""
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}"
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0]
    assert not made.exists(), sorted(p.name for p in made.rglob("*"))
    return lines[0]


def gzip_cut_in_half() -> bytes:
    raw = b"".join(json.dumps({"text": f"record {i} " * 20}).encode() + b"\n" for i in range(2000))
    packed = gzip.compress(raw)
    return packed[: len(packed) // 2]


# name -> (files of the corpus folder, what the message must contain besides the corpus path)
BAD_CORPORA = {
    "empty-folder": ({}, ["folder has no corpus files"]),
    "no-supported-files": ({"a.csv": b"text\nhi\n", "b.bin": b"\x00\x01\x02"}, ["folder has no corpus files"]),
    "truncated-gzip": ({"a.jsonl.gz": gzip_cut_in_half()}, ["a.jsonl.gz:", "truncated"]),
    "invalid-json-line-3": ({"a.jsonl": GOOD * 2 + b'{"text": oops}\n' + GOOD}, ["a.jsonl:3:", "invalid JSON"]),
    "no-text-field": ({"a.jsonl": GOOD + b'{"body": "x"}\n'}, ["a.jsonl:2:", "no field 'text'"]),
    "text-is-number": ({"a.jsonl": GOOD + b'{"text": 5}\n'}, ["a.jsonl:2:", "JSON number, not a string"]),
    "text-is-null": ({"a.jsonl": GOOD + GOOD + b'{"text": null}\n'}, ["a.jsonl:3:", "JSON null, not a string"]),
    "text-is-list": ({"a.jsonl": GOOD + b'{"text": ["a", "b"]}\n'}, ["a.jsonl:2:", "JSON array, not a string"]),
    "record-is-list": ({"a.jsonl": b'[1, 2]\n'}, ["a.jsonl:1:", "not an object"]),
    "non-utf8-jsonl": ({"a.jsonl": GOOD + b'{"text": "caf\xe9"}\n'}, ["a.jsonl:2:", "not valid UTF-8", "0xe9"]),
    "non-utf8-txt": ({"a.txt": b"line one\nline two caf\xe9\n"}, ["a.txt:2:", "not valid UTF-8", "0xe9"]),
    "non-utf8-json-list": ({"a.json": b'[{"text": "ok"},\n {"text": "\xff"}]'}, ["a.json:2:", "not valid UTF-8"]),
    "pretty-json-object": (
        {"a.json": json.dumps({"data": [{"text": "x"}] * 3}, indent=2).encode()},
        ["a.json: a JSON object, not a list of records or JSON lines", "field 'data' holds 3 records"],
    ),
    "pretty-printed-jsonl": (
        {"a.jsonl": json.dumps({"text": "one record, pretty-printed"}, indent=2).encode()},
        ["a.jsonl: a JSON object, not a list of records or JSON lines", "write it on one line"],
    ),
    "a-packprep-output-inside-only": (
        {"out/manifest.json": b'{\n  "format": "packprep-npy"\n}\n', "out/shard-00000.input_ids.npy": b""},
        ["folder has no corpus files", "passed over packprep's own", "out"],
    ),
}


@pytest.mark.parametrize("command", ["pack", "tokenize"])
@pytest.mark.parametrize("case", list(BAD_CORPORA), ids=list(BAD_CORPORA))
def test_bad_corpus(tmp_path, command, case):
    files, expected = BAD_CORPORA[case]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in files.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(data)
    made = tmp_path / "made"
    message = assert_user_error(invoke(command, corpus, made, "-q"), made, *expected)
    assert str(corpus) in message


@pytest.mark.parametrize("command", ["pack", "tokenize"])
def test_nonexistent_corpus(tmp_path, command):
    made = tmp_path / "made"
    assert_user_error(invoke(command, tmp_path / "nope", made, "-q"), made, str(tmp_path / "nope"), "no such file or folder")


# (extra options, what the message must contain); the corpus itself is fine
BAD_OPTIONS = {
    "seq-len-0": (["--seq-len", "0"], ["--seq-len must be at least 1, got 0"]),
    "seq-len-negative": (["--seq-len", "-5"], ["--seq-len must be at least 1, got -5"]),
    "seq-len-1-eos": (["--seq-len", "1", "--strategy", "eos"], ["--seq-len 1", "separator"]),
    "seq-len-1-eos-bestfit": (["--seq-len", "1", "--strategy", "eos", "--packing", "bestfit"], ["--seq-len 1", "separator"]),
    "shard-size-0": (["--shard-size", "0"], ["--shard-size must be at least 1, got 0"]),
    "unknown-tokenizer-file": (["--tokenizer", "missing/tokenizer.json"], ["unknown tokenizer", "missing/tokenizer.json"]),
    "eos-id-outside-vocab": (["--eos-id", "999999999"], ["--eos-id 999999999", "vocabulary"]),
    "icp-missing-model": (["--strategy", "icp", "--model", "no-such-model-dir"], ["no-such-model-dir", "not found"]),
}


@pytest.fixture
def good_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "good.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i} " * 30}) + "\n" for i in range(8)))
    return corpus


@pytest.mark.parametrize("case", list(BAD_OPTIONS), ids=list(BAD_OPTIONS))
def test_bad_option(tmp_path, good_corpus, case):
    options, expected = BAD_OPTIONS[case]
    made = tmp_path / "made"
    assert_user_error(invoke("pack", good_corpus, made, "-q", *options), made, *expected)


def test_seq_len_1_without_separator_is_allowed(tmp_path, good_corpus):
    """The boundary of the check above: --strategy random has no separator, so one token per row packs."""
    result = invoke("pack", good_corpus, tmp_path / "out", "-q", "--seq-len", "1", "--strategy", "random")
    assert result.exit_code == 0, result.output
    counts = PackedDataset(tmp_path / "out").manifest["counts"]
    assert counts["num_sequences"] == counts["num_tokens"] and counts["pad_tokens"] == 0


# Every numeric option of every command, out of range: (command, option, value, the message).
# Each is refused by the config (or check_workers) before a folder is touched.
BAD_NUMBERS = [
    ("pack", "--seed", "-1", "--seed must be 0 or more, got -1"),
    ("pack", "--minhash-threshold", "-1", "--minhash-threshold must be in (0, 1], got -1.0"),
    ("pack", "--minhash-threshold", "0", "--minhash-threshold must be in (0, 1], got 0.0"),
    ("pack", "--minhash-threshold", "1.5", "--minhash-threshold must be in (0, 1], got 1.5"),
    ("pack", "--minhash-threshold", "nan", "--minhash-threshold must be in (0, 1], got nan"),
    ("pack", "--semantic-threshold", "1.5", "--semantic-threshold must be in (0, 1], or 0 for off, got 1.5"),
    ("pack", "--semantic-threshold", "-0.5", "--semantic-threshold must be in (0, 1], or 0 for off, got -0.5"),
    ("pack", "--knn", "0", "--knn must be at least 1, got 0"),
    ("pack", "--knn", "1000000000", "--knn must be at most 1,024, got 1000000000"),
    ("pack", "--clusters", "0", "--clusters must be at least 1, got 0"),
    ("pack", "--embed-tokens", "0", "--embed-tokens must be at least 1, got 0"),
    ("pack", "--embed-tokens", "-3", "--embed-tokens must be at least 1, got -3"),
    ("pack", "--shard-size", "-1", "--shard-size must be at least 1, got -1"),
    ("pack", "--workers", "0", "--workers must be at least 1, got 0"),
    ("pack", "--seq-len", "0", "--seq-len must be at least 1, got 0"),
    ("pack", "--seq-len", str(2**31), f"--seq-len must be at most 2,147,483,647, got {2**31}"),
    ("pack", "--eos-id", "-1", "--eos-id must be a token id (0 or more), got -1"),
    ("pack", "--bos-id", "-2", "--bos-id must be a token id (0 or more), got -2"),
    ("tokenize", "--workers", "-1", "--workers must be at least 1, got -1"),
    ("tokenize", "--eos-id", "-1", "--eos-id must be a token id (0 or more), got -1"),
    ("tokenize", "--bos-id", "-1", "--bos-id must be a token id (0 or more), got -1"),
]


@pytest.mark.parametrize("command, option, value, message", BAD_NUMBERS, ids=[f"{c}{o}={v}" for c, o, v, _ in BAD_NUMBERS])
def test_every_numeric_option_is_checked_before_any_work(tmp_path, good_corpus, command, option, value, message):
    made = tmp_path / "made"
    assert_user_error(invoke(command, good_corpus, made, "-q", option, value), made, message)


@pytest.mark.parametrize(
    "command, option, value, message",
    [
        ("dedup", "--minhash-threshold", "-1", "--minhash-threshold must be in (0, 1], got -1.0"),
        ("dedup", "--minhash-threshold", "2", "--minhash-threshold must be in (0, 1], got 2.0"),
        ("embed", "--embed-tokens", "0", "--embed-tokens must be at least 1, got 0"),
        ("embed", "--workers", "0", "--workers must be at least 1, got 0"),
    ],
)
def test_numeric_options_of_the_store_commands_leave_the_store_as_it_was(tmp_path, good_corpus, command, option, value, message):
    work = tmp_path / "work"
    tokenize(good_corpus, work)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    assert_user_error(invoke(command, work, "-q", option, value), tmp_path / "nothing", message)
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PackConfig(seed=-1), "--seed must be 0 or more"),
        (lambda: PackConfig(strategy="nope"), "--strategy must be one of random, eos, cluster, icp, got nope"),
        (lambda: PackConfig(packing="tight"), "--packing must be one of split, bestfit, got tight"),
        (lambda: DedupConfig(minhash_threshold=-1.0), "--minhash-threshold must be in (0, 1]"),
        (lambda: DedupConfig(num_perm=0), "num_perm must be at least 1"),
        (lambda: EmbedConfig(embed_tokens=0), "--embed-tokens must be at least 1"),
        (lambda: EmbedConfig(dtype="int8"), "dtype must be float16 or float32"),
        (lambda: TokenizeConfig(on_error="ignore"), "--on-error must be one of raise, skip, got ignore"),
    ],
)
def test_configs_check_themselves_so_notebooks_get_the_cli_errors(make, message):
    with pytest.raises(PackprepError, match=re.escape(message)):
        make()


def test_a_semantic_threshold_of_0_still_means_off(tmp_path, good_corpus):
    from packprep.pipeline.selection import semantic_threshold

    chosen = semantic_threshold(PackConfig(strategy="icp", semantic_threshold=0.0), "all-MiniLM-L6-v2", None)
    assert chosen["value"] == 0.0 and chosen["source"] == "--semantic-threshold"  # 0 passes the range check, and is off
    with pytest.raises(PackprepError, match="--workers must be at least 1"):
        pack(good_corpus, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command, options",
    [("tokenize", ["--tokenizer", "no-such-tokenizer"]), ("tokenize", ["--eos-id", "-1"])],
    ids=["unknown-tokenizer", "negative-eos-id"],
)
def test_bad_tokenize_option(tmp_path, good_corpus, command, options):
    made = tmp_path / "work"
    assert_user_error(invoke(command, good_corpus, made, "-q", *options), made, options[1])


@pytest.mark.parametrize("command", ["pack", "tokenize"])
def test_out_that_is_a_file_is_kept_untouched(tmp_path, good_corpus, command):
    target = tmp_path / "target"
    target.write_text("precious")
    result = invoke(command, good_corpus, target, "-q")
    assert_user_error(result, tmp_path / "nothing-else", str(target), "is a file")
    assert target.read_text() == "precious"


# Choices and integers are parsed by Click before our code runs.
USAGE_ERRORS = {
    "unknown-strategy": (["--strategy", "nope"], ["--strategy", "nope"]),
    "unknown-packing": (["--packing", "nope"], ["--packing", "nope"]),
    "unknown-on-error": (["--on-error", "nope"], ["--on-error", "nope"]),
    "seq-len-not-a-number": (["--seq-len", "abc"], ["--seq-len", "integer"]),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS), ids=list(USAGE_ERRORS))
def test_usage_error_exit_2_without_traceback(tmp_path, good_corpus, case):
    options, expected = USAGE_ERRORS[case]
    made = tmp_path / "made"
    result = invoke("pack", good_corpus, made, "-q", *options)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.stderr
    assert not made.exists()


@pytest.mark.parametrize("case", list(USAGE_ERRORS), ids=list(USAGE_ERRORS))
def test_usage_error_is_one_error_line(tmp_path, good_corpus, case):
    options, expected = USAGE_ERRORS[case]
    made = tmp_path / "made"
    assert_user_error(invoke("pack", good_corpus, made, "-q", *options), made, *expected)


def test_on_error_skip_reports_the_count_and_still_packs(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(GOOD * 3 + b'{"text": oops}\n' + GOOD + b'{"text": null}\n' + b'{"text": "caf\xe9"}\n' + GOOD)
    out = tmp_path / "out"
    result = invoke("pack", corpus, out, "--on-error", "skip", "--seq-len", "16")
    assert result.exit_code == 0, result.output
    assert "skipped 3 bad records" in result.stderr
    assert f"{corpus}:4:" in result.stderr.replace("\n", "")  # the first one, by file and line
    manifest = PackedDataset(out).manifest
    assert manifest["store_counts"]["skipped_records"] == 3
    assert manifest["counts"]["num_documents"] == 5


def test_real_process_stderr_has_one_line_and_no_traceback(tmp_path):
    """A couple of cases through the installed console script, where nothing captures exceptions for us."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD * 4 + b'{"text": \n')
    for source, expected in ((tmp_path / "nope", "no such file or folder"), (bad, f"{bad}:5:")):
        made = tmp_path / "made"
        proc = subprocess.run([PACKPREP, "pack", source, made, "-q"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and expected in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert not made.exists()


# ---- disk full ------------------------------------------------------------------------------


def open_that_fills_the_disk(after_bytes: int, *, only: str = ""):
    """An ``open`` whose write handles raise ENOSPC once ``after_bytes`` have been written to them
    (to files whose name contains ``only``), after writing what still fitted, as a full disk does."""
    real_open = open

    class FillingFile:
        def __init__(self, fh, path):
            self._fh, self._path, self._written = fh, path, 0

        def write(self, data) -> int:
            view = memoryview(data).cast("B")
            room = after_bytes - self._written
            if len(view) > room:
                self._fh.write(view[: max(room, 0)])
                self._written = after_bytes
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._path))
            self._written += len(view)
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._fh.close()

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if ("w" in mode or "a" in mode) and only in Path(path).name:
            return FillingFile(fh, path)
        return fh

    return fake_open


@pytest.mark.parametrize("command", ["pack", "tokenize"])
def test_disk_full_while_writing_the_token_store(tmp_path, good_corpus, monkeypatch, command):
    # DocStoreWriter streams tokens.bin.tmp through store.py's `open`: the disk fills after 1 KB.
    monkeypatch.setattr(packprep.store, "open", open_that_fills_the_disk(1024, only="tokens"), raising=False)
    made = tmp_path / "made"
    assert_user_error(invoke(command, good_corpus, made, "-q"), made, "No space left on device")


@pytest.mark.parametrize("module, after_bytes", [("io", 64), ("formats.npy", 200)])
def test_disk_full_while_writing_shards(tmp_path, good_corpus, monkeypatch, module, after_bytes):
    # The token matrix is written through formats/npy.py's `open` (its 128-byte header here, its
    # rows by a writer thread: 200 bytes fail there), every other shard array through
    # io.save_npy's: fill the disk at either.
    writer = importlib.import_module(f"packprep.{module}")
    monkeypatch.setattr(writer, "open", open_that_fills_the_disk(after_bytes, only="shard-"), raising=False)
    made = tmp_path / "made"
    result = invoke("pack", good_corpus, made, "-q", "--seq-len", "16", "--shard-size", "2")
    assert_user_error(result, made, "No space left on device", "shard-")


def test_the_disk_full_seams_are_the_ones_writes_go_through(tmp_path, good_corpus, monkeypatch):
    """Guards the two tests above: if the writers stop using these `open`s, the patches must be moved."""
    monkeypatch.setattr(packprep.io, "open", open_that_fills_the_disk(64, only="shard-"), raising=False)
    with pytest.raises(OSError) as caught:
        pack(good_corpus, tmp_path / "out", config=PackConfig(seq_len=16, rows_per_shard=2))
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    monkeypatch.setattr(packprep.store, "open", open_that_fills_the_disk(1024, only="tokens"), raising=False)
    with pytest.raises(OSError) as caught:
        tokenize(good_corpus, tmp_path / "work")
    assert caught.value.errno == errno.ENOSPC


# ---- a 100 MB document ----------------------------------------------------------------------

BIG_DOC_BYTES = 100_000_000
BIG_DOC_MAX_RSS = 2 << 30  # measured 0.97 GiB for this document (tokenize holds its ids as Python ints); 2 GiB flags a regression


@pytest.mark.slow
def test_a_100_mb_document_packs_with_bounded_memory(tmp_path):
    """One document of 100 MB of short words: packs (one split document, every row full but the last).

    Runs in its own process so its peak RSS is its own. ~10 s on 2 cores.
    """
    # Long words that are one cl100k token each (~12.6 bytes per token): the same 100 MB in a third
    # of the tokens that everyday words take, so the test stays light.
    words = b"international communication responsibility understanding environmental administration".split()
    sentence = b" ".join(words[(i * 5) % len(words)] for i in range(997)) + b"\n"
    corpus = tmp_path / "big"
    corpus.mkdir()
    (corpus / "doc.txt").write_bytes((sentence * (BIG_DOC_BYTES // len(sentence) + 1))[:BIG_DOC_BYTES])
    out = tmp_path / "out"
    script = (
        "import resource, sys\n"
        "from packprep.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "    raise\n"
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, "pack", corpus, out, "-q", "--seq-len", "2048"],
        capture_output=True, text=True, timeout=300,
    )
    seconds = time.perf_counter() - started
    shutil.rmtree(corpus)  # pytest keeps the last runs' tmp folders: do not leave 100 MB each time
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split("maxrss_kb")[1]) * 1024
    print(f"100 MB document: {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB")
    assert peak < BIG_DOC_MAX_RSS

    ds = PackedDataset(out)
    counts = ds.manifest["counts"]
    assert counts["num_documents"] == 1 and counts["split_documents"] == 1
    assert counts["num_segments"] == counts["num_sequences"] == len(ds)
    assert counts["pad_tokens"] < 2048
    assert counts["num_tokens"] == DocStore.open(out / "work").num_tokens + 1 > BIG_DOC_BYTES // 16
    first, last = ds[0], ds[len(ds) - 1]
    assert first["doc_offset"].tolist() == [0]
    assert int(last["input_ids"][int(last["cu_seqlens"][1]) - 1]) == ds.manifest["sep_id"]  # the EOS ends it
    shutil.rmtree(out)


# ---- the Ray engine reads bad input as the local one does --------------------------------------


class RecordingReporter(packprep.progress.SilentReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"warning: {message}")


@pytest.mark.slow
def test_ray_drops_whitespace_documents_warns_and_reads_pretty_json_as_locally(tmp_path):
    """Whitespace-only documents, an --id-field no record has, other files, and a pretty-printed
    .jsonl read in byte ranges (the Ray engine's own JSONL loop): the same store, lines and errors."""
    ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install 'packprep[ray]')")
    from packprep.engines import Engine

    corpus = tmp_path / "c"
    corpus.mkdir()
    texts = ["  ", "real text here", "\n\n", "", "more real text"] * 40
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (corpus / "notes.csv").write_text("x")
    config = TokenizeConfig(id_field="doc_id")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        said = {}
        for name in ("local", "ray"):
            said[name] = RecordingReporter()
            store = tokenize(corpus, tmp_path / name, config=config, engine=Engine(name), reporter=said[name])
            assert store.manifest["counts"] == {"records": 200, "dropped_empty": 120, "skipped_records": 0}
        assert said["ray"].lines == said["local"].lines and len(said["local"].lines) == 3
        for name in packprep.store.STORE_FILES:
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()

        pretty = tmp_path / "pretty.jsonl"
        pretty.write_text(json.dumps([{"text": f"record {i}"} for i in range(300)], indent=2))
        with pytest.raises(PackprepError) as local:
            tokenize(pretty, tmp_path / "local2")
        from packprep.engines.ray_engine import RayEngine

        with pytest.raises(PackprepError) as on_ray:
            tokenize(pretty, tmp_path / "ray2", engine=RayEngine(range_bytes=4096))  # several byte ranges
        assert str(on_ray.value) == str(local.value) == (
            f"{pretty}: a JSON list spread over lines, not JSON lines; name it .json to read it as a list of records"
        )
    finally:
        ray.shutdown()
