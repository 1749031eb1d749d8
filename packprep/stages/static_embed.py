"""Static embedder: one vector per WordPiece token, distilled offline from MiniLM, cached.

A document's embedding is the L2-normalised sum of the vectors of its tokens, so
embedding costs one tokenizer pass and one sparse matrix product: no transformer at
run time. The vectors are distilled the way model2vec does it (Tulkens & van Dongen,
2024), written here in numpy + torch rather than adding model2vec and its
dependencies for ~100 lines. Measured head to head with the same corpus fit on top
(benchmarks/bench_model2vec.py, held-out icp same-topic share): ours is ahead by
0.015-0.030 before the fit but level or behind after it (-0.001 to -0.018 on
examples/corpus and a docstring corpus), so it does not win; we have not switched
because model2vec's ``distill`` needs skeletoken, whose extra downgrades transformers.

1. every vocabulary token ``t`` goes through the source model alone, as ``[CLS] t [SEP]``,
   and the mean of the three output states (the model's own mean pooling) is its vector;
2. PCA (centred) to ``pca_dims`` dimensions, which removes the direction all tokens share;
3. SIF weighting under Zipf's law: ``a / (a + p)`` with ``p ∝ 1 / rank``, the rank read off
   the vocabulary's order (:func:`vocabulary_ranks`), so frequent tokens count less.

A text's token counts enter as square roots (sublinear term frequency), so a word
repeated through a document does not drown the rest. The result is cached under ``cache_root()/static-<fingerprint[:16]>/``::

    static.json      recipe, source fingerprint, dim, vocab size, distill seconds (written last)
    vectors.npy      float32 [V, D]  one row per token id; special tokens are zero rows
    empty.npy        float32 [D]     the vector of a text with no tokens ([CLS] [SEP] alone)
    tokenizer.json   the source model's tokenizer

The fingerprint depends only on the recipe and the source model's fingerprint, so it
is known before distilling and stays the same across machines.

Distilled vectors alone reach about 0.74 of MiniLM's icp same-topic rate. Fitting them
to the corpus (model2vec's "tokenlearn" idea, :func:`fit_static_model`) closes most of
the gap: MiniLM embeds a seeded sample of the corpus's documents, then

1. a ridge-regularised linear map ``A`` (D -> 384) takes the distilled document vectors to
   MiniLM's, and every token vector becomes ``v A``;
2. kernel ridge on the token bags moves the vectors of the sample's tokens so that each
   sampled document's weighted mean reproduces its MiniLM vector:
   ``min ||X W - Y||^2 + token_ridge ||W - V A||^2``, solved exactly in its dual
   (an n x n system for n sampled documents), so no iterative solver and no seed.

Held out from the fit on examples/corpus this gives 0.88 / 0.89 / 0.98 of MiniLM's rate
for 500 / 1,000 / 2,000 sampled documents (benchmarks/bench_embedders.py). The fitted
model depends on the corpus, so it is not cached: its document vectors are, by the
embed stage, under a key that includes :data:`FIT` (:func:`fitted_fingerprint`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.stages.strategies import DEFAULT_ICP_SEMANTIC_THRESHOLD

STATIC_MODEL = "static"
RECIPE = {"version": 2, "pooling": "mean", "pca_dims": 256, "sif_coefficient": 1e-4, "ranks": "bert-vocabulary"}
_META = "static.json"
# sample: documents MiniLM embeds for the fit; the ridges were chosen on held-out documents
# of examples/corpus (map_ridge 0.001 overfits 250 documents; 10 underfits 2,000).
# calibration (calibrate_threshold): the static threshold standing for MiniLM's default,
# measured on the same sample's neighbour pairs; k as in dedup's kNN graph. The fallback,
# for samples with under min_pairs pairs above the default, is the largest value measured
# for reference 0.97 on PyPI summaries and package READMEs (0.993, 0.994), rounded up
# (benchmarks/bench_semantic_dedup.py).
FIT = {
    "version": 2, "sample": 2000, "seed": 0, "map_ridge": 3.0, "token_ridge": 0.01,
    "calibration": {"reference": DEFAULT_ICP_SEMANTIC_THRESHOLD, "k": 10, "precision": 0.9, "min_pairs": 5, "fallback": 0.995},
}


@dataclass(frozen=True)
class StaticModel:
    """Token vectors and the tokenizer that produces their row indices."""

    vectors: np.ndarray  # float32 [V, D]
    empty: np.ndarray  # float32 [D], unit norm
    tokenizer: Any = field(repr=False, compare=False)  # tokenizers.Tokenizer: no truncation, padding or [CLS]/[SEP]


def cache_root() -> Path:
    """``$PACKPREP_CACHE``, else ``$XDG_CACHE_HOME/packprep``, else ``~/.cache/packprep``."""
    if os.environ.get("PACKPREP_CACHE"):
        return Path(os.environ["PACKPREP_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "packprep"


def static_fingerprint(source_fingerprint: str, recipe: dict[str, Any] = RECIPE) -> str:
    """sha256 hex over the distillation recipe and the source model's fingerprint."""
    return hashlib.sha256(json.dumps({"recipe": recipe, "source": source_fingerprint}, sort_keys=True).encode()).hexdigest()


