"""PackedTorchDataset and ResumableSampler: workers, ranks, and resuming mid-epoch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from packprep import PackedDataset, pack  # noqa: E402
from packprep.config import PackConfig  # noqa: E402
from packprep.errors import PackprepError  # noqa: E402
from packprep.torch import (  # noqa: E402
    PackedTorchDataset,
    ResumableSampler,
    additive_mask,
    block_causal_mask,
    collate_block_mask,
)
from tests.conftest import make_documents, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A real packprep output: 40 documents, cl100k, seq_len 32, several shards."""
    root = tmp_path_factory.mktemp("packed")
    write_jsonl(root / "corpus" / "a.jsonl", make_documents(40))
    return pack(root / "corpus", root / "out", config=PackConfig(seq_len=32, rows_per_shard=7))


def take(sampler: ResumableSampler, n: int) -> list[int]:
    """The next n indices, leaving the sampler where a loop that stopped there leaves it."""
    out = []
    for index in sampler:
        out.append(index)
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------- dataset


def test_rows_are_the_readers_rows_as_tensors(packed):
    ds, ref = PackedTorchDataset(packed), PackedDataset(packed)
    assert len(ds) == len(ref) > 14 and len(ref.manifest["shards"]) > 2 and ds.seq_len == 32
    for i in (0, 8, len(ds) - 1):
        row, expected = ds[i], ref[i]
        assert row.keys() == expected.keys()
        for key, value in row.items():
            assert isinstance(value, torch.Tensor) and value.numpy().dtype == expected[key].dtype
            assert value.tolist() == expected[key].tolist()
            value.add_(0)  # writable: not a view of the read-only memmap


def test_pickling_drops_the_memmaps(packed):
    ds = PackedTorchDataset(packed)
    ds[len(ds) - 1]  # map a shard
    blob = pickle.dumps(ds)
    assert len(blob) < 1000  # the path and a length, no shard bytes
    again = pickle.loads(blob)
    assert again[3]["input_ids"].tolist() == ds[3]["input_ids"].tolist()


def test_missing_output_fails_when_constructed(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):  # the reader's error, raised in the parent
        PackedTorchDataset(tmp_path / "nothing")


@pytest.mark.slow  # DataLoader worker processes
def test_dataloader_with_workers_yields_the_same_batches(packed):
    ds = PackedTorchDataset(packed)
    ds[0]  # opened in the parent first: forked workers must re-open their own maps

    def batches(num_workers: int) -> list[dict]:
        sampler = ResumableSampler(len(ds), seed=5)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=4, sampler=sampler, collate_fn=collate_block_mask, num_workers=num_workers
        )
        return list(loader)

    plain, workers = batches(0), batches(2)
    assert len(plain) == len(workers) == -(-len(ds) // 4)
    for a, b in zip(plain, workers):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow  # DataLoader worker processes
def test_works_with_distributed_sampler(packed):
    ds = PackedTorchDataset(packed)
    seen = []
    for rank in range(2):
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate_block_mask)
        seen.append({tuple(row.tolist()) for batch in loader for row in batch["input_ids"]})
    every = {tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds))}
    assert seen[0] | seen[1] == every


# ---------------------------------------------------------------- sampler


