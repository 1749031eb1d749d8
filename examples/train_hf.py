"""Train a tiny random Llama on a packprep output with transformers' Trainer, on CPU.

    packprep pack --strategy eos examples/corpus out/ --seq-len 256
    python examples/train_hf.py out/ --steps 6

The rows go to the model as Hugging Face's packed-sequence convention: each batch is
flattened to input_ids/labels/position_ids [1, B*L] (``collate_position_ids``) with no
attention_mask, and transformers (sdpa or eager attention, 5.x) starts a new sequence
wherever position_ids restart at 0, so no document attends to another.
tests/test_llama_masking.py checks that against each document run alone. Two things
silently undo it: a KV cache (Trainer turns it off: ``TrainingArguments.use_cache`` is
False) and any 2-D attention_mask (the collator returns none).

Needs ``transformers`` and ``accelerate`` (Trainer's dependency).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from packprep.torch import PackedTorchDataset, collate_position_ids


def tiny_llama(vocab_size: int, seq_len: int, *, attn: str) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 64 and random weights.

    The vocabulary is the tokenizer's (cl100k: 100,277), so the tied embedding holds
    almost all of the ~6.5M parameters; the hidden size is small to keep that cheap.
    """
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq_len,
        tie_word_embeddings=True, attn_implementation=attn,
    )  # fmt: skip
    return LlamaForCausalLM(config)


class PrintLoss(TrainerCallback):
    """Prints the training loss of every logged step and keeps it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            print(f"step {state.global_step:3d}  loss {logs['loss']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="a packprep output folder (packprep pack ... OUT)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4, help="rows per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset = PackedTorchDataset(args.out)  # rows as tensors; Trainer drops cu_seqlens/doc_* (not forward() arguments)
    vocab_size = int(dataset.dataset.manifest["tokenizer"]["vocab_size"])
    torch.manual_seed(args.seed)
    model = tiny_llama(vocab_size, dataset.seq_len, attn=args.attn)
    print(f"{dataset}, vocab {vocab_size}, model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

    printer = PrintLoss()
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, warmup_steps=0, lr_scheduler_type="constant", logging_steps=1,
            save_strategy="no", report_to="none", use_cpu=True, seed=args.seed, disable_tqdm=True,
            use_cache=False,  # the default, written out: with a cache, position_ids no longer split documents
        )  # fmt: skip
        trainer = Trainer(
            model=model, args=training_args, train_dataset=dataset,
            data_collator=collate_position_ids, callbacks=[printer],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; PrintLoss prints one line per step
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start

    losses = printer.losses
    assert len(losses) == args.steps and all(map(math.isfinite, losses)), f"bad losses: {losses}"
    trend = "decreased" if losses[-1] < losses[0] else "did not decrease"
    print(f"{args.steps} steps in {seconds:.1f}s; loss {trend}: {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