def static_cache_folder(source_fingerprint: str, *, cache_dir: Path | None = None) -> Path:
    """The folder the static model distilled from a source with this fingerprint lives in (once distilled)."""
    return (cache_dir or cache_root()) / f"static-{static_fingerprint(source_fingerprint)[:16]}"


def is_distilled(source_fingerprint: str, *, cache_dir: Path | None = None) -> bool:
    return (static_cache_folder(source_fingerprint, cache_dir=cache_dir) / _META).is_file()


def load_static_model(source: Path, source_fingerprint: str, *, cache_dir: Path | None = None) -> tuple[StaticModel, str]:
    """The static model distilled from the model folder ``source``, and its fingerprint.

    Distils on first use (about a minute for a 30k vocabulary on two cores) and reuses
    ``cache_dir`` (default :func:`cache_root`) afterwards.
    """
    fingerprint = static_fingerprint(source_fingerprint)
    folder = static_cache_folder(source_fingerprint, cache_dir=cache_dir)
    if not (folder / _META).is_file():
        start = time.perf_counter()
        vectors, empty = distill(source)
        _save(folder, vectors, empty, source / "tokenizer.json",
              {"fingerprint": fingerprint, "source": source_fingerprint, "recipe": RECIPE,
               "distill_seconds": round(time.perf_counter() - start, 1)})
    meta = json.loads((folder / _META).read_text())
    if meta.get("fingerprint") != fingerprint:
        raise PackprepError("static model cache does not match its folder name; delete the folder", path=folder)
    model = StaticModel(
        vectors=np.load(folder / "vectors.npy"), empty=np.load(folder / "empty.npy"),
        tokenizer=_plain_tokenizer(folder / "tokenizer.json"),
    )
    return model, fingerprint


