"""Local vs Ray engine on the same corpus: tokenize + pack (eos), and optionally MinHash dedup.

    .venv/bin/python benchmarks/bench_engines.py [--corpus bench-data/kernel-docs.jsonl] [--parts 8] [--cpus N] [--dedup]

The corpus (benchmarks/make_corpus.py builds it) is split into ``--parts`` JSONL files,
because the Ray engine's unit of work is a file; both engines read the same split copy.
Ray's start-up (``ray.init``) is timed apart from the stages. Both stores and both
outputs are checked to be byte-identical, so the timings compare equal work.

    .venv/bin/python benchmarks/bench_engines.py --order-rss [--corpus bench-data/kernel-docs-64mb-x4.jsonl]
        [--sizes 10000 40000] [--partition-docs 2000] [--nodes 3] [--dedup] [--semantic-default]

Partitioned icp instead (issue 17): stores of the corpus's first 10,000 and 40,000
documents (tokenized and embedded with the static embedder once, cached under
``bench-data/order-rss``) are packed with ``--strategy icp --partition-docs 2000
--no-dedup --semantic-threshold 0`` (``--dedup``: exact + MinHash dedup, computed afresh in each run;
``--semantic-default``: icp's default semantic threshold, semantic dedup inside the partitions) by a fresh driver process each, on Ray (a local instance with ``--cpus``)
and locally; it prints each driver's peak RSS (``VmHWM`` of the driver alone: Ray's
workers are other processes), its growth during ``pack`` (the high-water mark reset just
before it, minus the resident memory then: the part that can grow with the corpus, and
from two sizes its slope per document) and wall time, and checks that both engines wrote the same
shards. Then the 10,000-document store again on a multi-node layout on this machine
(``ray.cluster_utils.Cluster``, ``--nodes`` nodes of one CPU, this folder as the shared
file system): time, the nodes the partition tasks ran on, and byte identity.

    .venv/bin/python benchmarks/bench_engines.py --order-rss --compare ../main [--rounds 2] [--cpus 2] [--semantic-default]

Before and after instead: the Ray driver of another checkout and of this one, in turns, on
the same stores: its growth during pack and tracemalloc's peak, each size, and the slope.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from packprep.config import DedupConfig, PackConfig
from packprep.engines import Engine
from packprep.pipeline import pack, tokenize


def split_corpus(source: Path, folder: Path, parts: int) -> int:
    """Write ``source``'s lines round-robin into ``parts`` files of about equal size; returns its byte size."""
    lines = source.read_bytes().splitlines(keepends=True)
    folder.mkdir(parents=True)
    size = sum(len(line) for line in lines)
    per_part, part, written = size / parts, 0, 0
    handles = [open(folder / f"part-{i:03d}.jsonl", "wb") for i in range(parts)]
    for line in lines:  # consecutive runs of lines, so document order is the source's
        handles[part].write(line)
        written += len(line)
        if written >= per_part * (part + 1) and part < parts - 1:
            part += 1
    for fh in handles:
        fh.close()
    return size


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def same_files(a: Path, b: Path, names: list[str]) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("bench-data/kernel-docs.jsonl"))
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--dedup", action="store_true", help="also time exact + MinHash dedup")
    parser.add_argument("--order-rss", action="store_true", help="partitioned icp: driver peak RSS at two corpus sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--partition-docs", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--nodes-only", action="store_true", help="with --order-rss: only the multi-node layout (stores and local outputs from an earlier run)")
    parser.add_argument("--compare", type=Path, help="with --order-rss: the Ray driver of this other checkout and of this one, in turns")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: rounds of both")
    parser.add_argument("--semantic-default", action="store_true",
                        help="with --order-rss: icp's default semantic threshold (calibrated for the static embedder), not 0")
    args = parser.parse_args()
    if args.order_rss:
        from bench_order_rss import order_rss

        return order_rss(args)

    import ray

    from packprep.pipeline import semantic
    from packprep.engines import ray_engine

    with tempfile.TemporaryDirectory(dir=args.corpus.parent) as tmp:
        tmp = Path(tmp)
        size = split_corpus(args.corpus, tmp / "corpus", args.parts)
        config = PackConfig(strategy="eos")
        rows = []

        store, t_tok = timed(tokenize, tmp / "corpus", tmp / "local-work")
        _, t_pack = timed(pack, store.path, tmp / "local-out", config=config)
        rows.append(("local", 0.0, t_tok, t_pack))

        _, t_init = timed(ray.init, num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_store, t_tok = timed(tokenize, tmp / "corpus", tmp / "ray-work", engine=Engine("ray"))
        _, t_pack = timed(pack, ray_store.path, tmp / "ray-out", config=config)
        rows.append(("ray", t_init, t_tok, t_pack))

        store_files = ["tokens.bin", "offsets.npy", "text_hash.npy", "doc_ids.bin", "doc_ids.idx.npy", "store.json"]
        shard_files = sorted(p.name for p in (tmp / "local-out").iterdir() if p.name.startswith(("shard-", "doc_")))
        identical = same_files(tmp / "local-work", tmp / "ray-work", store_files) and same_files(
            tmp / "local-out", tmp / "ray-out", shard_files
        )
        print(f"corpus: {args.corpus} ({size / 1e6:.1f} MB) in {args.parts} files, {store.num_documents:,} documents, "
              f"{store.num_tokens:,} tokens; ray with {args.cpus} CPUs; stores and shards identical: {identical}")
        print(f"{'engine':<8}{'ray.init':>10}{'tokenize':>10}{'pack eos':>10}{'total':>10}")
        for name, init, tok, pk in rows:
            print(f"{name:<8}{init:>9.1f}s{tok:>9.1f}s{pk:>9.1f}s{init + tok + pk:>9.1f}s")
        local, on_ray = rows
        print(f"ray/local: tokenize {on_ray[2] / local[2]:.2f}x, "
              f"tokenize+pack with start-up {sum(on_ray[1:]) / sum(local[1:]):.2f}x")

        if args.dedup:
            dedup_config = DedupConfig()
            found, t_local = timed(semantic.dedup, store, config=dedup_config)
            result, t_ray = timed(ray_engine.dedup_on_ray, ray_store, config=dedup_config)
            same = result.reason.tolist() == found.reason.tolist() and result.dup_of.tolist() == found.dup_of.tolist()
            print(f"dedup (exact + MinHash): local {t_local:.1f}s, ray {t_ray:.1f}s ({t_ray / t_local:.2f}x); "
                  f"identical: {same}; {found.manifest['counts']}")
        ray.shutdown()


if __name__ == "__main__":
    main()
