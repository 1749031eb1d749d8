"""Build a second labelled corpus offline: CPython standard-library docstrings, labelled by topic.

    .venv/bin/python benchmarks/make_docstring_corpus.py [--out bench-data/stdlib-docstrings/docstrings.jsonl]

One JSON line per module, class or function docstring of at least ``--min-chars``
characters (default 150) from the running interpreter's standard library (tests
excluded), with ``id`` (``module:qualified.name``), ``text`` (the docstring alone: the
names would give the topic away) and ``topic``: the family of the top-level module
(``FAMILIES``: GUI, mail, web, concurrency, ...). Read with ``ast``, nothing is
imported. The same interpreter gives the same file, so benchmark numbers on it are
reproducible. A labelled set for the semantic orderings that is not encyclopedia text.
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from pathlib import Path

# Top-level stdlib modules grouped into topics a reader would tell apart; modules in no
# family (and the test suites) are left out.
FAMILIES = {
    "gui": ("idlelib", "tkinter", "turtle", "turtledemo"),
    "mail": ("email", "smtplib", "imaplib", "nntplib", "poplib", "mailbox", "mailcap"),
    "web": ("http", "urllib", "wsgiref", "xmlrpc", "ftplib", "socketserver", "webbrowser", "cgi"),
    "concurrency": ("asyncio", "concurrent", "threading", "multiprocessing", "queue", "sched", "selectors"),
    "packaging": ("distutils", "importlib", "pkgutil", "zipimport", "ensurepip", "venv", "site", "runpy"),
    "numbers": ("_pydecimal", "fractions", "statistics", "numbers", "random", "colorsys"),
    "xml": ("xml",),
    "code-tools": ("lib2to3", "ast", "tokenize", "inspect", "dis", "pydoc", "symtable", "tabnanny", "pyclbr"),
    "testing-debugging": ("unittest", "doctest", "pdb", "bdb", "traceback", "trace", "profile", "cProfile", "timeit"),
    "text": ("difflib", "textwrap", "string", "re", "codecs", "encodings", "gettext", "locale", "stringprep"),
    "files-archives": ("os", "shutil", "tarfile", "zipfile", "pathlib", "tempfile", "gzip", "bz2", "lzma", "glob", "filecmp"),
    "logging-config": ("logging", "configparser", "argparse", "optparse", "getopt"),
}


def docstrings(path: Path, module: str):
    """(qualified name, docstring) of the module and every class and function in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    stack = [(tree, module)]
    while stack:
        node, name = stack.pop()
        text = ast.get_docstring(node)
        if text:
            yield name, text
        for child in reversed(list(ast.iter_child_nodes(node))):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                stack.append((child, f"{name}.{child.name}" if node is not tree else f"{module}:{child.name}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-data/stdlib-docstrings/docstrings.jsonl"))
    parser.add_argument("--min-chars", type=int, default=150)
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    topic_of = {module: topic for topic, modules in FAMILIES.items() for module in modules}
    counts: dict[str, int] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            topic = topic_of.get(parts[0])
            if topic is None or {"test", "tests", "idle_test"} & set(parts):
                continue
            for name, text in docstrings(path, ".".join(parts)):
                if len(text) >= args.min_chars:
                    fh.write(json.dumps({"id": name, "text": text, "topic": topic}) + "\n")
                    counts[topic] = counts.get(topic, 0) + 1
    print(f"{args.out}: {sum(counts.values()):,} docstrings, {len(counts)} topics: {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
