"""DocStoreWriter.append_tokens: a document written in several pieces is the document written at once."""

from __future__ import annotations

import numpy as np
import pytest

from packprep.store import DocStoreWriter

FILES = ("tokens.bin", "offsets.npy", "text_hash.npy", "doc_ids.bin", "doc_ids.idx.npy")


def _files(path):
    return {name: (path / name).read_bytes() for name in FILES}


def test_a_document_in_pieces_is_stored_as_one(tmp_path):
    with DocStoreWriter(tmp_path / "whole", dtype=np.uint16) as writer:
        writer.append(np.array([1, 2], np.uint16), np.array([2]), ["a"], np.array([7], np.uint64))
        writer.append(np.array([3, 4, 5, 6, 9], np.uint16), np.array([4, 1]), ["huge", "c"], np.array([8, 9], np.uint64))
        whole = writer.finish({})
    with DocStoreWriter(tmp_path / "pieces", dtype=np.uint16) as writer:
        writer.append(np.array([1, 2], np.uint16), np.array([2]), ["a"], np.array([7], np.uint64))
        writer.append_tokens(np.array([3, 4], np.uint32))
        writer.append_tokens(np.array([5], np.uint32))
        writer.append(np.array([6], np.uint16), np.array([4]), ["huge"], np.array([8], np.uint64))
        writer.append(np.array([9], np.uint16), np.array([1]), ["c"], np.array([9], np.uint64))
        pieces = writer.finish({})
    assert _files(pieces.path) == _files(whole.path)
    assert pieces.offsets.tolist() == [0, 2, 6, 7]


def test_a_document_begun_and_never_ended_leaves_no_finished_store(tmp_path):
    with pytest.raises(ValueError, match="sum to 2, not the 4 tokens"):
        with DocStoreWriter(tmp_path / "s", dtype=np.uint16) as writer:
            writer.append(np.array([1, 2], np.uint16), np.array([2]), ["a"], np.array([7], np.uint64))
            writer.append_tokens(np.array([3, 4], np.uint32))
            writer.finish({})
    assert not (tmp_path / "s" / "store.json").exists()
