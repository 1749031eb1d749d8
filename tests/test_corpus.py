"""Corpus readers: every format, ids, order, errors with exact file:line, skipping, fingerprints."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from packprep import corpus
from packprep.corpus import ReadCounters, corpus_fingerprint, iter_documents, list_corpus_files
from packprep.errors import PackprepError

RECORDS = [{"id": "a", "text": "first"}, {"text": "no id"}, {"id": 7, "text": ""}, {"id": None, "text": "null id"}]
JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS)
EXPECTED = [("a", "first"), ("c.jsonl:2", "no id"), ("7", ""), ("c.jsonl:4", "null id")]


def docs(path: Path, **kwargs) -> list[tuple[str, str]]:
    return list(iter_documents(path, **kwargs))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_arrow_stream(path: Path, columns: dict[str, list], *, batch_rows: int = 2) -> Path:
    """An Arrow IPC stream file, the format ``datasets`` writes its .arrow files in."""
    table = pa.table(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return path


def write_hf_dataset(folder: Path, shards: list[dict[str, list]]) -> Path:
    """The ``Dataset.save_to_disk`` layout; shard names listed in state.json in the given order."""
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for name, columns in zip(names, shards):
        write_arrow_stream(folder / name, columns)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (folder / "dataset_info.json").write_text("{}")
    return folder


def raises_at(path: Path, line: int | None, match: str, **kwargs) -> PackprepError:
    with pytest.raises(PackprepError, match=match) as info:
        docs(path, **kwargs)
    assert (info.value.path, info.value.line) == (str(path), line)
    return info.value


# --- formats and ids ---------------------------------------------------------------------------


def test_jsonl_ids_blank_lines_crlf_bom_and_no_final_newline(tmp_path):
    path = write(tmp_path / "c.jsonl", JSONL)
    assert docs(path) == EXPECTED
    # A BOM, CRLF endings, blank lines and a missing final newline change nothing but line numbers.
    messy = b"\xef\xbb\xbf" + JSONL.replace(b"\n", b"\r\n\r\n").rstrip()
    write(path, messy)
    assert docs(path) == [("a", "first"), ("c.jsonl:3", "no id"), ("7", ""), ("c.jsonl:7", "null id")]


def test_jsonl_lines_split_across_read_chunks(tmp_path, monkeypatch):
    path = write(tmp_path / "c.jsonl", JSONL * 3)
    whole = docs(path)
    monkeypatch.setattr(corpus, "_CHUNK", 5)
    assert docs(path) == whole and len(whole) == 12


def test_id_field_and_text_field_options(tmp_path):
    path = write(tmp_path / "c.jsonl", b'{"key": "k1", "body": "x", "id": "ignored"}\n{"body": "y"}\n')
    assert docs(path, text_field="body", id_field="key") == [("k1", "x"), ("c.jsonl:2", "y")]


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path):
    cut = JSONL.index(b"\n", len(JSONL) // 2) + 1  # two members/frames, as `cat a.gz b.gz` makes
    gz = write(tmp_path / "c.jsonl.gz", gzip.compress(JSONL[:cut]) + gzip.compress(JSONL[cut:]))
    frames = zstandard.ZstdCompressor().compress(JSONL[:cut]) + zstandard.ZstdCompressor().compress(JSONL[cut:])
    zst = write(tmp_path / "c.jsonl.zst", frames)
    expected = [(i.replace("c.jsonl:", "{}:"), t) for i, t in EXPECTED]
    assert docs(gz) == [(i.format("c.jsonl.gz"), t) for i, t in expected]
    assert docs(zst) == [(i.format("c.jsonl.zst"), t) for i, t in expected]


def test_json_list_and_json_lines_named_json(tmp_path):
    listed = write(tmp_path / "l.json", json.dumps(RECORDS, indent=2).encode())
    assert docs(listed) == [("a", "first"), ("l.json:2", "no id"), ("7", ""), ("l.json:4", "null id")]
    lines = write(tmp_path / "j.json", JSONL)
    assert docs(lines) == [("a", "first"), ("j.json:2", "no id"), ("7", ""), ("j.json:4", "null id")]


def test_parquet_reads_only_needed_columns(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["x", "", "z"], "id": ["i1", None, "i3"], "other": [1, 2, 3]}), path)
    assert docs(path) == [("i1", "x"), ("p.parquet:2", ""), ("i3", "z")]
    pq.write_table(pa.table({"body": ["x", "y"]}), path, row_group_size=1)
    assert docs(path, text_field="body") == [("p.parquet:1", "x"), ("p.parquet:2", "y")]


def test_txt_and_md_are_one_document_per_file(tmp_path):
    write(tmp_path / "d" / "b.md", "# Title\n\nbody\n".encode())
    write(tmp_path / "d" / "a.txt", "\ufeffline one\nline two".encode())
    assert docs(tmp_path / "d") == [("a.txt", "line one\nline two"), ("b.md", "# Title\n\nbody\n")]
    assert docs(tmp_path / "d" / "b.md") == [("b.md", "# Title\n\nbody\n")]


def test_hf_dataset_folder_made_with_pyarrow(tmp_path):
    # state.json order, not name order, decides the shard order (as in datasets).
    ds = write_hf_dataset(tmp_path / "ds", [{"text": ["a", "b", "c"]}, {"text": ["d"], "id": [5]}])
    state = json.loads((ds / "state.json").read_text())
    state["_data_files"].reverse()
    (ds / "state.json").write_text(json.dumps(state))
    assert docs(ds) == [("5", "d"), ("data-00000-of-00002.arrow:1", "a"), ("data-00000-of-00002.arrow:2", "b"),
                        ("data-00000-of-00002.arrow:3", "c")]  # fmt: skip
    assert list_corpus_files(ds) == [ds]


def test_hf_dataset_dict_reads_splits_sorted_inside_a_bigger_folder(tmp_path):
    root = tmp_path / "corpus"
    write_hf_dataset(root / "dd" / "train", [{"text": ["t1", "t2"]}])
    write_hf_dataset(root / "dd" / "test", [{"text": ["e1"]}])
    (root / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    write(root / "a.jsonl", b'{"text": "j"}\n')
    assert list_corpus_files(root) == [root / "a.jsonl", root / "dd"]
    counters = ReadCounters()
    assert docs(root, counters=counters) == [
        ("a.jsonl:1", "j"),
        ("dd/test/data-00000-of-00001.arrow:1", "e1"),
        ("dd/train/data-00000-of-00001.arrow:1", "t1"),
        ("dd/train/data-00000-of-00001.arrow:2", "t2"),
    ]
    assert (counters.files, counters.records) == (3, 4)


def test_hf_save_to_disk_from_the_datasets_library(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["x", "y", ""], "id": ["r0", "r1", "r2"]})
    datasets.DatasetDict({"train": ds, "validation": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert docs(tmp_path / "dd") == [("r0", "x"), ("r1", "y"), ("r2", ""), ("r1", "y")]


# --- listing and order -------------------------------------------------------------------------


def test_nested_folder_order_is_sorted_relative_paths_and_skips_other_files(tmp_path):
    root = tmp_path / "c"
    for rel in ["b.jsonl", "a/z.jsonl", "a/b/y.jsonl", "a-b.jsonl", "A.jsonl"]:
        write(root / rel, json.dumps({"text": rel}).encode() + b"\n")
    for rel in ["notes.csv", ".hidden.jsonl", ".git/x.jsonl", "README", "a/x.json.gz"]:
        write(root / rel, b"{}")
    order = ["A.jsonl", "a-b.jsonl", "a/b/y.jsonl", "a/z.jsonl", "b.jsonl"]
    assert [p.relative_to(root).as_posix() for p in list_corpus_files(root)] == order
    assert docs(root) == [(f"{rel}:1", rel) for rel in order]


def test_unsupported_files_are_listed_for_the_warning(tmp_path):
    root = tmp_path / "c"
    write(root / "b.jsonl", GOOD)
    for rel in ["z/notes.csv", "a.bin", ".hidden.csv"]:
        write(root / rel, b"x")
    listing = corpus.scan_corpus(root)
    assert [p.relative_to(root).as_posix() for p in listing.unsupported] == ["a.bin", "z/notes.csv"]
    assert listing.sources == [root / "b.jsonl"] and listing.packprep_folders == []


def test_packprep_outputs_and_stores_inside_the_corpus_are_passed_over(tmp_path):
    """`packprep pack corpus corpus/out`: OUT (finished or interrupted) and OUT/work are never corpus,
    and do not change the corpus fingerprint, so a rerun reuses the store. A user's own manifest.json stays corpus."""
    from packprep.pipeline import pack

    root = tmp_path / "c"
    write(root / "a.jsonl", b"".join(b'{"text": "document %d with some words"}\n' % i for i in range(20)))
    write(root / "own" / "manifest.json", b'[{"text": "a user file that happens to be called manifest.json"}]')
    sources, fingerprint = list_corpus_files(root), corpus_fingerprint(root)
    pack(root, root / "out")
    write(root / "interrupted" / "manifest.partial.json", b'{"key": "k", "shards": []}')
    write(root / "being-written" / "tokens.bin.tmp", b"")
    write(root / "being-written" / "dedup.json", b"{}")
    listing = corpus.scan_corpus(root)
    assert listing.sources == sources == [root / "a.jsonl", root / "own" / "manifest.json"]
    assert listing.packprep_folders == [root / "being-written", root / "interrupted", root / "out"]
    assert corpus_fingerprint(root) == fingerprint


