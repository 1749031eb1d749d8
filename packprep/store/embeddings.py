"""Where an embedder's vectors live in WORK, and the journal that makes embedding resumable.

Every embedder has files of its own, so the embeddings of several sit side by side and
switching back to one costs nothing::

    embeddings.npy, embed.json                          the bundled all-MiniLM-L6-v2
    embeddings.static.npy, embed.static.json            --embedder static
    embeddings.model-<hex12>.npy, embed.model-<hex12>.json   a local model folder (<hex12>: sha256 of its absolute path)

While one embeds (``<tag>``: ``.static``, ``.model-<hex12>`` or nothing for MiniLM)::

    embeddings<tag>.partial.npy   [N, D] the vectors, filled chunk by chunk in place
    embed<tag>.partial.json       journal: the run's key, the chunk size, and the sha256 of
                                  every finished chunk's rows (and of the fit sample's vectors)
    embed<tag>.fit.npy            float32 [n, 384]: MiniLM's vectors of the static fit's sample

A chunk is documents ``[start, start + chunk)``; its vectors depend only on its own
texts (``stages.embed.embed_documents`` sorts and batches inside it), so a resumed run
writes the same bytes as one that was never stopped, whatever was finished before.
When the last chunk is done, the partial file is renamed to ``embeddings<tag>.npy``, the
manifest is written, and the journal and fit file are removed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packprep.io import load_json, replace_durably, save_json, save_npy, sha256_file
from packprep.stages.embed import DEFAULT_ALIASES
from packprep.stages.static_embed import STATIC_MODEL


def embedder_tag(model: str) -> str:
    """The part of the file names that says which embedder made them ("" for the default MiniLM)."""
    if model in DEFAULT_ALIASES:
        return ""
    if model == STATIC_MODEL:
        return ".static"
    folder = str(Path(model).expanduser().resolve())
    return ".model-" + hashlib.sha256(folder.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class EmbedFiles:
    vectors: Path
    manifest: Path
    partial: Path
    journal: Path
    fit: Path

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        """The finished embeddings' manifest, written after the vectors are in place."""
        save_json(self.manifest, manifest)

    @classmethod
    def of(cls, folder: Path, model: str) -> EmbedFiles:
        tag, folder = embedder_tag(model), Path(folder)
        return cls(
            vectors=folder / f"embeddings{tag}.npy",
            manifest=folder / f"embed{tag}.json",
            partial=folder / f"embeddings{tag}.partial.npy",
            journal=folder / f"embed{tag}.partial.json",
            fit=folder / f"embed{tag}.fit.npy",
        )


def embed_manifest(store_path: Path, model: str) -> dict[str, Any] | None:
    """What the embed stage of ``model`` recorded beside the store at ``store_path`` (model, calibration), or None before it ran."""
    path = EmbedFiles.of(Path(store_path), model).manifest
    return load_json(path) if path.is_file() else None


def load_embeddings(store_path: Path, model: str = "all-MiniLM-L6-v2") -> np.ndarray | None:
    """The embeddings ``model`` made of the document store at ``store_path``, or None when it has none."""
    files = EmbedFiles.of(Path(store_path), model)
    return np.load(files.vectors, mmap_mode="r") if files.manifest.is_file() and files.vectors.is_file() else None


def finished_manifests(folder: Path) -> list[dict[str, Any]]:
    """The manifests of every embedder's finished embeddings in ``folder``, by file name."""
    found = []
    for path in sorted(Path(folder).glob("embed*.json")):
        if path.name.endswith(".partial.json"):
            continue
        try:
            manifest = load_json(path)
        except ValueError:
            continue
        model = manifest.get("config", {}).get("model")
        if isinstance(model, str) and EmbedFiles.of(folder, model).manifest == path and EmbedFiles.of(folder, model).vectors.is_file():
            found.append(manifest)
    return found


@dataclass
class ChunkJournal:
    """One embedding run's partial vectors and the chunks of them that are finished.

    ``finished`` maps a chunk's first row to the sha256 of its rows' bytes; only chunks
    whose bytes still match are counted as finished when a run resumes.
    """

    files: EmbedFiles
    key: str
    chunk: int
    finished: dict[int, str] = field(default_factory=dict)
    fit_sha256: str | None = None
    _vectors: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def resume(cls, files: EmbedFiles, *, key: str, chunk: int) -> ChunkJournal:
        """The journal an interrupted run with this ``key`` and ``chunk`` left, else an empty one."""
        journal = cls(files, key, chunk)
        try:
            saved = load_json(files.journal) if files.journal.is_file() else {}
        except ValueError:
            saved = {}
        if saved.get("key") == key and saved.get("chunk") == chunk:
            journal.finished = {int(start): digest for start, digest in saved.get("chunks", {}).items()}
            journal.fit_sha256 = saved.get("fit_sha256")
        elif files.journal.is_file():
            files.journal.unlink()  # another run's: its partial vectors are overwritten below
        return journal

    def fit_targets(self) -> np.ndarray | None:
        """The fit sample's MiniLM vectors a previous run of this key saved, if intact."""
        if self.fit_sha256 is None or not self.files.fit.is_file() or sha256_file(self.files.fit) != self.fit_sha256:
            return None
        return np.load(self.files.fit)

    def save_fit_targets(self, targets: np.ndarray) -> None:
        save_npy(self.files.fit, targets)
        self.fit_sha256 = sha256_file(self.files.fit)
        self._save()

    def open_vectors(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """The partial vectors as a writable memmap: the previous run's (its intact chunks kept) or a new file."""
        files = self.files
        if self.finished and not files.partial.is_file() and files.vectors.is_file() and not files.manifest.is_file():
            files.vectors.replace(files.partial)  # killed between the final rename and the manifest
        vectors = None
        if self.finished and files.partial.is_file():
            try:
                vectors = np.load(files.partial, mmap_mode="r+")
            except ValueError:
                vectors = None
            if vectors is not None and (vectors.shape != shape or vectors.dtype != dtype):
                vectors = None
        if vectors is None:
            self.finished = {}
            vectors = np.lib.format.open_memmap(files.partial, mode="w+", dtype=dtype, shape=shape)
        self.finished = {
            start: digest for start, digest in self.finished.items()
            if start % self.chunk == 0 and start < shape[0] and _rows_sha256(vectors, start, self.chunk) == digest
        }
        self._vectors = vectors
        return vectors

    def todo(self, num_rows: int) -> list[int]:
        """First rows of the chunks still to embed, in order."""
        return [start for start in range(0, num_rows, self.chunk) if start not in self.finished]

    def finish(self, start: int) -> None:
        """Record chunk ``start`` as finished (its rows are written to the page cache first)."""
        assert self._vectors is not None
        self._vectors.flush()
        self.finished[start] = _rows_sha256(self._vectors, start, self.chunk)
        self._save()

    def publish(self) -> None:
        """Rename the finished vectors into place (the caller writes the manifest next)."""
        if self._vectors is not None:
            self._vectors.flush()
            self._vectors = None
        replace_durably(self.files.partial, self.files.vectors)

    def remove(self) -> None:
        self.files.journal.unlink(missing_ok=True)
        self.files.fit.unlink(missing_ok=True)

    def _save(self) -> None:
        save_json(
            self.files.journal,
            {"key": self.key, "chunk": self.chunk, "fit_sha256": self.fit_sha256,
             "chunks": {str(start): digest for start, digest in sorted(self.finished.items())}},
        )


def _rows_sha256(vectors: np.ndarray, start: int, chunk: int) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors[start : start + chunk]).tobytes()).hexdigest()
