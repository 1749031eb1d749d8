"""The trainer examples run end to end on a real packed output, as a user runs them.

Each example is a subprocess on an output packed with a 300-token tokenizer (so a step
takes milliseconds, not the seconds of cl100k's 100k-row embedding), and the losses it
prints are checked: finite, the same for the two attention paths, and the same after a
resume as without one.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains with the example scripts: make test-fast leaves it out

pytest.importorskip("torch")

from packprep import PackedDataset, pack  # noqa: E402
from packprep.config import PackConfig, TokenizeConfig  # noqa: E402
from tests.conftest import make_documents, write_jsonl  # noqa: E402
from tests.helpers import REPO_ROOT as ROOT, make_hf_tokenizer  # noqa: E402

STEP_LINE = re.compile(r"^step\s+(\d+)\s+loss\s+(\S+)$", re.M)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    tokenizer = make_hf_tokenizer(root / "tok", config={"eos_token": "</s>", "bos_token": "<s>"})
    write_jsonl(root / "corpus.jsonl", make_documents(40))
    out = pack(
        root / "corpus.jsonl", root / "out",
        config=PackConfig(strategy="eos", seq_len=128), tokenize_config=TokenizeConfig(tokenizer=str(tokenizer)),
    )  # fmt: skip
    assert len(PackedDataset(out)) >= 16  # 4 steps of 4 rows without wrapping around
    return out


def run_example(script: str, *args: str | Path) -> tuple[str, dict[int, float]]:
    """Run ``examples/<script>``; return its stdout and the loss it printed for each step."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    losses = {int(step): float(loss) for step, loss in STEP_LINE.findall(result.stdout)}
    assert losses and all(map(math.isfinite, losses.values())), result.stdout
    return result.stdout, losses


@pytest.fixture(scope="module")
def block_losses(out) -> dict[int, float]:
    """Losses of 4 uninterrupted steps with the block mask, the reference for the tests below."""
    _, losses = run_example("train_torch.py", out, "--steps", "4", "--mask", "block")
    assert sorted(losses) == [1, 2, 3, 4]
    return losses


def test_train_hf_trains_with_the_trainer(out):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # Trainer needs it
    stdout, losses = run_example("train_hf.py", out, "--steps", "3", "--batch-size", "4")
    assert sorted(losses) == [1, 2, 3]
    assert "3 steps in" in stdout


def test_train_torch_block_mask_and_varlen_give_the_same_losses(out, block_losses):
    _, varlen = run_example("train_torch.py", out, "--steps", "4", "--mask", "varlen")
    assert varlen == pytest.approx(block_losses, abs=1e-4)


def test_train_torch_resumes_at_the_next_row(out, block_losses, tmp_path):
    # The first half with varlen, the second with the block mask: the checkpoint holds no attention details.
    checkpoint = tmp_path / "ckpt.pt"
    _, first = run_example("train_torch.py", out, "--steps", "2", "--mask", "varlen", "--checkpoint", checkpoint)
    stdout, second = run_example("train_torch.py", out, "--steps", "4", "--mask", "block", "--checkpoint", checkpoint)
    assert "resumed from" in stdout and "at step 2" in stdout
    assert sorted(first) == [1, 2] and sorted(second) == [3, 4]
    # Same rows in the same order with the same weights and optimizer state: the same losses.
    assert {**first, **second} == pytest.approx(block_losses, abs=1e-4)


def test_train_torch_refuses_a_checkpoint_it_did_not_write(out, tmp_path):
    # The README's PyTorch snippet saves a checkpoint.pt holding the sampler alone.
    import torch

    from packprep.torch import ResumableSampler

    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"sampler": ResumableSampler(len(PackedDataset(out))).state_dict()}, checkpoint)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_torch.py"), str(out), "--steps", "1", "--checkpoint", str(checkpoint)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"{checkpoint} is not a checkpoint of this script (no model, optimizer, step); pass a new --checkpoint file"
