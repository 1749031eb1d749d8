"""The guarantee: a packed row gives every document the logits and loss it gets alone.

A tiny random Llama from transformers (CPU, float32) runs a real packprep output two
ways, the block-causal mask (``collate_block_mask``) and restarting position ids
(``collate_position_ids``), and each document's logits must match the model run on
that document by itself. A plain causal mask must not. The pitfalls that silently
break the guarantee in transformers 5.x are pinned here too, so the README stays true.
"""

from __future__ import annotations

import random

import pytest

pytestmark = pytest.mark.slow  # builds and runs tiny Llama models: make test-fast leaves it out

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from packprep import PackedDataset, pack  # noqa: E402
from packprep.config import PackConfig, TokenizeConfig  # noqa: E402
from packprep.torch import additive_mask, collate_block_mask, collate_position_ids  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402
from tests.helpers import TRAIN_TEXTS, make_hf_tokenizer  # noqa: E402

VOCAB = 300  # >= the tiny tokenizer's vocabulary
ATOL = 1e-5
F = torch.nn.functional


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """Three rows of 64 tokens from a real packing, each holding 3+ documents, the last padded."""
    root = tmp_path_factory.mktemp("llama")
    tokenizer = make_hf_tokenizer(root / "tok", config={"eos_token": "</s>", "bos_token": "<s>"})
    words = " ".join(TRAIN_TEXTS).split()
    rng = random.Random(0)
    docs = [{"id": f"d{i}", "text": " ".join(rng.choices(words, k=rng.randint(2, 14)))} for i in range(24)]
    write_jsonl(root / "corpus.jsonl", docs)
    out = pack(
        root / "corpus.jsonl", root / "out",
        config=PackConfig(strategy="eos", seq_len=64), tokenize_config=TokenizeConfig(tokenizer=str(tokenizer)),
    )
    ds = PackedDataset(out)
    assert ds.manifest["tokenizer"]["vocab_size"] <= VOCAB
    chosen = [ds[i] for i in range(len(ds)) if (ds[i]["doc_index"] >= 0).sum() >= 3][:2] + [ds[len(ds) - 1]]
    assert len(chosen) == 3 and chosen[-1]["doc_index"][-1] == -1  # the last row ends in padding
    return chosen


def tiny_llama(attn: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, attn_implementation=attn, **config,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {attn: tiny_llama(attn) for attn in ("sdpa", "eager")}


def segments(row: dict) -> list[tuple[int, int]]:
    cu = row["cu_seqlens"].tolist()
    return list(zip(cu[:-1], cu[1:]))


@torch.no_grad()
def alone(model, row: dict) -> list[torch.Tensor]:
    """Logits [len, VOCAB] of every segment of ``row`` run through ``model`` on its own."""
    ids = torch.as_tensor(row["input_ids"])
    return [model(input_ids=ids[None, s:e], use_cache=False).logits[0] for s, e in segments(row)]


def per_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[..., L-1]: cross-entropy of position p predicting labels[p+1], 0 where that label is -100."""
    return F.cross_entropy(logits[..., :-1, :].flatten(0, -2), labels[..., 1:].flatten(), reduction="none").view(
        labels[..., 1:].shape
    )


def max_error_per_segment(model, rows: list[dict], logits: torch.Tensor) -> list[float]:
    """Largest |packed - alone| logit difference of each segment, rows in order. ``logits``: [B, L, V]."""
    return [
        (logits[b, s:e] - ref).abs().max().item()
        for b, row in enumerate(rows)
        for (s, e), ref in zip(segments(row), alone(model, row))
    ]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_block_mask_gives_each_document_its_own_logits(models, rows, attn):
    batch = collate_block_mask(rows)
    mask = batch["attention_mask"]  # bool [B, 1, L, L]: sdpa takes it as is
    if attn == "eager":
        mask = additive_mask(mask)  # eager adds the mask to its scores
    out = models[attn](input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask)
    assert max(max_error_per_segment(models[attn], rows, out.logits)) < ATOL


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("flatten", [True, False])
@torch.no_grad()
def test_restarting_position_ids_give_each_document_its_own_logits(models, rows, attn, flatten):
    batch = collate_position_ids(rows, flatten=flatten)
    # use_cache=False matters: with a cache, transformers skips packed-sequence detection.
    logits = models[attn](input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    assert max(max_error_per_segment(models[attn], rows, logits.view(len(rows), 64, VOCAB))) < ATOL


@torch.no_grad()
def test_per_token_loss_with_the_rows_labels_equals_each_document_alone(models, rows):
    model = models["sdpa"]
    batch = collate_block_mask(rows)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"]).logits
    packed_loss = per_token_loss(logits, batch["labels"])  # [B, L-1]
    expected_sum, expected_count = 0.0, 0
    for b, row in enumerate(rows):
        ids = torch.as_tensor(row["input_ids"])
        for (s, e), ref, doc in zip(segments(row), alone(model, row), row["doc_index"].tolist()):
            ignored = packed_loss[b, e - 1].item() if e < 64 else 0.0  # predicts the next segment's first token
            assert ignored == 0.0 and batch["labels"][b, s].item() == -100
            if doc < 0:  # padding: every label -100, no loss
                assert packed_loss[b, s : e - 1].eq(0).all()
                continue
            own = F.cross_entropy(ref[:-1], ids[s + 1 : e], reduction="none")
            assert torch.allclose(packed_loss[b, s : e - 1], own, atol=ATOL)
            expected_sum, expected_count = expected_sum + own.sum().item(), expected_count + len(own)
    # The model's own loss (it shifts the labels) is the token mean over the documents run alone.
    flat = collate_position_ids(rows)
    loss = model(**flat, use_cache=False).loss.item()
    assert loss == pytest.approx(expected_sum / expected_count, abs=ATOL)


@torch.no_grad()
def test_plain_causal_mask_leaks_across_documents(models, rows):
    model = models["sdpa"]
    batch = collate_block_mask(rows)
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits  # no mask, positions 0..L-1
    errors = max_error_per_segment(model, rows[:1], logits[:1])
    assert errors[0] < ATOL  # the first document sees nothing before it either way
    assert min(errors[1:]) > 1e-2  # later documents attend to earlier ones


# ---------------------------------------------------------------- pitfalls (transformers 5.x)


@torch.no_grad()
def test_pitfall_eager_adds_a_bool_mask_as_numbers(models, rows):
    batch = collate_block_mask(rows)
    logits = models["eager"](**{k: batch[k] for k in ("input_ids", "position_ids", "attention_mask")}).logits
    assert max(max_error_per_segment(models["eager"], rows, logits)) > 1e-2


@torch.no_grad()
def test_pitfall_position_ids_are_ignored_with_a_cache_or_a_2d_mask(rows):
    model = tiny_llama("sdpa")  # config.use_cache defaults to True; Trainer sets it from args.use_cache (False)
    flat = collate_position_ids(rows)
    ids, pos = flat["input_ids"], flat["position_ids"]
    for logits in (
        model(input_ids=ids, position_ids=pos).logits,
        model(input_ids=ids, position_ids=pos, use_cache=False, attention_mask=torch.ones_like(ids)).logits,
    ):
        assert max(max_error_per_segment(model, rows, logits.view(len(rows), 64, VOCAB))) > 1e-2
    model.config.use_cache = False
    logits = model(input_ids=ids, position_ids=pos).logits
    assert max(max_error_per_segment(model, rows, logits.view(len(rows), 64, VOCAB))) < ATOL
