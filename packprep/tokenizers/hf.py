"""The Hugging Face ``tokenizers`` backend: a ``tokenizer.json`` (or its folder) behind the Tokenizer interface.

``load_tokenizer`` (packprep.tokenizers) picks it for a ``.json`` spec; this module is
imported only then. EOS/BOS come from the ``tokenizer_config.json`` beside the file, else
from the added special tokens with well-known names; ``--eos-id``/``--bos-id`` override both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from packprep.errors import PackprepError
from packprep.tokenizers.base import ACCEPTED, as_int_list, check_override, flatten, one_line

_EOS_NAMES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|eot_id|>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` read from a ``tokenizer.json``."""

    # Normalisers, prefix spaces, [UNK] and decoders' clean-ups may change the text on the way
    # back: its documents are always hashed from their text at tokenize time.
    decodes_exactly = False

    def __init__(self, tokenizer: Any, *, path: Path, content: bytes, eos: int | None, bos: int | None):
        self._tokenizer = tokenizer
        self._content = content
        self.name = f"tokenizer.json:{path.resolve()}"
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.eos_id = eos
        self.bos_id = bos

    @classmethod
    def from_file(cls, path: Path, specials: dict[str, int | None]) -> HFTokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        # Read once and parse those bytes, so fingerprint() describes exactly what was loaded.
        content = path.read_bytes()
        try:
            tokenizer = HFTokenizer.from_str(content.decode("utf-8"))
        except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
            message = f"cannot read as a Hugging Face tokenizer.json ({one_line(err)}); {ACCEPTED}"
            raise PackprepError(message, path=path) from None
        # Added special tokens are matched in the input even with add_special_tokens=False; this
        # makes "</s>" inside a document plain text, as encode_ordinary does for tiktoken.
        tokenizer.encode_special_tokens = True
        found = _special_ids(tokenizer, path)
        vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        for what, value in specials.items():
            if value is not None:
                check_override(str(path), what, value, vocab_size, tokenizer.id_to_token(value) is not None)
                found[what] = value
        return cls(tokenizer, path=path, content=content, eos=found["eos"], bos=found["bos"])

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        texts = list(texts)
        try:
            # encode_batch_fast skips character offsets, which we never use
            encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError:  # a lone surrogate (e.g. "\ud800" in JSON) is not valid text for Rust
            texts = [t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts]
            encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return flatten([e.ids for e in encodings])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tokenizer.decode(as_int_list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        # tokenizer_config.json only matters through the eos/bos ids it picks, hashed here
        digest = hashlib.sha256(b"tokenizer.json\0" + self._content + b"\0")
        digest.update(f"eos={self.eos_id} bos={self.bos_id}".encode())
        return digest.hexdigest()


def _special_ids(tokenizer: Any, path: Path) -> dict[str, int | None]:
    """EOS/BOS from tokenizer_config.json beside the file, else the added special tokens with well-known names."""
    config_path = path.with_name("tokenizer_config.json")
    found: dict[str, int | None] = {"eos": None, "bos": None}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PackprepError(f"invalid JSON ({one_line(err)})", path=config_path) from None
        for what in found:
            token = config.get(f"{what}_token") if isinstance(config, dict) else None
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                found[what] = tokenizer.token_to_id(token)
    added = {token.content: i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    for what, names in (("eos", _EOS_NAMES), ("bos", _BOS_NAMES)):
        if found[what] is None:
            found[what] = next((added[name] for name in names if name in added), None)
    return found
