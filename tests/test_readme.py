"""The README's snippets run as written and its commands use options that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

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


@pytest.mark.parametrize("where,args", packprep_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_documented_commands_and_options_exist(where, args):
    command, options = args[0], [a.split("=")[0] for a in args[1:] if a.startswith("-")]
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{where}: unknown command {command}"
    for option in options:
        assert option in result.output, f"{where}: `packprep {command}` has no option {option}"


def test_readme_python_snippets_run(small_corpus, tmp_path, monkeypatch):
    pack(small_corpus, tmp_path / "out", config=PackConfig(seq_len=64))
    monkeypatch.chdir(tmp_path)  # the snippets say "out/"
    snippets = blocks(ROOT / "README.md", "python")
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})
