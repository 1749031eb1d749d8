"""packprep verify: clean outputs pass; each kind of damage is reported where it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from packprep.io import load_json, save_json, save_npy, sha256_file
from packprep.config import PackConfig
from packprep.errors import PackprepError
from packprep.formats import npy
from packprep.pipeline import pack
from packprep.verify import Problem, verify_output

from tests.conftest import copy_output, make_documents, write_jsonl, write_small_corpus


def packed(corpus: Path, out: Path, *, strategy: str = "eos", packing: str = "split", **options) -> Path:
    return pack(corpus, out, config=PackConfig(strategy=strategy, packing=packing, seq_len=64, rows_per_shard=7, **options))


def rewrite(out: Path, shard: str, array: str, values: np.ndarray) -> None:
    """Replace one shard array and fix its checksum, so only the deeper checks can notice."""
    path = npy.shard_file(out, shard, array)
    save_npy(path, values)
    manifest = load_json(out / npy.MANIFEST_NAME)
    entry = next(s for s in manifest["shards"] if s["name"] == shard)
    entry["files"][array]["sha256"] = sha256_file(path)
    save_json(out / npy.MANIFEST_NAME, manifest)


def load(out: Path, shard: str, array: str) -> np.ndarray:
    return np.load(npy.shard_file(out, shard, array))


def row_of(out: Path, shard: str, segment: int) -> int:
    return int(np.searchsorted(load(out, shard, "row_ptr"), segment, side="right")) - 1


@pytest.fixture(scope="module")
def packed_once(tmp_path_factory) -> Path:
    """The eos/split output of the small corpus, packed once; each test damages its own copy."""
    folder = tmp_path_factory.mktemp("verify")
    return packed(write_small_corpus(folder / "corpus"), folder / "out")


@pytest.fixture
def out(packed_once, tmp_path) -> Path:
    return copy_output(packed_once, tmp_path / "out")


@pytest.mark.parametrize("strategy", ["eos", "random"])
@pytest.mark.parametrize("packing", ["split", "bestfit"])
def test_a_clean_output_has_no_problems(small_corpus, tmp_path, strategy, packing):
    out = packed(small_corpus, tmp_path / "out", strategy=strategy, packing=packing)
    manifest = load_json(out / npy.MANIFEST_NAME)
    assert len(manifest["shards"]) > 1
    rows_seen = []
    assert verify_output(out, progress=rows_seen.append) == []
    assert sum(rows_seen) == manifest["counts"]["num_sequences"]
    assert verify_output(out, against=out / "work") == []


def test_dropped_documents_are_not_missing(tmp_path):
    docs = make_documents(30)
    corpus = write_jsonl(tmp_path / "c.jsonl", docs + [{"id": "copy", "text": docs[3]["text"]}])
    out = packed(corpus, tmp_path / "out", dedup=True)
    dropped = np.load(out / "doc_dropped.npy")
    assert (dropped != 0).sum() >= 1
    assert verify_output(out, against=out / "work") == []

    # Claim a packed document was dropped: the count and the pieces now disagree with doc_dropped.
    kept = int(np.flatnonzero(dropped == 0)[0])
    dropped[kept] = 1
    save_npy(out / "doc_dropped.npy", dropped)
    found = verify_output(out, against=out / "work")
    assert any(p.where == "manifest.json" and "counts.num_documents" in p.message for p in found)
    assert any(p.where.startswith(f"document {kept} ('doc-") and p.message.startswith("dropped but has") for p in found)


def test_a_flipped_byte_fails_the_checksum_of_its_shard(out):
    path = npy.shard_file(out, "shard-00001", "input_ids")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    found = verify_output(out)
    assert [p.where for p in found] == ["shard-00001.input_ids.npy"]
    assert "sha256" in found[0].message and "does not match the manifest" in found[0].message


@pytest.mark.parametrize("array", ["input_ids", "seg_doc"])
def test_a_truncated_file_is_reported_not_raised(out, array):
    path = npy.shard_file(out, "shard-00000", array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    found = verify_output(out)
    messages = {p.message.split(" (")[0] for p in found if p.where == f"shard-00000.{array}.npy"}
    assert {"cannot be read"} <= messages
    assert all(p.where.startswith(f"shard-00000.{array}") for p in found)


def test_shuffled_segment_starts_are_caught_by_the_boundary_check(out):
    starts = load(out, "shard-00001", "seg_start")
    shuffled = np.random.default_rng(0).permutation(starts)
    assert (shuffled != starts).any()
    rewrite(out, "shard-00001", "seg_start", shuffled)
    found = verify_output(out)
    first_changed = int(np.flatnonzero(shuffled != starts)[0])
    expected_where = f"shard-00001.seg_start.npy row {row_of(out, 'shard-00001', first_changed)}"
    assert expected_where in [p.where for p in found]
    assert not any("sha256" in p.message for p in found)


def test_an_offset_past_the_document_end(out):
    offsets = load(out, "shard-00000", "seg_doc_offset")
    docs = load(out, "shard-00000", "seg_doc")
    doc_lengths = np.load(out / "doc_lengths.npy")
    offsets[4] = doc_lengths[docs[4]] - 1
    rewrite(out, "shard-00000", "seg_doc_offset", offsets)
    found = verify_output(out)
    problem = next(p for p in found if p.where == f"shard-00000.seg_doc_offset.npy row {row_of(out, 'shard-00000', 4)}")
    assert f"of document {docs[4]}, whose sequence has {doc_lengths[docs[4]]} tokens" in problem.message


def test_a_token_id_outside_the_vocabulary(out):
    vocab_size = load_json(out / npy.MANIFEST_NAME)["tokenizer"]["vocab_size"]
    ids = load(out, "shard-00002", "input_ids")
    ids[3, 5] = vocab_size
    rewrite(out, "shard-00002", "input_ids", ids)
    assert verify_output(out) == [
        Problem("shard-00002.input_ids.npy row 3", f"token id {vocab_size} >= vocab_size {vocab_size}")
    ]


def test_a_missing_separator(out):
    sep_id = load_json(out / npy.MANIFEST_NAME)["sep_id"]
    doc_lengths = np.load(out / "doc_lengths.npy")
    shard = "shard-00001"
    docs, offsets = load(out, shard, "seg_doc"), load(out, shard, "seg_doc_offset")
    starts, lengths = load(out, shard, "seg_start"), load(out, shard, "seg_length")
    i = int(np.flatnonzero(offsets + lengths == doc_lengths[docs])[0])  # a piece that ends its document
    row, position = row_of(out, shard, i), int(starts[i] + lengths[i] - 1)
    ids = load(out, shard, "input_ids")
    assert ids[row, position] == sep_id
    ids[row, position] = sep_id - 1
    rewrite(out, shard, "input_ids", ids)
    found = verify_output(out, against=out / "work")
    assert [p.where for p in found] == [f"{shard}.input_ids.npy row {row}"]
    assert f"at position {position}, not the separator {sep_id}" in found[0].message


def test_a_document_swapped_for_another_is_caught_only_against_the_store(out):
    doc_lengths = np.load(out / "doc_lengths.npy")
    # A whole document in one piece, replaced by a longer document's first tokens.
    for entry in load_json(out / npy.MANIFEST_NAME)["shards"]:
        shard = entry["name"]
        docs, offsets, lengths = (load(out, shard, a) for a in ("seg_doc", "seg_doc_offset", "seg_length"))
        whole = np.flatnonzero((offsets == 0) & (lengths == doc_lengths[docs]))
        if len(whole):
            break
    i = int(whole[0])
    lost = int(docs[i])
    twice = int(np.flatnonzero(doc_lengths > lengths[i])[0])
    docs[i] = twice
    rewrite(out, shard, "seg_doc", docs)

    found = verify_output(out)  # coverage needs no store: the lost and the repeated document show
    assert Problem(f"document {lost} ('doc-{lost}')", "kept but in no row (1 kept documents missing)") in found
    repeated = [p for p in found if p.message.startswith(f"document {twice} ('doc-{twice}') repeats offsets 0..")]
    assert len(repeated) == 1 and "appears more than once" in repeated[0].message
    assert not any("is not the store's" in p.message for p in found)
    assert any("is not the store's" in p.message for p in verify_output(out, against=out / "work"))


def test_a_gap_inside_a_document(tmp_path, small_corpus):
    out = packed(small_corpus, tmp_path / "out", packing="bestfit")
    doc_lengths = np.load(out / "doc_lengths.npy")
    docs, offsets = load(out, "shard-00000", "seg_doc"), load(out, "shard-00000", "seg_doc_offset")
    lengths = load(out, "shard-00000", "seg_length")
    # A middle piece of a document cut into seq_len pieces, moved one token on: still inside its document.
    middle = int(np.flatnonzero((offsets > 0) & (offsets + lengths < doc_lengths[docs]))[0])
    offsets[middle] += 1
    rewrite(out, "shard-00000", "seg_doc_offset", offsets)
    doc = int(docs[middle])
    found = verify_output(out)
    assert Problem(
        f"shard-00000 row {row_of(out, 'shard-00000', middle)}",
        f"document {doc} ('doc-{doc}') no piece holds offsets {offsets[middle] - 1}..{offsets[middle]}",
    ) in found


def test_missing_files(out):
    npy.shard_file(out, "shard-00001", "row_ptr").unlink()
    found = verify_output(out)
    assert found == [Problem("shard-00001.row_ptr.npy", "missing")]
    (out / "doc_lengths.npy").unlink()
    assert verify_output(out) == [Problem("doc_lengths.npy", "missing")]


def test_a_count_that_disagrees(out):
    manifest = load_json(out / npy.MANIFEST_NAME)
    real = manifest["counts"]["num_tokens"]
    manifest["counts"]["num_tokens"] = real + 1
    save_json(out / npy.MANIFEST_NAME, manifest)
    assert verify_output(out) == [Problem("manifest.json", f"counts.num_tokens is {real + 1} but the shards hold {real}")]


def test_a_manifest_of_another_version(out):
    manifest = load_json(out / npy.MANIFEST_NAME)
    manifest["format_version"] = 2
    save_json(out / npy.MANIFEST_NAME, manifest)
    (found,) = verify_output(out)
    assert found.where == "manifest.json" and "version 2" in found.message
    (out / npy.MANIFEST_NAME).write_text("{not json")
    (found,) = verify_output(out)
    assert found.where == "manifest.json" and found.message.startswith("not valid JSON")


def test_no_output_or_no_manifest_is_a_user_error(out, tmp_path):
    with pytest.raises(PackprepError, match="no such output folder"):
        verify_output(tmp_path / "nowhere")
    (out / npy.MANIFEST_NAME).unlink()
    with pytest.raises(PackprepError, match="not a finished packprep output"):
        verify_output(out)


def test_cli_exit_codes_and_messages(out):
    from typer.testing import CliRunner

    from packprep.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(out), "--against", str(out / "work")])
    assert result.exit_code == 0 and "ok:" in result.output
    path = npy.shard_file(out, "shard-00001", "input_ids")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 1
    assert "error:" in result.output and "shard-00001.input_ids.npy" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["verify", str(out / "nope")])
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_a_changed_document_table_file_is_caught(out):
    lengths = np.load(out / "doc_lengths.npy")
    lengths[0] += 0  # same values, rewritten: the checksum still matches
    np.save(out / "doc_lengths.npy", lengths)
    assert verify_output(out) == []
    dropped = np.load(out / "doc_dup_of.npy")
    dropped[0] = 5
    np.save(out / "doc_dup_of.npy", dropped)
    assert Problem("doc_dup_of.npy", "sha256 does not match the manifest (the file changed after it was written)") in verify_output(out)


# ---- the converted copies (OUT/arrow, OUT/megatron) against the npy shards ----


@pytest.fixture(scope="module")
def converted_once(packed_once, tmp_path_factory) -> Path:
    """A copy of ``packed_once`` converted to megatron and arrow, once; each test damages its own copy."""
    from packprep.convert import convert

    out = copy_output(packed_once, tmp_path_factory.mktemp("converted") / "out")
    convert(out, to="megatron")
    convert(out, to="arrow", labels=True)
    return out


@pytest.fixture
def converted(converted_once, tmp_path) -> Path:
    return copy_output(converted_once, tmp_path / "out")


def test_clean_converted_copies_have_no_problems(converted):
    assert verify_output(converted) == []


def test_a_changed_token_in_the_megatron_copy(converted):
    path = converted / "megatron" / "text_document.bin"
    data = np.fromfile(path, dtype=np.uint16)  # cl100k fits uint16 in Megatron's .bin
    data[40] ^= 0x11
    data.tofile(path)
    found = verify_output(converted)
    assert len(found) == 1, found
    assert found[0].where == "megatron/text_document.bin"
    assert "offset" in found[0].message and "the rows hold" in found[0].message


def test_a_shifted_boundary_in_the_megatron_index(converted):
    from packprep.formats.megatron import _HEADER

    path = converted / "megatron" / "text_document.idx"
    raw = bytearray(path.read_bytes())
    lengths = np.frombuffer(raw, dtype="<i4", count=2, offset=_HEADER.size).copy()
    lengths += [1, -1]  # the same tokens, one moved from the second document to the first
    raw[_HEADER.size : _HEADER.size + 8] = lengths.tobytes()
    path.write_bytes(bytes(raw))
    found = verify_output(converted)
    assert [p.where for p in found] == ["megatron/text_document.idx"]
    assert "sequence_lengths of sequence 0" in found[0].message


def test_a_missing_or_stale_conversion(converted):
    (converted / "megatron" / "packprep.json").unlink()
    info = load_json(converted / "arrow" / "packprep.json")
    save_json(converted / "arrow" / "packprep.json", {**info, "source_key": "another"})
    found = {p.where: p.message for p in verify_output(converted)}
    assert "did not finish" in found["megatron/packprep.json"]
    assert "another output" in found["arrow/packprep.json"]


@pytest.mark.parametrize("copy", ["parquet", "save_to_disk"])
def test_a_changed_row_in_the_arrow_copy(converted, copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = converted / "arrow"
    if copy == "parquet":
        path = dest / "data" / "train-00001-of-00023.parquet"
        table = pq.read_table(path)
    else:
        path = dest / "save_to_disk" / "data-00001-of-00023.arrow"
        with pa.OSFile(str(path)) as source:  # not memory-mapped: the file is rewritten below
            table = pa.ipc.open_stream(source).read_all()
    rows = table.column("input_ids").to_pylist()
    rows[2][5] += 1
    table = table.set_column(0, "input_ids", pa.array(rows, type=pa.list_(pa.int32())))
    if copy == "parquet":
        pq.write_table(table, path)
    else:
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            writer.write_table(table)
    found = verify_output(converted)
    assert [str(p) for p in found] == [f"arrow/{path.relative_to(dest)}: row 2: input_ids differs from the npy shard's"]


def test_a_segment_boundary_moved_in_the_arrow_copy(converted):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in sorted((converted / "arrow" / "data").glob("*.parquet")):  # the first row of several segments
        table = pq.read_table(path)
        lengths = table.column("seq_lengths").to_pylist()
        row = next((i for i, r in enumerate(lengths) if len(r) > 1), None)
        if row is not None:
            break
    lengths[row][0] += 1
    lengths[row][1] -= 1
    pq.write_table(table.set_column(2, "seq_lengths", pa.array(lengths, type=pa.list_(pa.int32()))), path)
    found = verify_output(converted)
    assert [str(p) for p in found] == [f"arrow/data/{path.name}: row {row}: seq_lengths differs from the npy shard's"]


def test_cli_reports_a_corrupt_megatron_copy(converted):
    from typer.testing import CliRunner

    from packprep.cli import app

    path = converted / "megatron" / "text_document.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", str(converted), "-q"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "megatron/text_document.bin" in result.output