def distill(source: Path, *, token_ids: np.ndarray | None = None, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [V, D] token vectors, float32 [D] empty-text vector) distilled from ``source``.

    ``token_ids`` (int [M]) restricts the distillation to those tokens (rows of the
    others stay zero), e.g. the tokens a small test corpus uses; PCA then fits on them only.
    """
    import torch
    from transformers import AutoModel

    from packprep.stages.model_files import force_offline

    force_offline()
    tokenizer = _plain_tokenizer(source / "tokenizer.json")
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    special = np.fromiter((i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special), dtype=np.int64)
    vocab_size = tokenizer.get_vocab_size()
    ids = np.arange(vocab_size) if token_ids is None else np.unique(np.asarray(token_ids, dtype=np.int64))
    ids = ids[~np.isin(ids, special)]
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stages never print; transformers draws a "Loading weights" bar
    try:
        encoder = AutoModel.from_pretrained(str(source), local_files_only=True).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    with torch.inference_mode():
        states = mean_pooled_states(encoder, ids, cls_id=cls_id, sep_id=sep_id, batch_size=batch_size)
        empty_state = mean_pooled_states(encoder, np.empty(0, np.int64), cls_id=cls_id, sep_id=sep_id)[0]
    dims = min(int(RECIPE["pca_dims"]), *states.shape)
    mean, components = pca(states, dims)
    vectors = np.zeros((vocab_size, dims), dtype=np.float32)
    ranks = vocabulary_ranks(ids, first_char_id=tokenizer.token_to_id("!") or 0, first_word_id=tokenizer.token_to_id("the") or 0)
    vectors[ids] = (states - mean) @ components * zipf_sif_weights(ranks, vocab_size, RECIPE["sif_coefficient"])[:, None]
    empty = (empty_state - mean) @ components
    return vectors, (empty / np.linalg.norm(empty)).astype(np.float32)


def mean_pooled_states(encoder: Any, token_ids: np.ndarray, *, cls_id: int, sep_id: int, batch_size: int = 1024) -> np.ndarray:
    """float32 [M, H]: the mean of ``encoder``'s last hidden states over ``[CLS] t [SEP]``, per token t.

    An empty ``token_ids`` gives one row: the states of ``[CLS] [SEP]`` (what an empty text embeds to).
    """
    import torch

    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))
    if len(ids) == 0:
        batch = torch.tensor([[cls_id, sep_id]])
        return encoder(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state.mean(1).numpy()
    out = []
    for start in range(0, len(ids), batch_size):
        part = ids[start : start + batch_size, None]
        batch = torch.cat([torch.full_like(part, cls_id), part, torch.full_like(part, sep_id)], dim=1)
        out.append(encoder(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state.mean(1))
    return torch.cat(out).numpy().astype(np.float32)


def pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(float64 [H] mean, float64 [H, dims] components) of the rows of ``x`` (float [M, H]).

    Components are the top eigenvectors of the covariance, largest first, each signed
    so its largest-magnitude entry is positive (the same result on every run).
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    components = eigenvectors[:, np.argsort(-eigenvalues)[:dims]]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(dims)])
    return mean, components * signs


def vocabulary_ranks(token_ids: np.ndarray, *, first_char_id: int, first_word_id: int) -> np.ndarray:
    """float64 [M]: estimated frequency rank (from 2) of each token id.

    BERT's WordPiece vocabulary lists [unused] slots, then single characters from ``!``
    (id 999), then word pieces roughly by frequency from ``the`` (id 1996). Ranking each
    run from its own start, rather than by raw id as model2vec does, makes ``the`` the
    most frequent token instead of the 1,996th (+0.04 same-topic share on examples/corpus).
    """
    ids = np.asarray(token_ids, dtype=np.float64)
    return np.where(ids >= first_word_id, ids - first_word_id, np.maximum(ids - first_char_id, 0)) + 2.0


def zipf_sif_weights(ranks: np.ndarray, vocab_size: int, coefficient: float) -> np.ndarray:
    """float64 [M]: SIF weight ``a / (a + p)`` per token, ``p ∝ 1 / rank`` (Zipf's law) over ``vocab_size`` ranks."""
    probability = (1.0 / np.asarray(ranks, dtype=np.float64)) / (1.0 / np.arange(2, vocab_size + 2, dtype=np.float64)).sum()
    return coefficient / (coefficient + probability)


def token_bag(model: StaticModel, texts: Sequence[str]) -> Any:
    """scipy.sparse.csr_matrix float64 [len(texts), V]: the square root of each token's count in each text."""
    from scipy.sparse import csr_matrix

    ids_per_text = [e.ids for e in model.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]
    offsets = np.zeros(len(ids_per_text) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, ids_per_text), dtype=np.int64, count=len(ids_per_text)), out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(ids_per_text), dtype=np.int64, count=int(offsets[-1]))
    # A sparse (texts x vocabulary) count matrix sums each text's vectors without
    # materialising one vector per token.
    bag = csr_matrix((np.ones(len(ids), np.float32), ids, offsets), shape=(len(ids_per_text), len(model.vectors)))
    bag.sum_duplicates()
    np.sqrt(bag.data, out=bag.data)
    return bag


def static_embed(model: StaticModel, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), D]: L2-normalised sum of each text's token vectors, each weighted by sqrt(count) / count.

    A text without a known token (empty, or only unknown characters) gets ``model.empty``.
    """
    sums = np.asarray(token_bag(model, texts) @ model.vectors, dtype=np.float32)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    blank = norms[:, 0] == 0  # also texts whose only tokens are special or [UNK] (zero rows)
    sums[blank], norms[blank] = model.empty, 1.0
    return sums / norms


def fit_sample(num_documents: int, *, size: int, seed: int) -> np.ndarray:
    """int64 [min(num_documents, size)]: sorted document indices drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_documents, size=min(num_documents, size), replace=False)).astype(np.int64)


def fitted_fingerprint(static: str, fit: dict[str, Any] = FIT) -> str:
    """sha256 hex over the distilled model's fingerprint and the fit's parameters (the corpus is keyed by the caller)."""
    return hashlib.sha256(json.dumps({"static": static, "fit": fit}, sort_keys=True).encode()).hexdigest()


