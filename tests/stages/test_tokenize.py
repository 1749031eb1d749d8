"""stages.tokenize.tokenize_pieces: a document given in pieces is the batch tokenize_batch makes of it whole."""

from __future__ import annotations

import numpy as np

from packprep.stages.tokenize import tokenize_batch, tokenize_pieces
from packprep.tokenizers.base import flatten


class Pieces:
    """A text given in pieces (what json_text.JsonText offers)."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def isspace(self) -> bool:
        return "".join(self.parts).isspace()

    def pieces(self):
        yield from self.parts


def encode(texts):
    """One id per UTF-8 byte: enough to see what went where."""
    return flatten([list(text.encode()) for text in texts])


def encode_stream(parts):
    for part in parts:  # each part alone: right for this byte-level encoder
        yield encode([part])[0]


def test_a_document_in_pieces_is_the_batch_of_it_whole():
    emitted = []
    text = Pieces("Hello, wo", "rld  ", "\u00e9t\u00e9 !")
    tokens, lengths, ids, hashes, dropped = tokenize_pieces("d", text, encode_stream, emitted.append)
    whole = tokenize_batch([("d", "".join(text.parts))], encode)
    assert len(tokens) == 0 and dropped == 0 and ids == ["d"]
    assert np.concatenate(emitted).tolist() == whole[0].tolist() and len(emitted) == 3
    assert lengths.tolist() == whole[1].tolist() and hashes.tolist() == whole[3].tolist()


def test_a_blank_document_in_pieces_is_dropped_before_any_token():
    emitted = []
    for text in (Pieces(" \n", "\t "), Pieces("", "")):
        tokens, lengths, ids, hashes, dropped = tokenize_pieces("d", text, encode_stream, emitted.append)
        assert (len(tokens), len(lengths), ids, len(hashes), dropped) == (0, 0, [], 0, 1)
    assert emitted == []
