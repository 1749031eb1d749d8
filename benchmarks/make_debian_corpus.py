"""Build a third labelled corpus offline: Debian package descriptions, labelled by archive section.

    .venv/bin/python benchmarks/make_debian_corpus.py [--packages PATH] [--out bench-data/debian-descriptions/descriptions.jsonl]

``--packages``: an apt ``Packages`` index (plain, or ``.lz4`` / ``.gz`` as apt keeps them
under /var/lib/apt/lists; default: the first ``*_main_binary-amd64_Packages*`` there).
One JSON line per binary package of the sections in ``SECTIONS``, at most ``--per-section``
each (a seeded sample, so the big sections do not swamp the small ones), with ``id``
(the package name), ``text`` (the description without the package name, which would give
the topic away) and ``topic`` (the section). The binary index carries only the one-line
synopsis (the long texts live in Translation-en files, not kept offline), so these are
short texts (~10 tokens) on a dozen topics with fuzzy edges (a sound editor is also an
editor): unlike the docstring corpus. The same index file gives the same corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

import numpy as np

# Sections named for what the software is about; the language sections (python, perl,
# libs, ...) group by packaging, not topic, and are left out.
SECTIONS = ("games", "science", "sound", "graphics", "fonts", "math", "mail", "database", "video", "electronics", "editors", "net")


def read_index(path: Path) -> str:
    if path.suffix == ".lz4":
        return subprocess.run(["lz4", "-dc", str(path)], check=True, capture_output=True).stdout.decode("utf-8", "replace")
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    return path.read_text(encoding="utf-8", errors="replace")


def stanzas(index: str):
    """(package, section, description) per stanza of a Packages index."""
    for stanza in index.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Description" in fields:
            yield fields["Package"], fields.get("Section", "").rsplit("/", 1)[-1], fields["Description"]


def description_text(description: str) -> str:
    """The synopsis and the long description as plain paragraphs (Debian marks an empty line with ' .')."""
    lines = [line.strip() for line in description.splitlines()]
    return "\n".join("" if line == "." else line for line in lines).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=Path, help="an apt Packages index")
    parser.add_argument("--out", type=Path, default=Path("bench-data/debian-descriptions/descriptions.jsonl"))
    parser.add_argument("--per-section", type=int, default=850)
    parser.add_argument("--min-chars", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    packages = args.packages or min(Path("/var/lib/apt/lists").glob("*_main_binary-amd64_Packages*"))
    by_section: dict[str, dict[str, str]] = {section: {} for section in SECTIONS}
    for name, section, description in stanzas(read_index(packages)):
        text = description_text(description)
        if section in by_section and len(text) >= args.min_chars:
            by_section[section].setdefault(name, text)
    rng = np.random.default_rng(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for section in SECTIONS:
            names = sorted(by_section[section])
            chosen = sorted(rng.permutation(len(names))[: args.per_section])
            for i in chosen:
                fh.write(json.dumps({"id": names[i], "text": by_section[section][names[i]], "topic": section}) + "\n")
            print(f"{section:<12} {len(chosen):>5} of {len(names):>5}")


if __name__ == "__main__":
    main()
