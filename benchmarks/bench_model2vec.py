"""Our static distillation against model2vec's ``distill``, both with packprep's corpus fit on top.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_model2vec.py [--fit 1000] [--docstrings 2000] [--seeds 0,1,2,3,4] [--m2v FOLDER] [--cache DIR]

Needs ``pip install model2vec`` plus ``skeletoken`` (its ``distill`` extra; installed with
``--no-deps`` here, since the extra as a whole would downgrade transformers). Offline: both
distil the bundled MiniLM folder. model2vec's vectors are taken as they come out of
``distill(pca_dims=256)`` (same PCA size and SIF coefficient as our recipe) and re-indexed by
token string to our tokenizer's ids (tokens model2vec dropped, the ``[unused]`` ones, get a
zero row); from there both go through the same code: ``fit_static_model`` on a seeded
sample of ``--fit`` documents with their MiniLM vectors as targets (the ridges of ``FIT``),
then ``static_embed`` (sqrt term frequency) of the held-out documents, ``icp_order``, and
the share of adjacent held-out documents with the same label. MiniLM's own share on the
same held-out documents is the ceiling; a random order's the floor.

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
from dataclasses import replace
from pathlib import Path

import numpy as np

from packprep.stages.embed import _force_offline, _packaged_model_dir, embed_texts, load_embedder
from packprep.stages.order import icp_order, random_order
from packprep.stages.static_embed import FIT, StaticModel, fit_sample, fit_static_model, static_embed
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


def model2vec_as_ours(folder: Path, ours: StaticModel) -> tuple[StaticModel, int]:
    """model2vec's vectors re-indexed by our tokenizer's ids; and how many of our tokens it has."""
    from model2vec import StaticModel as M2V

    m2v = M2V.from_pretrained(str(folder))
    theirs = m2v.tokenizer.get_vocab()
    vectors = np.zeros((ours.vectors.shape[0], m2v.embedding.shape[1]), dtype=np.float32)
    matched = 0
    for token, i in ours.tokenizer.get_vocab().items():
        if token in theirs and i < len(vectors):
            vectors[i] = m2v.embedding[theirs[token]]
            matched += 1
    empty = vectors.mean(axis=0)
    return StaticModel(vectors=vectors, empty=empty / np.linalg.norm(empty), tokenizer=ours.tokenizer), matched


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
    diff = np.array(rows["ours fitted"]) - np.array(rows["model2vec fitted"])
    print(f"  ours - model2vec, fitted: {diff.mean():+.3f} (seeds where ours is ahead: {(diff > 0).sum()} of {len(diff)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=1000)
    parser.add_argument("--docstrings", type=int, default=2000)
    parser.add_argument("--embed-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="which docstrings are drawn")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2, 3, 4],
                        help="fit samples (and icp tie-breaks) to average over")
    parser.add_argument("--m2v", type=Path, default=None, help="a folder model2vec's distill was saved to (else distil now)")
    parser.add_argument("--cache", type=Path, default=None, help="keep MiniLM vectors here between runs")
    args = parser.parse_args()
    _force_offline()
    ours = load_embedder("static").model
    if args.m2v is None:
        from model2vec.distill import distill

        start = time.perf_counter()
        args.m2v = Path(os.environ.get("TMPDIR", "/tmp")) / "packprep-model2vec"
        distill(str(_packaged_model_dir()), pca_dims=256, quantize_to="float32").save_pretrained(str(args.m2v))
        print(f"model2vec distill: {time.perf_counter() - start:.0f} s")
    theirs, matched = model2vec_as_ours(args.m2v, ours)
    print(f"model2vec vectors for {matched:,} of our {len(ours.vectors):,} token ids")
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
        head_to_head(name, texts, labels, minilm, {"ours": ours, "model2vec": theirs}, args)


if __name__ == "__main__":
    main()
