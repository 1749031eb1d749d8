"""Near-duplicate dedup on planted copies: recall on formatting-only and lightly edited copies,
false positives on distinct documents, and MinHash speed.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dedup.py [--corpus bench-data/dedup-distinct.jsonl]
        [--formatting 500] [--edited 500] [--sweep] [--pack]

The distinct documents are built offline from text on this machine (``build_distinct``):
examples/corpus, the long descriptions of the installed Python packages (METADATA), the
Debian copyright files and READMEs under /usr/share/doc (licence boilerplate on purpose),
man pages in English and 25 other languages (Japanese and Chinese among them) and the
docstrings of the Python standard library. Genuine duplicates in that material (the
same licence text in two packages, one man page installed twice) are removed first: a
document goes if its word 5-gram Jaccard with an earlier one is >= 0.8 (exact, not
estimated; candidates from a MinHash LSH at 0.5), so that what is later dropped among
the "distinct" documents is a false positive, not a true duplicate. Copies are planted
with ``tests/planted.py`` (the test's planting).

``--sweep`` measures shingle size x threshold with the stage functions; ``--pack`` runs
the real ``packprep pack --strategy eos --dedup`` with the defaults.
"""

from __future__ import annotations

import argparse
import ast
import glob
import gzip
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packprep.stages import dedup as stage  # noqa: E402
from packprep.stages.shingles import word_hashes  # noqa: E402
from tests.planted import plant  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_ROFF_ESCAPE = re.compile(r"\\f[BIRPC]|\\f\(..|\\\(..|\\[&-]|\\s[-+]?\d|\\\*.|\\\"")


def _words(text: str) -> int:
    return len(text.split())


def _examples() -> list[str]:
    return [json.loads(line)["text"] for f in sorted(glob.glob(str(REPO / "examples/corpus/*.jsonl.gz"))) for line in gzip.open(f, "rt")]


def _metadata() -> list[str]:
    out = []
    for path in sorted(glob.glob(sys.prefix + "/lib/python3*/site-packages/*.dist-info/METADATA")):
        text = Path(path).read_text(errors="replace")
        _, _, body = text.partition("\n\n")
        out.append(body)
    return out


def _usr_share_doc(limit: int) -> list[str]:
    paths = sorted(glob.glob("/usr/share/doc/*/copyright")) + sorted(glob.glob("/usr/share/doc/*/README*"))
    out = []
    for path in paths[:limit]:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rt", errors="replace") as f:
                out.append(f.read(40_000))
        except (OSError, EOFError):
            continue
    return out


def _man_pages(limit: int, rng: random.Random) -> list[str]:
    paths = sorted(glob.glob("/usr/share/man/*/man*/*.gz")) + rng.sample(sorted(glob.glob("/usr/share/man/man*/*.gz")), 600)
    out = []
    for path in paths[:limit]:
        try:
            raw = gzip.open(path, "rt", errors="replace").read(60_000)
        except (OSError, EOFError):
            continue
        lines = []
        for line in raw.splitlines():
            if line.startswith((".\\\"", "'\\\"")) or line.startswith(".so"):
                continue
            if line.startswith("."):
                line = line.partition(" ")[2]
            lines.append(_ROFF_ESCAPE.sub("", line))
        out.append("\n".join(lines))
    return out


