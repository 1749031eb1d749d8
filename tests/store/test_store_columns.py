"""Per-document columns of a store (a recipe's sources, benchmark matches, copies): written with the store, read back."""

from __future__ import annotations

import numpy as np
import pytest

from packprep.store import DocStore, DocStoreWriter


def _write(path, columns):
    with DocStoreWriter(path, dtype=np.uint16) as writer:
        writer.append(np.array([1, 2, 3], np.uint16), np.array([2, 1]), ["a", "b"], np.array([7, 8], np.uint64))
        for name, values in columns.items():
            writer.add_column(name, values)
        return writer.finish({})


def test_columns_round_trip_and_absent_ones_are_none(tmp_path):
    store = _write(tmp_path / "s", {"sources": np.array([1, 0], np.int16)})
    assert DocStore.open(store.path).column("sources").tolist() == [1, 0]
    assert store.column("original") is None
    with pytest.raises(ValueError):
        store.column("nonsense")


def test_a_column_of_the_wrong_length_leaves_no_finished_store(tmp_path):
    with pytest.raises(ValueError, match="1 values for 2 documents"):
        _write(tmp_path / "s", {"benchmark": np.array([-1], np.int32)})
    assert not (tmp_path / "s" / "store.json").exists()
