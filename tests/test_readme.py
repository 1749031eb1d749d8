"""The README's snippets run as written and its commands use options that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from packprep.cli import app
from packprep.config import PackConfig
from packprep.pipeline import pack

ROOT = Path(__file__).resolve().parents[1]
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


def test_readme_python_snippets_run(small_corpus, tmp_path, monkeypatch):
    pack(small_corpus, tmp_path / "out", config=PackConfig(seq_len=64))
    monkeypatch.chdir(tmp_path)  # the snippets say "out/"
    snippets = blocks(ROOT / "README.md", "python")
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})
