"""Peak memory of tokenizing one huge document (issue 16: at most 4x its size).

    .venv/bin/python benchmarks/bench_huge_document.py [--size-mb 100] [--checkout PATH]

Builds ``bench-data/huge-doc-<size>mb.jsonl``: one JSONL record whose text is the kernel
documentation corpus (``benchmarks/make_corpus.py``) joined with blank lines up to
``--size-mb`` MB of UTF-8 (``--ascii``: its non-ASCII characters dropped, so Python holds it in
1 byte a character; ``--emoji``: one emoji added, 4 bytes a character; by default its CJK
make it 2). Then, each in its own process so that its peak RSS (``wait4``: the largest
process of the tree) is its own:

- ``encode_batch [backend]``: read the text, ``load_tokenizer("cl100k", backend=...).encode_batch([text])``;
- ``packprep tokenize``: the CLI from the JSONL file to a document store (worker processes),
  and with ``--workers 1`` (in its own process).

``--checkout`` measures another packprep tree (e.g. the main branch) with this script, for
before/after figures. Token counts of the backends are compared: they must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_CORPUS = ROOT / "bench-data" / "kernel-docs.jsonl"
PACKPREP = Path(sys.executable).with_name("packprep")


def build(size_mb: int, ascii_only: bool, emoji: bool = False) -> Path:
    target = BASE_CORPUS.with_name(f"huge-doc-{size_mb}mb{'-ascii' if ascii_only else ''}{'-emoji' if emoji else ''}.jsonl")
    if target.is_file():
        return target
    if not BASE_CORPUS.is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_corpus.py"), "--out", str(BASE_CORPUS)], check=True)
    with open(BASE_CORPUS, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    if ascii_only:  # Python stores an all-ASCII str in 1 byte a character; one other character makes it 2 or 4
        texts = [text.encode("ascii", "ignore").decode("ascii") for text in texts]
    parts, size, i = [], 0, 0
    while size < size_mb * 1e6:
        parts.append(texts[i % len(texts)])
        size += len(texts[i % len(texts)].encode("utf-8")) + 2
        i += 1
    tmp = target.with_suffix(".tmp")
    text = ("\N{GRINNING FACE} " if emoji else "") + "\n\n".join(parts)
    tmp.write_text(json.dumps({"id": "huge", "text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def case_encode(corpus: Path, backend: str) -> dict:
    from packprep.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("cl100k", backend=backend, num_threads=2)
    from packprep.corpus import iter_documents

    (_, text), = iter_documents(corpus)  # read as tokenize reads it
    start = time.perf_counter()
    flat, lengths = tokenizer.encode_batch([text])
    return {"seconds": time.perf_counter() - start, "tokens": int(lengths.sum()), "text_bytes": len(text.encode("utf-8"))}


def measure(command: list[str], env: dict) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes, the largest process of the tree) and stdout of ``command``."""
    start = time.perf_counter()
    # Run from bench-data: a worker (`python -c`) puts its working directory first on sys.path,
    # so from this tree's root it would import this tree's packprep, not the --checkout's.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, cwd=BASE_CORPUS.parent)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command)} failed")
    return time.perf_counter() - start, usage.ru_maxrss * 1024, output.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--ascii", action="store_true", help="drop every non-ASCII character from the text")
    parser.add_argument("--emoji", action="store_true", help="add one emoji to the text (a str of 4 bytes a character)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the packprep tree to measure (default: this one)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case_encode(args.corpus, args.case)))
        return
    corpus = build(args.size_mb, args.ascii, args.emoji)
    env = {**os.environ, "PYTHONPATH": str(args.checkout.resolve())}
    file_mb = corpus.stat().st_size / 1e6
    print(f"{corpus}: one document, {file_mb:.0f} MB of JSON; measuring {args.checkout}")
    print(f"{'case':30s} {'wall s':>7s} {'peak RSS MB':>12s} {'x doc size':>11s}")
    tokens = {}
    for backend in ("tiktoken", "bpe-openai"):
        seconds, rss, output = measure([sys.executable, __file__, "--case", backend, "--corpus", str(corpus)], env)
        result = json.loads(output.splitlines()[-1])
        tokens[backend] = result["tokens"]
        print(f"{'encode_batch ' + backend:30s} {seconds:7.1f} {rss / 1e6:12.0f} {rss / result['text_bytes']:11.2f}")
    for name, options in (("packprep tokenize", []), ("packprep tokenize --workers 1", ["--workers", "1"])):
        with tempfile.TemporaryDirectory(dir=corpus.parent) as tmp:
            work = Path(tmp) / "work"
            seconds, rss, _ = measure([str(PACKPREP), "tokenize", str(corpus), str(work), "--quiet", *options], env)
            stored = json.loads((work / "store.json").read_text())
            shutil.rmtree(work)
        print(f"{name:30s} {seconds:7.1f} {rss / 1e6:12.0f} {rss / (file_mb * 1e6):11.2f}")
    print(f"tokens: {tokens} (store: {stored['counts']})")
    if len(set(tokens.values())) != 1:
        raise SystemExit("the backends disagree on the token count")


if __name__ == "__main__":
    main()
