"""The Tokenizer interface every backend implements, and the helpers the backends share.

Backends: ``tiktoken_backend`` (cl100k, ``.tiktoken`` files), ``bpe_openai`` (cl100k
encoded faster, same ids), ``hf`` (a ``tokenizer.json``); ``load_tokenizer`` in this
package's ``__init__`` picks one. A new backend is one module here plus one branch there.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from packprep.errors import PackprepError

ACCEPTED = "expected 'cl100k', a path to a tokenizer.json (or its folder), or a path to a .tiktoken file"
MAX_ID = (1 << 32) - 1  # ids are stored as uint32 at most
assert array.array("I").itemsize == 4, "array('I') must be uint32 for flatten"


class Tokenizer(Protocol):
    name: str  # stable description for manifests
    vocab_size: int  # max id + 1, special tokens included
    eos_id: int | None
    bos_id: int | None
    # decode(encode(text)) == text for any text: exact dedup may then hash the decoded store
    # instead of hashing every text at tokenize time (pipeline.semantic.with_text_hash)
    decodes_exactly: bool

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat token ids (uint32 [sum(lengths)], texts concatenated) and lengths (int64 [len(texts)])."""

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` (any int sequence or 1-D array); special ids decode to their token text."""

    def fingerprint(self) -> str:
        """sha256 hex of the vocabulary, merges, split pattern and special ids: the stage-cache key."""


def smallest_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (as nanoGPT does for GPT-2's 50257), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def check_override(spec: str, what: str, value: int, vocab_size: int, is_token: bool = True) -> None:
    if value >= vocab_size:
        raise PackprepError(f"--{what}-id {value} is outside the vocabulary [0, {vocab_size}) of {spec!r}")
    if not is_token:
        raise PackprepError(f"--{what}-id {value} is not a token of {spec!r}")


def flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """A list of id lists as flat uint32 ids [T] and int64 lengths [N], without a Python loop per token."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = array.array("I")
    for ids in lists:  # array.extend copies a list in C: ~2x np.fromiter over itertools.chain
        flat.extend(ids)
    return np.frombuffer(flat, dtype=np.uint32), lengths


def as_int_list(ids: Sequence[int] | np.ndarray) -> list[int]:
    # tolist() yields Python ints in one C call; both backends reject numpy scalars or are slow on them
    return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
