"""pack with --partition-docs: the partitioned order in the pipeline, its journal, and a killed driver resumed."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packprep import PackedDataset
from packprep.io import sha256_file
from packprep.config import EmbedConfig, PackConfig
from packprep.pipeline import pack, tokenize
from packprep.pipeline.semantic import embed
from tests.conftest import make_documents, write_jsonl

REPO = Path(__file__).resolve().parents[1]
EMBED = EmbedConfig(embed_tokens=32)  # short inputs keep MiniLM quick; the order does not care
OPTIONS = dict(seq_len=128, seed=3, dedup=False, semantic_threshold=0.0, rows_per_shard=4)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """48 documents, tokenized and embedded once; every test packs from this store."""
    folder = tmp_path_factory.mktemp("partitioned")
    store = tokenize(write_jsonl(folder / "corpus" / "docs.jsonl", make_documents(48, seed=5)), folder / "store")
    embed(store, config=EMBED)
    return store.path


def shard_bytes(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and p.name.startswith(("shard-", "doc_"))}


def packed_order(out: Path) -> list[int]:
    ds = PackedDataset(out)
    docs = [int(d) for k in range(len(ds.manifest["shards"])) for d in np.asarray(ds.shard(k).seg_doc)]
    return docs


@pytest.mark.parametrize("strategy", ["icp", "cluster"])
def test_partitions_hold_every_document_once_and_leave_no_journal(store_path, tmp_path, strategy):
    out = pack(store_path, tmp_path / "out", config=PackConfig(strategy=strategy, partition_docs=8, **OPTIONS), embed_config=EMBED)
    assert sorted(set(packed_order(out))) == list(range(48))
    assert not (out / "order.partial").exists()
    assert PackedDataset(out).manifest["config"]["partition_docs"] == 8


@pytest.mark.parametrize("strategy", ["icp", "cluster"])
def test_a_bound_above_the_corpus_gives_the_global_order_byte_for_byte(store_path, tmp_path, strategy):
    whole = pack(store_path, tmp_path / "whole", config=PackConfig(strategy=strategy, partition_docs=0, **OPTIONS), embed_config=EMBED)
    above = pack(store_path, tmp_path / "above", config=PackConfig(strategy=strategy, partition_docs=48, **OPTIONS), embed_config=EMBED)
    small = pack(store_path, tmp_path / "small", config=PackConfig(strategy=strategy, partition_docs=8, **OPTIONS), embed_config=EMBED)
    assert shard_bytes(above) == shard_bytes(whole)
    assert shard_bytes(small) != shard_bytes(whole)  # the bound is in force below the corpus size


def test_partition_docs_must_not_be_negative():
    from packprep.errors import PackprepError

    with pytest.raises(PackprepError, match="--partition-docs must be 0"):
        PackConfig(strategy="icp", partition_docs=-1)


# SIGKILL of the driver right after it journaled its second partition: a real kill, at a known point.
KILLED_AFTER_TWO = [
    sys.executable, "-c",
    "import os, signal, packprep.pipeline.ordering as f\n"
    "real = f.OrderJournal.finish\n"
    "def finish(self, p, part):\n"
    "    real(self, p, part)\n"
    "    if len(self.finished) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
    "f.OrderJournal.finish = finish\n"
    "from packprep.cli import main; main()",
]


def cli_options(strategy: str) -> list[str]:
    return ["--strategy", strategy, "--seq-len", "128", "--seed", "3", "--no-dedup", "--semantic-threshold", "0",
            "--shard-size", "4", "--embed-tokens", "32", "--partition-docs", "8"]


@pytest.mark.slow  # a SIGKILLed CLI run and its rerun, like tests/test_resume.py
@pytest.mark.parametrize("strategy", ["icp", "cluster"])
def test_a_driver_killed_after_two_partitions_resumes_them_and_writes_the_clean_bytes(store_path, tmp_path, strategy):
    clean = pack(store_path, tmp_path / "clean", config=PackConfig(strategy=strategy, partition_docs=8, **OPTIONS), embed_config=EMBED)
    out = tmp_path / "out"
    command = ["pack", str(store_path), str(out), *cli_options(strategy)]
    killed = subprocess.run([*KILLED_AFTER_TWO, *command], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in (out / "order.partial").glob("*.order.npy")) and not (out / "manifest.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "packprep.cli", *command], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 finished by an interrupted run are reused" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(clean)
    assert not (out / "order.partial").exists()
