"""packprep's static distillation (model2vec's steps) against the one it replaced, the same corpus fit on top of both.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model2vec.py [--fit 1000] [--docstrings 2000] [--seeds 0,1,2,3,4] [--m2v FOLDER] [--cache DIR]

Offline, on the bundled MiniLM folder. Three distillations:

- ``packprep``: ``stages.static_embed.distill`` (what ``--embedder static`` caches), built from
  model2vec's ``create_embeddings`` / ``compute_weights`` / ``apply_pca``;
- ``model2vec``: model2vec's own ``distill(pca_dims=256, quantize_to="float32")``, re-indexed by
  token string to our tokenizer's ids (``model2vec_as_ours``). Only to check that the first one
  is the same vectors: the script prints the largest absolute difference;
- ``previous``: packprep's own distillation before issue 18 (:func:`previous_distill`, kept here
  as the baseline): PCA and SIF weights under Zipf ranks restarted at ``!`` and ``the``.

``packprep`` and ``previous`` then go through the same code: ``fit_static_model`` on a seeded
sample of ``--fit`` documents with their MiniLM vectors as targets (the ridges of ``FIT``),
``static_embed`` (sqrt term frequency) of the held-out documents, ``icp_order``, and the share
of adjacent held-out documents with the same label. MiniLM's own share on the same held-out
documents is the ceiling; a random order's the floor.

Corpora: ``examples/corpus`` (``topic`` labels) and docstrings of installed packages (module,
class and function docstrings of at least 300 characters; the label is the top-level
package). Every document is cut to its first 256 cl100k tokens, as ``packprep embed`` does.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from packprep.stages.embed import embed_texts, load_embedder
from packprep.stages.model_files import force_offline, model_fingerprint, packaged_model_dir
from packprep.stages.order import icp_order, random_order
from packprep.stages.static_embed import (
    FIT,
    StaticModel,
    _plain_tokenizer,
    cache_root,
    fit_sample,
    fit_static_model,
    is_distilled,
    static_cache_folder,
    static_embed,
)
from packprep.tokenizers import load_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "corpus"
PACKAGES = ("numpy", "scipy", "torch", "sympy", "pandas", "matplotlib", "transformers", "ray", "sklearn", "networkx", "pyarrow", "datasets")


def examples_corpus() -> tuple[list[str], np.ndarray]:
    records = [json.loads(line) for path in sorted(EXAMPLES.glob("*.jsonl.gz")) for line in gzip.open(path, "rt")]
    return [r["text"] for r in records], np.array([r["topic"] for r in records])


def docstring_corpus(limit: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Up to ``limit`` docstrings, an equal share from each installed package of ``PACKAGES``."""
    site = Path(np.__file__).resolve().parents[1]
    installed = [p for p in PACKAGES if (site / p).is_dir()]
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for package in installed:
        found: dict[str, None] = {}
        for path in sorted((site / package).rglob("*.py")):
            if "test" in path.parts[-2] or path.name.startswith("test"):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= 300:
                        found[doc] = None
            if len(found) >= 5 * limit // len(installed):  # enough to sample from; parsing is the slow part
                break
        picked = rng.choice(len(found), size=min(len(found), limit // len(installed)), replace=False)
        docs = list(found)
        texts += [docs[i] for i in sorted(picked)]
        labels += [package] * len(picked)
    return texts, np.array(labels)


def first_tokens(texts: list[str], n: int) -> list[str]:
    tokenizer = load_tokenizer("cl100k")
    tokens, lengths = tokenizer.encode_batch(texts)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [tokenizer.decode(tokens[offsets[i] : min(offsets[i + 1], offsets[i] + n)]) for i in range(len(texts))]


def model2vec_as_ours(folder: Path, ours: StaticModel) -> tuple[np.ndarray, int]:
    """float32 [V, D]: model2vec's vectors re-indexed by our tokenizer's ids (zero rows for tokens it lacks); how many it has."""
    from model2vec import StaticModel as M2V

    m2v = M2V.from_pretrained(str(folder))
    theirs = m2v.tokenizer.get_vocab()
    vectors = np.zeros((ours.vectors.shape[0], m2v.embedding.shape[1]), dtype=np.float32)
    matched = 0
    for token, i in ours.tokenizer.get_vocab().items():
        if token in theirs and i < len(vectors):
            vectors[i] = m2v.embedding[theirs[token]]
            matched += 1
    return vectors, matched


def previous_distill(source: Path, *, pca_dims: int = 256, sif_coefficient: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """packprep's distillation before issue 18: (float32 [V, D] vectors, float32 [D] empty-text vector).

    Every non-special token through MiniLM as ``[CLS] t [SEP]`` (mean of the three states),
    PCA (centred, float64), SIF weights ``a / (a + p)`` with ``p ∝ 1 / rank`` where the rank
    restarts at ``!`` (id 999) and at ``the`` (id 1996), so ``the`` is rank 2 rather than
    model2vec's 1,001st; ``empty``: the ``[CLS] [SEP]`` state through the same PCA.
    """
    import torch
    from transformers import AutoModel

    tokenizer = _plain_tokenizer(source / "tokenizer.json")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    special = np.fromiter((i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special), dtype=np.int64)
    vocab_size = tokenizer.get_vocab_size()
    ids = np.setdiff1d(np.arange(vocab_size), special)
    encoder = AutoModel.from_pretrained(str(source), local_files_only=True).eval()
    with torch.inference_mode():
        states = []
        for start in range(0, len(ids), 1024):
            part = torch.as_tensor(ids[start : start + 1024, None])
            batch = torch.cat([torch.full_like(part, cls_id), part, torch.full_like(part, sep_id)], dim=1)
            states.append(encoder(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state.mean(1))
        pair = torch.tensor([[cls_id, sep_id]])
        empty_state = encoder(input_ids=pair, attention_mask=torch.ones_like(pair)).last_hidden_state.mean(1).numpy()[0]
    x = torch.cat(states).numpy().astype(np.float64)
    mean = x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh((x - mean).T @ (x - mean))
    components = eigenvectors[:, np.argsort(-eigenvalues)[:pca_dims]]
    components *= np.sign(components[np.abs(components).argmax(axis=0), np.arange(pca_dims)])
    first_char, first_word = tokenizer.token_to_id("!"), tokenizer.token_to_id("the")
    ranks = np.where(ids >= first_word, ids - first_word, np.maximum(ids - first_char, 0)) + 2.0
    probability = (1.0 / ranks) / (1.0 / np.arange(2, vocab_size + 2, dtype=np.float64)).sum()
    vectors = np.zeros((vocab_size, pca_dims), dtype=np.float32)
    vectors[ids] = (x - mean) @ components * (sif_coefficient / (sif_coefficient + probability))[:, None]
    empty = (empty_state - mean) @ components
    return vectors, (empty / np.linalg.norm(empty)).astype(np.float32)


def timed(fn):
    """(fn(), wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def same_topic(vectors: np.ndarray, labels: np.ndarray, seed: int) -> float:
    order = icp_order(np.arange(len(labels)), vectors, k=10, seed=seed)
    return float(np.mean(labels[order[1:]] == labels[order[:-1]]))


def head_to_head(name: str, texts: list[str], labels: np.ndarray, minilm: np.ndarray, models: dict, args) -> None:
    """Same-topic share of held-out documents per fit seed (the fit's sample and icp's ties), then mean and sd."""
    print(f"\n{name}: {len(texts):,} documents, {len(set(labels))} labels; fit on {min(args.fit, len(texts)):,}, "
          f"the other {len(texts) - min(args.fit, len(texts)):,} held out; seeds {args.seeds}")
    rows: dict[str, list[float]] = {"random order": [], "MiniLM": []}
    for label in models:
        rows[f"{label} unfitted"], rows[f"{label} fitted"], rows[f"{label} fitted cos to MiniLM"] = [], [], []
    for seed in args.seeds:
        sample = fit_sample(len(texts), size=args.fit, seed=seed)
        held = np.setdiff1d(np.arange(len(texts)), sample)
        held_texts, held_labels = [texts[i] for i in held], labels[held]
        rand = random_order(np.arange(len(held)), seed=seed)
        rows["random order"].append(float(np.mean(held_labels[rand[1:]] == held_labels[rand[:-1]])))
        rows["MiniLM"].append(same_topic(minilm[held], held_labels, seed))
        for label, model in models.items():
            fitted = fit_static_model(model, [texts[i] for i in sample], minilm[sample],
                                      map_ridge=FIT["map_ridge"], token_ridge=FIT["token_ridge"])
            vectors = static_embed(fitted, held_texts)
            rows[f"{label} unfitted"].append(same_topic(static_embed(model, held_texts), held_labels, seed))
            rows[f"{label} fitted"].append(same_topic(vectors, held_labels, seed))
            rows[f"{label} fitted cos to MiniLM"].append(float((vectors * minilm[held]).sum(axis=1).mean()))
    for label, values in rows.items():
        print(f"  {label:30} {np.mean(values):.3f} +- {np.std(values):.3f}   [{' '.join(f'{v:.3f}' for v in values)}]")
    diff = np.array(rows["packprep fitted"]) - np.array(rows["previous fitted"])
    print(f"  packprep - previous, fitted: {diff.mean():+.3f} (seeds where packprep is ahead: {(diff > 0).sum()} of {len(diff)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=1000)
    parser.add_argument("--docstrings", type=int, default=2000)
    parser.add_argument("--embed-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="which docstrings are drawn")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2, 3, 4],
                        help="fit samples (and icp tie-breaks) to average over")
    parser.add_argument("--m2v", type=Path, default=None, help="a folder model2vec's distill was saved to (else distil now)")
    parser.add_argument("--cache", type=Path, default=None, help="keep MiniLM vectors and the previous distillation here between runs")
    args = parser.parse_args()
    force_offline()
    source = packaged_model_dir()
    fresh = not is_distilled(model_fingerprint(source))
    ours, wall, cpu = timed(lambda: load_embedder("static").model)
    meta = json.loads((static_cache_folder(model_fingerprint(source)) / "static.json").read_text())
    print(f"packprep distill ({meta['distiller']}'s steps): {meta['distill_seconds']} s when {cache_root()} was filled"
          + (f" (this run: {wall:.0f} s wall, {cpu:.0f} s process CPU)" if fresh else ""))

    if args.m2v is None:
        from model2vec.distill import distill

        args.m2v = Path(os.environ.get("TMPDIR", "/tmp")) / "packprep-model2vec"
        model, wall, cpu = timed(lambda: distill(str(source), pca_dims=256, quantize_to="float32"))
        model.save_pretrained(str(args.m2v))
        print(f"model2vec distill: {wall:.0f} s wall, {cpu:.0f} s process CPU")
    theirs, matched = model2vec_as_ours(args.m2v, ours)
    zero = ~np.abs(ours.vectors).any(axis=1)
    both = ~zero & np.abs(theirs).any(axis=1)
    print(f"model2vec has {matched:,} of our {len(ours.vectors):,} token ids; packprep's non-zero rows: {(~zero).sum():,}, "
          f"of which model2vec lacks {(~zero & ~both).sum()}; rows model2vec has that packprep zeroes (special): "
          f"{(zero & np.abs(theirs).any(axis=1)).sum()}")
    print(f"packprep vs model2vec distill, same rows: max abs difference {np.abs(ours.vectors[both] - theirs[both]).max():.3g} "
          f"(largest entry {np.abs(theirs[both]).max():.3g})")

    cached = args.cache / "previous-distill.npz" if args.cache else None
    if cached and cached.exists():
        with np.load(cached) as saved:
            vectors, empty = saved["vectors"], saved["empty"]
    else:
        (vectors, empty), wall, cpu = timed(lambda: previous_distill(source))
        print(f"previous distill: {wall:.0f} s wall, {cpu:.0f} s process CPU")
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, vectors=vectors, empty=empty)
    previous = StaticModel(vectors=vectors, empty=empty, tokenizer=ours.tokenizer)

    minilm_embedder = load_embedder()
    corpora = {"examples/corpus": examples_corpus(), "docstrings": docstring_corpus(args.docstrings, args.seed)}
    for name, (texts, labels) in corpora.items():
        texts = first_tokens(texts, args.embed_tokens)
        cached = args.cache / f"{name.replace('/', '_')}-{len(texts)}.npy" if args.cache else None
        if cached and cached.exists():
            minilm = np.load(cached)
        else:
            start = time.perf_counter()
            minilm = embed_texts(minilm_embedder, texts, batch_size=64, dtype=np.float32)
            print(f"MiniLM on {name}: {len(texts) / (time.perf_counter() - start):.0f} docs/s", file=sys.stderr)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, minilm)
        head_to_head(name, texts, labels, minilm, {"previous": previous, "packprep": ours}, args)


if __name__ == "__main__":
    main()
