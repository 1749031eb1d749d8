"""The bpe-openai backend for cl100k: a Rust BPE, ~1.6-2x tiktoken per core, ids identical to ``encode_ordinary``.

``load_tokenizer`` (packprep.tokenizers) picks it; this module is imported only then, so
the other backends never load its subprocess machinery. Only encoding runs here: decode,
the vocabulary, the name and the fingerprint stay tiktoken's, so a store's cache key is
the same whichever backend encoded it.

bpe-openai holds the GIL while it encodes, so a large batch is spread over worker
processes instead of threads. A worker is a plain child Python (``children.start_child``:
``python -c "from packprep.tokenizers.bpe_openai import _serve_encoder; ..."``) speaking
pickles on stdin/stdout: a list of texts in, (flat uint32 ids, int64 lengths) out, until
stdin closes.
"""

from __future__ import annotations

import array
import functools
import pickle
import subprocess
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from packprep.children import start_child
from packprep.tokenizers.text_cuts import PIECE_CHARS, encode_in_pieces
from packprep.tokenizers.tiktoken_backend import TiktokenTokenizer

# Below this many characters a batch is encoded in-process: sending text to a worker
# process and ids back costs more than the second core saves.
_PARALLEL_MIN_CHARS = 1 << 20


class BpeOpenAICl100k(TiktokenTokenizer):
    """cl100k encoded by bpe-openai; everything else (decode, vocabulary, name, fingerprint) is tiktoken's.

    bpe-openai holds the GIL while it encodes, so threads would not help: a large batch
    is cut into ``processes`` contiguous parts of about equal characters, this process
    encodes the largest while worker processes (started on the first large batch) encode
    the others.
    """

    @classmethod
    def wrapping(cls, reference: TiktokenTokenizer, *, processes: int) -> BpeOpenAICl100k:
        fast = cls(
            reference.__dict__.get("_encoding"), name=reference.name, pattern=reference._pattern,  # not loaded if it was not
            threads=reference._threads, eos=reference.eos_id, bos=reference.bos_id,
            vocab_size=reference.vocab_size, fingerprint=reference._fingerprint,
        )
        fast._processes = max(1, processes)
        fast._workers = []
        return fast

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        # A huge text goes in pieces cut where cl100k's regex cuts anyway (text_cuts), a
        # group of pieces at a time over all processes: same ids, memory bounded by a group.
        return encode_in_pieces(list(texts), self._encode_spread, group_chars=self._processes * 4 * PIECE_CHARS)

    def _encode_spread(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._processes == 1 or not sys.executable or sum(map(len, texts)) < _PARALLEL_MIN_CHARS:
            return encode_in_process(texts)
        if not self._workers:
            self._workers = [_EncoderProcess() for _ in range(self._processes - 1)]
        parts = _split_by_chars(texts, self._processes)
        # The largest part stays here: with one huge text, nothing is sent anywhere.
        local = max(range(len(parts)), key=lambda i: sum(map(len, parts[i])))
        remote = [i for i in range(len(parts)) if i != local]
        encoded: list[Any] = [None] * len(parts)
        try:
            for worker, i in zip(self._workers, remote):
                worker.send(parts[i])
            encoded[local] = encode_in_process(parts[local])
            for worker, i in zip(self._workers, remote):
                encoded[i] = worker.receive()
        except BaseException:  # a reply left unread would answer the next batch: start afresh
            for worker in self._workers:
                worker.stop()
            self._workers = []
            raise
        return np.concatenate([flat for flat, _ in encoded]), np.concatenate([lengths for _, lengths in encoded])


class _EncoderProcess:
    """A child Python (``children.start_child``) that encodes with bpe-openai: pickled texts in on stdin, (flat, lengths) out on stdout."""

    def __init__(self) -> None:
        self._process = start_child("from packprep.tokenizers.bpe_openai import _serve_encoder; _serve_encoder()")
        self._stop = weakref.finalize(self, _stop_process, self._process)

    def send(self, texts: list[str]) -> None:
        pickle.dump(texts, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._process.stdin.flush()

    def receive(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            return pickle.load(self._process.stdout)
        except EOFError:
            raise RuntimeError(f"the bpe-openai worker process died (exit code {self._process.wait()})") from None

    def stop(self) -> None:
        self._stop()


def _stop_process(process: subprocess.Popen) -> None:
    process.stdin.close()  # the worker returns on end of input
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


def _serve_encoder() -> None:
    """The worker side of _EncoderProcess: encode each pickled list of texts until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes our stdin
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    while True:
        try:
            texts = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(encode_in_process(texts), replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


@functools.cache
def bpe_openai_cl100k() -> Any:
    """bpe-openai's Rust cl100k (``encode(str) -> list[int]``); ImportError when not installed."""
    return _bpe_openai_bindings().tokenizer_for_encoding("cl100k_base")


def require_bindings() -> None:
    """Raise ImportError unless bpe-openai is installed (its cl100k is not built: ~40 ms a process)."""
    _bpe_openai_bindings()


def _bpe_openai_bindings() -> Any:
    """The ``bpe_openai._bindings`` extension, loaded without running ``bpe_openai/__init__``.

    That ``__init__`` parses three vocabularies in Python (~1 s and ~60 MB per process,
    paid again by every worker) for its ``Encoding`` wrapper, which we do not use: it also
    refuses texts over 1M characters and 200k tokens. The bindings carry cl100k themselves.
    """
    import importlib.machinery
    import importlib.util

    name = "bpe_openai._bindings"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("bpe_openai")  # finds the folder, runs nothing
    folders = package.submodule_search_locations if package else None
    for folder in folders or ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"_bindings{suffix}"
            if path.is_file():
                loader = importlib.machinery.ExtensionFileLoader(name, str(path))
                module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path, loader=loader))
                loader.exec_module(module)
                sys.modules[name] = module  # a later `import bpe_openai` reuses it
                return module
    raise ImportError("No module named 'bpe_openai'")


def encode_in_process(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """encode_ordinary of each text (flat uint32 [T], int64 lengths [N]); runs in workers too.

    A text over ``text_cuts.PIECE_CHARS`` is encoded in pieces cut where cl100k's regex
    cuts anyway: same ids, without a list of Python ints as long as the document.
    """
    return encode_in_pieces(texts, _encode_whole)


def _encode_whole(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    # Each text's list of Python ints goes into the uint32 buffer, and is freed, before the next
    # text is encoded: the next list's ints reuse that warm memory. Holding a batch's lists (up
    # to ~2M ints) and flattening them after took ~18 % more CPU per MB of text (0.68-0.73 against
    # 0.58 s on 16 MB in one process; encode alone, lists dropped at once, 0.54), and
    # ``array.fromlist`` (sized once) beats ``extend`` (~0.60), which iterates.
    tokenizer = bpe_openai_cl100k()
    flat = array.array("I")
    lengths = []
    for text in texts:
        try:
            ids = tokenizer.encode(text)
        except UnicodeEncodeError:  # a lone surrogate: U+FFFD, exactly as tiktoken.encode_ordinary does
            ids = tokenizer.encode(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        flat.fromlist(ids)
        lengths.append(len(ids))
    return np.frombuffer(flat, dtype=np.uint32), np.array(lengths, dtype=np.int64)


def _split_by_chars(texts: list[str], parts: int) -> list[list[str]]:
    """``texts`` cut into ``parts`` contiguous runs of about equal total length (some may be empty)."""
    ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, parts) / parts).tolist()
    bounds = [0, *cuts, len(texts)]
    return [texts[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]