def test_a_packprep_output_or_store_given_as_the_corpus_says_what_to_pass(tmp_path):
    from packprep.pipeline import pack

    corpus_file = write(tmp_path / "c.jsonl", b'{"text": "some text to pack"}\n' * 3)
    out = pack(corpus_file, tmp_path / "out")
    with pytest.raises(PackprepError) as info:
        list_corpus_files(out)
    assert str(info.value) == (
        f"{out}: is a packprep output, not a corpus: pass the corpus it was made from ({corpus_file}), "
        f"or {(out / 'work').resolve()} to reuse its document store"
    )
    with pytest.raises(PackprepError, match=r"is a packprep document store, not a corpus: `packprep pack .*work OUT`"):
        list_corpus_files(out / "work")
    (out / "manifest.json").unlink()  # an interrupted run: only its journal says what it is
    write(out / "manifest.partial.json", b'{"key": "k", "shards": []}')
    with pytest.raises(PackprepError, match=r"is a packprep output, not a corpus: .* or .*out/work to reuse"):
        list_corpus_files(out)


def test_listing_errors(tmp_path):
    with pytest.raises(PackprepError, match="no such file or folder"):
        list_corpus_files(tmp_path / "missing")
    bad = write(tmp_path / "data.csv", b"a,b\n")
    with pytest.raises(PackprepError, match=r"data\.csv: unsupported file type; expected one of \.jsonl"):
        list_corpus_files(bad)
    with pytest.raises(PackprepError, match="folder has no corpus files"):
        docs(tmp_path)  # only data.csv in it


