"""Static embedder: one vector per WordPiece token, distilled offline from MiniLM by model2vec, cached.

A document's embedding is the L2-normalised sum of the vectors of its tokens, so
embedding costs one tokenizer pass and one sparse matrix product: no transformer at
run time. The vectors are model2vec's (Tulkens & van Dongen, 2024): :func:`distill` runs
model2vec's own steps (its vocabulary cleaning, ``create_embeddings``, ``compute_weights``,
``apply_pca``) and over the whole vocabulary gives exactly the vectors of
``model2vec.distill.distill(source, pca_dims=256, quantize_to="float32")`` (largest
absolute difference 0, benchmarks/bench_model2vec.py). Until issue 18 we distilled with
our own copy of these steps, with Zipf ranks restarted at ``!`` and ``the``. Head to head
with the same corpus fit on top (held-out icp same-topic share on examples/corpus and a
docstring corpus, fit on 1,000 documents) it did not win: model2vec's was ahead by 0.001
to 0.017 in a first run, and by +0.005 and -0.002 over 5 seeds in the last (less than a
seed's spread, 0.01-0.015), so model2vec's is used and ours is kept only as the
benchmark's baseline.

1. every token model2vec keeps (the vocabulary less [CLS], [SEP], [MASK] and the [unused]
   slots: 29,525 of MiniLM's 30,522) goes through the source model as ``[CLS] t [SEP]``,
   and the mean of the output states (the model's own mean pooling) is its vector;
2. PCA (centred) to ``pca_dims`` dimensions, which removes the direction all tokens share;
3. SIF weighting under Zipf's law: ``a / (a + p)`` with ``p ∝ 1 / rank``, the rank being the
   token's position in that vocabulary plus 2 (:func:`model2vec_vocabulary`), so frequent
   tokens count less.

Rows are then re-indexed by token string to the source tokenizer's ids. Special tokens
([PAD], [UNK], [CLS], [SEP], [MASK]) and the [unused] slots are zero rows: a text never
contains them (no special tokens are added), and [UNK] carries no meaning (model2vec
drops it too). The empty-text vector is what MiniLM embeds an empty text to, the mean
state of ``[CLS] [SEP]``, through the same PCA, unit norm; it stands for every text
without a known token.

A text's token counts enter as square roots (sublinear term frequency), so a word
repeated through a document does not drown the rest. The result is cached under ``cache_root()/static-<fingerprint[:16]>/``::

    static.json      recipe, distiller (model2vec version), source fingerprint, dim, vocab size, distill seconds (written last)
    vectors.npy      float32 [V, D]  one row per token id; special tokens are zero rows
    empty.npy        float32 [D]     the vector of a text with no known token
    tokenizer.json   the source model's tokenizer

The fingerprint depends only on the recipe, the installed model2vec's version and the
source model's fingerprint, so it is known before distilling and stays the same across
machines; caches of another recipe or model2vec version are left alone, not reused.
model2vec and skeletoken (which its ``distill`` needs) are in the ``semantic`` extra;
``model2vec[distill]`` is not, since it pins transformers below 5.4.

Distilled vectors alone reach about 0.8-0.9 of MiniLM's icp same-topic rate on held-out
documents (0.554 / 0.685 on examples/corpus, 0.640 / 0.721 on docstrings). Fitting them
to the corpus (model2vec's "tokenlearn" idea, :func:`fit_static_model`) closes most of
the gap: MiniLM embeds a seeded sample of the corpus's documents, then

1. a ridge-regularised linear map ``A`` (D -> 384) takes the distilled document vectors to
   MiniLM's, and every token vector becomes ``v A``;
2. kernel ridge on the token bags moves the vectors of the sample's tokens so that each
   sampled document's weighted mean reproduces its MiniLM vector:
   ``min ||X W - Y||^2 + token_ridge ||W - V A||^2``, solved exactly in its dual
   (an n x n system for n sampled documents), so no iterative solver and no seed.

Held out from the fit on examples/corpus this gave 0.88 / 0.89 / 0.98 of MiniLM's rate
for 500 / 1,000 / 2,000 sampled documents (benchmarks/bench_embedders.py, measured on the
previous distillation, which the fit brings level with model2vec's: 0.97 and 1.01 of
MiniLM's at 1,000 in bench_model2vec.py's last run). The fitted
model depends on the corpus, so it is not cached: its document vectors are, by the
embed stage, under a key that includes :data:`FIT` (:func:`fitted_fingerprint`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.io import cache_root
from packprep.stages.strategies import DEFAULT_ICP_SEMANTIC_THRESHOLD

STATIC_MODEL = "static"
# model2vec's distill with its defaults but float32 (see distill); "empty": what the empty-text vector is.
RECIPE = {
    "version": 3, "distiller": "model2vec", "pooling": "mean", "pca_dims": 256, "sif_coefficient": 1e-4,
    "token_remove_pattern": r"\[unused\d+\]", "empty": "[CLS] [SEP] through the PCA",
}
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


def static_fingerprint(source_fingerprint: str, recipe: dict[str, Any] = RECIPE, *, distiller: str | None = None) -> str:
    """sha256 hex over the distillation recipe, the distiller's version and the source model's fingerprint.

    ``distiller`` defaults to the installed model2vec's version (:func:`distiller_version`):
    another model2vec may distil differently, so its vectors get a folder of their own.
    """
    key = {"recipe": recipe, "distiller": distiller or distiller_version(), "source": source_fingerprint}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def distiller_version() -> str:
    """``"model2vec <version>"`` of the installed model2vec."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"model2vec {version('model2vec')}"
    except PackageNotFoundError:
        raise PackprepError("--embedder static needs model2vec: pip install 'packprep[semantic]'") from None


