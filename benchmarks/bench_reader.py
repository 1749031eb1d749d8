"""PackedDataset speed: opening a 1M-row output, and random ``ds[i]`` on a warm and a cold cache.

Targets (issue 7): open an output of 1M rows in < 1 s; >= 100k rows/s for ``ds[i]``.

Warm cache (every row read once before timing):
- a synthetic output of 1M rows x 2048 tokens (uint32, as cl100k needs), written straight
  in the npy format with ~4 segments per row; its token matrix is a *sparse* file, so it
  costs no disk, and reading it never touches the disk either: this figure is the
  reader's own cost (the checksums in its manifest are placeholders: nothing here verifies);
- a real one, ``packprep pack --strategy eos examples/corpus --seq-len 2048``.
Cold cache: a dense synthetic output (``--cold-rows`` rows, random tokens really on disk),
evicted from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every file
(after an fsync, so every page is clean and can go; ``drop_caches`` is not writable in
our container, and would disturb everything else running; ``fincore`` shows 0 pages
left), then opened afresh and read at 1 in 16 of its rows, distinct and in random order,
so the kernel's 128 KB read-around (16 rows of 8 KB) rarely serves one read from another's
fault. On a VM the host may still cache the disk image: a lower bound on cold latency.
The baseline in the same run is the cost of the part nobody can avoid: copying the
row's tokens out of the map as int64 (``input_ids[i].astype(np.int64)``).

    .venv/bin/python benchmarks/bench_reader.py [--rows 1000000] [--reads 200000] [--cold-rows 20000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from packprep import PackedDataset
from packprep.formats import npy

REPO = Path(__file__).resolve().parents[1]


def synthetic_output(
    out: Path, *, rows: int, seq_len: int, rows_per_shard: int = 65536, seed: int = 0, dense: bool = False
) -> None:
    """A 1-shard-per-65,536-rows npy output; ``dense``: random token ids on disk, else a sparse (zero) token matrix."""
    rng = np.random.default_rng(seed)
    shards = []
    for index, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        name = npy.shard_name(index)
        matrix = np.lib.format.open_memmap(npy.shard_file(out, name, "input_ids"), mode="w+", dtype=np.uint32, shape=(n, seq_len))
        for r in range(0, n, 4096) if dense else ():
            matrix[r : r + 4096] = rng.integers(0, 100_000, size=(min(4096, n - r), seq_len), dtype=np.uint32)
        matrix.flush()
        del matrix
        per_row = rng.integers(1, 8, n)
        row_ptr = np.concatenate([[0], np.cumsum(per_row)])
        # k evenly spaced segments tile each row (a split packing, no padding).
        total = int(row_ptr[-1])
        k = np.repeat(per_row, per_row)
        j = np.arange(total) - np.repeat(row_ptr[:-1], per_row)
        seg_start = j * seq_len // k
        seg_length = (j + 1) * seq_len // k - seg_start
        arrays = {
            "row_ptr": row_ptr.astype(np.int64),
            "seg_start": seg_start.astype(np.int32),
            "seg_length": seg_length.astype(np.int32),
            "seg_doc": rng.integers(0, 10_000_000, total).astype(np.int64),
            "seg_doc_offset": np.zeros(total, np.int64),
        }
        for key, array in arrays.items():
            np.save(npy.shard_file(out, name, key), array)
        files = {key: {"path": npy.shard_file(out, name, key).name, "sha256": "synthetic"} for key in npy.SHARD_ARRAYS}
        shards.append({"name": name, "rows": n, "segments": total, "files": files})
    npy.write_manifest(out, {"seq_len": seq_len, "pad_id": 0, "dtype": "uint32", "shards": shards})


def time_open(path: Path, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        ds = PackedDataset(path)
        len(ds)
        best = min(best, time.perf_counter() - t)
    return best


def rows_per_second(path: Path, reads: int, seed: int = 1) -> tuple[float, float]:
    ds = PackedDataset(path)
    index = np.random.default_rng(seed).integers(0, len(ds), reads).tolist()
    for i in index:  # warm the page cache and the lazily opened shards
        ds[i]
    t = time.perf_counter()
    for i in index:
        ds[i]
    getitem = reads / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in index:
        shard, local = ds.locate(i)
        shard.input_ids[local].astype(np.int64)
    baseline = reads / (time.perf_counter() - t)
    return getitem, baseline


def evict(path: Path) -> None:
    """Drop every file under ``path`` from the page cache (fsync first: only clean pages can go)."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cold_rows_per_second(path: Path, reads: int, seed: int = 2) -> tuple[float, float]:
    """(seconds to open, ds[i] rows/s) right after evicting the output, each row read once."""
    evict(path)
    t = time.perf_counter()
    ds = PackedDataset(path)
    opened = time.perf_counter() - t
    index = np.random.default_rng(seed).permutation(len(ds))[:reads].tolist()
    t = time.perf_counter()
    for i in index:
        ds[i]
    return opened, len(index) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--cold-rows", type=int, default=20_000, help="rows of the dense output read cold (8 KB each)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        synthetic, real = Path(tmp) / "synthetic", Path(tmp) / "real"
        synthetic.mkdir()
        t = time.perf_counter()
        synthetic_output(synthetic, rows=args.rows, seq_len=args.seq_len)
        print(f"synthetic output: {args.rows:,} rows x {args.seq_len} written in {time.perf_counter() - t:.1f} s")
        subprocess.run(
            [sys.executable, "-m", "packprep.cli", "pack", str(REPO / "examples" / "corpus"), str(real),
             "--strategy", "eos", "--seq-len", str(args.seq_len), "--quiet"],
            check=True,
        )
        dense = Path(tmp) / "dense"
        dense.mkdir()
        synthetic_output(dense, rows=args.cold_rows, seq_len=args.seq_len, dense=True)
        print(f"warm cache ({args.reads:,} random reads after one pass over them)")
        print(f"{'output':<22}{'rows':>10}{'open s':>10}{'ds[i] rows/s':>15}{'copy-only rows/s':>18}{'ratio':>8}")
        for label, path in (("synthetic 1M, sparse", synthetic), ("examples/corpus eos", real)):
            opened = time_open(path)
            getitem, baseline = rows_per_second(path, min(args.reads, 10 * len(PackedDataset(path))))
            print(
                f"{label:<22}{len(PackedDataset(path)):>10,}{opened:>10.4f}{getitem:>15,.0f}{baseline:>18,.0f}"
                f"{getitem / baseline:>8.2f}"
            )
        print("cold cache (files evicted with POSIX_FADV_DONTNEED, then 1 row in 16 read once, in random order)")
        print(f"{'output':<22}{'rows':>10}{'open s':>10}{'ds[i] rows/s':>15}")
        opened, cold = cold_rows_per_second(dense, args.cold_rows // 16)
        print(f"{'synthetic, dense':<22}{args.cold_rows:>10,}{opened:>10.4f}{cold:>15,.0f}")
        print("targets: open < 1 s for 1M rows; ds[i] >= 100,000 rows/s")


if __name__ == "__main__":
    main()
