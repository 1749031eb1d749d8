"""What more than one test file uses, beyond conftest's corpora: the repository's root, the
tokenizer trained here, shared texts, and the partitioned store. Test files import from here,
never from each other, so any of them can move to another folder of tests/ on its own."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from packprep.config import EmbedConfig
from packprep.io import load_json, sha256_file
from tests.conftest import make_documents, write_jsonl

# This file sits at tests/helpers.py whatever folder the test using it is in.
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_CORPUS = REPO_ROOT / "examples" / "corpus"


def output_digest(out: Path) -> dict[str, str]:
    """sha256 of every output file, plus the manifest without the fields that name folders."""
    digest = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != "manifest.json"}
    manifest = load_json(out / "manifest.json")
    manifest.pop("source")
    digest["manifest.json"] = json.dumps(manifest, sort_keys=True)
    return digest


def shard_bytes(out: Path) -> dict[str, str]:
    """sha256 of the shards and the doc_* files of an output (not its manifest)."""
    return {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and p.name.startswith(("shard-", "doc_"))}


# ---------------------------------------------------------------- tokenizer.json

TRAIN_TEXTS = ["the cat sat on the mat", "the dog ate the bone", "a cat and a dog"]


def make_hf_tokenizer(folder: Path, *, config: dict | None = None, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on three sentences: <s> = 0, </s> = 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAIN_TEXTS * 10, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


# ---------------------------------------------------------------- texts for the embedders

# Two similar pairs, each next to an unrelated sentence: (0, 1) vs 2 and (3, 4) vs 5.
PAIRED_TEXTS = [
    "A man is playing the guitar on stage.",
    "Someone is strumming a guitar at a concert.",
    "The quarterly earnings report disappointed investors.",
    "How do I reset my password?",
    "I forgot my login password and need to change it.",
    "Volcanoes erupt when magma rises through the crust.",
]

TOPICS = {
    "astronomy": [
        "The telescope resolved two faint galaxies behind the nebula.",
        "Astronomers measured the redshift of a distant quasar.",
        "The orbit of the comet brings it near the Sun every 76 years.",
        "Saturn's rings are made of ice and rock fragments.",
    ],
    "cooking": [
        "Knead the dough for ten minutes, then let it rise until doubled.",
        "Simmer the tomato sauce with garlic, basil and olive oil.",
        "Whisk the eggs with sugar before folding in the flour.",
        "Roast the vegetables at high heat until they caramelise.",
    ],
    "football": [
        "The striker scored twice in the second half of the match.",
        "The goalkeeper saved a penalty in the final minute.",
        "The coach changed the formation after the defender was sent off.",
        "Fans filled the stadium for the derby against their rivals.",
    ],
    "finance": [
        "The central bank raised interest rates to curb inflation.",
        "Bond yields fell as investors sought safer assets.",
        "The company's quarterly earnings beat analysts' expectations.",
        "Stock markets slid after the weak employment report.",
    ],
}


def labelled_corpus(folder: Path, per_topic: int = 10, seed: int = 0) -> tuple[Path, dict[str, str]]:
    rng = random.Random(seed)
    records, topic_of = [], {}
    for topic, sentences in TOPICS.items():
        for i in range(per_topic):
            doc_id = f"{topic}-{i}"
            text = " ".join(rng.sample(sentences, k=3)) + f" Note {i}: " + rng.choice(sentences)
            records.append({"id": doc_id, "text": text})
            topic_of[doc_id] = topic
    rng.shuffle(records)
    return write_jsonl(folder / "labelled.jsonl", records), topic_of


# ---------------------------------------------------------------- partitioned ordering (local and Ray)

EMBED = EmbedConfig(embed_tokens=32)  # short inputs keep MiniLM quick; the order does not care
OPTIONS = dict(seq_len=128, seed=3, dedup=False, semantic_threshold=0.0, rows_per_shard=4)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """48 documents, tokenized and embedded once; every test packs from this store.
    A test file that packs from it imports this fixture by name."""
    from packprep.pipeline import tokenize
    from packprep.pipeline.semantic import embed

    folder = tmp_path_factory.mktemp("partitioned")
    store = tokenize(write_jsonl(folder / "corpus" / "docs.jsonl", make_documents(48, seed=5)), folder / "store")
    embed(store, config=EMBED)
    return store.path


def cli_options(strategy: str) -> list[str]:
    return ["--strategy", strategy, "--seq-len", "128", "--seed", "3", "--no-dedup", "--semantic-threshold", "0",
            "--shard-size", "4", "--embed-tokens", "32", "--partition-docs", "8"]


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

# SIGKILL of the driver right after it journaled its second packed part.
KILLED_AFTER_TWO_PARTS = [
    sys.executable, "-c",
    "import os, signal, packprep.pipeline.pack_parts as f\n"
    "real = f.PackJournal.finish\n"
    "def finish(self, summary):\n"
    "    real(self, summary)\n"
    "    if len(self.parts) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
    "f.PackJournal.finish = finish\n"
    "from packprep.cli import main; main()",
]


def plan_in_small_ranges(monkeypatch, reason, embeddings, folder, engine):
    """``pipeline.planning.plan_in_files`` with batches of 3 rows, ranges of 2 batches and kept documents
    counted 5 at a time (so ranges, batches and chunks all cut the 48 documents several times), next to
    ``partition_documents`` of the kept documents with the same batches."""
    from packprep.engines import Engine
    from packprep.pipeline.planning import plan_in_files
    from packprep.pipeline.run import Run
    from packprep.stages import partition
    from packprep.pipeline import planning

    monkeypatch.setattr(partition, "ASSIGN_BATCH", 3)
    monkeypatch.setattr(partition, "KEPT_CHUNK", 5)
    monkeypatch.setattr(planning, "ASSIGN_RANGE_BATCHES", 2)
    counts = partition.kept_counts(reason)
    plan = plan_in_files(reason, embeddings, counts=counts, max_docs=6, seed=3, folder=folder, run=Run.of(Engine(engine)))
    reference = partition.partition_documents(np.flatnonzero(reason == 0), embeddings, max_docs=6, seed=3)
    return plan, reference
