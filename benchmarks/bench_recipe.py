"""A larger mixture, offline: shares and totals of `packprep pack --recipe`, and its time.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_recipe.py [--tokens 20000000] [--data bench-data/recipe]

Four sources built from text already on a Debian machine (written once to ``--data``):

- ``man``: every English manual page (/usr/share/man/man1-8/*.gz), troff requests and font
  escapes stripped, one document per page;
- ``debian-docs``: /usr/share/doc/*/copyright and changelog(.Debian).gz files, one per file;
- ``docstrings``: standard-library docstrings (benchmarks/make_docstring_corpus.py);
- ``examples``: examples/corpus.

The recipe (written beside the data) weights them 0.4 / 0.3 / 0.2 / 0.1, holds out 0.5 % of each
and decontaminates against 50 excerpts of man pages (40 words from the middle of a page) and,
with ``--val-decontamination``, against the val documents too; ``--max-ngram-documents N``
ignores n-grams that more than N train documents share. It is packed twice, ``--tokens`` as the
train total and with no total (the largest that repeats no source); each run reports the shares,
the total, the repeats, whole-process wall and CPU time, and a rerun's check that the shards are
byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&e-]")


def man_pages(out: Path) -> int:
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for path in sorted(Path("/usr/share/man").glob("man[1-8]/*.gz")):
            try:
                raw = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
            except (OSError, EOFError):
                continue
            lines = [_TROFF_ESCAPE.sub("", line) for line in raw.splitlines() if not line.startswith((".", "'"))]
            text = "\n".join(lines).strip()
            if len(text) >= 200:
                fh.write(json.dumps({"id": f"man/{path.parent.name}/{path.name[:-3]}", "text": text}) + "\n")
                n += 1
    return n


def debian_docs(out: Path) -> int:
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for folder in sorted(Path("/usr/share/doc").iterdir()):
            for name in ("copyright", "changelog.Debian.gz", "changelog.gz"):
                path = folder / name
                if not path.is_file():
                    continue
                data = path.read_bytes()
                try:
                    text = (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8", errors="replace")
                except (OSError, EOFError):
                    continue
                if len(text) >= 200:
                    fh.write(json.dumps({"id": f"doc/{folder.name}/{name}", "text": text}) + "\n")
                    n += 1
    return n


def build(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "man.jsonl").is_file():
        print(f"man: {man_pages(data / 'man.jsonl'):,} pages")
    if not (data / "debian-docs.jsonl").is_file():
        print(f"debian-docs: {debian_docs(data / 'debian-docs.jsonl'):,} files")
    if not (data / "docstrings.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_docstring_corpus.py"), "--out",
                        str(data / "docstrings.jsonl")], check=True)
    evals = data / "evals"
    if not evals.is_dir():
        evals.mkdir()
        pages = [json.loads(line)["text"].split() for line in (data / "man.jsonl").read_text(encoding="utf-8").splitlines()]
        pages = [words for words in pages if len(words) >= 400]
        with open(evals / "planted.jsonl", "w", encoding="utf-8") as fh:
            for i in range(50):
                # 40 words from the middle of a page: its head is often boilerplate that thousands of pages share
                words = pages[(i * 211) % len(pages)]
                fh.write(json.dumps({"id": f"q{i}", "text": " ".join(words[len(words) // 2 : len(words) // 2 + 40])}) + "\n")


RECIPE = """\
cache = "cache/"
[pack]
strategy = "eos"
seq_len = 2048
seed = 1
{mix}
[[source]]
name = "man"
path = "man.jsonl"
weight = 0.4
[[source]]
name = "debian-docs"
path = "debian-docs.jsonl"
weight = 0.3
[[source]]
name = "docstrings"
path = "docstrings.jsonl"
weight = 0.2
[[source]]
name = "examples"
path = "{examples}"
weight = 0.1

[split]
val_fraction = 0.005

[decontaminate]
paths = ["evals/"]
val = {val}
{common}"""


def pack(recipe: Path, out: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "packprep", "pack", "--recipe", str(recipe), str(out), "--quiet"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def shards_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(out.glob("shard-*.npy")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def report(out: Path, target: int | None) -> None:
    stats = json.loads(subprocess.run([sys.executable, "-m", "packprep", "inspect", str(out), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    total = sum(s["tokens"] for s in stats["sources"].values())
    print(f"  train total {total:,} tokens" + (f" (target {target:,}: {100 * (total - target) / target:+.3f} %)" if target else ""))
    for entry in manifest["recipe"]["sources"]:
        s = stats["sources"][entry["name"]]
        print(f"  {entry['name']:12s} share {100 * s['share']:6.3f} % (weight {100 * entry['share']:.1f} %, "
              f"{100 * (s['share'] - entry['share']):+.3f} points)  {s['documents']:>8,} documents  "
              f"{s['repeats']:>7,} repeats  passes {entry['passes']}  available {entry['available_tokens']:,}  dropped {s['dropped']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data" / "recipe")
    parser.add_argument("--val-decontamination", action="store_true",
                        help="also drop train documents sharing a 13-gram with a val document (on boilerplate-heavy "
                             "sources such as man pages this drops most documents)")
    parser.add_argument("--max-ngram-documents", type=int, default=None,
                        help="[decontaminate] max_ngram_documents: ignore n-grams more train documents share")
    args = parser.parse_args()
    build(args.data)
    for name, mix in (("target", f"[mix]\ntokens = {args.tokens}\n"), ("no-target", "")):
        recipe = args.data / f"recipe-{name}.toml"
        val = "true" if args.val_decontamination else "false"
        common = "" if args.max_ngram_documents is None else f"max_ngram_documents = {args.max_ngram_documents}\n"
        recipe.write_text(RECIPE.format(mix=mix, examples=ROOT / "examples" / "corpus", val=val, common=common), encoding="utf-8")
        out = args.data / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        wall, cpu = pack(recipe, out)
        print(f"{name}: {recipe} -> {out}: {wall:.1f} s wall, {cpu:.1f} s CPU (tokenizing shared between the runs: the first pays it)")
        report(out / "train", args.tokens if name == "target" else None)
        first = shards_digest(out / "train")
        shutil.rmtree(out / "train")
        shutil.rmtree(out / "val")
        wall2, cpu2 = pack(recipe, out)
        print(f"  rerun (stores cached): {wall2:.1f} s wall, {cpu2:.1f} s CPU; shards byte-identical: {shards_digest(out / 'train') == first}")


if __name__ == "__main__":
    main()
