"""pack with --partition-docs: the partitioned order in the pipeline, its journal, and a killed driver resumed."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from packprep import PackedDataset
from packprep.config import PackConfig
from packprep.pipeline import pack
from packprep.progress import SilentReporter
from tests.helpers import EMBED, KILLED_AFTER_TWO, KILLED_AFTER_TWO_PARTS, OPTIONS, REPO_ROOT as REPO, cli_options, plan_in_small_ranges, shard_bytes, store_path  # noqa: F401 (store_path: a fixture)


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


@pytest.mark.slow  # a SIGKILLed CLI run and its rerun, like tests/pipeline/test_resume.py
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


# ---------------------------------------------------------------------------- packing in parts


def shard_plan(out: Path) -> list[list[int]]:
    """Each row's documents, shard by shard."""
    ds = PackedDataset(out)
    rows = []
    for k in range(len(ds.manifest["shards"])):
        shard = ds.shard(k)
        rows += [np.asarray(shard.seg_doc[shard.row_ptr[r] : shard.row_ptr[r + 1]]).tolist() for r in range(len(shard.row_ptr) - 1)]
    return rows


@pytest.mark.parametrize("packing", ["split", "bestfit"])
def test_each_part_of_the_order_is_packed_on_its_own_and_cut_into_its_own_shards(store_path, tmp_path, packing):
    """The reference: the partitioned order cut into parts of partition_docs documents, each packed by
    stages.pack.pack_part with its own shuffle; shards cut per part (a part's last shard may be short)."""
    from packprep.stages.pack import pack_part, part_ranges, row_shuffle_seed
    from packprep.stages.partition import partitioned_order
    from packprep.store import DocStore

    config = PackConfig(strategy="icp", packing=packing, partition_docs=8, **OPTIONS)
    out = pack(store_path, tmp_path / "out", config=config, embed_config=EMBED)
    store = DocStore.open(store_path)
    order = partitioned_order(np.arange(48), np.load(store_path / "embeddings.npy", mmap_mode="r"), strategy="icp", max_docs=8, seed=3)
    sep_len = 0 if PackedDataset(out).manifest["sep_id"] is None else 1
    ranges = part_ranges(48, 8)
    assert len(ranges) == 6
    expected, shard_rows = [], []
    for p, (first, end) in enumerate(ranges):
        docs = order[first:end]
        plan = pack_part(store.lengths()[docs] + sep_len, seq_len=128, packing=packing, keep_order=True, shuffle_seed=row_shuffle_seed(3, p, 6))
        expected += [docs[plan.seg_doc[plan.row_ptr[r] : plan.row_ptr[r + 1]]].tolist() for r in range(plan.num_rows)]
        shard_rows += [min(4, plan.num_rows - r) for r in range(0, plan.num_rows, 4)]
    assert shard_plan(out) == expected
    assert [s["rows"] for s in PackedDataset(out).manifest["shards"]] == shard_rows
    assert not (out / "pack.partial").exists()