def static_cache_folder(source_fingerprint: str, *, cache_dir: Path | None = None) -> Path:
    """The folder the static model distilled from a source with this fingerprint lives in (once distilled)."""
    return (cache_dir or cache_root()) / f"static-{static_fingerprint(source_fingerprint)[:16]}"


def is_distilled(source_fingerprint: str, *, cache_dir: Path | None = None) -> bool:
    return (static_cache_folder(source_fingerprint, cache_dir=cache_dir) / _META).is_file()


def load_static_model(source: Path, source_fingerprint: str, *, cache_dir: Path | None = None) -> tuple[StaticModel, str]:
    """The static model distilled from the model folder ``source``, and its fingerprint.

    Distils on first use (about two minutes for a 30k vocabulary on two cores) and reuses
    ``cache_dir`` (default :func:`cache_root`) afterwards.
    """
    fingerprint = static_fingerprint(source_fingerprint)
    folder = static_cache_folder(source_fingerprint, cache_dir=cache_dir)
    if not (folder / _META).is_file():
        start = time.perf_counter()
        vectors, empty = distill(source)
        _save(folder, vectors, empty, source / "tokenizer.json",
              {"fingerprint": fingerprint, "source": source_fingerprint, "recipe": RECIPE, "distiller": distiller_version(),
               "distill_seconds": round(time.perf_counter() - start, 1)})
    meta = json.loads((folder / _META).read_text())
    if meta.get("fingerprint") != fingerprint:
        raise PackprepError("static model cache does not match its folder name; delete the folder", path=folder)
    model = StaticModel(
        vectors=np.load(folder / "vectors.npy"), empty=np.load(folder / "empty.npy"),
        tokenizer=_plain_tokenizer(folder / "tokenizer.json"),
    )
    return model, fingerprint


