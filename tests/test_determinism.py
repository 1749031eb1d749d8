"""The same input, options and seed give the same bytes, whatever --workers says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from packprep import __version__
from packprep.io import load_json
from packprep.tokenizers.bpe_openai import _PARALLEL_MIN_CHARS
from packprep.corpus import corpus_fingerprint
from tests.conftest import make_documents, write_jsonl
from tests.helpers import REPO_ROOT as REPO, output_digest

PACKPREP = [sys.executable, "-m", "packprep.cli"]

# The CLI with a spy on the bpe-openai backend: at exit it writes how many texts this
# process sent to tokenizer worker processes, so a test can tell that --workers 2 really
# split the work (below _PARALLEL_MIN_CHARS both settings would encode in-process).
SPIED_PACKPREP = [sys.executable, "-c", """
import atexit, os, sys
from packprep.tokenizers import bpe_openai as backend
sent = [0]
send = backend._EncoderProcess.send
def spy(self, texts):
    sent[0] += len(texts)
    send(self, texts)
backend._EncoderProcess.send = spy
atexit.register(lambda: open(os.environ["SPY_FILE"], "w").write(str(sent[0])))
sys.argv[0] = "packprep"
from packprep.cli import main
main()
"""]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 1,100 documents, ~1.2M characters: one tokenizer batch above the 1 MiB at which
    # bpe-openai starts worker processes, so --workers 1 and 2 take different paths.
    folder = tmp_path_factory.mktemp("corpus")
    docs = make_documents(1100, seed=7)
    assert sum(len(d["text"]) for d in docs) > _PARALLEL_MIN_CHARS
    write_jsonl(folder / "a.jsonl", docs[:550])
    write_jsonl(folder / "b" / "c.jsonl", docs[550:])
    return folder


def pack(corpus, out, *options):
    subprocess.run([*PACKPREP, "pack", str(corpus), str(out), "--quiet", *options], cwd=REPO, check=True)
    return output_digest(out)


def pack_counting_remote_texts(corpus, out, *options) -> tuple[dict[str, str], int]:
    """pack's output digest, and how many texts it sent to tokenizer worker processes."""
    spy_file = out.with_name(out.name + ".sent")
    env = {**os.environ, "SPY_FILE": str(spy_file), "PACKPREP_TOKENIZER_BACKEND": "bpe-openai"}
    subprocess.run([*SPIED_PACKPREP, "pack", str(corpus), str(out), "--quiet", *options], cwd=REPO, env=env, check=True)
    return output_digest(out), int(spy_file.read_text())


@pytest.mark.parametrize(
    "options",
    [
        ["--strategy", "eos", "--seq-len", "128", "--shard-size", "16"],
        ["--strategy", "random", "--packing", "bestfit", "--seq-len", "100", "--seed", "5"],
    ],
    ids=["eos-split", "random-bestfit"],
)
@pytest.mark.slow
def test_same_bytes_for_any_workers_and_every_run(corpus, tmp_path, options):
    one, sent_by_one = pack_counting_remote_texts(corpus, tmp_path / "w1", *options, "--workers", "1")
    two, sent_by_two = pack_counting_remote_texts(corpus, tmp_path / "w2", *options, "--workers", "2")
    again = pack(corpus, tmp_path / "again", *options)
    assert sent_by_one == 0 and sent_by_two >= 100  # a worker process encoded a real share of the corpus
    assert one == two == again


@pytest.mark.slow
def test_icp_same_bytes_for_any_workers(tmp_path):
    # Embedding runs torch matmuls whose thread count could change the last bits.
    folder = tmp_path / "corpus"
    write_jsonl(folder / "a.jsonl", make_documents(24, seed=3))
    options = ["--strategy", "icp", "--seq-len", "128", "--knn", "4"]
    assert pack(folder, tmp_path / "w1", *options, "--workers", "1") == pack(folder, tmp_path / "w2", *options, "--workers", "2")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """60 documents: enough for a seed or an option to show, without the 1,100 documents'
    tokenizing (the corpus above is that big only to start bpe-openai's worker processes)."""
    folder = tmp_path_factory.mktemp("small")
    write_jsonl(folder / "a.jsonl", make_documents(60, seed=7))
    return folder


def test_a_different_seed_gives_different_shards(small_corpus, tmp_path):
    options = ["--strategy", "eos", "--seq-len", "128"]
    assert pack(small_corpus, tmp_path / "s0", *options) != pack(small_corpus, tmp_path / "s1", *options, "--seed", "1")


def test_manifest_records_every_option_the_version_and_the_input(small_corpus, tmp_path):
    out = tmp_path / "out"
    pack(small_corpus, out, "--strategy", "random", "--packing", "bestfit", "--seq-len", "96", "--seed", "4", "--text-field", "text")
    manifest = load_json(out / "manifest.json")
    assert manifest["packprep_version"] == __version__
    assert manifest["config"] == {
        "strategy": "random", "seq_len": 96, "packing": "bestfit", "seed": 4, "rows_per_shard": None,
        "dedup": None, "semantic_threshold": None, "clusters": None, "knn": 10, "partition_docs": 1_000_000,
    }
    assert manifest["tokenize_config"]["text_field"] == "text" and manifest["tokenize_config"]["tokenizer"] == "cl100k"
    # cl100k's fingerprint is the digest pinned in test_tokenizers (the cache key of every store);
    # the corpus's follows its content, not where it lies.
    assert manifest["tokenizer"]["fingerprint"] == "613b7b10f38bfdf378cd7add609ff675f460e46a5beca8703b4ebe67e1f3dc0e"
    copy = shutil.copytree(small_corpus, tmp_path / "elsewhere")
    assert manifest["source"]["fingerprint"] == corpus_fingerprint(copy)
    with open(copy / "a.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "one-more", "text": "x"}\n')
    assert manifest["source"]["fingerprint"] != corpus_fingerprint(copy)
