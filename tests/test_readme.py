"""The README's snippets run as written and its commands use options that exist."""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from packprep.cli import app
from packprep.config import PackConfig
from packprep.pipeline import pack
from tests.helpers import REPO_ROOT as ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def packprep_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for block in blocks(path, "bash"):
            for line in block.splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("packprep "):
                    found.append((path.name, shlex.split(line)[1:]))
    return found


def option_names(command: str) -> set[str] | None:
    """Every spelling of every option of ``packprep <command>`` (None: no such command).

    Read from the click command itself, not the rendered --help, where a substring
    (``--seq`` in ``--seq-len``) would pass for an option.
    """
    found = typer.main.get_command(app).commands.get(command)
    if found is None:
        return None
    names = {"--help"}
    for param in found.params:
        names.update(param.opts, param.secondary_opts)
    return names


@pytest.mark.parametrize("where,args", packprep_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_documented_commands_and_options_exist(where, args):
    command, options = args[0], [a.split("=")[0] for a in args[1:] if a.startswith("-")]
    names = option_names(command)
    assert names is not None, f"{where}: unknown command {command}"
    for option in options:
        assert option in names, f"{where}: `packprep {command}` has no option {option}"


def test_an_option_prefix_is_not_an_option():
    names = option_names("pack")
    assert "--seq-len" in names and "-q" in names and "--seq" not in names


@pytest.mark.slow
def test_readme_python_snippets_run(small_corpus, tmp_path, monkeypatch):
    snippets = blocks(ROOT / "README.md", "python")
    assert snippets
    # The outputs the snippets open (out/icp/, out/train/, ...), packed small so they run in seconds.
    opened = re.findall(r'(?:PackedDataset|PackedTorchDataset|convert)\("(out/[\w-]+)/?"', "".join(snippets))
    assert opened
    for folder in sorted(set(opened)):
        pack(small_corpus, tmp_path / folder, config=PackConfig(seq_len=64))
    monkeypatch.chdir(tmp_path)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})


# ---- the README's shell blocks, top to bottom, as written ----

# `make test` runs the suite, this test included: inside the test it would recurse.
SKIPPED_LINES = {"make test": "runs the test suite, which runs this test: it would recurse"}
CORPUS_DOCS_PER_FILE = 30  # the copy's examples/corpus keeps this many documents of each file


def shell_lines(path: Path) -> list[str]:
    """Every command of the file's ```bash blocks, in order, comments cut."""
    lines = []
    for block in blocks(path, "bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def copy_repository(dest: Path) -> None:
    """The repository's files without its outputs, its virtualenv and caches."""
    skip_at_root = {".git", ".venv", "out", "work", "checkpoints", "bench-data", ".whl", ".gl", ".hypothesis", "build"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in {"__pycache__", ".pytest_cache"} or n.endswith(".egg-info")}
        return skipped | (skip_at_root & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def shrink_corpus(corpus: Path) -> None:
    """Keep the first documents of each file: three MiniLM embeddings of 2,923 documents would
    take minutes on a CPU, and the walkthrough's commands do not depend on the corpus size."""
    for path in sorted(corpus.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            head = [line for _, line in zip(range(CORPUS_DOCS_PER_FILE), fh)]
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(head)


def borrow_virtualenv(repo: Path) -> None:
    """``repo/.venv``: the running interpreter's environment, linked, with the Makefile's
    install stamp newer than pyproject.toml, so `make demo` runs as written and installs nothing."""
    venv = repo / ".venv"
    venv.mkdir()
    for entry in Path(sys.prefix).iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()
    stamp = (venv / ".installed").stat().st_mtime
    os.utime(repo / "pyproject.toml", (stamp - 60, stamp - 60))


@pytest.mark.slow
def test_readme_shell_blocks_run_in_order(tmp_path):
    """The README's walkthrough as a new user runs it (about 2-3 minutes on 2 cores)."""
    if shutil.which("make") is None or not (Path(sys.prefix) / "pyvenv.cfg").is_file():
        pytest.skip("needs make, and a virtualenv to lend the copy as .venv")
    repo = tmp_path / "repo"
    copy_repository(repo)
    shrink_corpus(repo / "examples" / "corpus")
    borrow_virtualenv(repo)
    env = {
        **os.environ,
        "PATH": f"{repo / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",  # "use the tool from the virtualenv"
        "PYTHONPATH": str(repo),  # the copy's code, whatever the virtualenv's editable install points at
        "VIRTUAL_ENV": str(repo / ".venv"),
    }
    env.pop("MAKEFLAGS", None)
    lines = shell_lines(ROOT / "README.md")
    assert any(line.startswith("packprep pack") for line in lines) and "make demo" in lines
    for line in lines:
        if line in SKIPPED_LINES:
            continue
        start = time.perf_counter()
        result = subprocess.run(line, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        print(f"{time.perf_counter() - start:6.1f}s  {line}")  # pytest -s shows where the time goes
        assert result.returncode == 0, f"README: `{line}` exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    assert (repo / "out" / "demo" / "manifest.json").is_file()  # `make demo`'s output survived the walkthrough