# --- record errors: exact file:line --------------------------------------------------------------

GOOD = b'{"text": "ok"}\n'


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        (b'{"text": "unterminated}', r"invalid JSON \(unexpected end of data at column 24\); fix the record"),
        (b'["text"]', r"record is a JSON array, not an object"),
        (b'{"body": "x"}', r"no field 'text'; use --text-field to name the text field \(fields here: body\)"),
        (b'{"text": 3}', r"field 'text' is a JSON number, not a string; use --text-field"),
        (b'{"text": null}', r"field 'text' is a JSON null, not a string"),
        (b'{"text": "caf\xe9"}', r"not valid UTF-8 \(byte 0xe9 at column 14\); re-encode the file as UTF-8"),
    ],
)
def test_record_errors_name_file_and_line(tmp_path, bad_line, match):
    path = write(tmp_path / "c.jsonl", GOOD + b"\n" + bad_line + b"\n" + GOOD)
    error = raises_at(path, 3, match)
    assert str(error).startswith(f"{path}:3: ") and "\n" not in str(error)


def test_json_list_errors(tmp_path):
    path = write(tmp_path / "l.json", b'[{"text": "a"},\n "not an object"]')
    raises_at(path, 2, "record is a JSON string, not an object")
    write(path, b'[{"text": "a"},\n {"text": }]')
    raises_at(path, 2, r"invalid JSON \(unexpected character")
    write(path, b'[{"text": "a"},\n\n {"text": "\xff"}]')
    raises_at(path, 3, "not valid UTF-8", on_error="skip")  # the whole list is unreadable: not skippable


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("o.json", {"text": "one record"}, "a JSON object, not a list of records or JSON lines; if it is one record, write it on one line"),
        ("o.jsonl", {"meta": 1, "rows": [{"text": "a"}, {"text": "b"}]}, "a JSON object, not a list of records or JSON lines; its field 'rows' holds 2 records"),
        ("o.json", {"meta": {"x": 1}}, "a JSON object, not a list of records or JSON lines; write one record per line"),
        ("l.jsonl", [{"text": "a"}, {"text": "b"}], "a JSON list spread over lines, not JSON lines; name it .json"),
    ],
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_pretty_printed_json_is_reported_as_what_it_is(tmp_path, name, value, message, on_error):
    """Not "invalid JSON" at line 1, and not skippable: the file is not a set of bad records."""
    path = write(tmp_path / name, json.dumps(value, indent=2).encode())
    error = raises_at(path, None, re.escape(message), on_error=on_error)
    assert str(error).startswith(f"{path}: {message}")