@pytest.mark.slow  # SIGKILLed CLI runs and their reruns, like tests/pipeline/test_resume.py
def test_a_driver_killed_after_two_packed_parts_resumes_them_and_writes_the_clean_bytes(store_path, tmp_path):
    clean = pack(store_path, tmp_path / "clean", config=PackConfig(strategy="cluster", packing="bestfit", partition_docs=8, **OPTIONS), embed_config=EMBED)
    out = tmp_path / "out"
    command = ["pack", str(store_path), str(out), *cli_options("cluster"), "--packing", "bestfit"]
    killed = subprocess.run([*KILLED_AFTER_TWO_PARTS, *command], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((out / "pack.partial").glob("part-*.row_ptr.npy"))) == 2 and not list(out.glob("shard-*"))

    rerun = subprocess.run([sys.executable, "-m", "packprep.cli", *command], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 packed by an interrupted run are reused" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(clean)


def test_shards_finished_after_a_gap_are_reused_not_rewritten(store_path, tmp_path):
    """An interrupted run whose journal lists shards 0 and 2.. but not 1 (still being written when it
    died): the rerun writes shard 1 only."""
    import json
    import os

    from packprep.formats import npy

    config = PackConfig(strategy="icp", partition_docs=8, **OPTIONS)
    out = pack(store_path, tmp_path / "out", config=config, embed_config=EMBED)
    clean = shard_bytes(out)
    manifest = json.loads((out / "manifest.json").read_text())
    npy.save_journal(out, manifest["key"], [s for s in manifest["shards"] if s["name"] != "shard-00001"])
    (out / "manifest.json").unlink()
    for path in out.glob("shard-00001.*"):
        path.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    os.utime(out / "shard-00002.input_ids.npy", ns=(1, 1))  # a rewrite would set a new time
    before["shard-00002.input_ids.npy"] = 1

    messages = []
    pack(store_path, out, config=config, embed_config=EMBED, reporter=Collect(messages))
    assert f"pack: resuming; {len(manifest['shards']) - 1} finished shards of an interrupted run are reused" in messages
    assert shard_bytes(out) == clean
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*") if p.name in before} == before


class Collect(SilentReporter):
    """A silent reporter that keeps its info lines."""

    def __init__(self, lines: list[str]):
        self.lines = lines

    def info(self, message: str) -> None:
        self.lines.append(message)


def test_the_joined_order_is_written_partition_by_partition_as_assemble_joins_it(store_path, tmp_path):
    """The order a journaled run writes into its order file (each partition read back from the journal) is
    ``stages.partition.partitioned_order``'s, byte for byte with np.save, and comes back memory-mapped."""
    from packprep.pipeline.ordering import order_by_partition
    from packprep.pipeline.run import Run
    from packprep.stages.partition import partitioned_order

    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    reason = ((np.arange(len(embeddings)) % 5 == 0) | (np.arange(len(embeddings)) >= 48)).astype(np.uint8)
    kept = np.flatnonzero(reason == 0)  # as if dedup dropped every fifth of the first 48 and all after
    reference = partitioned_order(kept, embeddings, strategy="icp", max_docs=8, seed=3, k=10)
    path = tmp_path / "pack.partial" / "order.npy"
    order = order_by_partition(
        reason, embeddings, strategy="icp", max_docs=8, seed=3, k=10, n_clusters=None,
        journal_folder=tmp_path / "order.partial", key="k", run=Run(), order_path=path,
    ).order
    assert isinstance(order, np.memmap) and order.tolist() == reference.tolist()
    np.save(tmp_path / "reference.npy", reference)
    assert path.read_bytes() == (tmp_path / "reference.npy").read_bytes()


@pytest.mark.parametrize("dropped", ["none", "every fifth"])
def test_the_plan_made_in_ranges_with_its_members_in_a_file_is_partition_documents(store_path, tmp_path, monkeypatch, dropped):
    from packprep.formats.partition_plan import MEMBERS_FILE

    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    n = len(embeddings)
    reason = np.broadcast_to(np.uint8(0), (n,)) if dropped == "none" else (np.arange(n) % 5 == 0).astype(np.uint8)
    plan, reference = plan_in_small_ranges(monkeypatch, reason, embeddings, tmp_path / "order.partial", "local")
    assert isinstance(plan.members, np.memmap) and str(plan.members.filename) == str(tmp_path / "order.partial" / MEMBERS_FILE)
    assert plan.members.tolist() == reference.members.tolist()
    assert plan.bounds.tolist() == reference.bounds.tolist()
    assert len(reference) > -(-int((reason == 0).sum()) // 6)  # more partitions than coarse clusters: some were split again
    assert sorted(p.name for p in (tmp_path / "order.partial").iterdir()) == [MEMBERS_FILE]  # the ranges' files are gone


@pytest.mark.parametrize(("dedup", "semantic"), [(False, 0.0), (True, 0.0), (True, 0.9)])
def test_a_partitioned_pack_builds_no_array_of_the_kept_documents_nor_an_in_memory_plan(store_path, tmp_path, monkeypatch, dedup, semantic):
    """With an output folder the plan is made in ranges (``pipeline.planning``): neither ``selection.kept_indices``
    nor ``stages.partition.partition_documents`` (each an array of all kept documents) is called."""
    from packprep.pipeline import selection
    from packprep.stages import partition

    def must_not_run(*args, **kwargs):
        raise AssertionError("an array of all kept documents was built")

    config = PackConfig(strategy="icp", partition_docs=8, **{**OPTIONS, "dedup": dedup, "semantic_threshold": semantic})
    reference = pack(store_path, tmp_path / "reference", config=config, embed_config=EMBED)
    monkeypatch.setattr(selection, "kept_indices", must_not_run)
    monkeypatch.setattr(partition, "partition_documents", must_not_run)
    out = pack(store_path, tmp_path / "out", config=config, embed_config=EMBED)
    assert shard_bytes(out) == shard_bytes(reference) and len(shard_bytes(out)) > 4


def test_the_pack_journal_takes_an_order_file_in_place_and_drops_another_runs_parts(tmp_path):
    from packprep.pipeline.pack_parts import PackJournal, order_digest

    folder = tmp_path / "pack.partial"
    folder.mkdir()
    (folder / "part-000000.row_ptr.npy").write_bytes(b"another run's")
    np.save(folder / "order.npy", np.arange(10, dtype=np.int64)[::-1])
    order = np.load(folder / "order.npy", mmap_mode="r")
    journal = PackJournal.resume(folder, key="k", order=order)
    assert sorted(p.name for p in folder.iterdir()) == ["order.npy"]
    assert np.load(folder / "order.npy").tolist() == list(range(9, -1, -1))
    assert journal.digest == order_digest(np.arange(10, dtype=np.int64)[::-1])


def test_kept_documents_and_dropped_counts_are_read_a_slice_at_a_time(monkeypatch):
    from packprep.pipeline import selection

    reason = np.array([0, 1, 0, 2, 0, 0, 1], dtype=np.uint8)
    monkeypatch.setattr(selection, "_REASON_CHUNK", 3)
    assert selection.kept_indices(reason).tolist() == [0, 2, 4, 5]
    none = np.broadcast_to(np.uint8(0), (7,))
    assert selection.kept_indices(none).tolist() == list(range(7))
    chosen = selection.Selection(order=np.zeros(0, np.int64), reason=reason, dup_of=np.full(7, -1))
    assert chosen.dropped_counts() == {"exact": 2, "near": 1, "semantic": 0}


# ---------------------------------------------------------------------------- semantic dedup inside the partitions

SEMANTIC = 0.9  # drops 14 of the store's 48 documents inside partitions of 8 (16 over all 48)


def semantic_config(**changes) -> PackConfig:
    return PackConfig(strategy="icp", partition_docs=8, **{**OPTIONS, "semantic_threshold": SEMANTIC, **changes})


def test_semantic_dedup_runs_inside_the_partitions_and_the_doc_table_records_their_drops(store_path, tmp_path, monkeypatch):
    """No semantic kNN over all documents on the driver: every ``semantic_duplicates`` call gets one partition's
    rows (at most 8), and the output's drops are ``partitioned_selection``'s, the sum of the partitions'."""
    from packprep.stages import dedup
    from packprep.stages.partition import partitioned_selection

    searched = []
    real = dedup.semantic_duplicates

    def counting(embeddings, **kwargs):
        searched.append(len(embeddings))
        return real(embeddings, **kwargs)

    monkeypatch.setattr(dedup, "semantic_duplicates", counting)
    messages: list[str] = []
    out = pack(store_path, tmp_path / "out", config=semantic_config(), embed_config=EMBED, reporter=Collect(messages))
    assert searched and max(searched) <= 8 and sum(searched) == 48
    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    order, dropped = partitioned_selection(np.arange(48), embeddings, strategy="icp", max_docs=8, seed=3, semantic_threshold=SEMANTIC)
    assert len(dropped) == 14 and sorted(set(packed_order(out))) == sorted(order.tolist())
    reason, dup_of = np.load(out / "doc_dropped.npy"), np.load(out / "doc_dup_of.npy")
    assert np.flatnonzero(reason == 3).tolist() == dropped[:, 0].tolist() and (reason[reason != 3] == 0).all()
    assert dup_of[dropped[:, 0]].tolist() == dropped[:, 1].tolist() and (dup_of[reason == 0] == -1).all()
    manifest = PackedDataset(out).manifest
    assert manifest["dropped"]["semantic"] == 14 and manifest["counts"]["num_documents"] == 34
    assert manifest["semantic_threshold"] == {"value": SEMANTIC, "source": "--semantic-threshold", "embedder": EMBED.model, "scope": "partitions"}
    assert "semantic dedup: dropped 14 documents with cosine > 0.9 (--semantic-threshold) within partitions of at most 8" in messages
    assert not (out / "order.partial").exists() and not (out / "pack.partial").exists()
    from typer.testing import CliRunner

    from packprep.cli import app

    shown = CliRunner().invoke(app, ["inspect", str(out), "--dropped", "--limit", "1"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    title = " ".join(shown.output.split())  # the table's title wraps
    assert "14 dropped documents; semantic threshold 0.9 (--semantic-threshold, all-MiniLM-L6-v2, within partitions)" in title


def test_partitioned_semantic_dedup_after_exact_and_near_dedup_marks_only_kept_documents(store_path, tmp_path):
    """The partitions' drops go into copies of the stored dedup arrays: their drops stay, the semantic ones join them."""
    from packprep.store import DocStore

    out = pack(store_path, tmp_path / "out", config=semantic_config(dedup=True), embed_config=EMBED)
    stored = DocStore.open(store_path)
    before = np.load(store_path / "dedup.reason.npy")
    reason = np.load(out / "doc_dropped.npy")
    assert (reason[before != 0] == before[before != 0]).all() and stored.num_documents == len(reason)
    assert set(np.unique(reason[before == 0]).tolist()) <= {0, 3} and (reason == 3).any()
    # doc_dup_of's rule (docs/format.md): a dropped document's twin is kept, or was dropped by semantic dedup
    # (which runs last, its own drops pointing to kept documents): at most one more step reaches a kept one.
    dup_of = np.load(out / "doc_dup_of.npy")
    twin = dup_of[reason != 0]
    assert (twin >= 0).all() and ((reason[twin] == 0) | ((reason[twin] == 3) & (reason[dup_of[twin]] == 0))).all()
    manifest = PackedDataset(out).manifest
    assert manifest["counts"]["num_documents"] == int((reason == 0).sum())


def test_one_partition_with_semantic_dedup_is_the_global_dedup_and_order(store_path, tmp_path):
    """A bound of at least the kept documents: ``order_by_partition`` (one partition, its plan in memory) drops
    and orders exactly as the global semantic dedup and icp do with the same seed."""
    from packprep.pipeline.ordering import order_by_partition
    from packprep.pipeline.run import Run
    from packprep.stages.dedup import semantic_duplicates
    from packprep.stages.order import icp_order

    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    reason = (np.arange(48) % 7 == 0).astype(np.uint8)
    close = semantic_duplicates(embeddings, threshold=SEMANTIC, keep=reason == 0)
    gone = np.flatnonzero((reason == 0) & ~close.keep)
    ordered = order_by_partition(
        reason, embeddings, strategy="icp", max_docs=48, seed=3, k=10, n_clusters=None, journal_folder=tmp_path / "order.partial",
        key="k", run=Run(), order_path=tmp_path / "order.npy", semantic_threshold=SEMANTIC,
    )
    assert ordered.num_partitions == 1 and ordered.num_dropped == len(gone) > 0
    assert np.concatenate(list(ordered.drops())).tolist() == np.column_stack([gone, close.dup_of[gone]]).tolist()
    assert ordered.order.tolist() == icp_order(np.flatnonzero((reason == 0) & close.keep), embeddings, seed=3).tolist()


def test_the_order_journal_keeps_the_drops_and_refuses_another_threshold(store_path, tmp_path):
    from packprep.pipeline.ordering import OrderJournal
    from packprep.stages.partition import order_partition, partition_documents

    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    plan = partition_documents(np.arange(48), embeddings, max_docs=8, seed=3)
    part = order_partition(plan.part(0), embeddings, strategy="icp", seed=1, semantic_threshold=0.5)
    journal = OrderJournal.resume(tmp_path, key="k", plan=plan, semantic_threshold=0.5)
    journal.finish(0, part)
    again = OrderJournal.resume(tmp_path, key="k", plan=plan, semantic_threshold=0.5)
    assert list(again.finished) == [0] and len(part.dropped) > 0
    assert again.load(0).dropped.tolist() == part.dropped.tolist() and again.num_dropped(0) == len(part.dropped)
    assert len(again.load_order(0)) == len(part.order)
    assert not OrderJournal.resume(tmp_path, key="k", plan=plan, semantic_threshold=0.6).finished
    assert not list(tmp_path.glob("part-*"))


@pytest.mark.slow  # a SIGKILLed CLI run and its rerun, like tests/pipeline/test_resume.py
def test_a_driver_killed_after_two_partitions_with_semantic_dedup_resumes_their_drops(store_path, tmp_path):
    clean = pack(store_path, tmp_path / "clean", config=semantic_config(), embed_config=EMBED)
    out = tmp_path / "out"
    options = cli_options("icp")
    options[options.index("--semantic-threshold") + 1] = str(SEMANTIC)
    command = ["pack", str(store_path), str(out), *options]
    killed = subprocess.run([*KILLED_AFTER_TWO, *command], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((out / "order.partial").glob("*.dropped.npy"))) == 2

    rerun = subprocess.run([sys.executable, "-m", "packprep.cli", *command], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 finished by an interrupted run are reused" in rerun.stderr
    assert "semantic dedup: dropped 14 documents" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(clean) and len(shard_bytes(out)) > 4  # doc_dropped.npy and doc_dup_of.npy too


def test_write_drops_marks_in_slices_what_marking_in_memory_gives(tmp_path, monkeypatch):
    """Drops marked a few at a time (pages let go between slices, across partitions) = the same drops set in memory."""
    from packprep.pipeline import ordering

    monkeypatch.setattr(ordering, "_MARK_SLICE", 2)
    reason = np.zeros(20, np.uint8)
    reason[[1, 7]] = 1
    dup_of = np.full(20, -1, np.int64)
    dup_of[[1, 7]] = [0, 6]
    drops = [np.array([[3, 2], [4, 2], [9, 5]]), np.zeros((0, 2), np.int64), np.array([[12, 10]]), np.array([[15, 11], [19, 18]])]
    got_reason, got_dup_of = ordering.write_drops(tmp_path, reason, dup_of, iter(drops))
    expected_reason, expected_dup_of = reason.copy(), dup_of.copy()
    for drop in drops:
        expected_reason[drop[:, 0]], expected_dup_of[drop[:, 0]] = 3, drop[:, 1]
    assert got_reason.tolist() == expected_reason.tolist() and got_dup_of.tolist() == expected_dup_of.tolist()
