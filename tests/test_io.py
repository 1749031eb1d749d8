"""io's piecewise .npy writers (the bytes np.save writes, without the whole array in memory) and rename batches."""

from __future__ import annotations

import numpy as np
import pytest

from packprep.io import atomic_path, npy_writer, renamed_together, save_npy, write_npy_rows


def test_an_npy_written_in_pieces_is_the_bytes_of_np_save(tmp_path):
    values = np.arange(1000, dtype=np.int64)[::-1]
    with npy_writer(tmp_path / "pieces.npy", dtype=np.int64, length=1000) as write:
        for start in range(0, 1000, 300):
            write(values[start : start + 300])
    np.save(tmp_path / "whole.npy", values)
    assert (tmp_path / "pieces.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_an_npy_short_of_its_length_is_not_left_behind(tmp_path):
    with pytest.raises(ValueError, match="3 elements written of 4"):
        with npy_writer(tmp_path / "short.npy", dtype=np.uint8, length=4) as write:
            write(np.zeros(3, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_rows_are_written_in_place_and_nothing_else_changes(tmp_path):
    np.save(tmp_path / "a.npy", np.full(6, -1, dtype=np.int64))
    write_npy_rows(tmp_path / "a.npy", 2, np.array([7, 8]))
    write_npy_rows(tmp_path / "a.npy", 5, np.zeros(0, np.int64))
    assert np.load(tmp_path / "a.npy").tolist() == [-1, -1, 7, 8, -1, -1]


def test_rows_of_a_matrix_are_written_whole(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((4, 3), dtype=np.uint32))
    write_npy_rows(tmp_path / "m.npy", 1, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint32))
    assert np.load(tmp_path / "m.npy").tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6], [0, 0, 0]]


def test_a_rename_batch_names_its_files_only_when_it_commits(tmp_path):
    with renamed_together() as batch:
        save_npy(tmp_path / "a.npy", np.arange(3), batch=batch)
        with atomic_path(tmp_path / "b.txt", batch=batch) as tmp:
            tmp.write_text("b")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy.tmp", "b.txt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.txt"]
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2] and (tmp_path / "b.txt").read_text() == "b"


def test_a_rename_batch_that_raises_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="mid-batch"):
        with renamed_together() as batch:
            save_npy(tmp_path / "a.npy", np.arange(3), batch=batch)
            raise RuntimeError("mid-batch")
    assert list(tmp_path.iterdir()) == []


def test_a_rename_batch_whose_fsync_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    import packprep.io as io

    def failing(path):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(io, "fsync_path", failing)
    with pytest.raises(OSError, match="Input/output error"):
        with renamed_together() as batch:
            save_npy(tmp_path / "a.npy", np.arange(3), batch=batch)
            save_npy(tmp_path / "b.npy", np.arange(4), batch=batch)
    assert list(tmp_path.iterdir()) == []
