"""Two runs into one folder at once: the second stops with one line naming the first; the first finishes.

The runs are real CLI subprocesses. The first is frozen with SIGSTOP as soon as it holds
its folder (its owner file appears), so the second always meets it mid-run whatever the
machine's speed; SIGCONT lets it finish, and `packprep verify` checks what it wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packprep.io import OWNER_NAME
from tests.conftest import make_documents, write_jsonl
from tests.helpers import REPO_ROOT as REPO

PACKPREP = [sys.executable, "-m", "packprep.cli"]


def start_and_freeze(command: list[str], folder: Path) -> subprocess.Popen:
    """Start ``command`` and stop it (SIGSTOP) once it holds ``folder``."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / OWNER_NAME).is_file():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never took its folder"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGSTOP)
    return process


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus" / "a.jsonl", make_documents(60))


@pytest.mark.parametrize("stage", ["pack", "tokenize"])
def test_a_second_run_into_the_same_folder_stops_naming_the_first(corpus, tmp_path, stage):
    folder = tmp_path / "out"
    command = [*PACKPREP, stage, str(corpus), str(folder), "--quiet"]
    first = start_and_freeze(command, folder)
    try:
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=120)

    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr
    assert f"pid {first.pid}" in lines[0] and f"packprep {stage} {corpus}" in lines[0], lines[0]
    assert str(folder) in lines[0]
    assert first.returncode == 0, first_err
    if stage == "pack":
        verified = subprocess.run([*PACKPREP, "verify", str(folder), "--against", str(folder / "work")], cwd=REPO,
                                  capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    assert not (folder / OWNER_NAME).exists()  # the holder cleans up after itself


@pytest.mark.slow
def test_the_lock_of_a_killed_run_does_not_block_the_next(corpus, tmp_path):
    out = tmp_path / "out"
    command = [*PACKPREP, "pack", str(corpus), str(out), "--quiet"]
    first = start_and_freeze(command, out)
    first.kill()  # SIGKILL: no cleanup runs; the OS drops the file lock with the process
    first.communicate()
    assert (out / OWNER_NAME).is_file()  # a stale owner file is left behind...
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr  # ...and ignored
    verified = subprocess.run([*PACKPREP, "verify", str(out)], cwd=REPO, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