def _docstrings(limit: int, rng: random.Random) -> list[str]:
    out = []
    for path in sorted(glob.glob(f"/usr/lib/python3.{sys.version_info.minor}/*.py")):
        try:
            tree = ast.parse(Path(path).read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and _words(doc) >= 30:
                    out.append(doc)
    return rng.sample(out, min(limit, len(out)))


def build_distinct(seed: int = 0) -> tuple[list[str], list[str], dict[str, int]]:
    """Distinct documents (>= 8 words) and their sources; genuine duplicates removed (see the module doc)."""
    rng = random.Random(seed)
    sources = {
        "examples": _examples(), "metadata": _metadata(), "usr-share-doc": _usr_share_doc(900),
        "man": _man_pages(1600, rng), "docstrings": _docstrings(1200, rng),
    }
    texts, origin = [], []
    for name, docs in sources.items():
        for text in docs:
            if _words(text) >= 8:
                texts.append(text)
                origin.append(name)
    keep = _drop_genuine_duplicates(texts)
    removed = {name: sum(1 for o, k in zip(origin, keep) if o == name and not k) for name in sources}
    return [t for t, k in zip(texts, keep) if k], [o for o, k in zip(origin, keep) if k], removed


def _drop_genuine_duplicates(texts: list[str], jaccard: float = 0.8) -> np.ndarray:
    """bool [N]: False for a document whose exact word 5-gram Jaccard with an earlier kept one is >= ``jaccard``
    (exact duplicates after normalisation included). Candidate pairs from MinHash LSH tuned for 0.5."""
    keep = stage.exact_duplicates(np.array([stage.normalized_text_hash(t) for t in texts], dtype=np.uint64)).keep.copy()
    signatures = stage.text_signatures(texts, num_perm=128, shingle=5)
    left, right = stage._band_candidates(signatures, *stage.lsh_params(128, 0.5), seed=0)
    pairs = np.unique(np.sort(np.stack([left, right], axis=1), axis=1), axis=0)
    for a, b in pairs[np.argsort(pairs[:, 1], kind="stable")]:
        if keep[a] and keep[b] and stage.text_jaccard(texts[a], texts[b], shingle=5) >= jaccard:
            keep[b] = False
    return keep


def score(keep: np.ndarray, kinds: list[str], formatting: list, edited: list) -> dict[str, float]:
    """Fractions: pairs with exactly one member kept, distinct documents (not in a pair) kept, and sources kept."""
    one_kept = lambda pairs: float(np.mean([keep[a] != keep[b] for a, b in pairs]))  # noqa: E731
    distinct = np.array([k == "distinct" for k in kinds])
    return {
        "formatting removed": one_kept(formatting),
        "edited removed": one_kept(edited),
        "distinct kept": float(keep[distinct].mean()),
    }


def sweep(texts: list[str], kinds: list[str], formatting: list, edited: list) -> None:
    hashes, offsets = word_hashes(texts)
    exact = stage.exact_duplicates(np.array([stage.normalized_text_hash(t) for t in texts], dtype=np.uint64))
    print("\nshingle  perms  threshold  bands x rows  formatting  edited  distinct kept  (exact+MinHash, stage functions)")
    for shingle in (3, 4, 5):
        for num_perm in (128, 256) if shingle == 4 else (128,):
            signatures = stage.minhash_signatures(hashes, offsets, num_perm=num_perm, shingle=shingle)
            for threshold in (0.7, 0.75, 0.78, 0.8, 0.82, 0.85):
                near = stage.near_duplicates(signatures, threshold=threshold, keep=exact.keep)
                s = score(stage.combine(exact, near).keep, kinds, formatting, edited)
                bands, rows = stage.lsh_params(num_perm, threshold)
                print(f"{shingle:7d}  {num_perm:5d}  {threshold:9.2f}  {bands:5d} x {rows:<4d}  "
                      f"{s['formatting removed']:10.2%}  {s['edited removed']:6.2%}  {s['distinct kept']:13.3%}")
    for shingle in (3, 4, 5):
        jac = [stage.text_jaccard(texts[a], texts[b], shingle=shingle) for a, b in edited]
        print(f"edited pairs, true Jaccard of word {shingle}-grams: 5th pct {np.percentile(jac, 5):.3f}, "
              f"median {np.median(jac):.3f}")


def short_documents(distinct: list[str], count: int = 300) -> None:
    """Outside the targets, for the record: lightly edited copies (one edit) of 20-59-word documents."""
    from packprep.config import DedupConfig

    from tests.planted import edited_copy

    config, rng = DedupConfig(), random.Random(0)
    short = [t for t in distinct if 20 <= _words(t) < 60]
    sources = rng.sample(short, min(count, len(short)))
    vocabulary = [w for t in distinct[::30] for w in t.split() if w.isalpha()]
    texts = sources + [edited_copy(t, rng, vocabulary) for t in sources]
    exact = stage.exact_duplicates(np.array([stage.normalized_text_hash(t) for t in texts], dtype=np.uint64))
    signatures = stage.text_signatures(texts, num_perm=config.num_perm, shingle=config.shingle)
    keep = stage.combine(exact, stage.near_duplicates(signatures, threshold=config.minhash_threshold, keep=exact.keep)).keep
    n = len(sources)
    print(f"\nshort documents (20-59 words, one word edited + formatting), defaults: "
          f"{np.mean(keep[:n] != keep[n:]):.1%} of {n} copies removed")


def pack_run(texts: list[str], kinds: list[str], formatting: list, edited: list, folder: Path) -> dict[str, float]:
    """The real command: ``packprep pack corpus.jsonl OUT --strategy eos --dedup`` (defaults otherwise)."""
    from typer.testing import CliRunner

    from packprep.cli import app
    from packprep.store import DocStore

    corpus = folder / "planted.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["pack", str(corpus), str(folder / "out"), "--strategy", "eos", "--dedup", "--overwrite", "-q"])
    assert result.exit_code == 0, result.output
    print(f"\npackprep pack --strategy eos --dedup: {time.perf_counter() - start:.1f}s")
    store = DocStore.open(folder / "out" / "work")
    assert store.num_documents == len(texts)
    keep = np.load(folder / "out" / "work" / "dedup.keep.npy")
    return score(keep, kinds, formatting, edited) | {"dropped": int((~keep).sum())}


def false_positives(texts, kinds, origin_of, keep, dup_of, shingle: int, limit: int = 30) -> None:
    distinct = [i for i, k in enumerate(kinds) if k == "distinct" and not keep[i]]
    print(f"\n{len(distinct)} distinct documents dropped; by source: "
          + ", ".join(f"{s} {sum(origin_of[i] == s for i in distinct)}" for s in sorted(set(origin_of.values()))))
    for i in distinct[:limit]:
        j = int(dup_of[i])
        print(f"  J={stage.text_jaccard(texts[i], texts[j], shingle=shingle):.2f} {origin_of[i]}: {texts[i][:70]!r}\n"
              f"         kept {origin_of.get(j, kinds[j])}: {texts[j][:70]!r}")


def speed(texts: list[str], tokens_per_doc: int = 500) -> None:
    """Documents/s of the whole MinHash step (decode, normalise, hash words, sign) on one core, on
    documents of ``tokens_per_doc`` cl100k tokens cut from the corpus."""
    from packprep.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("cl100k", num_threads=1)
    flat, _ = tokenizer.encode_batch(texts)
    n = len(flat) // tokens_per_doc
    offsets = np.arange(0, n * tokens_per_doc + 1, tokens_per_doc, dtype=np.int64)
    stage.document_signatures(tokenizer.decode, flat, offsets[:50])  # first use builds the character table
    cpu, wall = min(_timed(stage.document_signatures, tokenizer.decode, flat, offsets) for _ in range(3))
    print(f"\nMinHash (decode + normalise + word hashes + 128 permutations), {n:,} documents of {tokens_per_doc} "
          f"tokens, one process, best of 3: {n / cpu:,.0f} documents per CPU second (per core); "
          f"{n / wall:,.0f} documents/s of wall time on this (shared) machine")


def _timed(fn, *args) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call: the CPU time is what one core spends, whatever else
    the machine runs (numpy and the tokenizer's decode run single-threaded here)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=REPO / "bench-data" / "dedup-distinct.jsonl")
    parser.add_argument("--formatting", type=int, default=500)
    parser.add_argument("--edited", type=int, default=500)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--seed", type=int, default=1, help="planting seed")
    parser.add_argument("--pack", action="store_true")
    args = parser.parse_args()

    if args.corpus.is_file():
        records = [json.loads(line) for line in args.corpus.open()]
        distinct, origin = [r["text"] for r in records], [r["source"] for r in records]
    else:
        distinct, origin, removed = build_distinct()
        args.corpus.parent.mkdir(parents=True, exist_ok=True)
        args.corpus.write_text("".join(json.dumps({"text": t, "source": o}) + "\n" for t, o in zip(distinct, origin)))
        print(f"genuine duplicates removed from the material: {removed}")
    counts = {s: origin.count(s) for s in sorted(set(origin))}
    print(f"{len(distinct):,} distinct documents: {counts}")
    texts, kinds, formatting, edited = plant(distinct, formatting=args.formatting, edited=args.edited, seed=args.seed)
    position = {text: i for i, text in enumerate(distinct)}
    origin_of = {p: origin[position[t]] for p, (t, k) in enumerate(zip(texts, kinds)) if k in ("distinct", "source")}
    print(f"planted: {len(formatting)} formatting-only copies, {len(edited)} lightly edited copies "
          f"(sources of >= 60 words), {len(texts):,} documents in all")

    speed(distinct[:3000])
    short_documents(distinct)
    if args.sweep:
        sweep(texts, kinds, formatting, edited)
    if args.pack:
        import tempfile

        from packprep.config import DedupConfig

        with tempfile.TemporaryDirectory() as tmp:
            result = pack_run(texts, kinds, formatting, edited, Path(tmp))
            keep = np.load(Path(tmp) / "out" / "work" / "dedup.keep.npy")
            dup_of = np.load(Path(tmp) / "out" / "work" / "dedup.dup_of.npy")
        config = DedupConfig()
        print(f"defaults: word {config.shingle}-grams, {config.num_perm} permutations, threshold {config.minhash_threshold}")
        print(", ".join(f"{k} {v:.2%}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
        false_positives(texts, kinds, origin_of, keep, dup_of, config.shingle)


if __name__ == "__main__":
    main()
