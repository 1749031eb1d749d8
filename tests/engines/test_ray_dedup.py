"""Dedup on Ray without N-sized arrays in the driver: the exact-hash shuffle, the components of the
verified near pairs and the range writers give the local engine's result and files, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # starts a local Ray, like tests/engines/test_ray_engine.py

ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install 'packprep[ray]'); CI installs it")

from tests.conftest import make_documents, write_jsonl  # noqa: E402

from packprep.config import DedupConfig  # noqa: E402
from packprep.engines import Engine, ray_dedup, ray_engine  # noqa: E402
from packprep.io import save_npy  # noqa: E402
from packprep.pipeline import semantic, tokenize  # noqa: E402
from packprep.stages import dedup as stage  # noqa: E402
from packprep.store import DocStore  # noqa: E402
from packprep.store.cached import open_dedup  # noqa: E402



@pytest.fixture
def copies_store(tmp_path: Path) -> DocStore:
    """60 documents in 3 files: 30 distinct, then copies of some of them (also across files) and near copies."""
    docs = make_documents(30, seed=11)
    copies = [{"id": f"copy-{i}", "text": docs[i % 30]["text"]} for i in range(0, 60, 4)]
    near = []
    for i in range(2, 30, 5):
        words = docs[i]["text"].split(" ")
        words[len(words) // 2] = "CHANGED"
        near.append({"id": f"near-{i}", "text": " ".join(words)})
    write_jsonl(tmp_path / "c" / "a.jsonl", docs[:20] + copies[:5])
    write_jsonl(tmp_path / "c" / "b.jsonl", docs[20:] + near)
    write_jsonl(tmp_path / "c" / "c.jsonl", copies[5:])
    return tokenize(tmp_path / "c", tmp_path / "work")


def test_the_exact_shuffle_drops_what_the_local_sort_drops(tmp_path, copies_store):
    # Hand-written hashes over the store's documents: runs of one hash across every range and reducer.
    n = copies_store.num_documents
    hashes = np.array([7, 3, 7, 9, 3, 3, 11, 7] * (n // 8) + [9] * (n % 8), dtype=np.uint64)
    save_npy(copies_store.path / "text_hash.npy", hashes)
    store = DocStore.open(copies_store.path)
    for tasks in (1, 3, 5):
        result = ray_engine.dedup_on_ray(store, config=DedupConfig(near=False), num_tasks=tasks)
        local = stage.exact_duplicates(hashes)
        assert result.dup_of.tolist() == local.dup_of.tolist()
        assert result.reason.tolist() == local.reason.tolist() and result.keep.tolist() == local.keep.tolist()
    assert result.dup_of[:8].tolist() == [-1, -1, 0, -1, 1, 1, -1, 0]


def test_exact_drops_split_by_range_and_keep_the_lowest_document():
    # Two ranges starting at documents 0 and 4; hash 5 at documents 6, 1, 3 (arriving out of order).
    first = np.array([[5, 1], [8, 2], [5, 3]], dtype=np.uint64)
    second = np.array([[5, 6], [8, 7]], dtype=np.uint64)
    in_first, in_second = ray_dedup.exact_drops([0, 4], second, first)
    assert in_first.tolist() == [[3, 1]]
    assert sorted(in_second.tolist()) == [[6, 1], [7, 2]]


def test_near_drops_are_the_components_over_the_whole_store():
    pairs = np.array([[40, 97], [3, 40], [12, 15], [97, 200], [15, 12]], dtype=np.int64)
    whole = stage.near_groups(300, pairs).dup_of
    drops = ray_dedup.near_drops(pairs)
    assert drops.tolist() == [[15, 12], [40, 3], [97, 3], [200, 3]]
    assert drops.tolist() == [[d, int(whole[d])] for d in np.flatnonzero(whole >= 0)]
    assert ray_dedup.near_drops(np.zeros((0, 2), np.int64)).shape == (0, 2)


def test_range_writers_write_only_their_rows(tmp_path):
    out = open_dedup(tmp_path, 6)
    paths = {name: str(array.filename) for name, array in out.items()}
    counts, keep = ray_dedup.mark_range(paths, 0, 3, stage.REASON_EXACT, True, np.array([[2, 0]]))
    ray_dedup.mark_range(paths, 3, 6, stage.REASON_EXACT, True)
    assert keep.tolist() == [True, True, False] and counts[:2].tolist() == [2, 1]
    counts, _ = ray_dedup.mark_range(paths, 3, 6, stage.REASON_NEAR, False, np.array([[5, 1]]))
    assert counts[:3].tolist() == [2, 0, 1]
    assert np.load(paths["reason"]).tolist() == [0, 0, 1, 0, 0, 2]
    assert np.load(paths["dup_of"]).tolist() == [-1, -1, 0, -1, -1, 1]
    assert np.load(paths["keep"]).tolist() == [True, True, False, True, True, False]


@pytest.mark.parametrize("config", [DedupConfig(), DedupConfig(near=False), DedupConfig(exact=False)], ids=["both", "exact", "near"])
def test_dedup_files_on_ray_are_the_local_files(tmp_path, copies_store, config):
    local = semantic.dedup(copies_store, config=config)
    files = {name: (copies_store.path / f"dedup.{name}.npy").read_bytes() for name in ("keep", "reason", "dup_of")}
    (copies_store.path / "dedup.json").unlink()
    on_ray = semantic.dedup(copies_store, config=config, engine=Engine("ray"))
    assert on_ray.manifest == local.manifest
    assert {name: (copies_store.path / f"dedup.{name}.npy").read_bytes() for name in files} == files
    assert not list(copies_store.path.glob("dedup.*.tmp")) and not list(copies_store.path.glob("dedup.scratch-*"))
    assert sum(local.manifest["counts"][r] for r in ("exact", "near")) > 0