def test_epoch_order_comes_from_seed_and_epoch():
    sampler = ResumableSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    assert first == np.random.default_rng([3, 0]).permutation(10).tolist()
    second = list(sampler)  # a finished pass moves on to epoch 1 by itself
    assert sampler.epoch == 1 and second == np.random.default_rng([3, 1]).permutation(10).tolist()
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("stop", [0, 1, 4, 7])
def test_restore_mid_epoch_continues_the_uninterrupted_sequence(world_size, stop):
    def make(rank):
        return ResumableSampler(20, seed=9, rank=rank, world_size=world_size)

    per_epoch = -(-20 // world_size)
    for rank in range(world_size):
        reference = make(rank)
        uninterrupted = list(reference) + list(reference)  # epochs 0 and 1
        first = make(rank)
        before = take(first, stop) if stop else []
        state = first.state_dict()
        resumed = make(rank)
        resumed.load_state_dict(state)
        resumed.set_epoch(state["epoch"])  # a resumed loop calls this as usual: the position stays
        after = list(resumed)
        assert before + after == uninterrupted[: len(before) + len(after)]
        if stop < per_epoch:
            assert state == {**state, "epoch": 0, "position": stop * world_size}
            assert len(before + after) == per_epoch
        else:  # stopped right after the epoch's last row: the state names the next epoch
            assert state == {**state, "epoch": 1, "position": 0}
            assert len(before + after) == 2 * per_epoch


def test_state_is_the_same_on_every_rank_and_resumes_on_another_world_size():
    states = []
    for rank in range(2):
        sampler = ResumableSampler(11, seed=2, rank=rank, world_size=2)
        take(sampler, 3)
        states.append(sampler.state_dict())
    assert states[0] == states[1] and states[0]["position"] == 6
    order = ResumableSampler(11, seed=2).epoch_order()
    rest = []
    for rank in range(3):
        sampler = ResumableSampler(11, seed=2, rank=rank, world_size=3)
        sampler.load_state_dict(states[0])
        rest.append(list(sampler))
    assert sorted(sum(rest, [])) == sorted(order[6:].tolist() + order[:1].tolist())  # 5 left, padded to 6
    assert rest[0] == [order[6], order[9]]


@pytest.mark.parametrize("n,world_size,drop_last", [(10, 3, False), (10, 3, True), (2, 4, False), (9, 3, False)])
def test_ranks_are_disjoint_and_cover_everything(n, world_size, drop_last):
    per_rank = [list(ResumableSampler(n, seed=1, rank=r, world_size=world_size, drop_last=drop_last)) for r in range(world_size)]
    lengths = {len(indices) for indices in per_rank}
    assert len(lengths) == 1  # lock-step
    assert len(ResumableSampler(n, rank=1, world_size=world_size, drop_last=drop_last)) == lengths.pop()
    together = sum(per_rank, [])
    if drop_last:
        assert len(together) == len(set(together)) == n - n % world_size
    else:
        assert set(together) == set(range(n))
        assert len(together) == n + (-n % world_size)  # the few repeats pad the last step
    if n % world_size == 0:
        assert sorted(together) == list(range(n))


def test_consumed_counts_what_the_loop_received_not_what_was_prefetched():
    sampler = ResumableSampler(12, seed=4, rank=1, world_size=2)
    expected = list(ResumableSampler(12, seed=4, rank=1, world_size=2))
    take(sampler, 5)  # the loader fetched 5 rows ahead ...
    state = sampler.state_dict(consumed=2)  # ... but the loop trained on 2
    assert state["position"] == 4
    resumed = ResumableSampler(12, seed=4, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert list(resumed) == expected[2:]


def test_resuming_a_different_dataset_or_seed_is_refused():
    state = ResumableSampler(10, seed=1).state_dict()
    with pytest.raises(PackprepError, match="seed"):
        ResumableSampler(10, seed=2).load_state_dict(state)
    with pytest.raises(PackprepError, match="dataset_len"):
        ResumableSampler(11, seed=1).load_state_dict(state)
    with pytest.raises(PackprepError, match="rank"):
        ResumableSampler(10, rank=2, world_size=2)


@pytest.mark.slow  # DataLoader worker processes
def test_resumed_dataloader_yields_the_remaining_batches(packed):
    ds = PackedTorchDataset(packed)

    def loader(sampler):
        return torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate_block_mask)

    full = [b["input_ids"] for b in loader(ResumableSampler(len(ds), seed=7))]
    sampler = ResumableSampler(len(ds), seed=7)
    for step, _batch in enumerate(loader(sampler)):
        if step == 2:
            break
    state = sampler.state_dict(consumed=3 * 2)
    resumed = ResumableSampler(len(ds), seed=7)
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in loader(resumed)]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:]))


def test_consumed_resumes_a_prefetching_dataloader_at_the_first_untrained_row(packed):
    ds = PackedTorchDataset(packed)

    def rows(sampler, steps=None):
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, sampler=sampler, collate_fn=collate_block_mask, num_workers=2, prefetch_factor=2,
        )
        seen = []
        for step, batch in enumerate(loader):
            if step == steps:  # stop before training on this batch, as a checkpoint-and-exit does
                break
            seen += [tuple(r) for r in batch["input_ids"].tolist()]
        return seen

    uninterrupted = rows(ResumableSampler(len(ds), seed=7))
    sampler = ResumableSampler(len(ds), seed=7)
    trained = rows(sampler, steps=3)
    assert len(uninterrupted) > 14 and sampler.position > len(trained)  # the workers fetched ahead: the trap is live
    resumed = ResumableSampler(len(ds), seed=7)
    resumed.load_state_dict(sampler.state_dict(consumed=len(trained)))
    assert trained + rows(resumed) == uninterrupted


def test_additive_mask_values():
    mask = block_causal_mask(np.array([0, 2, 3]), 3)
    low = torch.finfo(torch.float32).min
    assert additive_mask(mask).tolist() == [[0.0, low, low], [0.0, 0.0, low], [low, low, 0.0]]
    assert additive_mask(mask, dtype=torch.bfloat16).dtype == torch.bfloat16
