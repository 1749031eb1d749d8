"""``bench_engines.py --order-rss``: partitioned icp on Ray, the driver's peak memory at two corpus sizes,
and a multi-node layout on one machine. Run it through bench_engines.py (its docstring says how)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

WORK = Path("bench-data/order-rss")
# A fresh driver per run: pack, then print the driver's own peak RSS. VmHWM, not ru_maxrss: on Linux
# ru_maxrss survives exec, so a child of a large parent (this process, after embedding a store)
# reports the parent's peak; VmHWM belongs to the driver's own address space. The peak is mostly
# the fixed base (Python, numpy, Ray's client; ray.init's own peak), which hides a few MB that grow
# with the corpus; so the driver also resets its high-water mark just before ``pack`` (writing 5 to
# /proc/self/clear_refs, Linux >= 4.0) and reports ``pack_growth_mib``: the peak during pack minus
# the resident memory it started from. Its difference between two sizes is the per-document slope.
DRIVER = (
    "import json, sys, time\n"
    "from packprep.config import EmbedConfig, PackConfig\n"
    "from packprep.engines import Engine\n"
    "from packprep.pipeline import pack\n"
    "store, out, engine, cpus, partition_docs, dedup, traced, semantic = sys.argv[1:9]\n"
    "if engine == 'ray':\n"
    "    from packprep.engines.ray_engine import connect\n"
    "    connect(None, num_cpus=int(cpus))\n"
    "def status(key):\n"
    "    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key + ':'))\n"
    "peak_before = status('VmHWM')\n"
    "open('/proc/self/clear_refs', 'w').write('5')\n"
    "rss_before = status('VmRSS')\n"
    "import tracemalloc\n"
    "if traced == '1': tracemalloc.start()\n"
    "start = time.perf_counter()\n"
    "threshold = None if semantic == 'default' else float(semantic)\n"
    "config = PackConfig(strategy='icp', seq_len=2048, dedup=dedup == '1', semantic_threshold=threshold, partition_docs=int(partition_docs))\n"
    "pack(store, out, config=config, embed_config=EmbedConfig(model='static'), engine=Engine(engine))\n"
    "during = status('VmHWM')\n"
    "print(json.dumps({'seconds': time.perf_counter() - start, 'peak_mib': max(peak_before, during) / 1024,\n"
    "                  'pack_growth_mib': (during - rss_before) / 1024,\n"
    "                  'traced_mib': tracemalloc.get_traced_memory()[1] / 2**20 if traced == '1' else None}))\n"
)


def first_lines(source: Path, n: int, dest: Path) -> Path:
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as fh, open(dest.with_suffix(".tmp"), "wb") as out:
            for i, line in enumerate(fh):
                if i == n:
                    break
                out.write(line)
        dest.with_suffix(".tmp").rename(dest)
    return dest


def prepared_store(source: Path, n: int) -> Path:
    """WORK/store-<n>: the first ``n`` documents of ``source``, tokenized and embedded (static), cached."""
    from packprep.config import EmbedConfig
    from packprep.pipeline import tokenize
    from packprep.pipeline.semantic import embed

    corpus = first_lines(source, n, WORK / f"corpus-{n}" / "docs.jsonl")
    store = tokenize(corpus.parent, WORK / f"store-{n}")
    embed(store, config=EmbedConfig(model="static"))
    return store.path


def run_driver(
    store: Path, out: Path, engine: str, cpus: int, partition_docs: int, dedup: bool, *, traced: bool = False, tree: Path | None = None,
    semantic: str = "0",
) -> dict:
    """One fresh driver's figures. ``traced``: tracemalloc's peak during pack too (numpy's and Python's heap,
    not faiss's or mapped pages; slower). ``tree``: run the packprep of that checkout instead of this one.
    ``semantic``: ``--semantic-threshold`` ("0": off; "default": icp's default, calibrated for the static embedder)."""
    import os
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    if dedup:  # each run computes its dedup (the store caches it: the second engine would reuse the first's)
        (store / "dedup.json").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(store.resolve()), str(out.resolve()), engine, str(cpus), str(partition_docs),
         "1" if dedup else "0", "1" if traced else "0", semantic],
        check=True, capture_output=True, text=True,
        **({} if tree is None else {"cwd": tree, "env": dict(os.environ, PYTHONPATH=str(tree))}),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def shards_equal(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.name.startswith(("shard-", "doc_")))
    return bool(names) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def order_rss(args) -> None:
    source = args.corpus if args.corpus != Path("bench-data/kernel-docs.jsonl") else Path("bench-data/kernel-docs-64mb-x4.jsonl")
    if args.compare:
        return compare(source, args)
    if args.nodes_only:
        return multi_node(prepared_store(source, args.sizes[0]), args)
    print(f"corpus: first {args.sizes} documents of {source}; icp, --partition-docs {args.partition_docs}, "
          f"static embeddings, {'exact + MinHash dedup' if args.dedup else 'no dedup'}, {_semantic_text(args)}; ray with {args.cpus} CPUs")
    print(f"{'documents':>9} {'ray driver MiB':>15} {'in pack':>8} {'ray s':>7} {'local MiB':>10} {'in pack':>8} {'local s':>8} {'identical':>9}")
    peaks, growths = [], []
    for n in args.sizes:
        store = prepared_store(source, n)
        on_ray = run_driver(store, WORK / f"out-ray-{n}", "ray", args.cpus, args.partition_docs, args.dedup, semantic=_semantic(args))
        local = run_driver(store, WORK / f"out-local-{n}", "local", args.cpus, args.partition_docs, args.dedup, semantic=_semantic(args))
        same = shards_equal(WORK / f"out-ray-{n}", WORK / f"out-local-{n}")
        peaks.append(on_ray["peak_mib"])
        growths.append(on_ray["pack_growth_mib"])
        print(f"{n:>9,} {on_ray['peak_mib']:>15.0f} {on_ray['pack_growth_mib']:>8.1f} {on_ray['seconds']:>7.1f} "
              f"{local['peak_mib']:>10.0f} {local['pack_growth_mib']:>8.1f} {local['seconds']:>8.1f} {str(same):>9}")
    print(f"ray driver peak, largest / smallest corpus: {peaks[-1] / peaks[0]:.2f}x for {args.sizes[-1] / args.sizes[0]:.0f}x the documents")
    slope = (growths[-1] - growths[0]) * 2**20 / max(args.sizes[-1] - args.sizes[0], 1)
    print(f"ray driver growth during pack: {growths[0]:.1f} -> {growths[-1]:.1f} MiB, {slope:.0f} B per document")
    multi_node(prepared_store(source, args.sizes[0]), args)


def _semantic(args) -> str:
    return "default" if args.semantic_default else "0"


def _semantic_text(args) -> str:
    return "icp's default semantic threshold" if args.semantic_default else "--semantic-threshold 0"


def compare(source: Path, args) -> None:
    """The Ray driver of another checkout (``--compare TREE``, "before") and of this one ("after"), in turns,
    ``--rounds`` times: its peak RSS, growth during pack and tracemalloc's peak at each size, and whether both
    wrote the same shards."""
    trees = {"before": args.compare.resolve(), "after": Path(__file__).resolve().parent.parent}
    print(f"icp, --partition-docs {args.partition_docs}, {_semantic_text(args)}; ray with {args.cpus} CPUs")
    print(f"{'round':>5} {'tree':>6} {'documents':>9} {'peak MiB':>8} {'in pack MiB':>11} {'traced MiB':>10} {'s':>6}")
    for rnd in range(args.rounds):
        for traced in (False, True):
            figures: dict[tuple[str, int], dict] = {}
            for name, tree in trees.items():
                for n in args.sizes:
                    out = WORK / f"out-{name}-{n}"
                    r = figures[name, n] = run_driver(prepared_store(source, n), out, "ray", args.cpus, args.partition_docs,
                                                      args.dedup, traced=traced, tree=tree, semantic=_semantic(args))
                    shown = f"{r['traced_mib']:>10.1f}" if traced else f"{'-':>10}"
                    print(f"{rnd:>5} {name:>6} {n:>9,} {r['peak_mib']:>8.0f} {r['pack_growth_mib']:>11.1f} {shown} {r['seconds']:>6.1f}", flush=True)
            key = "traced_mib" if traced else "pack_growth_mib"
            for name in trees:
                a, b = figures[name, args.sizes[0]][key], figures[name, args.sizes[-1]][key]
                peaks = figures[name, args.sizes[-1]]["peak_mib"] / figures[name, args.sizes[0]]["peak_mib"]
                print(f"      {name}: {key} slope {(b - a) * 2**20 / (args.sizes[-1] - args.sizes[0]):.0f} B per document; "
                      f"peak RSS {peaks:.2f}x for {args.sizes[-1] / args.sizes[0]:.0f}x the documents")
            print("      shards identical:", all(shards_equal(WORK / f"out-before-{n}", WORK / f"out-after-{n}") for n in args.sizes))


def multi_node(store: Path, args) -> None:
    """The smallest store on ``args.nodes`` Ray nodes of one CPU each (one machine, one file system)."""
    import shutil

    import ray
    from ray.cluster_utils import Cluster

    from packprep.config import EmbedConfig, PackConfig
    from packprep.engines import Engine, ray_order, ray_pack
    from packprep.pipeline import pack

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    seen = WORK / "nodes-seen"
    shutil.rmtree(seen, ignore_errors=True)
    seen.mkdir(parents=True)
    real = ray_order.order_part

    def noting_the_node(p, *rest):  # a closure: pickled by value, so the workers run it as it is
        import ray as worker_ray

        (seen / f"{p}.txt").write_text(worker_ray.get_runtime_context().get_node_id())
        return real(p, *rest)

    real_pack = ray_pack.pack_part_task

    def noting_the_pack_node(folder, part, *rest):
        import ray as worker_ray

        (seen / f"pack-{part}.txt").write_text(worker_ray.get_runtime_context().get_node_id())
        return real_pack(folder, part, *rest)

    ray_order.order_part = noting_the_node
    ray_pack.pack_part_task = noting_the_pack_node
    try:
        out = WORK / "out-nodes"
        shutil.rmtree(out, ignore_errors=True)
        threshold = None if args.semantic_default else 0.0
        config = PackConfig(strategy="icp", seq_len=2048, dedup=args.dedup, semantic_threshold=threshold, partition_docs=args.partition_docs)
        start = time.perf_counter()
        pack(store, out, config=config, embed_config=EmbedConfig(model="static"), engine=Engine("ray"))
        seconds = time.perf_counter() - start
        from collections import Counter

        per_node = sorted(Counter(f.read_text() for f in seen.iterdir() if not f.name.startswith("pack-")).values(), reverse=True)
        parts_per_node = sorted(Counter(f.read_text() for f in seen.glob("pack-*")).values(), reverse=True)
        same = shards_equal(out, WORK / f"out-local-{args.sizes[0]}")
        print(f"{args.nodes} nodes x 1 CPU: {seconds:.1f} s, partition tasks per node {per_node}, "
              f"pack-part tasks per node {parts_per_node}, identical to local: {same}")
    finally:
        ray_order.order_part = real
        ray_pack.pack_part_task = real_pack
        ray.shutdown()
        cluster.shutdown()
