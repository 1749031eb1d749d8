"""Tokenize on every local core: worker processes read, parse, encode and hash; this process writes.

The corpus is cut into parts (``corpus.iter_source_parts``: a plain ``.jsonl`` into byte
ranges of about RANGE_BYTES whose absolute line numbers the newline count keeps, any other
source whole), one at a time as the workers ask for more. Parts go to ``workers`` worker
processes, each kept ``_AHEAD`` parts ahead. A worker reads its part itself
(``corpus.read_source``: the file read, JSON parsing, record errors), tokenizes it batch by
batch (``stages.tokenize.tokenize_batch``: encode, drop the empty, hash the normalised text)
and sends each batch back as flat numpy arrays. This process appends the batches to the
store in corpus order, so the store is byte for byte the serial one, while the workers go
on with the next parts: no text crosses a pipe, and reading, encoding and writing overlap.
(Before, this process parsed JSON, hashed every text and sent texts to the encoder
processes: ~0.6 of the bare encoder's throughput on 2 cores.)

A worker is a plain child Python (``children.start_child`` says why: no multiprocessing)
speaking pickles. Request: ``(source, root, span, config, recipe, hash_texts, huge_text_bytes)``. Replies, in order:
``("batch", tokens, lengths, ids, text_hash, dropped, records)`` for each batch (a huge document's
tokens come first as ``("tokens", ids)`` replies, group by group; its batch has none left), then
``("done", counts)``, or ``("error", message, path, line)`` for a PackprepError (a bad record
under ``--on-error raise``), or ``("crash", traceback)`` for a bug.
"""

from __future__ import annotations

import collections
import pickle
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from packprep.children import start_child
from packprep.config import TokenizeConfig
from packprep.errors import PackprepError
from packprep import json_text

# A plain .jsonl is cut into parts of about this size: a few per worker even for a small
# corpus, so that the last part's tail, when one worker idles, stays short.
RANGE_BYTES = 4 << 20
_AHEAD = 2  # parts sent to a worker before its first comes back: it never waits for this process
_QUEUED_REPLIES = 16  # batches this process holds per worker (~8 MB of text each) before the worker waits
_MAX_FIRST_ERRORS = 5
_EXIT_GRACE_S = 10  # how long a worker whose replies ended may take to exit before it is killed


def worker_recipe(tokenizer: Any, config: TokenizeConfig) -> tuple[Any, ...]:
    """How a worker makes the same encoder: bpe-openai's bindings alone (no tiktoken tables to
    load, ~0.15 s less start-up per worker), else the tokenizer loaded from the config."""
    from packprep.tokenizers.bpe_openai import BpeOpenAICl100k

    if isinstance(tokenizer, BpeOpenAICl100k):
        return ("bpe-openai",)
    return ("load", config.tokenizer, config.eos_id, config.bos_id)


def tokenize_parts(
    parts: Iterable[tuple[Path, tuple[int, int, int] | None]],
    root: Path,
    writer: Any,
    *,
    config: TokenizeConfig,
    recipe: tuple[Any, ...],
    workers: int,
    progress: Callable[..., None],
    hash_texts: bool = True,
) -> dict[str, Any]:
    """Tokenize ``parts`` (``corpus.iter_source_parts``) on ``workers`` processes into ``writer`` in corpus order.

    The workers start before the first part is asked for: their Python start-up (~0.25 s)
    overlaps with cutting the corpus into parts. Returns the read counts: ``records``,
    ``skipped``, ``with_id``, ``dropped_empty`` and the ``first_errors`` (at most 5, in corpus
    order). The first failing part in corpus order raises its PackprepError, as reading in
    this process would have.
    """
    pool = [_Worker() for _ in range(max(1, workers))]
    counts: dict[str, Any] = {"records": 0, "skipped": 0, "with_id": 0, "dropped_empty": 0, "first_errors": []}
    todo = iter(parts)
    pending: collections.deque[_Worker] = collections.deque()  # the worker of each part sent, in corpus order

    def send_next(worker: _Worker) -> None:
        part = next(todo, None)
        if part is not None:
            source, span = part
            worker.send((str(source), str(root), span, config, recipe, hash_texts, json_text.HUGE_TEXT_BYTES))
            pending.append(worker)

    try:
        for _ in range(_AHEAD):
            for worker in pool:
                send_next(worker)
        while pending:
            worker = pending.popleft()
            _collect(worker, writer, counts, progress)
            send_next(worker)
    except BaseException:
        for worker in pool:
            worker.kill()  # it may be blocked on a reply nobody will read
        raise
    for worker in pool:  # one that never got a part (fewer parts than workers) just returns
        worker.close()
    for worker in pool:
        worker.join()
    return counts


