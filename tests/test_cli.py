"""The command line as a user meets it: exit codes, one-line errors, inspect output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packprep.cli import app
from tests.conftest import write_jsonl

runner = CliRunner()
INSPECT_KEYS = {
    "num_sequences", "seq_len", "num_tokens", "pad_tokens", "fill_ratio",
    "num_documents", "num_segments", "split_documents", "strategy",
}


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_pack_then_inspect_json(small_corpus, tmp_path):
    out = tmp_path / "out"
    result = run("pack", small_corpus, out, "--strategy", "eos", "--seq-len", "128", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert INSPECT_KEYS <= set(stats)
    assert stats["strategy"] == "eos" and stats["seq_len"] == 128 and stats["num_documents"] == 40
    assert stats["num_tokens"] + stats["pad_tokens"] == stats["num_sequences"] * 128
    assert stats["fill_ratio"] == pytest.approx(stats["num_tokens"] / (stats["num_sequences"] * 128))


def test_inspect_tables_plot_and_row(small_corpus, tmp_path):
    out = tmp_path / "out"
    assert run("pack", small_corpus, out, "--seq-len", "64", "--packing", "bestfit", "-q").exit_code == 0
    result = run("inspect", out, "--plot", tmp_path / "hist.png")
    assert result.exit_code == 0, result.output
    assert "fill ratio" in result.stdout and "split documents" in result.stdout
    assert (tmp_path / "hist.png").stat().st_size > 10_000
    result = run("inspect", out, "--row", "0")
    assert result.exit_code == 0, result.output
    assert "doc-" in result.stdout
    assert run("inspect", out, "--row", "100000").exit_code == 2


def test_missing_path_is_one_line_exit_2(tmp_path):
    result = run("pack", tmp_path / "nope", tmp_path / "out")
    assert result.exit_code == 2
    assert "nope" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_invalid_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n{"text": "fine again"}\n')
    result = run("pack", bad, tmp_path / "out", "-q")
    assert result.exit_code == 2
    assert "bad.jsonl:2:" in result.output and "Traceback" not in result.output
    result = run("pack", bad, tmp_path / "out", "-q", "--on-error", "skip")
    assert result.exit_code == 0, result.output


def test_missing_text_field_names_file_and_line(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "a b c"}, {"body": "no text here"}])
    result = run("tokenize", corpus, tmp_path / "work", "-q")
    assert result.exit_code == 2
    assert "c.jsonl:2:" in result.output
    assert run("tokenize", corpus, tmp_path / "work2", "-q", "--text-field", "body", "--on-error", "skip").exit_code == 0


def test_non_empty_out_is_refused_without_overwrite(small_corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run("pack", small_corpus, out, "-q")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "precious.txt").exists()
    assert run("pack", small_corpus, out, "-q", "--overwrite").exit_code == 0


def test_out_that_is_a_file_is_refused(small_corpus, tmp_path):
    out = tmp_path / "out"
    out.write_text("x")
    result = run("pack", small_corpus, out, "-q")
    assert result.exit_code == 2 and "is a file" in result.output


def test_bad_choices_and_seq_len_exit_2(small_corpus, tmp_path):
    assert run("pack", small_corpus, tmp_path / "o1", "--strategy", "nope").exit_code == 2
    result = run("pack", small_corpus, tmp_path / "o2", "--seq-len", "0", "-q")
    assert result.exit_code == 2 and "seq-len" in result.output
    result = run("pack", small_corpus, tmp_path / "o3", "--tokenizer", "no-such-tokenizer", "-q")
    assert result.exit_code == 2 and "no-such-tokenizer" in result.output


def test_inspect_of_a_non_output_exit_2(tmp_path):
    result = run("inspect", tmp_path)
    assert result.exit_code == 2 and "manifest.json" in result.output


def test_pack_format_and_convert_write_trainer_copies(small_corpus, tmp_path):
    out = tmp_path / "out"
    result = run("pack", small_corpus, out, "--seq-len", "64", "--format", "megatron", "-q")
    assert result.exit_code == 0, result.output
    assert (out / "megatron" / "text_document.idx").is_file() and (out / "manifest.json").is_file()
    result = run("convert", out, "--to", "arrow", "--labels", "-q")
    assert result.exit_code == 0, result.output
    import datasets

    rows = datasets.load_from_disk(str(out / "arrow" / "save_to_disk"))
    assert len(rows) == json.loads((out / "manifest.json").read_text())["counts"]["num_sequences"]
    assert {"input_ids", "position_ids", "seq_lengths", "labels"} <= set(rows.column_names)
    # A repack with other options replaces the conversions too: none may describe old shards.
    result = run("pack", small_corpus, out, "--seq-len", "32", "-q", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "arrow").exists() and not (out / "megatron").exists()


def test_convert_of_a_non_output_exit_2(tmp_path):
    result = run("convert", tmp_path, "--to", "arrow")
    assert result.exit_code == 2 and "no manifest.json" in result.output
    result = run("convert", tmp_path, "--to", "parquet")
    assert result.exit_code == 2


def test_an_output_inside_the_corpus_folder_is_not_read_as_corpus(small_corpus):
    """The second run of `pack corpus corpus/out` reuses everything (it used to read its own manifest)."""
    out = small_corpus / "out"
    assert run("pack", small_corpus, out, "-q", "--seq-len", "64", "--format", "arrow").exit_code == 0
    manifest = (out / "manifest.json").read_bytes()
    result = run("pack", small_corpus, out, "--seq-len", "64", "--format", "arrow")
    assert result.exit_code == 0, result.output
    assert "reusing the document store" in result.stderr and "already up to date" in result.stderr
    assert (out / "manifest.json").read_bytes() == manifest
    # A store of its own inside the corpus, made by `tokenize`, is passed over as well.
    assert run("tokenize", small_corpus, small_corpus / "work", "-q").exit_code == 0
    assert json.loads((small_corpus / "work" / "store.json").read_text())["counts"]["records"] == 41


def test_an_output_given_as_the_corpus_says_what_to_pass_instead(small_corpus, tmp_path):
    out = tmp_path / "out"
    assert run("pack", small_corpus, out, "-q", "--seq-len", "64").exit_code == 0
    for command in ("pack", "tokenize"):
        result = run(command, out, tmp_path / "again", "-q")
        assert result.exit_code == 2 and not (tmp_path / "again").exists()
        assert result.stderr == (
            f"error: {out}: is a packprep output, not a corpus: pass the corpus it was made from ({small_corpus}), "
            f"or {(out / 'work').resolve()} to reuse its document store\n"
        )
    result = run("tokenize", out / "work", tmp_path / "again", "-q")
    assert result.exit_code == 2 and "is a packprep document store, not a corpus" in result.stderr
    assert run("pack", out / "work", tmp_path / "again", "-q", "--seq-len", "32").exit_code == 0  # a store is a source


def test_whitespace_only_documents_are_dropped_and_counted_as_empty(tmp_path):
    texts = ["", " ", "\n\t  \r\n", "\u3000\u00a0", "a real document", "  padded but real  "]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    result = run("pack", corpus, tmp_path / "out", "--seq-len", "16")
    assert result.exit_code == 0, result.output
    assert "dropped 4 empty or whitespace-only documents" in result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["store_counts"] == {"records": 6, "dropped_empty": 4, "skipped_records": 0}
    assert manifest["counts"]["num_documents"] == 2


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def test_what_is_silently_ignored_gets_one_warning_line_each_even_when_quiet(small_corpus, tmp_path):
    for name in ("notes.csv", "sub/data.parquet.bak", "README"):
        (small_corpus / name).write_text("not corpus")
    result = run("pack", small_corpus, tmp_path / "out", "-q", "--id-field", "doc_id", "--labels", "--seq-len", "64")
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        "warning: --labels adds a column to the arrow copy only; ignored with --format npy",
        f"warning: {small_corpus}: 3 files of other types not read (e.g. {small_corpus / 'README'}); "
        "corpus files are .jsonl, .jsonl.gz, .jsonl.zst, .json, .parquet, .txt, .md",
        "warning: --id-field 'doc_id': no record has this field; ids are path:line instead",
    ]
    assert result.stderr.count("\n") == 3  # nothing else under --quiet
    result = run("convert", tmp_path / "out", "--to", "megatron", "--labels", "-q")
    assert result.exit_code == 0 and warnings_of(result) == [
        "warning: --labels adds a column to the arrow copy only; ignored with --to megatron"
    ]


def test_no_warnings_for_what_is_as_asked(small_corpus, tmp_path):
    """The default id field "id" falls back to path:line silently (documented); ids that exist, arrow labels: no warning."""
    (small_corpus / "plain.txt").write_text("a text file has no id field")
    result = run("pack", small_corpus, tmp_path / "out", "--seq-len", "64", "--format", "arrow", "--labels")
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == []
    result = run("tokenize", small_corpus / "plain.txt", tmp_path / "work")
    assert result.exit_code == 0 and warnings_of(result) == []
def _commands():
    import typer

    group = typer.main.get_command(app)
    return [((), group)] + [((name,), command) for name, command in sorted(group.commands.items())]


@pytest.mark.parametrize("path,command", _commands(), ids=lambda v: " ".join(v) or "packprep" if isinstance(v, tuple) else "")
def test_help_at_80_columns_shows_every_option_whole(path, command):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    words = set(result.output.replace(",", " ").split())
    for param in command.params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert name in words, f"`packprep {' '.join(path)} --help` cuts or hides {name}:\n{result.output}"
    if any(param.name == "engine" for param in command.params):
        assert "packprep[ray]" in result.output  # not eaten as rich markup


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_an_error_not_exit_0(small_corpus, tmp_path):
    """The command's own exit (``cli._exit``, no interpreter teardown) still reports output lost at the
    final flush, as Python's ordinary exit does: ``inspect --json > file`` on a full disk is not a success."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    assert run("pack", small_corpus, out, "--strategy", "eos", "--seq-len", "128", "--quiet").exit_code == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the output must wait in the buffer
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", "from packprep.cli import main; main()", "inspect", str(out), "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    assert done.returncode == 120
    assert done.stderr.strip().splitlines() == ["error: the output could not be written: No space left on device"]