def fit_static_model(
    model: StaticModel, texts: Sequence[str], targets: np.ndarray, *, map_ridge: float, token_ridge: float
) -> StaticModel:
    """``model`` fitted so its embedding of each of ``texts`` approaches ``targets`` (float [n, H], unit rows).

    Returns vectors float32 [V, H]. Tokens absent from ``texts`` keep their distilled
    vector mapped to H dimensions; see the module docstring for the two steps.
    """
    if len(texts) == 0 or len(texts) != len(targets):
        raise ValueError(f"need one target per text and at least one text, got {len(texts)} texts, {len(targets)} targets")
    from scipy.sparse import diags

    vectors = model.vectors.astype(np.float64)
    y = np.asarray(targets, dtype=np.float64)
    # Special and [UNK] tokens (zero rows) stay zero, as in the distilled model.
    known = np.abs(vectors).sum(axis=1) > 0
    bag = token_bag(model, texts).astype(np.float64) @ diags(known.astype(np.float64))
    # Rows scaled so the distilled prediction has unit norm, like the targets: the
    # embedding normalises anyway, so this only sets what each document weighs in the fit.
    scale = np.linalg.norm(bag @ vectors, axis=1)
    scale[scale == 0] = 1.0
    x = diags(1.0 / scale) @ bag
    predicted = x @ vectors
    mapping = np.linalg.solve(predicted.T @ predicted + map_ridge * np.eye(vectors.shape[1]), predicted.T @ y)
    mapped = vectors @ mapping
    # min ||x W - y||^2 + token_ridge ||W - mapped||^2 has the solution mapped + x^T alpha,
    # alpha = (x x^T + token_ridge I)^-1 (y - x mapped): n equations however large V is.
    gram = (x @ x.T).toarray()
    alpha = np.linalg.solve(gram + token_ridge * np.eye(len(gram)), y - x @ mapped)
    fitted = mapped + np.asarray(x.T @ alpha)
    empty = model.empty.astype(np.float64) @ mapping
    return StaticModel(
        vectors=fitted.astype(np.float32), empty=(empty / np.linalg.norm(empty)).astype(np.float32), tokenizer=model.tokenizer
    )


@dataclass(frozen=True)
class Calibration:
    """The static threshold that stands for ``reference`` on the reference model's scale."""

    threshold: float  # cosine under the static model; dedup drops pairs strictly above it
    reference: float  # the reference model's threshold it reproduces
    method: str  # "sample": measured on the pairs; "fallback": too few pairs above ``reference``
    pairs: int  # sampled pairs it was measured on
    reference_above: int  # of those, pairs the reference model puts above ``reference``
    static_above: int  # pairs above ``threshold`` under the static model
    agree: int  # pairs above both thresholds


