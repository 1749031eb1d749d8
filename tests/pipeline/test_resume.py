"""Killed and interrupted runs: a rerun of the same command resumes and gives the same bytes.

The runs are real subprocesses of the CLI, killed with SIGKILL when a given file
appears (so the kill lands inside a known stage without any hook in the code), or
interrupted with SIGINT as Ctrl-C would.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # SIGKILLed CLI runs and their reruns: make test-fast leaves it out

from packprep.io import load_json, sha256_file
from tests.helpers import EXAMPLES_CORPUS, REPO_ROOT as REPO, output_digest

PACKPREP = [sys.executable, "-m", "packprep.cli"]
# Small shards (~200 of them): a kill or Ctrl-C lands between shards with time to spare,
# even on a fast machine where writing all shards takes a fraction of a second.
PACK_OPTIONS = ["--strategy", "eos", "--seq-len", "256", "--shard-size", "16", "--seed", "3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name in ("part-00.jsonl.gz", "part-01.jsonl.gz"):
        shutil.copy(EXAMPLES_CORPUS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def clean_output(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    subprocess.run([*PACKPREP, "pack", str(corpus), str(out), *PACK_OPTIONS, "--quiet"], check=True, cwd=REPO)
    return out


def kill_when(command: list[str], trigger: Path, *, timeout: float = 120.0) -> int:
    """Start ``command``, SIGKILL it as soon as ``trigger`` exists, and return its exit status."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not trigger.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    process.send_signal(signal.SIGKILL)
    return process.wait()


# Where the kill lands: inside tokenize, between tokenize and pack, between shards,
# while a shard's token matrix is half written, and after the last shard.
KILL_POINTS = {
    "tokenizing": "work/tokens.bin.tmp",
    "after-tokenize": "work/store.json",
    "between-shards": "shard-00004.row_ptr.npy",
    "mid-shard": "shard-00007.input_ids.npy.tmp",
    "after-shards": "doc_ids.bin",
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_rerun_gives_the_clean_bytes(point, corpus, clean_output, tmp_path):
    out = tmp_path / "out"
    command = [*PACKPREP, "pack", str(corpus), str(out), *PACK_OPTIONS]
    assert kill_when(command, out / KILL_POINTS[point]) == -signal.SIGKILL, "the run ended before the kill point"
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    if point in ("between-shards", "mid-shard", "after-shards"):
        assert "finished shards of an interrupted run are reused" in rerun.stderr
    assert output_digest(out) == output_digest(clean_output)
    assert not [p.name for p in out.rglob("*.tmp")]


def test_a_touched_shard_is_rewritten_not_reused(corpus, clean_output, tmp_path):
    out = tmp_path / "out"
    command = [*PACKPREP, "pack", str(corpus), str(out), *PACK_OPTIONS, "--quiet"]
    assert kill_when(command, out / "shard-00006.row_ptr.npy") == -signal.SIGKILL
    with open(out / "shard-00002.input_ids.npy", "r+b") as fh:  # bit rot in a finished shard
        fh.seek(200)
        fh.write(b"\xff")
    subprocess.run(command, cwd=REPO, check=True)
    assert output_digest(out) == output_digest(clean_output)


def test_ctrl_c_exits_130_with_a_message_and_the_rerun_resumes(corpus, clean_output, tmp_path):
    out = tmp_path / "out"
    command = [*PACKPREP, "pack", str(corpus), str(out), *PACK_OPTIONS]
    # A child inherits an ignored SIGINT: make sure this one handles it as a terminal's would.
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    trigger = out / "shard-00003.row_ptr.npy"
    while not trigger.exists() and process.poll() is None:
        time.sleep(0.0005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    subprocess.run([*command, "--quiet"], cwd=REPO, check=True)
    assert output_digest(out) == output_digest(clean_output)


# ---------------------------------------------------------------------------- embedding
# MiniLM on 48 short documents in chunks of 8 (the shipped chunk is 4,096 documents, too
# many for a test): six chunks, so a kill lands with some finished and some not.
EMBED_CHUNK = 8
PACKPREP_SMALL_CHUNKS = [
    sys.executable, "-c",
    f"import packprep.stages.embed as e; e.EMBED_CHUNK = {EMBED_CHUNK}; from packprep.cli import main; main()",
]
ICP_OPTIONS = ["--strategy", "icp", "--seq-len", "256", "--seed", "3"]


@pytest.fixture(scope="module")
def embed_corpus(tmp_path_factory) -> Path:
    from tests.conftest import make_documents, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("embed-corpus") / "docs.jsonl", make_documents(48, seed=5))


@pytest.fixture(scope="module")
def clean_icp(embed_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean-icp") / "out"
    subprocess.run([*PACKPREP_SMALL_CHUNKS, "pack", str(embed_corpus), str(out), *ICP_OPTIONS, "-q"], check=True, cwd=REPO)
    return out


def finished_chunks(journal: Path) -> int:
    try:
        return len(load_json(journal)["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def start_and_stop(command: list[str], journal: Path, *, chunks: int, sig: int) -> subprocess.Popen:
    """Start ``command`` and send ``sig`` once its embedding journal lists ``chunks`` finished chunks."""
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    deadline = time.monotonic() + 300
    while finished_chunks(journal) < chunks and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(sig)
    return process


def embedded_this_run(stderr: str) -> tuple[int, int]:
    """(documents embedded, documents reused) from the embed stage's summary line."""
    import re

    line = next(line for line in stderr.splitlines() if line.startswith("embed (all-MiniLM-L6-v2):"))
    reused = re.search(r"\(([\d,]+) more reused", line)
    return int(re.search(r": ([\d,]+) docs", line).group(1)), int(reused.group(1)) if reused else 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_killed_embedding_resumes_with_only_the_rest_and_the_clean_bytes(sig, embed_corpus, clean_icp, tmp_path):
    out = tmp_path / "out"
    command = [*PACKPREP_SMALL_CHUNKS, "pack", str(embed_corpus), str(out), *ICP_OPTIONS]
    process = start_and_stop(command, out / "work" / "embed.partial.json", chunks=2, sig=sig)
    _, stderr = process.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
    else:
        assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert not (out / "work" / "embed.json").exists()
    done = finished_chunks(out / "work" / "embed.partial.json")
    assert 2 <= done < 48 // EMBED_CHUNK

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    embedded, reused = embedded_this_run(rerun.stderr)
    assert (embedded, reused) == (48 - done * EMBED_CHUNK, done * EMBED_CHUNK), rerun.stderr
    assert f"embed: resuming; {done * EMBED_CHUNK} documents" in rerun.stderr
    assert sha256_file(out / "work" / "embeddings.npy") == sha256_file(clean_icp / "work" / "embeddings.npy")
    assert output_digest(out) == output_digest(clean_icp)
    assert sorted(p.name for p in (out / "work").glob("embed*")) == ["embed.json", "embeddings.npy"]  # journal gone
