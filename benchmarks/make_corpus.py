"""Build the benchmark corpus offline: the Linux kernel documentation as JSONL.

    .venv/bin/python benchmarks/make_corpus.py [--out bench-data/kernel-docs.jsonl] [--copies 1]

Downloads Debian's ``linux-doc-6.1`` package with apt (the package registries are the
only network this project may use), unpacks it, and writes one JSON line per
text file under Documentation/ (reST, plain text, YAML bindings; gzipped in the package) with its path as id.
About 55 MB of real technical prose in about 8,000 documents. ``--copies N`` repeats
the corpus N times with distinct ids, for the memory-flatness measurement (4x).
Needs root for ``apt-get download`` (or an already downloaded ``--deb``).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "linux-doc-6.1"
# Images, drawings and web assets are not prose; everything else under Documentation/ is
# text (reST, plain text, device-tree YAML bindings, example scripts).
SKIP_SUFFIXES = (".svg", ".dot", ".png", ".jpg", ".gif", ".css", ".js", ".dat", ".woff", ".woff2", ".ico")


def fetch_deb(work: Path) -> Path:
    subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True, capture_output=True)
    return Path(sorted(glob.glob(str(work / f"{PACKAGE}_*.deb")))[-1])


def documents(root: Path):
    docs = sorted(root.glob(f"usr/share/doc/{PACKAGE}/Documentation/**/*"))
    for path in docs:
        name = path.name
        if not path.is_file() or name.removesuffix(".gz").endswith(SKIP_SUFFIXES):
            continue
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        if text.strip():
            yield str(path.relative_to(root / "usr/share/doc" / PACKAGE)).removesuffix(".gz"), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-data/kernel-docs.jsonl"))
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--deb", type=Path, default=None, help="an already downloaded linux-doc .deb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deb = args.deb or fetch_deb(work)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
        docs = list(documents(work / "root"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for copy in range(args.copies):
            for doc_id, text in docs:
                suffix = f"#{copy}" if args.copies > 1 else ""
                fh.write(json.dumps({"id": doc_id + suffix, "text": text}, ensure_ascii=False) + "\n")
    size = args.out.stat().st_size
    print(f"{args.out}: {len(docs) * args.copies:,} documents, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
