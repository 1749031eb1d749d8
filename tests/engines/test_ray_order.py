"""Partitioned ordering on Ray (one task per partition) writes the local engine's bytes, survives a
killed worker, and resumes after a killed driver. One local Ray with 2 CPUs for the module."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # starts a local Ray, like tests/engines/test_ray_engine.py: make test-fast leaves it out
ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install 'packprep[ray]'); CI installs it")

from packprep.config import PackConfig  # noqa: E402
from packprep.engines import Engine, ray_order  # noqa: E402
from packprep.pipeline import pack  # noqa: E402
from tests.helpers import EMBED, KILLED_AFTER_TWO, KILLED_AFTER_TWO_PARTS, OPTIONS, REPO_ROOT as REPO, cli_options, plan_in_small_ranges, shard_bytes, store_path  # noqa: E402,F401 (store_path: a fixture)

RAY = Engine("ray")



def config(strategy: str, packing: str = "split") -> PackConfig:
    return PackConfig(strategy=strategy, packing=packing, partition_docs=8, **OPTIONS)


def dies_once(real, *, argument: int, equal_to: int, marker):
    """``real``, wrapped so the Ray worker running it dies the first time its positional
    ``argument`` equals ``equal_to`` (as on a lost node or an OOM kill); ``marker`` records that it did."""

    def wrapper(*args):
        import os

        if args[argument] == equal_to and not marker.exists():
            marker.touch()
            os._exit(1)
        return real(*args)

    return wrapper


@pytest.mark.parametrize(("strategy", "packing"), [("icp", "split"), ("icp", "bestfit"), ("cluster", "split"), ("cluster", "bestfit")])
def test_partitions_on_ray_write_the_local_bytes(store_path, tmp_path, strategy, packing):
    local = pack(store_path, tmp_path / "local", config=config(strategy, packing), embed_config=EMBED)
    on_ray = pack(store_path, tmp_path / "ray", config=config(strategy, packing), embed_config=EMBED, engine=RAY)
    assert len(shard_bytes(local)) > 4
    assert shard_bytes(on_ray) == shard_bytes(local)


def test_semantic_dedup_inside_the_partitions_on_ray_writes_the_local_bytes(store_path, tmp_path):
    """Each partition task drops its semantic duplicates as the local engine does: same shards, same doc table."""
    import json

    import numpy as np

    semantic = PackConfig(strategy="icp", partition_docs=8, **{**OPTIONS, "semantic_threshold": 0.9})
    local = pack(store_path, tmp_path / "local", config=semantic, embed_config=EMBED)
    on_ray = pack(store_path, tmp_path / "ray", config=semantic, embed_config=EMBED, engine=RAY)
    assert int((np.load(local / "doc_dropped.npy") == 3).sum()) == 14
    assert shard_bytes(on_ray) == shard_bytes(local) and len(shard_bytes(local)) > 4
    manifests = [json.loads((out / "manifest.json").read_text()) for out in (local, on_ray)]
    assert manifests[0]["dropped"] == manifests[1]["dropped"] and manifests[1]["semantic_threshold"]["scope"] == "partitions"


def test_a_worker_killed_mid_partition_is_retried_and_the_bytes_are_the_same(store_path, tmp_path, monkeypatch):
    marker = tmp_path / "crashed-once"
    monkeypatch.setattr(ray_order, "order_part", dies_once(ray_order.order_part, argument=0, equal_to=1, marker=marker))
    local = pack(store_path, tmp_path / "local", config=config("icp"), embed_config=EMBED)
    on_ray = pack(store_path, tmp_path / "ray", config=config("icp"), embed_config=EMBED, engine=RAY)
    assert marker.exists()
    assert shard_bytes(on_ray) == shard_bytes(local)


def test_a_killed_ray_driver_resumes_its_finished_partitions(store_path, tmp_path):
    """The driver joins this module's Ray cluster and is SIGKILLed after journaling two partitions;
    the cluster lives on, and a rerun on it orders only the other partitions."""
    local = pack(store_path, tmp_path / "local", config=config("icp"), embed_config=EMBED)
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    command = ["pack", str(store_path), str(out), *cli_options("icp"), "--engine", "ray", "--ray-address", address]
    killed = subprocess.run([*KILLED_AFTER_TWO, *command], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "packprep.cli", *command], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 finished by an interrupted run are reused" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(local)


@pytest.mark.parametrize("dropped", ["none", "every fifth", "in memory"])
def test_the_plan_is_made_in_ray_range_tasks_as_partition_documents_makes_it(store_path, tmp_path, monkeypatch, dropped):
    """Range tasks (several: batches of 3, ranges of 2 batches) assign the kept documents and place them in
    the members file; the reason array goes by path (a memmap), as a length (nothing dropped) or through
    the object store (semantic dedup's in-memory copy)."""
    import numpy as np

    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    n = len(embeddings)
    if dropped == "none":
        reason = np.broadcast_to(np.uint8(0), (n,))
    else:
        np.save(tmp_path / "reason.npy", (np.arange(n) % 5 == 0).astype(np.uint8))
        reason = np.load(tmp_path / "reason.npy", mmap_mode="r" if dropped == "every fifth" else None)
    plan, reference = plan_in_small_ranges(monkeypatch, reason, embeddings, tmp_path / "order.partial", "ray")
    assert plan.members.tolist() == reference.members.tolist()
    assert plan.bounds.tolist() == reference.bounds.tolist()


def test_a_worker_killed_mid_range_of_the_plan_is_retried_and_the_plan_is_the_same(store_path, tmp_path, monkeypatch):
    import numpy as np

    from packprep.formats import partition_plan

    marker = tmp_path / "crashed-once"
    monkeypatch.setattr(partition_plan, "assign_range", dies_once(partition_plan.assign_range, argument=1, equal_to=1, marker=marker))
    embeddings = np.load(store_path / "embeddings.npy", mmap_mode="r")
    reason = np.broadcast_to(np.uint8(0), (len(embeddings),))
    plan, reference = plan_in_small_ranges(monkeypatch, reason, embeddings, tmp_path / "order.partial", "ray")
    assert marker.exists()
    assert plan.members.tolist() == reference.members.tolist()
    assert plan.bounds.tolist() == reference.bounds.tolist()


def test_in_memory_embeddings_go_through_the_object_store():
    import numpy as np

    from packprep.engines.ray_engine import order_partitions_on_ray
    from packprep.stages.partition import order_partition

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tasks = [(0, np.arange(0, 30, 2), {"strategy": "icp", "seed": 1}), (1, np.arange(1, 30, 2), {"strategy": "cluster", "seed": 2})]
    got = {}
    order_partitions_on_ray(x, tasks, on_part=lambda p, part: got.setdefault(p, part))
    for p, members, params in tasks:
        assert got[p].order.tolist() == order_partition(members, x, **params).order.tolist()


# ---------------------------------------------------------------------------- shards written by Ray tasks


def test_a_worker_killed_while_writing_a_shard_is_retried_and_the_bytes_are_the_same(store_path, tmp_path, monkeypatch):
    from packprep.engines import ray_pack

    marker = tmp_path / "crashed-once"
    monkeypatch.setattr(ray_pack, "write_shard_task", dies_once(ray_pack.write_shard_task, argument=1, equal_to=2, marker=marker))
    local = pack(store_path, tmp_path / "local", config=config("icp", "bestfit"), embed_config=EMBED)
    on_ray = pack(store_path, tmp_path / "ray", config=config("icp", "bestfit"), embed_config=EMBED, engine=RAY)
    assert marker.exists()
    assert shard_bytes(on_ray) == shard_bytes(local)
    assert (on_ray / "manifest.json").read_text().count('"sha256"') == (local / "manifest.json").read_text().count('"sha256"')


# SIGKILL of the driver once the shard journal lists two finished shards (Ray tasks write them).
KILLED_AFTER_TWO_SHARDS = [
    sys.executable, "-c",
    "import os, signal, packprep.formats.npy as npy\n"
    "real, written = npy.journal_shard, []\n"
    "def journal_shard(out, entry):\n"
    "    real(out, entry)\n"
    "    written.append(entry)\n"
    "    if len(written) >= 2: os.kill(os.getpid(), signal.SIGKILL)\n"
    "npy.journal_shard = journal_shard\n"
    "from packprep.cli import main; main()",
]


def test_a_driver_killed_while_ray_writes_shards_resumes_the_finished_ones(store_path, tmp_path):
    local = pack(store_path, tmp_path / "local", config=config("cluster"), embed_config=EMBED)
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    command = ["pack", str(store_path), str(out), *cli_options("cluster"), "--engine", "ray", "--ray-address", address]
    killed = subprocess.run([*KILLED_AFTER_TWO_SHARDS, *command], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = subprocess.run([sys.executable, "-m", "packprep.cli", *command], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "finished shards of an interrupted run are reused" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(local)


# ---------------------------------------------------------------------------- parts of the order packed by Ray tasks


def test_a_worker_killed_while_packing_a_part_is_retried_and_the_bytes_are_the_same(store_path, tmp_path, monkeypatch):
    from packprep.engines import ray_pack

    marker = tmp_path / "crashed-once"
    monkeypatch.setattr(ray_pack, "pack_part_task", dies_once(ray_pack.pack_part_task, argument=1, equal_to=1, marker=marker))
    local = pack(store_path, tmp_path / "local", config=config("cluster", "bestfit"), embed_config=EMBED)
    on_ray = pack(store_path, tmp_path / "ray", config=config("cluster", "bestfit"), embed_config=EMBED, engine=RAY)
    assert marker.exists()
    assert shard_bytes(on_ray) == shard_bytes(local)


def test_a_killed_ray_driver_resumes_its_packed_parts(store_path, tmp_path):
    local = pack(store_path, tmp_path / "local", config=config("icp", "bestfit"), embed_config=EMBED)
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    command = ["pack", str(store_path), str(out), *cli_options("icp"), "--packing", "bestfit", "--engine", "ray", "--ray-address", address]
    killed = subprocess.run([*KILLED_AFTER_TWO_PARTS, *command], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = subprocess.run([sys.executable, "-m", "packprep.cli", *command], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 packed by an interrupted run are reused" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(local)