def test_pretty_printed_json_values_one_after_another(tmp_path):
    path = write(tmp_path / "m.jsonl", b"".join(json.dumps({"text": t}, indent=2).encode() + b"\n" for t in "ab"))
    raises_at(path, None, r"pretty-printed JSON spread over lines, not JSON lines .* `jq -c \. ")
    gz = write(tmp_path / "l.jsonl.gz", gzip.compress(json.dumps([{"text": "a"}], indent=1).encode()))
    raises_at(gz, None, "a JSON list spread over lines, not JSON lines; decompress it and name it .json")
    # A broken first record that is not pretty-printing is still a record error (line 1, skippable).
    broken = write(tmp_path / "b.jsonl", b'{"text": "unterminated\n' + GOOD)
    raises_at(broken, 1, r"invalid JSON \(unexpected end of data")
    assert docs(broken, on_error="skip") == [("b.jsonl:2", "ok")]


def test_txt_not_utf8(tmp_path):
    path = write(tmp_path / "t.txt", b"fine\nalso fine\nbad \xc3\x28 here")
    raises_at(path, 3, r"not valid UTF-8 \(byte 0xc3 at column 5\)")


def read_until_error(path: Path, **kwargs) -> tuple[int, PackprepError]:
    """How many documents came out before the PackprepError, and the error."""
    seen = 0
    with pytest.raises(PackprepError) as info:
        for _ in iter_documents(path, **kwargs):
            seen += 1
    return seen, info.value


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_truncated_archive_names_the_last_good_line(tmp_path, suffix):
    raw = b"".join(b'{"text": "%d"}\n' % i for i in range(50000))
    data = gzip.compress(raw) if suffix == ".gz" else zstandard.ZstdCompressor().compress(raw)
    path = write(tmp_path / f"c.jsonl{suffix}", data[: len(data) * 3 // 4])
    seen, error = read_until_error(path, on_error="skip")  # a broken archive is not a skippable record
    assert 0 < seen < 50000 and (error.path, error.line) == (str(path), seen)
    assert f"{suffix[1:]} data is truncated or corrupt after line {seen}, the last good line" in str(error)


def test_corrupt_archives(tmp_path):
    path = write(tmp_path / "c.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    raises_at(path, None, r"zst data is truncated or corrupt before the first line \(.*\); re-download")
    path = write(tmp_path / "c.jsonl.gz", gzip.compress(GOOD * 3) + b"trailing junk")
    seen, error = read_until_error(path)
    assert seen == 3 and error.line == 3 and "gz data is truncated or corrupt after line 3" in str(error)


def test_parquet_and_arrow_without_text_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), path)
    raises_at(path, None, r"no column 'text' \(columns: body, id\); use --text-field", on_error="skip")
    pq.write_table(pa.table({"text": [1, 2]}), path)
    raises_at(path, None, "column 'text' holds int64, not strings")
    ds = write_hf_dataset(tmp_path / "ds", [{"content": ["x"]}])
    arrow = ds / "data-00000-of-00001.arrow"
    with pytest.raises(PackprepError, match="no column 'text' \\(columns: content\\)") as info:
        docs(ds)
    assert info.value.path == str(arrow)


# --- skipping ---------------------------------------------------------------------------------


def test_records_with_an_id_are_counted(tmp_path):
    counters = ReadCounters()
    docs(write(tmp_path / "c.jsonl", JSONL), counters=counters)
    assert (counters.records, counters.with_id) == (4, 2)
    counters = ReadCounters()
    docs(write(tmp_path / "c.jsonl", JSONL), id_field="doc_id", counters=counters)
    assert (counters.records, counters.with_id) == (4, 0)
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "id": [1, None, 3]}), parquet)
    counters = ReadCounters()
    docs(parquet, counters=counters)
    assert (counters.records, counters.with_id) == (3, 2)


