"""What a kill during embedding costs: a fresh `packprep embed` vs the rerun after a SIGKILL.

    .venv/bin/python benchmarks/bench_embed_resume.py [--docs 256] [--chunk 32] [--kill-after 5]

Tokenizes ``--docs`` generated documents (tests/conftest.make_documents) twice, embeds one
store with MiniLM uninterrupted, and SIGKILLs the other's `packprep embed` once its journal
lists ``--kill-after`` finished chunks; then times the rerun. Both are whole processes
(Python start and model loading included, ~10 s here). ``--chunk`` stands in for the
shipped 4,096 documents so that the run fits in a minute; the journal works the same.
Prints both times, the documents the rerun embedded and whether the vectors are identical.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import make_documents, write_jsonl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--kill-after", type=int, default=5, help="finished chunks before the kill")
    args = parser.parse_args()
    cli = [sys.executable, "-c", f"import packprep.stages.embed as e; e.EMBED_CHUNK = {args.chunk}; from packprep.cli import main; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = write_jsonl(tmp / "corpus.jsonl", make_documents(args.docs, seed=7))
        for work in ("clean", "killed"):
            subprocess.run([*cli, "tokenize", str(corpus), str(tmp / work), "-q"], check=True, cwd=ROOT)
        start = time.perf_counter()
        subprocess.run([*cli, "embed", str(tmp / "clean"), "-q"], check=True, cwd=ROOT)
        fresh = time.perf_counter() - start

        process = subprocess.Popen([*cli, "embed", str(tmp / "killed"), "-q"], cwd=ROOT)
        journal = tmp / "killed" / "embed.partial.json"
        while process.poll() is None and _chunks(journal) < args.kill_after:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = _chunks(journal)
        start = time.perf_counter()
        rerun = subprocess.run([*cli, "embed", str(tmp / "killed")], capture_output=True, text=True, check=True, cwd=ROOT)
        resumed = time.perf_counter() - start
        summary = next(line for line in rerun.stderr.splitlines() if line.startswith("embed ("))
        same = (tmp / "clean" / "embeddings.npy").read_bytes() == (tmp / "killed" / "embeddings.npy").read_bytes()
    total = -(-args.docs // args.chunk)
    print(f"fresh embed: {fresh:.1f}s; rerun after a SIGKILL at {done}/{total} chunks: {resumed:.1f}s")
    print(f"rerun: {summary}")
    print(f"embeddings byte-identical to the uninterrupted run: {same}")


def _chunks(journal: Path) -> int:
    try:
        return len(json.loads(journal.read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


if __name__ == "__main__":
    main()