def neighbour_pair_cosines(static: np.ndarray, reference: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(float64 [P], float64 [P]): the cosines under each model of every pair that is among either model's ``k`` nearest.

    ``static`` (float [n, D]) and ``reference`` (float [n, H]) embed the same n documents,
    L2-normalised. Dedup only ever compares a document with its nearest neighbours, so
    these are the pairs whose order the threshold has to reproduce.
    """
    from packprep.stages.order import knn_graph

    if len(static) < 2:
        return np.zeros(0), np.zeros(0)
    pairs = []
    for vectors in (static, reference):
        neighbours, _ = knn_graph(np.asarray(vectors, dtype=np.float32), k=min(k, len(vectors) - 1))
        rows = np.repeat(np.arange(len(vectors)), neighbours.shape[1])
        pairs.append(np.stack([rows, neighbours.ravel()], axis=1)[neighbours.ravel() >= 0])
    both = np.concatenate(pairs)
    both = np.unique(np.sort(both, axis=1), axis=0)  # (i, j) and (j, i) are one pair
    both = both[both[:, 0] != both[:, 1]]
    cosine = lambda v: np.einsum("ij,ij->i", *(np.asarray(v[both[:, c]], np.float64) for c in (0, 1)))  # noqa: E731
    return cosine(static), cosine(reference)


def calibrate_static(
    model: StaticModel, fitted: StaticModel, texts: Sequence[str], targets: np.ndarray, *, whole_store: bool,
    fit: dict[str, Any] = FIT,
) -> Calibration:
    """The static threshold standing for ``fit["calibration"]["reference"]`` on the reference's scale.

    ``model``: the distilled model; ``fitted``: it fitted to ``targets`` (the reference's
    vectors of ``texts``, the fit sample). ``whole_store``: the sample is every document
    of the store, so ``fitted``'s own vectors are what dedup will compare; otherwise
    most documents are ones the fit never saw, and the pairs come from cross-fitting.
    """
    rule = fit["calibration"]
    if whole_store:
        pairs = neighbour_pair_cosines(static_embed(fitted, texts), targets, k=rule["k"])
    else:
        pairs = held_out_pair_cosines(model, texts, targets, k=rule["k"], map_ridge=fit["map_ridge"], token_ridge=fit["token_ridge"])
    return calibrate_threshold(*pairs, reference=rule["reference"], precision=rule["precision"],
                               min_pairs=rule["min_pairs"], fallback=rule["fallback"])


def held_out_pair_cosines(
    model: StaticModel, texts: Sequence[str], targets: np.ndarray, *, k: int, map_ridge: float, token_ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`neighbour_pair_cosines` of documents the static model was not fitted on.

    The fit reproduces its own sample closely, so in-sample cosines understate how far
    static drifts from the reference on the rest of a corpus. Two-fold cross-fitting:
    a model fitted on every other document of ``texts`` (with ``targets``) embeds the
    remaining half, and the reverse; pairs are taken inside each half, under one model.
    """
    halves = (np.arange(0, len(texts), 2), np.arange(1, len(texts), 2))
    static, reference = [], []
    for fit_on, held in (halves, halves[::-1]):
        if len(fit_on) == 0 or len(held) < 2:
            continue
        fitted = fit_static_model(model, [texts[i] for i in fit_on], targets[fit_on], map_ridge=map_ridge, token_ridge=token_ridge)
        pairs = neighbour_pair_cosines(static_embed(fitted, [texts[i] for i in held]), targets[held], k=k)
        static.append(pairs[0])
        reference.append(pairs[1])
    return (np.concatenate(static), np.concatenate(reference)) if static else (np.zeros(0), np.zeros(0))


def calibrate_threshold(
    static_cosine: np.ndarray,
    reference_cosine: np.ndarray,
    *,
    reference: float,
    precision: float = 0.9,
    min_pairs: int = 0,
    fallback: float | None = None,
) -> Calibration:
    """The static cosine above which pairs are duplicates, so that the static model agrees with the reference's ``> reference``.

    ``static_cosine`` and ``reference_cosine`` (float [P]) are the same pairs' cosines
    under each model. Ranked by static cosine, the cut keeps the fewer of
    - as many pairs above it as the reference puts above ``reference`` (the same count), and
    - the most pairs of which at least ``precision`` are above ``reference`` for the reference too,
    so it never drops more than the reference and rarely what the reference keeps. When
    static is a monotone function of the reference (a compressed space) the two agree
    and the cut reproduces the reference's decisions exactly. With no pair above
    ``reference`` it is the highest static cosine: nothing sampled is dropped.

    Fewer than ``min_pairs`` pairs above ``reference`` say little about where the cut
    belongs (a small sample of a large corpus rarely holds both copies of a duplicate):
    then the cut is at least ``fallback`` (``method`` "fallback").
    """
    s = np.asarray(static_cosine, dtype=np.float64)
    r = np.asarray(reference_cosine, dtype=np.float64)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"need the same pairs under both models, got {s.shape} and {r.shape}")
    order = np.argsort(-s, kind="stable")
    ranked, hits = s[order], r[order] > reference
    reference_above = int(hits.sum())
    share = np.cumsum(hits) / np.arange(1, len(s) + 1)
    precise = np.flatnonzero(share >= precision)
    top = min(reference_above, int(precise[-1]) + 1 if len(precise) else 0)
    if len(s) == 0:
        threshold = 1.0 if fallback is None else float(fallback)  # nothing measured: drop nothing but the fallback's
    elif top == 0:
        threshold = float(ranked[0])
    elif top == len(s):
        threshold = float(np.nextafter(ranked[-1], -np.inf))
    else:
        threshold = float((ranked[top - 1] + ranked[top]) / 2)
    method = "sample"
    if reference_above < min_pairs and fallback is not None and fallback >= threshold:
        threshold, method = float(fallback), "fallback"
    above = s > threshold
    return Calibration(
        threshold=threshold, reference=float(reference), method=method, pairs=len(s), reference_above=reference_above,
        static_above=int(above.sum()), agree=int((above & (r > reference)).sum()),
    )


def _plain_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()  # the caller already cut the text to its first embed_tokens tokens
    tokenizer.no_padding()
    return tokenizer


def _save(folder: Path, vectors: np.ndarray, empty: np.ndarray, tokenizer_json: Path, meta: dict[str, Any]) -> None:
    """Write the cache folder atomically: a temporary sibling, renamed when complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like any ~/.cache folder
    try:
        np.save(tmp / "vectors.npy", vectors.astype(np.float32))
        np.save(tmp / "empty.npy", empty.astype(np.float32))
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        meta = {**meta, "dim": int(vectors.shape[1]), "vocab_size": int(vectors.shape[0])}
        (tmp / _META).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / _META).is_file():  # not another process finishing the same distillation first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
