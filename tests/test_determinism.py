"""The same input, options and seed give the same bytes, whatever --workers says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from packprep import __version__
from packprep._files import load_json
from tests.conftest import make_documents, write_jsonl
from tests.test_resume import REPO, output_digest

PACKPREP = [sys.executable, "-m", "packprep.cli"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    docs = make_documents(300, seed=7)
    write_jsonl(folder / "a.jsonl", docs[:150])
    write_jsonl(folder / "b" / "c.jsonl", docs[150:])
    return folder


def pack(corpus, out, *options):
    subprocess.run([*PACKPREP, "pack", str(corpus), str(out), "--quiet", *options], cwd=REPO, check=True)
    return output_digest(out)


@pytest.mark.parametrize(
    "options",
    [
        ["--strategy", "eos", "--seq-len", "128", "--shard-size", "16"],
        ["--strategy", "random", "--packing", "bestfit", "--seq-len", "100", "--seed", "5"],
    ],
    ids=["eos-split", "random-bestfit"],
)
def test_same_bytes_for_any_workers_and_every_run(corpus, tmp_path, options):
    one = pack(corpus, tmp_path / "w1", *options, "--workers", "1")
    two = pack(corpus, tmp_path / "w2", *options, "--workers", "2")
    again = pack(corpus, tmp_path / "again", *options)
    assert one == two == again


def test_icp_same_bytes_for_any_workers(tmp_path):
    # Embedding runs torch matmuls whose thread count could change the last bits.
    folder = tmp_path / "corpus"
    write_jsonl(folder / "a.jsonl", make_documents(24, seed=3))
    options = ["--strategy", "icp", "--seq-len", "128", "--knn", "4"]
    assert pack(folder, tmp_path / "w1", *options, "--workers", "1") == pack(folder, tmp_path / "w2", *options, "--workers", "2")


def test_a_different_seed_gives_different_shards(corpus, tmp_path):
    options = ["--strategy", "eos", "--seq-len", "128"]
    assert pack(corpus, tmp_path / "s0", *options) != pack(corpus, tmp_path / "s1", *options, "--seed", "1")


def test_manifest_records_every_option_the_version_and_the_input(corpus, tmp_path):
    out = tmp_path / "out"
    pack(corpus, out, "--strategy", "random", "--packing", "bestfit", "--seq-len", "96", "--seed", "4", "--text-field", "text")
    manifest = load_json(out / "manifest.json")
    assert manifest["packprep_version"] == __version__
    assert manifest["config"] == {
        "strategy": "random", "seq_len": 96, "packing": "bestfit", "seed": 4, "rows_per_shard": None,
        "dedup": None, "semantic_threshold": None, "clusters": None, "knn": 10,
    }
    assert manifest["tokenize_config"]["text_field"] == "text" and manifest["tokenize_config"]["tokenizer"] == "cl100k"
    assert manifest["source"]["fingerprint"] and manifest["tokenizer"]["fingerprint"]
