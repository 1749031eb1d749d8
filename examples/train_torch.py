"""Train a tiny causal transformer on a packprep output with a plain PyTorch loop, on CPU.

    packprep pack --strategy eos examples/corpus out/ --seq-len 256
    python examples/train_torch.py out/ --steps 10 --mask block
    python examples/train_torch.py out/ --steps 10 --mask varlen --checkpoint train_torch.pt   # run again: resumes

Two ways to keep every document to itself, both exact (the same loss on the same rows):

- ``--mask block``: ``collate_block_mask`` gives a bool [B, 1, L, L] block-causal mask
  that ``scaled_dot_product_attention`` takes as ``attn_mask``.
- ``--mask varlen``: ``collate_varlen`` flattens the batch to [1, B*L] with
  ``cu_seqlens``, the segment boundaries. On a GPU, torch's flash-attention varlen kernel
  (``torch.nn.attention.varlen.varlen_attn``) takes them directly; that kernel has no
  CPU implementation in torch 2.13, so on CPU each segment runs through causal SDPA on
  its own (a loop over segments, never over tokens).

Position embeddings are looked up by ``position_ids``, which restart at 0 in every
document. ``--checkpoint`` saves model, optimizer and ``ResumableSampler.state_dict()``
at the end and resumes from them when the file exists, continuing at the next unseen row.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from packprep.reader import IGNORE_INDEX
from packprep.torch import PackedTorchDataset, ResumableSampler, collate_block_mask, collate_varlen

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # q, k, v [..., T, H, D] -> [..., T, H, D]


def block_mask_attention(mask: torch.Tensor) -> Attend:
    """Attention over [B, L, H, D] with a bool block-causal mask [B, 1, L, L] (True = may attend)."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA wants [B, H, L, D]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)

    return attend


def varlen_attention(cu_seqlens: torch.Tensor, max_seqlen: int) -> Attend:
    """Causal attention over [1, T, H, D] inside each segment ``cu_seqlens[i]:cu_seqlens[i+1]``."""
    bounds = cu_seqlens.tolist()

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = q[0], k[0], v[0]  # [T, H, D], the layout of flash-attention's varlen kernels
        if q.is_cuda:
            from torch.nn.attention.varlen import varlen_attn

            cu = cu_seqlens.to(q.device)
            out = varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, window_size=(-1, 0))  # (-1, 0): causal
            return out[None]
        pieces = [
            F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (q, k, v)), is_causal=True).transpose(0, 1)
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
        return torch.cat(pieces)[None]

    return attend


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        q, k, v = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.heads, -1)).unbind(-3)  # each [..., T, H, D]
        x = x + self.out(attend(q, k, v).flatten(-2))
        return x + self.mlp(self.mlp_norm(x))


class TinyCausalLM(nn.Module):
    """Token + learned position embeddings, ``layers`` pre-norm blocks, a head tied to the embedding."""

    def __init__(self, vocab_size: int, max_positions: int, *, dim: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        for embedding in (self.tokens, self.positions):
            # N(0, 1) (PyTorch's default) through the tied head gives logits of std ~sqrt(dim) and a
            # first loss far above ln(vocab); GPT-2's 0.02 starts near uniform.
            nn.init.normal_(embedding.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attend: Attend) -> torch.Tensor:
        """input_ids, position_ids: int64 [B, L] (or [1, B*L]); returns logits float32 [..., vocab]."""
        x = self.tokens(input_ids) + self.positions(position_ids)
        for block in self.blocks:
            x = block(x, attend)
        return self.norm(x) @ self.tokens.weight.T


def loss_on(model: TinyCausalLM, batch: dict, mode: str) -> torch.Tensor:
    """Mean next-token loss. Labels are -100 at every segment's first token, so no position
    learns to predict the next document (or, flattened, the next row)."""
    if mode == "block":
        attend = block_mask_attention(batch["attention_mask"])
    else:
        attend = varlen_attention(batch["cu_seqlens"], batch["max_seqlen"])
    logits = model(batch["input_ids"], batch["position_ids"], attend)
    labels = batch["labels"]
    return F.cross_entropy(logits[..., :-1, :].flatten(0, -2), labels[..., 1:].flatten(), ignore_index=IGNORE_INDEX)


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-save leaves the previous checkpoint intact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="a packprep output folder (packprep pack ... OUT)")
    parser.add_argument("--steps", type=int, default=10, help="train until this many steps in total")
    parser.add_argument("--mask", choices=["block", "varlen"], default="block")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, help="resume from this file if it exists; save to it at the end")
    args = parser.parse_args()

    dataset = PackedTorchDataset(args.out)
    if len(dataset) == 0:
        raise SystemExit(f"{args.out} has no rows")
    vocab_size = int(dataset.dataset.manifest["tokenizer"]["vocab_size"])
    torch.manual_seed(args.seed)
    model = TinyCausalLM(vocab_size, dataset.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sampler = ResumableSampler(len(dataset), seed=args.seed)
    step = 0
    if args.checkpoint is not None and args.checkpoint.exists():
        state = torch.load(args.checkpoint)
        missing = {"model", "optimizer", "sampler", "step"} - set(state)
        if missing:  # e.g. the README's snippet saves a checkpoint.pt with the sampler alone
            raise SystemExit(
                f"{args.checkpoint} is not a checkpoint of this script (no {', '.join(sorted(missing))}); "
                "pass a new --checkpoint file"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step = state["step"]
        print(f"resumed from {args.checkpoint} at step {step}, epoch {sampler.epoch}, row {sampler.position}")
    collate = collate_block_mask if args.mask == "block" else collate_varlen
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=collate)
    print(f"{dataset}, vocab {vocab_size}, mask {args.mask}, model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

    losses: list[float] = []
    rows_this_pass = 0
    start = time.perf_counter()
    while step < args.steps:
        rows_this_pass = 0  # iterating the loader again starts a new pass (and epoch) of the sampler
        for batch in loader:
            loss = loss_on(model, batch, args.mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            rows_this_pass += batch["input_ids"].numel() // dataset.seq_len
            losses.append(loss.item())
            print(f"step {step:3d}  loss {losses[-1]:.5f}", flush=True)
            if step >= args.steps:
                break
    seconds = time.perf_counter() - start

    if args.checkpoint is not None:
        # consumed=: a DataLoader with workers fetches ahead, so count the rows the loop actually trained on.
        sampler_state = sampler.state_dict(consumed=rows_this_pass)
        save_checkpoint(args.checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler_state, "step": step,
        })  # fmt: skip
        print(f"saved {args.checkpoint} at step {step}, epoch {sampler_state['epoch']}, row {sampler_state['position']}")
    assert all(map(math.isfinite, losses)), f"bad losses: {losses}"
    if len(losses) > 1:
        trend = "decreased" if losses[-1] < losses[0] else "did not decrease"
        print(f"{len(losses)} steps in {seconds:.1f}s; loss {trend}: {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
