"""dedup -> embed -> cluster/icp -> pack on a tiny labelled corpus, with the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # MiniLM embeds every corpus: make test-fast leaves it out
from typer.testing import CliRunner

from packprep import PackedDataset
from packprep.cli import app
from packprep.config import EmbedConfig, PackConfig
from packprep.inspect import compute_stats
from packprep.pipeline import pack, tokenize
from tests.conftest import write_jsonl
from tests.helpers import labelled_corpus

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    return labelled_corpus(tmp_path_factory.mktemp("labelled"))


def topic_share(ds: PackedDataset, topic_of: dict[str, str]) -> float:
    same = total = 0
    for i in range(len(ds)):
        docs = [d for d in ds[i]["doc_index"].tolist() if d >= 0]
        for a, b in zip(docs, docs[1:]):
            total += 1
            same += topic_of[ds.doc_ids[a]] == topic_of[ds.doc_ids[b]]
    return same / total


def test_icp_puts_similar_documents_side_by_side(corpus, tmp_path):
    path, topic_of = corpus
    out = pack(path, tmp_path / "icp", config=PackConfig(strategy="icp", seq_len=256, semantic_threshold=0, dedup=False))
    ds = PackedDataset(out)
    stats = compute_stats(ds)
    assert stats["num_documents"] == 40
    assert stats["adjacent_cosine"] > stats["adjacent_cosine_random"] + 0.2
    assert topic_share(ds, topic_of) >= 0.8
    random_ds = PackedDataset(pack(out / "work", tmp_path / "rnd", config=PackConfig(strategy="eos", seq_len=256)))
    assert topic_share(random_ds, topic_of) < 0.5


def test_icp_uses_every_kept_document_exactly_once(corpus, tmp_path):
    path, _ = corpus
    ds = PackedDataset(pack(path, tmp_path / "icp", config=PackConfig(strategy="icp", seq_len=64, semantic_threshold=0, dedup=False)))
    starts = [d for i in range(len(ds)) for d, off in zip(ds[i]["doc_index"].tolist(), ds[i]["doc_offset"].tolist()) if off == 0 and d >= 0]
    assert sorted(starts) == list(range(40))


def test_cluster_strategy_groups_topics(corpus, tmp_path):
    path, topic_of = corpus
    ds = PackedDataset(pack(path, tmp_path / "cl", config=PackConfig(strategy="cluster", seq_len=256, clusters=4)))
    random_ds = PackedDataset(pack(path, tmp_path / "rnd", config=PackConfig(strategy="eos", seq_len=256, dedup=True)))
    # four balanced topics: a random order shares a topic about a quarter of the time
    assert topic_share(ds, topic_of) >= topic_share(random_ds, topic_of) + 0.3


def test_semantic_threshold_drops_paraphrases(tmp_path):
    records = [
        {"id": "a", "text": "The cat sat on the mat and looked out of the window."},
        {"id": "b", "text": "The cat sat on the mat and looked out the window."},
        {"id": "c", "text": "Interest rates rose sharply after the announcement."},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", records)
    out = pack(path, tmp_path / "o", config=PackConfig(strategy="icp", seq_len=32, semantic_threshold=0.9, dedup=False))
    ds = PackedDataset(out)
    assert ds.manifest["dropped"]["semantic"] == 1
    dropped = np.load(out / "doc_dropped.npy")
    dup_of = np.load(out / "doc_dup_of.npy")
    assert [ds.doc_ids[i] for i in np.flatnonzero(dropped)] == ["b"]
    assert ds.doc_ids[int(dup_of[np.flatnonzero(dropped)[0]])] == "a"


def test_second_run_reuses_stages_and_option_changes_redo_them(corpus, tmp_path):
    path, _ = corpus
    out = tmp_path / "out"
    config = PackConfig(strategy="icp", seq_len=128)
    pack(path, out, config=config)
    stamps = {name: (out / "work" / name).stat().st_mtime_ns for name in ("store.json", "dedup.json", "embed.json")}
    manifest_stamp = (out / "manifest.json").stat().st_mtime_ns
    pack(path, out, config=config)
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_stamp
    pack(path, out, config=config, embed_config=EmbedConfig(embed_tokens=16), overwrite=True)
    after = {name: (out / "work" / name).stat().st_mtime_ns for name in stamps}
    assert after["store.json"] == stamps["store.json"] and after["dedup.json"] == stamps["dedup.json"]
    assert after["embed.json"] != stamps["embed.json"]
    assert json.loads((out / "work" / "embed.json").read_text())["config"]["embed_tokens"] == 16


def test_stage_commands_one_by_one_equal_the_one_shot_command(corpus, tmp_path):
    path, _ = corpus
    runner = CliRunner()
    work, a, b = tmp_path / "work", tmp_path / "a", tmp_path / "b"
    for args in (
        ["tokenize", path, work, "-q"],
        ["dedup", work, "-q"],
        ["embed", work, "-q"],
        ["pack", work, a, "--strategy", "icp", "--seq-len", "128", "-q"],
        ["pack", path, b, "--strategy", "icp", "--seq-len", "128", "-q"],
    ):
        result = runner.invoke(app, [str(x) for x in args])
        assert result.exit_code == 0, result.output
    for name in ("input_ids", "row_ptr", "seg_doc", "seg_doc_offset"):
        assert (a / f"shard-00000.{name}.npy").read_bytes() == (b / f"shard-00000.{name}.npy").read_bytes()
    result = runner.invoke(app, ["inspect", str(a)])
    assert "adjacent cosine (in rows)" in result.stdout and "adjacent cosine (random order)" in result.stdout


def test_dedup_command_reports_planted_duplicates(tmp_path):
    base = "A long enough sentence about rivers, mountains, forests and the creatures living there. " * 3
    records = [
        {"id": "orig", "text": base},
        {"id": "exact", "text": base.replace(" ", "  ")},  # same normalised text
        {"id": "other", "text": "Completely different text about databases and query planners."},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    store = tokenize(path, tmp_path / "work")
    result = CliRunner().invoke(app, ["dedup", str(store.path)])
    assert result.exit_code == 0, result.output
    reason = np.load(store.path / "dedup.reason.npy")
    assert reason.tolist() == [0, 1, 0]


def test_icp_with_bestfit_keeps_topics_together(corpus, tmp_path):
    """bestfit packs along the icp order: rows hold documents of one topic, as with split."""
    path, topic_of = corpus
    config = PackConfig(strategy="icp", seq_len=256, packing="bestfit", semantic_threshold=0, dedup=False)
    ds = PackedDataset(pack(path, tmp_path / "icp-bestfit", config=config))
    stats = compute_stats(ds)
    assert stats["split_documents"] == 0 and stats["num_documents"] == 40
    # best-fit decreasing, which re-sorted by length, gave 0.74 here
    assert topic_share(ds, topic_of) >= 0.85


def test_inspect_reports_the_bound_and_in_row_pairs(corpus, tmp_path):
    path, _ = corpus
    out = pack(path, tmp_path / "icp", config=PackConfig(strategy="icp", seq_len=128, semantic_threshold=0, dedup=False))
    stats = compute_stats(PackedDataset(out))
    assert 0 < stats["adjacent_cosine"] <= stats["adjacent_cosine_bound"] + 1e-6
    assert stats["adjacent_cosine_bound_ratio"] == pytest.approx(stats["adjacent_cosine"] / stats["adjacent_cosine_bound"])
    assert stats["adjacent_cosine_bound_ratio"] >= stats["adjacent_cosine_random_bound_ratio"] + 0.3
    assert stats["row_pairs"] > stats["adjacent_pairs"]  # rows hold more than two documents
    assert stats["row_pair_cosine"] >= stats["row_pair_cosine_random"] + 0.2
    result = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    for key in ("adjacent_cosine", "adjacent_cosine_random", "adjacent_cosine_bound", "adjacent_cosine_bound_ratio",
                "adjacent_cosine_random_bound_ratio", "row_pair_cosine", "row_pair_cosine_random", "row_pairs"):
        assert key in shown
    result = CliRunner().invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0 and "bound" in result.output and "in-row pair cosine" in result.output
