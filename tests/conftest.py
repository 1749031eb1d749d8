"""Tiny corpora made in the tests, so every test runs offline and fast.

Where a test goes: tests/ mirrors packprep/. A file that mainly tests one package's code sits in
the folder of that package (tests/stages/ for packprep/stages/, likewise tokenizers/, engines/,
pipeline/, formats/, store/, verify/); tests of a top-level module (cli, corpus, io, recipe,
torch) and of the whole tool (readme, examples, golden output, import graph, determinism, edge
corpora, bad input) stay in tests/ itself. Each folder is a package (an empty __init__.py). A
test file never imports another test file: what two of them share lives here (fixtures, corpora)
or in tests/helpers.py (REPO_ROOT, the tokenizer trained here, the partitioned store).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

# `make` installs every extra, so on CI (.ci/run sets CI=true) a missing optional package
# is a broken install, not a reason to skip: its tests would pass vacuously. Only
# pytest.importorskip is turned into a failure; any other skip keeps its meaning.
CI = os.environ.get("CI") == "true"


def pytest_configure(config: pytest.Config) -> None:
    if CI:
        pytest.importorskip = _import_or_fail


_importorskip = pytest.importorskip


def _import_or_fail(modname: str, *args, **kwargs):
    """pytest.importorskip, except that a missing module fails the test (or its whole file)."""
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as skipped:
        reason = str(skipped)
    pytest.fail(f"CI=true and {modname} does not import, so its tests would be skipped: {reason}", pytrace=False)


# A test that starts Ray has "ray" as a word of its file or function name (test_ray_engine.py,
# test_golden_ray_engine), in whichever folder of tests/ (only the file's stem is read): the
# scheduler below runs all of them on one worker.
_STARTS_RAY = re.compile(r"(?:^|_)ray(?:_|$)")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without xdist there is nothing to schedule
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`make test` runs pytest-xdist with --dist loadfile: a test file is one unit of work, so a
    module-scoped fixture (a packed output, a tokenized corpus, a loaded model) is built on one
    worker only. Here every test that starts Ray joins one more unit, so two Ray clusters never
    run at once. (xdist's own --dist loadgroup would do this with marks, but with pytest 9 its
    xdist_group mark no longer changes the node id it schedules by, so it groups nothing.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrRay(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file, _, name = nodeid.partition("::")
            name = name.split("[", 1)[0]  # a parameter id is not part of the name
            return "ray" if _STARTS_RAY.search(Path(file).stem) or _STARTS_RAY.search(name) else file

    return FileOrRay(config, log)


@pytest.fixture(scope="session", autouse=True)
def _no_fsync():
    """os.fsync as a no-op inside the test process: a 40-document pack fsyncs ~350 times, over half
    of its wall time on this VM, and no test here cuts the power, so a real flush proves nothing.
    The files are still opened (a missing path still fails), and tests/test_files.py still sees
    every call in order. CLI runs in subprocesses (the SIGKILL tests) keep the real fsync."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", lambda fd: None)
        yield


SENTENCES = [
    "The mitochondria is the powerhouse of the cell and produces most of its ATP.",
    "Rust's borrow checker rejects programs that would alias mutable state.",
    "In 1969 the Apollo 11 mission landed two astronauts on the Moon.",
    "A sourdough starter needs flour, water and patience to ferment properly.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Gradient descent follows the negative gradient of the loss function.",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "Emoji are text too: 🚀🔥✨ and they must survive the round trip.",
]


def make_documents(n: int, *, seed: int = 0) -> list[dict]:
    """n records of varied length (one sentence to ~60 sentences), ids doc-0..doc-(n-1)."""
    import random

    rng = random.Random(seed)
    docs = []
    for i in range(n):
        k = rng.choice([1, 2, 5, 12, 30, 60])
        text = " ".join(rng.choice(SENTENCES) for _ in range(k))
        docs.append({"id": f"doc-{i}", "text": text})
    return docs


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_small_corpus(folder: Path) -> Path:
    """``folder`` with 40 documents in two files plus one empty document."""
    docs = make_documents(40)
    write_jsonl(folder / "a.jsonl", docs[:25])
    write_jsonl(folder / "sub" / "b.jsonl", docs[25:] + [{"id": "empty", "text": ""}])
    return folder


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A folder with 40 documents in two files plus one empty document."""
    return write_small_corpus(tmp_path / "corpus")


def copy_output(finished: Path, dest: Path) -> Path:
    """A copy of a finished output (its WORK included) for a test that damages or extends it:
    packing once per module and copying costs a few milliseconds instead of a pack per test."""
    shutil.copytree(finished, dest, symlinks=True)
    return dest