def test_skip_counts_bad_records_and_keeps_first_messages(tmp_path):
    bad = [b"{oops", b"[1]", b'{"body": 1}', b'{"text": 1}', b'{"text": "\xff"}', b"nope", b"{"]
    lines = [GOOD] + [b + b"\n" for b in bad] + [GOOD]
    path = write(tmp_path / "c.jsonl", b"".join(lines))
    counters = ReadCounters()
    assert docs(path, on_error="skip", counters=counters) == [("c.jsonl:1", "ok"), ("c.jsonl:9", "ok")]
    assert (counters.files, counters.records, counters.skipped) == (1, 2, 7)
    assert counters.bytes_read == path.stat().st_size
    assert [m.split(": ")[0] for m in counters.first_errors] == [f"{path}:{k}" for k in range(2, 7)]
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), parquet)
    counters = ReadCounters()
    assert docs(parquet, on_error="skip", counters=counters) == [("p.parquet:1", "a"), ("p.parquet:3", "c")]
    assert counters.skipped == 1
    assert counters.first_errors == [f"{parquet}:2: column 'text' is null; fill it or pass --on-error skip"]


# --- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_follows_content_and_names_not_mtimes(tmp_path):
    root = tmp_path / "c"
    a = write(root / "a.jsonl", GOOD)
    write_hf_dataset(root / "ds", [{"text": ["x"]}])
    first = corpus_fingerprint(root)
    assert len(first) == 32 and first == corpus_fingerprint(root)
    os.utime(a, (1, 1))
    write(root / "ignored.csv", b"x")
    write(root / "ds" / "cache-1234.arrow", b"not listed in state.json")
    assert corpus_fingerprint(root) == first
    write(a, GOOD.replace(b"ok", b"OK"))
    changed = corpus_fingerprint(root)
    assert changed != first
    write(a, GOOD)
    assert corpus_fingerprint(root) == first
    write_arrow_stream(root / "ds" / "data-00000-of-00001.arrow", {"text": ["y"]})
    assert corpus_fingerprint(root) != first
    write_arrow_stream(root / "ds" / "data-00000-of-00001.arrow", {"text": ["x"]})
    a.rename(root / "b.jsonl")
    assert corpus_fingerprint(root) not in (first, changed)