def distill(source: Path, *, token_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [V, D] token vectors, float32 [D] empty-text vector) distilled from ``source`` by model2vec's steps.

    ``V`` is the size of ``source``'s tokenizer; rows are its token ids. Special tokens
    and the ones model2vec leaves out (``[unused]``, ``[MASK]``) are zero rows.

    ``token_ids`` (int [M]) restricts the forward passes and the PCA to those tokens (the
    others stay zero rows), e.g. the tokens a small test corpus uses; their SIF weights
    are still their ranks in the whole vocabulary. It is an approximation for tests: the
    PCA is fitted on the subset, and with no more tokens than ``pca_dims`` model2vec skips
    it (D is then the source's width). Without ``token_ids`` the vectors are model2vec's
    ``distill(source, pca_dims=256, quantize_to="float32")`` re-indexed by token string
    (benchmarks/bench_model2vec.py checks this).
    """
    import contextlib
    import io

    from model2vec.distill.inference import apply_pca, compute_weights, create_embeddings
    from model2vec.distill.utils import select_optimal_device
    from model2vec.tokenizer import turn_tokens_into_ids
    from skeletoken.external.transformers import reshape_embeddings
    from transformers import AutoModel

    from packprep.stages.model_files import force_offline

    force_offline()
    ours = _plain_tokenizer(source / "tokenizer.json")
    pruned, vocabulary = model2vec_vocabulary(source / "tokenizer.json")
    position = {token: i for i, token in enumerate(vocabulary)}
    if token_ids is None:
        rows = np.arange(len(vocabulary))
    else:
        tokens = (ours.id_to_token(int(i)) for i in np.unique(np.asarray(token_ids, dtype=np.int64)))
        rows = np.array(sorted({position[t] for t in tokens if t in position}), dtype=np.int64)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stages never print; transformers draws a "Loading weights" bar
    try:
        encoder = AutoModel.from_pretrained(str(source), local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # model2vec's tokenizer drops [MASK] and renumbers the ids after it; the model's
    # embedding matrix is renumbered to match, as model2vec's distill_from_model does.
    encoder = reshape_embeddings(encoder, pruned)
    sequences = turn_tokens_into_ids([vocabulary[i] for i in rows], pruned)
    embed = lambda seqs: create_embeddings(  # noqa: E731
        model=encoder, tokenized=seqs, device=select_optimal_device(None), pad_token_id=pruned.pad_token_id or 0, pooling="mean"
    )
    # create_embeddings draws a tqdm bar and apply_pca logs to stderr: stages never print.
    with contextlib.redirect_stderr(io.StringIO()):
        states = embed(sequences)
        empty_state = embed([[*(pruned.bos_ids or []), *(pruned.eos_ids or [])]])[0]
        projected = apply_pca(states, RECIPE["pca_dims"])
    weights = compute_weights(len(vocabulary), sif_coefficient=RECIPE["sif_coefficient"])[rows]
    vectors = np.zeros((ours.get_vocab_size(), projected.shape[1]), dtype=np.float32)
    vectors[[ours.token_to_id(vocabulary[i]) for i in rows]] = (projected * weights[:, None]).astype(np.float32)
    special = [i for i, t in ours.get_added_tokens_decoder().items() if t.special]
    vectors[special] = 0.0  # token_bag never yields [CLS]/[SEP]/[PAD]; [UNK] carries no meaning (model2vec drops it too)
    empty = _same_affine_map(states, projected, empty_state)
    return vectors, (empty / np.linalg.norm(empty)).astype(np.float32)


def model2vec_vocabulary(tokenizer_json: Path) -> tuple[Any, list[str]]:
    """(skeletoken.TokenizerModel, list[str] of T tokens): what model2vec's ``distill`` works from.

    The first is the tokenizer with the added tokens it has no use for pruned ([MASK] for
    MiniLM; the ids after it move down one). The second lists the tokens model2vec
    distils, in its order: that tokenizer's vocabulary by id, less the added tokens other
    than padding and unknown ([CLS], [SEP]) and less ``RECIPE["token_remove_pattern"]``
    (MiniLM: [PAD] [UNK] ! " # ... ``the`` at 999 ..., 29,525 tokens). Position ``i`` is the
    token's Zipf rank ``i + 2`` in model2vec's SIF weights (``compute_weights``).
    """
    import re

    from model2vec.tokenizer import clean_and_create_vocabulary
    from skeletoken import TokenizerModel
    from tokenizers import Tokenizer

    pruned = TokenizerModel.from_tokenizer(Tokenizer.from_file(str(tokenizer_json))).prune_added_tokens()
    cleaned = clean_and_create_vocabulary(pruned.deep_copy(), [], token_remove_regex=re.compile(RECIPE["token_remove_pattern"]))
    return pruned, cleaned.sorted_vocabulary


def _same_affine_map(x: np.ndarray, y: np.ndarray, row: np.ndarray) -> np.ndarray:
    """float64 [D]: ``row`` (float [H]) through the affine map that takes the rows of ``x`` (float [M, H]) to ``y`` (float [M, D]).

    model2vec's ``apply_pca`` returns the projected rows, not the projection. When it
    skipped the PCA (``y`` is ``x``) the map is the identity; otherwise it is centring then
    a linear map, which least squares on ``[x, 1]`` recovers exactly whenever the rows of
    ``x`` span the input space (a full vocabulary; not a subset of fewer than H tokens).
    """
    if y.shape == x.shape and np.array_equal(x, y):
        return np.asarray(row, np.float64)
    design = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    coefficients = np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)[0]
    return np.append(np.asarray(row, np.float64), 1.0) @ coefficients


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
