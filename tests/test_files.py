"""Finished files are on disk, not only in the page cache, before a manifest declares them finished."""

from __future__ import annotations

import os
from pathlib import Path

from packprep.io import LOCK_FILES  # the lock is not output: it holds no data to sync
from packprep.config import PackConfig
from packprep.pipeline import pack


def test_every_output_file_and_rename_is_fsynced_before_the_manifest(small_corpus, tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, **kwargs) -> None:
        real_replace(src, dst, **kwargs)
        events.append(("replace", str(Path(src).resolve()), str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = pack(small_corpus, tmp_path / "out", config=PackConfig(seq_len=64), format="arrow").resolve()

    def synced_before(index: int) -> set[str]:
        """Paths fsynced before events[index], under their final names."""
        synced, renamed = set(), {}
        for event in events[:index]:
            if event[0] == "fsync":
                synced.add(event[1])
            else:
                renamed[event[1]] = event[2]
        return {renamed.get(p, p) for p in synced}

    replaces = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert replaces
    for i in replaces:  # each rename: its file synced before, its folder after
        _, src, dst = events[i]
        assert ("fsync", src) in events[:i] and ("fsync", str(Path(dst).parent)) in events[i + 1 :], dst
    # A power cut right after the manifest's rename must find every file it describes.
    manifest = next(i for i in replaces if events[i][2] == str(out / "manifest.json"))
    shards = {str(p) for p in out.iterdir() if p.is_file() and p.name != "manifest.json" and p.name not in LOCK_FILES}
    assert shards and shards <= synced_before(manifest)
    # The arrow copy is written in a temporary folder, declared finished by its packprep.json,
    # then renamed to out/arrow.
    arrow_manifest = next(i for i in replaces if events[i][2].endswith("/packprep.json"))
    folder = Path(events[arrow_manifest][2]).parent
    arrow = out / "arrow"
    written = {str(folder / p.relative_to(arrow)) for p in arrow.rglob("*") if p.is_file() and p.name != "packprep.json"}
    assert any(p.endswith(".parquet") for p in written) and written <= synced_before(arrow_manifest)
    assert ("fsync", str(out)) in events[arrow_manifest + 1 :]  # the folder's rename to out/arrow