def _collect(worker: _Worker, writer: Any, counts: dict[str, Any], progress: Callable[..., None]) -> None:
    """Append one part's batches to ``writer`` and add its counts; raise what the part raised."""
    while (reply := worker.receive())[0] in ("batch", "tokens"):
        if reply[0] == "tokens":  # a huge document's tokens so far: its "batch" ends it
            writer.append_tokens(reply[1])
            progress(0, tokens=len(reply[1]))
            continue
        _, tokens, lengths, ids, hashes, dropped, records = reply
        writer.append(tokens, lengths, ids, hashes)
        counts["dropped_empty"] += dropped
        progress(records, tokens=len(tokens))
    if reply[0] == "error":
        raise PackprepError(reply[1], path=reply[2], line=reply[3])
    if reply[0] == "crash":
        raise RuntimeError(f"a tokenize worker process failed:\n{reply[1]}")
    done = reply[1]
    for key in ("records", "skipped", "with_id"):
        counts[key] += done[key]
    counts["first_errors"] = (counts["first_errors"] + done["first_errors"])[:_MAX_FIRST_ERRORS]


class _Worker:
    """A child Python running :func:`serve`; a thread drains its replies so it never blocks on them."""

    def __init__(self) -> None:
        self._process = start_child("from packprep.engines.local_tokenize import serve; serve()")
        self._replies: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED_REPLIES)
        threading.Thread(target=self._drain, args=(self._process.stdout, self._replies), daemon=True).start()
        self._finalizer = weakref.finalize(self, _kill, self._process)

    @staticmethod
    def _drain(stream: Any, replies: queue.Queue) -> None:
        try:
            while True:
                replies.put(pickle.load(stream))
        except Exception:  # whatever ended the stream (EOF, a killed process, bytes that do not unpickle), the reader must hear of it
            replies.put(None)  # the process ended, was killed, or its stream cannot be read

    def send(self, request: tuple[Any, ...]) -> None:
        try:
            pickle.dump(request, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
        except BrokenPipeError:
            self._died()

    def receive(self) -> tuple[Any, ...]:
        reply = self._replies.get()
        if reply is None:
            self._died()
        return reply

    def _died(self) -> NoReturn:
        # Its replies ended. Usually it has exited; if it is still alive (its stream could not be
        # read), it would block writing a reply nobody reads, and waiting for it would hang this run.
        try:
            code = self._process.wait(timeout=_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("a tokenize worker process stopped replying; it was killed") from None
        raise RuntimeError(f"a tokenize worker process died (exit code {code})") from None

    def close(self) -> None:
        """End of input: the worker returns."""
        self._process.stdin.close()

    def join(self) -> None:
        # wait() without a timeout blocks in waitpid; with one, it polls in 50 ms sleeps
        if self._process.wait():
            raise RuntimeError(f"a tokenize worker process exited with code {self._process.returncode}")
        self._finalizer.detach()

    def kill(self) -> None:
        self._finalizer()


def _kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:  # a flush into the dead process's pipe
            pass


def _encoder(recipe: tuple[Any, ...]) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    if recipe[0] == "bpe-openai":
        from packprep.tokenizers.bpe_openai import encode_in_process

        return encode_in_process
    from packprep.tokenizers import load_tokenizer

    _, spec, eos_id, bos_id = recipe
    return load_tokenizer(spec, eos_id=eos_id, bos_id=bos_id, num_threads=1).encode_batch


def _stream_encoder(recipe: tuple[Any, ...], encode: Callable) -> Callable | None:
    """``text_cuts.encode_stream`` over ``encode`` where its cuts keep the ids (cl100k's
    pre-tokenisation), else None: a huge text is then read whole, as a str."""
    from packprep.tokenizers import stream_encoder
    from packprep.tokenizers.text_cuts import encode_stream

    if recipe[0] == "bpe-openai":  # encode_in_process: cl100k
        return lambda parts: encode_stream(parts, encode)
    return stream_encoder(encode.__self__)  # encode is the loaded tokenizer's encode_batch


def serve() -> None:
    """The worker side: tokenize each requested part, replying batch by batch, until stdin closes."""
    import signal
    import traceback

    from packprep.corpus import ReadCounters, read_source
    from packprep.stages.tokenize import batches, tokenize_listed

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends us
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    encoders: dict[tuple[Any, ...], Callable] = {}

    def reply(message: tuple[Any, ...]) -> None:
        pickle.dump(message, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    while True:
        try:
            source, root, span, config, recipe, hash_texts, huge_text_bytes = pickle.load(requests)
        except EOFError:
            return
        try:
            encode = encoders.get(recipe) or encoders.setdefault(recipe, _encoder(recipe))
            stream = _stream_encoder(recipe, encode)
            counters = ReadCounters()
            documents = read_source(
                Path(source), Path(root), text_field=config.text_field, id_field=config.id_field,
                on_error=config.on_error, counters=counters, byte_range=span,
                huge_text_bytes=huge_text_bytes if stream else None,
            )
            for batch in batches(documents):
                # a huge text's tokens go back group by group as ("tokens", ids); its "batch" ends it
                tokenized = tokenize_listed(
                    batch, encode, encode_stream=stream, emit=lambda ids: reply(("tokens", ids)), hash_texts=hash_texts
                )
                reply(("batch", *tokenized, len(batch)))
            reply(("done", {
                "records": counters.records, "skipped": counters.skipped, "with_id": counters.with_id,
                "first_errors": counters.first_errors[:_MAX_FIRST_ERRORS],
            }))
        except PackprepError as exc:
            reply(("error", exc.message, exc.path, exc.line))
        except Exception:
            reply(("crash", traceback.format_exc()))
